//! Requests the node originates, built as `rsip` requests: OPTIONS probes,
//! the CANCEL and the failure ACK of an attempt's INVITE (RFC 3261 §9.1,
//! §17.1.1.3), ACK and BYE for a 2xx the node does not keep (a trunk that
//! answered after the node gave up on it), and the BYEs that release a
//! dialog. Our own Via, CSeq, Max-Forwards and Content-Length are rsip's
//! typed headers; values copied from a received message (From, To,
//! Call-ID, Route) come from the wire index in [`crate::wire`] and are
//! carried verbatim, never re-parsed here.

use std::net::SocketAddr;

use rsip::headers::UntypedHeader;
use rsip::param::Branch;
use rsip::{Header, Headers, Host, HostWithPort, Method, Param, Request, Transport, Uri, Version};

use crate::call::Me;
use crate::dialog::{self, Leg};
use crate::wire::Message;

/// A URI as rsip types it when rsip reads it back byte for byte; else
/// carried verbatim (rsip refuses or rewrites some valid URIs: escapes,
/// unknown schemes, parameter order).
fn uri(s: &str) -> Uri {
    match Uri::try_from(s) {
        Ok(u) if u.to_string() == s => u,
        _ => Uri {
            scheme: None,
            host_with_port: HostWithPort::from(Host::Domain(s.to_string().into())),
            ..Uri::default()
        },
    }
}

/// Our Via: `SIP/2.0/UDP|TCP <our address>;branch=<branch>`.
fn via(me: &Me, tcp: bool, branch: &str) -> Header {
    let host = me.host(tcp);
    let sent_by = match host.parse::<SocketAddr>() {
        Ok(a) => HostWithPort::from((a.ip(), a.port())),
        Err(_) => HostWithPort::from(Host::Domain(host.to_string().into())),
    };
    rsip::typed::Via {
        version: Version::V2,
        transport: if tcp { Transport::Tcp } else { Transport::Udp },
        uri: Uri::from(sent_by),
        params: vec![Param::Branch(Branch::new(branch))],
    }
    .into()
}

fn request(method: Method, uri_text: &str, mut headers: Vec<Header>, cseq: u32) -> Vec<u8> {
    headers.push(rsip::typed::CSeq { seq: cseq, method }.into());
    headers.push(rsip::headers::MaxForwards::from(70u32).into());
    headers.push(rsip::headers::ContentLength::from(0u32).into());
    let mut h = Headers::default();
    h.extend(headers);
    Request {
        method,
        uri: uri(uri_text),
        version: Version::V2,
        headers: h,
        body: Vec::new(),
    }
    .to_string()
    .into_bytes()
}

/// Copies the `name` headers of `m` (every value, in order).
fn copy(m: &Message<'_>, name: &str, into: &mut Vec<Header>) {
    for h in m.headers.iter().filter(|h| h.name == name) {
        let v = m.value(h).to_string();
        into.push(match name {
            "from" => rsip::headers::From::new(v).into(),
            "to" => rsip::headers::To::new(v).into(),
            "call-id" => rsip::headers::CallId::new(v).into(),
            "route" => rsip::headers::Route::new(v).into(),
            _ => Header::Other(name.to_string(), v),
        });
    }
}

fn route(entries: &[String], into: &mut Vec<Header>) {
    if !entries.is_empty() {
        into.push(rsip::headers::Route::new(entries.join(", ")).into());
    }
}

/// An OPTIONS probe to a trunk (over UDP).
pub fn options(me: &Me, to: SocketAddr, branch: &str, seq: u32) -> Vec<u8> {
    let udp = &me.udp;
    let contact = format!("<sip:probe@{udp}>");
    let headers = vec![
        via(me, false, branch),
        rsip::headers::From::new(format!("{contact};tag=dmprobe")).into(),
        rsip::headers::To::new(format!("<sip:{to}>")).into(),
        rsip::headers::CallId::new(format!("dmprobe-{branch}@{udp}")).into(),
        rsip::headers::Contact::new(contact).into(),
        rsip::headers::Accept::new("application/sdp").into(),
    ];
    request(Method::Options, &format!("sip:{to}"), headers, seq)
}

/// CANCEL or the failure ACK of our INVITE `invite` (same Request-URI,
/// Via, From, Call-ID, CSeq number and Route; `to` from the final reply
/// for the ACK).
fn hop(invite: &Message<'_>, method: Method, to: Option<&str>) -> Vec<u8> {
    let mut headers = vec![rsip::headers::Via::new(invite.top_via().unwrap_or("")).into()];
    copy(invite, "route", &mut headers);
    copy(invite, "from", &mut headers);
    match to {
        Some(t) => headers.push(rsip::headers::To::new(t).into()),
        None => copy(invite, "to", &mut headers),
    }
    copy(invite, "call-id", &mut headers);
    let n = invite.cseq().map_or(1, |(n, _)| n);
    request(method, invite.uri().unwrap_or(""), headers, n)
}

pub fn cancel(invite: &Message<'_>) -> Vec<u8> {
    hop(invite, Method::Cancel, None)
}

/// ACK of a non-2xx final reply `resp` to our INVITE `invite`.
pub fn ack_for_failure(invite: &Message<'_>, resp: &Message<'_>) -> Vec<u8> {
    hop(invite, Method::Ack, resp.header("to"))
}

/// ACK of a non-2xx final reply when our INVITE is no longer kept: the
/// reply carries its Via, From, To, Call-ID and CSeq; `request_uri` is the
/// INVITE's.
pub fn ack_for_failure_from_reply(resp: &Message<'_>, request_uri: &str) -> Vec<u8> {
    let mut headers = vec![rsip::headers::Via::new(resp.top_via().unwrap_or("")).into()];
    copy(resp, "from", &mut headers);
    copy(resp, "to", &mut headers);
    copy(resp, "call-id", &mut headers);
    let n = resp.cseq().map_or(1, |(n, _)| n);
    request(Method::Ack, request_uri, headers, n)
}

/// ACK or BYE for a 2xx from a trunk the node does not keep: to its
/// Contact, along its Record-Route (the entries between us and the trunk),
/// From/To/Call-ID of the 2xx.
fn for_2xx(ok: &Message<'_>, method: Method, me: &Me, tcp: bool, branch: &str) -> Vec<u8> {
    let mut headers = vec![via(me, tcp, branch)];
    route(&dialog::callee_route(ok, me), &mut headers);
    copy(ok, "from", &mut headers);
    copy(ok, "to", &mut headers);
    copy(ok, "call-id", &mut headers);
    let n = ok.cseq().map_or(1, |(n, _)| n);
    let n = if method == Method::Bye { n + 1 } else { n };
    // No Contact (a broken 2xx): the callee's To URI is the best guess.
    let target = dialog::contact_uri(ok)
        .or_else(|| ok.header("to").map(dialog::addr_spec))
        .unwrap_or_default();
    request(method, target, headers, n)
}

pub fn ack_for_2xx(ok: &Message<'_>, me: &Me, tcp: bool, branch: &str) -> Vec<u8> {
    for_2xx(ok, Method::Ack, me, tcp, branch)
}

pub fn bye_for_2xx(ok: &Message<'_>, me: &Me, tcp: bool, branch: &str) -> Vec<u8> {
    for_2xx(ok, Method::Bye, me, tcp, branch)
}

/// A BYE along one leg of a confirmed dialog.
pub fn bye(leg: &Leg, call_id: &str, me: &Me, branch: &str) -> Vec<u8> {
    let mut headers = vec![via(me, leg.tcp, branch)];
    route(&leg.route, &mut headers);
    headers.push(rsip::headers::From::new(leg.from.clone()).into());
    headers.push(rsip::headers::To::new(leg.to.clone()).into());
    headers.push(rsip::headers::CallId::new(call_id).into());
    request(Method::Bye, &leg.target, headers, leg.cseq)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire;

    fn me() -> Me {
        Me {
            udp: "127.0.0.1:5060".into(),
            tcp: "127.0.0.1:5061".into(),
        }
    }

    #[test]
    fn uris_rsip_rewrites_are_kept_verbatim() {
        for u in [
            "sip:+74951234567@127.0.0.1:5091",
            "sip:pbx@10.0.0.30:5090;transport=udp",
            "sip:%61lice@atlanta.com;user=phone;npdi",
            "tel:+74951234567",
        ] {
            assert_eq!(uri(u).to_string(), u);
        }
    }

    #[test]
    fn probe_is_a_whole_options_request_with_our_via() {
        let b = options(
            &me(),
            "127.0.0.1:5091".parse().unwrap(),
            "z9hG4bK-dmp-abc",
            7,
        );
        let m = wire::parse(&b).unwrap();
        assert_eq!(m.method(), Some("OPTIONS"));
        assert_eq!(m.uri(), Some("sip:127.0.0.1:5091"));
        assert_eq!(m.branch(), Some("z9hG4bK-dmp-abc"));
        assert_eq!(
            m.top_via(),
            Some("SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-dmp-abc")
        );
        assert_eq!(m.cseq(), Some((7, "OPTIONS".into())));
        assert_eq!(m.max_forwards(), 70);
    }

    /// (method, CSeq number, To tag) of a request we built.
    fn summary(b: &[u8]) -> (String, u32, String) {
        let m = wire::parse(b).unwrap();
        let (n, method) = m.cseq().unwrap();
        assert_eq!(m.method(), Some(method.as_str()));
        (method, n, m.to_tag().unwrap_or("").to_string())
    }

    #[test]
    fn cancel_and_ack_copy_the_invite() {
        let inv = "INVITE sip:+7495@127.0.0.1:5091 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-dm-x-1\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-c\r\nRoute: <sip:edge;lr>\r\nFrom: <sip:a@c>;tag=f\r\nTo: <sip:b@c>\r\n\
Call-ID: k@c\r\nCSeq: 4 INVITE\r\nContent-Length: 0\r\n\r\n";
        let inv = wire::parse(inv.as_bytes()).unwrap();
        let c = cancel(&inv);
        let m = wire::parse(&c).unwrap();
        assert_eq!(m.method(), Some("CANCEL"));
        assert_eq!(m.uri(), Some("sip:+7495@127.0.0.1:5091"));
        assert_eq!(m.branch(), Some("z9hG4bK-dm-x-1"));
        assert_eq!(
            m.headers.iter().filter(|h| h.name == "via").count(),
            1,
            "only our Via"
        );
        assert_eq!(m.header("route"), Some("<sip:edge;lr>"));
        assert_eq!(m.cseq(), Some((4, "CANCEL".into())));
        assert_eq!(m.to_tag(), None);
        let resp = wire::response(&inv, 486, "Busy Here", Some("tt"), &[]);
        let resp = wire::parse(&resp).unwrap();
        let ack = ack_for_failure(&inv, &resp);
        assert_eq!(summary(&ack), ("ACK".into(), 4, "tt".into()));
        let late = ack_for_failure_from_reply(&resp, "sip:+7495@127.0.0.1:5091");
        assert_eq!(
            summary(&late),
            summary(&ack),
            "the reply carries what the ACK copies"
        );
        let m = wire::parse(&late).unwrap();
        assert_eq!(
            (m.uri(), m.branch()),
            (Some("sip:+7495@127.0.0.1:5091"), Some("z9hG4bK-dm-x-1"))
        );
    }

    #[test]
    fn ack_and_bye_for_a_late_2xx_follow_its_contact() {
        let ok = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-dm-x-1\r\n\
Record-Route: <sip:127.0.0.1:5060;lr>\r\nFrom: <sip:a@c>;tag=f\r\nTo: <sip:b@c>;tag=t\r\nCall-ID: k@c\r\n\
CSeq: 1 INVITE\r\nContact: <sip:pbx@127.0.0.1:5091>\r\nContent-Length: 0\r\n\r\n";
        let ok = wire::parse(ok.as_bytes()).unwrap();
        let ack = ack_for_2xx(&ok, &me(), false, "z9hG4bK-dm-x-1-ack");
        let m = wire::parse(&ack).unwrap();
        assert_eq!(m.uri(), Some("sip:pbx@127.0.0.1:5091"));
        assert_eq!(m.cseq(), Some((1, "ACK".into())));
        assert_eq!(m.header("route"), None, "our own Record-Route is not a hop");
        let bye = bye_for_2xx(&ok, &me(), true, "z9hG4bK-dm-x-1-bye");
        let m = wire::parse(&bye).unwrap();
        assert_eq!(
            m.top_via(),
            Some("SIP/2.0/TCP 127.0.0.1:5061;branch=z9hG4bK-dm-x-1-bye")
        );
        assert_eq!(
            (m.method(), m.cseq()),
            (Some("BYE"), Some((2, "BYE".into())))
        );
        assert_eq!((m.from_tag(), m.to_tag()), (Some("f"), Some("t")));
    }
}
