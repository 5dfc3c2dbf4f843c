//! A confirmed dialog as the node keeps it after the answer: for each leg,
//! what a BYE towards it needs (remote target, route set, From/To with
//! tags, the CSeq to use), taken from the carrier's INVITE and the trunk's
//! 2xx (RFC 3261 §12.1). The node hangs up both legs with it at the
//! maximum call duration or the drain deadline; the carrier INVITE itself
//! is not kept, so an established call holds a few hundred bytes.

use crate::call::Me;
use crate::originate;
use crate::wire::{self, Message};

/// One side of the dialog, seen from the node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Leg {
    /// Request-URI of a request to this side (its Contact).
    pub target: String,
    /// Route set towards it, nearest first.
    pub route: Vec<String>,
    /// From of a request to this side: the other party, with its tag.
    pub from: String,
    /// To of a request to this side: this party, with its tag.
    pub to: String,
    /// Highest CSeq seen in requests from the other side.
    pub cseq: u32,
    /// This side is reached over TCP.
    pub tcp: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dialog {
    pub call_id: String,
    pub me: Me,
    /// The caller's side (towards the carrier).
    pub caller: Leg,
    /// The callee's side (towards the trunk).
    pub callee: Leg,
}

/// The URI inside a name-addr (`"A" <sip:a@h>;tag=1` → `sip:a@h`).
pub fn addr_spec(v: &str) -> &str {
    match (v.find('<'), v.find('>')) {
        (Some(s), Some(e)) if s < e => &v[s + 1..e],
        _ => v.split(';').next().unwrap_or(v).trim(),
    }
}

/// Every Record-Route entry of a message, top first.
fn record_route(m: &Message<'_>) -> Vec<String> {
    m.headers
        .iter()
        .filter(|h| h.name == "record-route")
        .flat_map(|h| wire::split_list(m.value(h)).map(|v| v.trim().to_string()))
        .collect()
}

/// The route set from the node towards the callee of a 2xx whose
/// Record-Route holds ours: the entries above ours lie between us and the
/// callee, nearest to the callee first.
pub fn callee_route(ok: &Message<'_>, me: &Me) -> Vec<String> {
    let rr = record_route(ok);
    let mine = rr
        .iter()
        .position(|r| wire::uri_hostport(r).is_some_and(|h| me.is_ours(h)))
        .unwrap_or(rr.len());
    rr[..mine].iter().rev().cloned().collect()
}

/// The Contact URI of a message.
pub fn contact_uri<'a>(m: &Message<'a>) -> Option<&'a str> {
    m.header("contact").map(addr_spec)
}

impl Dialog {
    /// The dialog of the carrier's `invite` (over TCP: `caller_tcp`)
    /// answered by the trunk's `ok` (`callee_tcp`), whose Record-Route
    /// holds ours.
    pub fn confirmed(
        invite: &Message<'_>,
        ok: &Message<'_>,
        me: &Me,
        caller_tcp: bool,
        callee_tcp: bool,
    ) -> Dialog {
        let towards_callee = callee_route(ok, me);
        // The INVITE's Record-Route lists the proxies between the carrier
        // and us, nearest to us first.
        let towards_caller: Vec<String> = record_route(invite)
            .into_iter()
            .filter(|r| !wire::uri_hostport(r).is_some_and(|h| me.is_ours(h)))
            .collect();
        let caller_uri = invite.header("from").unwrap_or("").to_string();
        let callee_uri = ok.header("to").unwrap_or("").to_string();
        let invite_cseq = invite.cseq().map_or(1, |(n, _)| n);
        Dialog {
            call_id: invite.call_id().to_string(),
            me: me.clone(),
            caller: Leg {
                target: contact_uri(invite)
                    .unwrap_or(addr_spec(&caller_uri))
                    .to_string(),
                route: towards_caller,
                from: callee_uri.clone(),
                to: caller_uri.clone(),
                cseq: 0,
                tcp: caller_tcp,
            },
            callee: Leg {
                target: contact_uri(ok)
                    .unwrap_or(addr_spec(&callee_uri))
                    .to_string(),
                route: towards_callee,
                from: caller_uri,
                to: callee_uri,
                cseq: invite_cseq,
                tcp: callee_tcp,
            },
        }
    }

    /// A request passed through from one side to the other.
    pub fn saw_request(&mut self, from_caller: bool, cseq: u32) {
        let leg = if from_caller {
            &mut self.callee
        } else {
            &mut self.caller
        };
        leg.cseq = leg.cseq.max(cseq);
    }

    /// A BYE to the caller (the node hangs up on the callee's behalf).
    pub fn bye_to_caller(&mut self, branch: &str) -> Vec<u8> {
        self.caller.cseq += 1;
        originate::bye(&self.caller, &self.call_id, &self.me, branch)
    }

    /// A BYE to the callee (on the caller's behalf).
    pub fn bye_to_callee(&mut self, branch: &str) -> Vec<u8> {
        self.callee.cseq += 1;
        originate::bye(&self.callee, &self.call_id, &self.me, branch)
    }

    pub fn footprint(&self) -> usize {
        let leg = |l: &Leg| {
            l.target.capacity()
                + l.from.capacity()
                + l.to.capacity()
                + l.route.iter().map(|r| r.capacity() + 24).sum::<usize>()
        };
        std::mem::size_of::<Dialog>()
            + self.call_id.capacity()
            + self.me.udp.capacity()
            + self.me.tcp.capacity()
            + leg(&self.caller)
            + leg(&self.callee)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &str = "INVITE sip:84950000001@10.0.0.1:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.0.9:5060;branch=z9hG4bK-c1\r\n\
Record-Route: <sip:10.0.0.9;lr>\r\n\
From: \"Caller\" <sip:+79161234567@carrier>;tag=ct\r\n\
To: <sip:84950000001@10.0.0.1>\r\n\
Call-ID: d1@carrier\r\n\
CSeq: 7 INVITE\r\n\
Contact: <sip:caller@10.0.0.20:5070>\r\n\
Content-Length: 0\r\n\r\n";

    const OK: &str = "SIP/2.0 200 OK\r\n\
Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-dm-x-1\r\n\
Via: SIP/2.0/UDP 10.0.0.9:5060;branch=z9hG4bK-c1\r\n\
Record-Route: <sip:pbx-proxy.client;lr>, <sip:10.0.0.1:5060;lr>\r\n\
Record-Route: <sip:10.0.0.9;lr>\r\n\
From: \"Caller\" <sip:+79161234567@carrier>;tag=ct\r\n\
To: <sip:84950000001@10.0.0.1>;tag=tt\r\n\
Call-ID: d1@carrier\r\n\
CSeq: 7 INVITE\r\n\
Contact: <sip:pbx@10.0.0.30:5090;transport=udp>\r\n\
Content-Length: 0\r\n\r\n";

    fn dialog() -> Dialog {
        let inv = wire::parse(INVITE.as_bytes()).unwrap();
        let ok = wire::parse(OK.as_bytes()).unwrap();
        let me = Me {
            udp: "10.0.0.1:5060".into(),
            tcp: "10.0.0.1:5060".into(),
        };
        Dialog::confirmed(&inv, &ok, &me, false, false)
    }

    #[test]
    fn legs_take_targets_routes_and_tags_from_invite_and_answer() {
        let d = dialog();
        assert_eq!(d.callee.target, "sip:pbx@10.0.0.30:5090;transport=udp");
        assert_eq!(d.callee.route, vec!["<sip:pbx-proxy.client;lr>"]);
        assert_eq!(d.callee.to, "<sip:84950000001@10.0.0.1>;tag=tt");
        assert_eq!(
            d.callee.from,
            "\"Caller\" <sip:+79161234567@carrier>;tag=ct"
        );
        assert_eq!(d.caller.target, "sip:caller@10.0.0.20:5070");
        assert_eq!(d.caller.route, vec!["<sip:10.0.0.9;lr>"]);
        assert_eq!(d.caller.to, "\"Caller\" <sip:+79161234567@carrier>;tag=ct");
        assert_eq!(d.caller.from, "<sip:84950000001@10.0.0.1>;tag=tt");
    }

    #[test]
    fn byes_go_along_each_legs_route_with_the_next_cseq() {
        let mut d = dialog();
        d.saw_request(true, 9); // a re-INVITE from the caller
        let b = d.bye_to_callee("z9hG4bK-dm-x-1-bye");
        let m = wire::parse(&b).unwrap();
        assert_eq!(m.method(), Some("BYE"));
        assert_eq!(m.uri(), Some("sip:pbx@10.0.0.30:5090;transport=udp"));
        assert_eq!(m.header("route"), Some("<sip:pbx-proxy.client;lr>"));
        assert_eq!(m.cseq(), Some((10, "BYE".into())));
        assert_eq!((m.from_tag(), m.to_tag()), (Some("ct"), Some("tt")));
        assert_eq!(m.call_id(), "d1@carrier");
        assert_eq!(m.branch(), Some("z9hG4bK-dm-x-1-bye"));
        let b = d.bye_to_caller("z9hG4bK-dm-x-0-bye");
        let m = wire::parse(&b).unwrap();
        assert_eq!(m.uri(), Some("sip:caller@10.0.0.20:5070"));
        assert_eq!(m.header("route"), Some("<sip:10.0.0.9;lr>"));
        assert_eq!(m.cseq(), Some((1, "BYE".into())));
        assert_eq!((m.from_tag(), m.to_tag()), (Some("tt"), Some("ct")));
    }
}
