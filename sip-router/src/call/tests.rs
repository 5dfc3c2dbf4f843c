//! The call state machine driven with a fake clock and no sockets.

use super::*;

const INVITE: &str = "INVITE sip:84950000001@127.0.0.1:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-carrier-1\r\n\
Max-Forwards: 70\r\n\
From: <sip:+79161234567@127.0.0.1:5070>;tag=caller1\r\n\
To: <sip:84950000001@127.0.0.1:5060>\r\n\
Call-ID: call-1@127.0.0.1\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:caller@127.0.0.1:5070>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 4\r\n\r\nv=0\n";

fn trunk(name: &str, port: u16) -> TrunkRef {
    TrunkRef {
        name: name.into(),
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
        transport: Default::default(),
    }
}

fn setup(destinations: &[&str], trunks: Vec<TrunkRef>) -> Setup {
    Setup {
        number: "+74950000001".into(),
        caller: "+79161234567".into(),
        site: "demo".into(),
        pool: "demo".into(),
        status: NumberStatus::Active,
        destinations: destinations.iter().map(|s| s.to_string()).collect(),
        trunks,
        source: Source {
            attribution: Attribution::LiveLease,
            utm_source: "google".into(),
            ..Source::default()
        },
        headers: vec![(
            "X-Dialmark-Source".into(),
            "attribution=live_lease; utm_source=google".into(),
        )],
        carrier_reliable: false,
        carrier_via: None,
    }
}

fn policy() -> Policy {
    Policy {
        provisional_timeout_ms: 2_000,
        ringing_timeout_ms: 5_000,
        ring_timeout_ms: 20_000,
        overall_timeout_ms: 60_000,
        max_call_ms: 3_600_000,
        failover_codes: vec![408, 500, 502, 503, 504],
        all_failed_code: 480,
        me: Me {
            udp: "127.0.0.1:5060".into(),
            tcp: "127.0.0.1:5060".into(),
        },
    }
}

const T0: u64 = 1_800_000_000_000;

/// The INVITE sent to a trunk in these actions, if any.
fn sent_invite(actions: &[Action]) -> Option<(SocketAddr, Vec<u8>)> {
    actions.iter().find_map(|a| match a {
        Action::ToTrunk { addr, bytes, .. } if bytes.starts_with(b"INVITE") => {
            Some((*addr, bytes.clone()))
        }
        _ => None,
    })
}

fn to_trunk(actions: &[Action], method: &str) -> Vec<Vec<u8>> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::ToTrunk { bytes, .. } if bytes.starts_with(method.as_bytes()) => {
                Some(bytes.clone())
            }
            _ => None,
        })
        .collect()
}

fn to_carrier(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::ToCarrier(b) => Some(
                String::from_utf8_lossy(b)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string(),
            ),
            _ => None,
        })
        .collect()
}

fn attempts(actions: &[Action]) -> Vec<CallAttempt> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Attempt(r) => Some((**r).clone()),
            _ => None,
        })
        .collect()
}

fn record(actions: &[Action]) -> Option<CallRow> {
    actions.iter().find_map(|a| match a {
        Action::Record(r) => Some((**r).clone()),
        _ => None,
    })
}

fn armed(actions: &[Action], timer: Timer) -> Option<u64> {
    actions.iter().find_map(|a| match a {
        Action::Arm { timer: t, at_ms } if *t == timer => Some(*at_ms),
        _ => None,
    })
}

/// The trunk's reply `code` to the INVITE `inv`.
fn reply(inv: &[u8], code: u16, reason: &str) -> Vec<u8> {
    let m = wire::parse(inv).unwrap();
    wire::response(&m, code, reason, Some("trunktag"), &[])
}

fn respond(
    call: &mut Call,
    attempt: u8,
    inv: &[u8],
    code: u16,
    reason: &str,
    now: u64,
) -> Vec<Action> {
    let bytes = reply(inv, code, reason);
    let msg = wire::parse(&bytes).unwrap();
    call.handle(Event::Response { attempt, msg: &msg }, now)
}

#[test]
fn answered_call_forwards_and_records_talk_time() {
    let (mut call, out) = Call::start(
        INVITE.as_bytes().to_vec(),
        setup(&["+74951234567"], vec![trunk("a", 5091), trunk("b", 5092)]),
        policy(),
        T0,
    );
    let (addr, inv) = sent_invite(&out).expect("first attempt sent");
    assert_eq!(addr.port(), 5091);
    let text = String::from_utf8_lossy(&inv);
    assert!(text.starts_with("INVITE sip:+74951234567@127.0.0.1:5091 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-dm-"), "{text}");
    assert!(text.contains("Record-Route: <sip:127.0.0.1:5060;lr>\r\n"));
    assert!(text.contains("Max-Forwards: 69\r\n"));
    assert!(
        text.contains("Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-carrier-1\r\n"),
        "carrier Via kept below ours"
    );
    assert!(text.contains("X-Dialmark-Source: attribution=live_lease; utm_source=google\r\n"));
    assert!(text.ends_with("\r\n\r\nv=0\n"), "body byte-exact");
    assert!(out.contains(&Action::Arm {
        timer: Timer::NoProvisional(1),
        at_ms: T0 + 2_000
    }));

    let out = respond(&mut call, 1, &inv, 180, "Ringing", T0 + 300);
    assert_eq!(to_carrier(&out), vec!["SIP/2.0 180 Ringing"]);
    let out = respond(&mut call, 1, &inv, 200, "OK", T0 + 3_300);
    assert_eq!(to_carrier(&out), vec!["SIP/2.0 200 OK"]);
    let early = record(&out).expect("on record from the answer");
    assert_eq!(
        (
            early.disposition,
            early.ended,
            early.answered,
            early.talk_ms
        ),
        (Disposition::Answered, 0, ((T0 + 3_300) / 1000) as u32, 0),
        "in progress: ended = 0"
    );
    let fwd = out
        .iter()
        .find_map(|a| {
            if let Action::ToCarrier(b) = a {
                Some(b.clone())
            } else {
                None
            }
        })
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&fwd).contains("z9hG4bK-dm-"),
        "our Via is stripped going upstream"
    );
    assert!(call.is_answered());
    // A retransmitted 200 from the trunk goes upstream too.
    let out = respond(&mut call, 1, &inv, 200, "OK", T0 + 3_800);
    assert_eq!(to_carrier(&out), vec!["SIP/2.0 200 OK"]);

    let out = call.handle(Event::Bye { from_caller: true }, T0 + 63_300);
    let a = attempts(&out);
    assert_eq!(a.len(), 1);
    assert_eq!(
        (
            a[0].outcome,
            a[0].final_code,
            a[0].pdd_ms,
            a[0].answer_ms,
            a[0].talk_ms
        ),
        (Outcome::Answered, 200, 300, 3_300, 60_000)
    );
    let r = record(&out).unwrap();
    assert_eq!(
        (
            r.disposition,
            r.talk_ms,
            r.ring_ms,
            r.attempts,
            r.final_trunk.as_str()
        ),
        (Disposition::Answered, 60_000, 3_000, 1, "a")
    );
    assert_eq!(r.attribution, Attribution::LiveLease);
    assert_eq!(r.utm_source, "google");
    assert!(call.is_finished());
    assert!(call.is_done(), "nothing left but a tombstone");
    assert_eq!(call.final_reply(), None, "answered: no reply to repeat");
}

fn started(actions: &[Action]) -> Vec<CallRow> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Started(r) => Some((**r).clone()),
            _ => None,
        })
        .collect()
}

/// `call.started` fires once, at the first ringing (not at 100 Trying, not
/// again at a later 18x or the answer), or at an answer with no ringing.
#[test]
fn the_call_starts_at_its_first_ringing_or_its_answer() {
    let trunks = || vec![trunk("a", 5091), trunk("b", 5092)];
    let (mut call, out) = Call::start(
        INVITE.as_bytes().to_vec(),
        setup(&["+74951234567"], trunks()),
        policy(),
        T0,
    );
    assert!(started(&out).is_empty());
    let (_, inv) = sent_invite(&out).unwrap();
    let out = respond(&mut call, 1, &inv, 100, "Trying", T0 + 100);
    assert!(started(&out).is_empty(), "100 Trying is not ringing");
    let out = respond(&mut call, 1, &inv, 180, "Ringing", T0 + 2_500);
    let rows = started(&out);
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(
        (r.received, r.ended, r.answered, r.final_trunk.as_str()),
        ((T0 / 1000) as u32, ((T0 + 2_500) / 1000) as u32, 0, "a"),
        "ringing since `ended`, on trunk a"
    );
    assert_eq!((r.utm_source.as_str(), r.site.as_str()), ("google", "demo"));
    let out = respond(&mut call, 1, &inv, 183, "Session Progress", T0 + 2_600);
    assert!(started(&out).is_empty(), "once per call");
    let out = respond(&mut call, 1, &inv, 200, "OK", T0 + 4_000);
    assert!(started(&out).is_empty(), "once per call");

    let (mut call, out) = Call::start(
        INVITE.as_bytes().to_vec(),
        setup(&["+74951234567"], trunks()),
        policy(),
        T0,
    );
    let (_, inv) = sent_invite(&out).unwrap();
    let out = respond(&mut call, 1, &inv, 200, "OK", T0 + 700);
    assert_eq!(started(&out).len(), 1, "answered without ringing");
    let before = out
        .iter()
        .position(|a| matches!(a, Action::Started(_)))
        .unwrap();
    let rec = out
        .iter()
        .position(|a| matches!(a, Action::Record(_)))
        .unwrap();
    assert!(before < rec, "started before the answer's row");
}

#[test]
fn failover_on_503_then_answer() {
    let (mut call, out) = Call::start(
        INVITE.as_bytes().to_vec(),
        setup(&["+74951234567"], vec![trunk("a", 5091), trunk("b", 5092)]),
        policy(),
        T0,
    );
    let (_, inv_a) = sent_invite(&out).unwrap();
    let out = respond(&mut call, 1, &inv_a, 503, "Service Unavailable", T0 + 50);
    assert!(
        out.contains(&Action::TrunkReplied("a".into())),
        "a 503 is a reply"
    );
    let acks = to_trunk(&out, "ACK");
    assert_eq!(acks.len(), 1, "non-2xx is ACKed hop by hop");
    let ack = String::from_utf8_lossy(&acks[0]);
    assert!(
        ack.contains("CSeq: 1 ACK") && ack.contains("tag=trunktag"),
        "{ack}"
    );
    assert!(to_carrier(&out).is_empty(), "the caller never sees the 503");
    let a = attempts(&out);
    assert_eq!(
        (a[0].attempt, a[0].final_code, a[0].outcome, a[0].failover),
        (1, 503, Outcome::Rejected, 1)
    );
    let (addr, inv_b) = sent_invite(&out).expect("second attempt");
    assert_eq!(addr.port(), 5092);
    assert_ne!(
        wire::parse(&inv_a).unwrap().branch(),
        wire::parse(&inv_b).unwrap().branch()
    );
    let out = respond(&mut call, 2, &inv_b, 180, "Ringing", T0 + 100);
    assert!(out.contains(&Action::TrunkReplied("b".into())));
    let out = respond(&mut call, 2, &inv_b, 200, "OK", T0 + 1_100);
    assert!(
        !out.iter().any(|a| matches!(a, Action::TrunkReplied(_))),
        "once per attempt"
    );
    let out = call.handle(Event::Bye { from_caller: true }, T0 + 11_100);
    let r = record(&out).unwrap();
    assert_eq!(
        (r.disposition, r.attempts, r.final_trunk.as_str(), r.talk_ms),
        (Disposition::Answered, 2, "b", 10_000)
    );
}

#[test]
fn no_provisional_in_time_fails_over_and_marks_the_trunk() {
    let (mut call, out) = Call::start(
        INVITE.as_bytes().to_vec(),
        setup(&["+74951234567"], vec![trunk("a", 5091), trunk("b", 5092)]),
        policy(),
        T0,
    );
    let (_, inv_a) = sent_invite(&out).unwrap();
    // UDP retransmission with doubling intervals until the failover timer.
    let out = call.handle(Event::Timer(Timer::Retransmit(1)), T0 + 500);
    assert_eq!(sent_invite(&out).unwrap().1, inv_a);
    assert!(out.contains(&Action::Arm {
        timer: Timer::Retransmit(1),
        at_ms: T0 + 1_500
    }));
    let out = call.handle(Event::Timer(Timer::NoProvisional(1)), T0 + 2_000);
    assert!(out.contains(&Action::TrunkTimeout("a".into())));
    let a = attempts(&out);
    assert_eq!(
        (a[0].final_code, a[0].outcome, a[0].failover, a[0].pdd_ms),
        (408, Outcome::Timeout, 1, 0)
    );
    assert_eq!(sent_invite(&out).unwrap().0.port(), 5092);
    // Stale timers of attempt 1 do nothing.
    assert!(call
        .handle(Event::Timer(Timer::Retransmit(1)), T0 + 2_100)
        .is_empty());
    assert!(call
        .handle(Event::Timer(Timer::NoProvisional(1)), T0 + 2_100)
        .is_empty());
}

#[test]
fn busy_is_not_failed_over() {
    let (mut call, out) = Call::start(
        INVITE.as_bytes().to_vec(),
        setup(&["+74951234567"], vec![trunk("a", 5091), trunk("b", 5092)]),
        policy(),
        T0,
    );
    let (_, inv) = sent_invite(&out).unwrap();
    let out = respond(&mut call, 1, &inv, 486, "Busy Here", T0 + 800);
    assert!(sent_invite(&out).is_none(), "no second attempt");
    assert_eq!(to_carrier(&out), vec!["SIP/2.0 486 Busy Here"]);
    let a = attempts(&out);
    assert_eq!((a[0].outcome, a[0].failover), (Outcome::Busy, 0));
    let r = record(&out).unwrap();
    assert_eq!(
        (r.disposition, r.final_code, r.attempts),
        (Disposition::Busy, 486, 1)
    );
    // The carrier retransmits its INVITE: it gets the 486 again.
    let out = call.handle(Event::InviteRetransmit, T0 + 900);
    assert_eq!(to_carrier(&out), vec!["SIP/2.0 486 Busy Here"]);
}

#[test]
fn cancel_while_ringing() {
    let (mut call, out) = Call::start(
        INVITE.as_bytes().to_vec(),
        setup(&["+74951234567"], vec![trunk("a", 5091)]),
        policy(),
        T0,
    );
    let (_, inv) = sent_invite(&out).unwrap();
    respond(&mut call, 1, &inv, 180, "Ringing", T0 + 200);
    let out = call.handle(Event::Cancel, T0 + 5_000);
    let cancels = to_trunk(&out, "CANCEL");
    assert_eq!(cancels.len(), 1);
    let c = wire::parse(&cancels[0]).unwrap();
    assert_eq!(
        c.branch(),
        wire::parse(&inv).unwrap().branch(),
        "CANCEL matches the INVITE's branch"
    );
    assert_eq!(c.cseq(), Some((1, "CANCEL".into())));
    // The caller hears 487 at once; the trunk's own 487 ends its branch.
    assert_eq!(to_carrier(&out), vec!["SIP/2.0 487 Request Terminated"]);
    assert_eq!(attempts(&out)[0].outcome, Outcome::Canceled);
    let r = record(&out).unwrap();
    assert_eq!((r.disposition, r.ring_ms), (Disposition::Abandoned, 4_800));
    assert!(
        armed(&out, Timer::Resend(1)).is_some(),
        "the CANCEL is retransmitted until answered"
    );
    let ok = wire::response(&c, 200, "OK", Some("trunktag"), &[]);
    let out = call.handle(
        Event::Response {
            attempt: 1,
            msg: &wire::parse(&ok).unwrap(),
        },
        T0 + 5_020,
    );
    assert!(
        to_carrier(&out).is_empty(),
        "a 200 to the CANCEL goes nowhere"
    );
    assert!(
        out.contains(&Action::Disarm(Timer::Resend(1))),
        "the CANCEL is answered"
    );
    let out = respond(&mut call, 1, &inv, 487, "Request Terminated", T0 + 5_050);
    assert_eq!(to_trunk(&out, "ACK").len(), 1);
    assert!(to_carrier(&out).is_empty());
    assert!(!call.is_done(), "our 487 waits for the caller's ACK");
    call.handle(Event::Ack, T0 + 5_060);
    assert!(call.is_done());
}

#[test]
fn cancel_before_any_provisional_waits_for_one() {
    let (mut call, out) = Call::start(
        INVITE.as_bytes().to_vec(),
        setup(&["+74951234567"], vec![trunk("a", 5091)]),
        policy(),
        T0,
    );
    let (_, inv) = sent_invite(&out).unwrap();
    let out = call.handle(Event::Cancel, T0 + 300);
    assert!(
        to_trunk(&out, "CANCEL").is_empty(),
        "RFC 3261 §9.1: no CANCEL before a provisional"
    );
    assert_eq!(to_carrier(&out), vec!["SIP/2.0 487 Request Terminated"]);
    assert!(
        out.contains(&Action::Disarm(Timer::Retransmit(1))),
        "the INVITE is not repeated"
    );
    // The trunk wakes up: now it gets its CANCEL, and the row says so.
    let out = respond(&mut call, 1, &inv, 180, "Ringing", T0 + 2_500);
    assert!(to_carrier(&out).is_empty());
    assert_eq!(to_trunk(&out, "CANCEL").len(), 1);
    let a = attempts(&out);
    assert_eq!(
        (a.len(), a[0].attempt, a[0].outcome),
        (1, 1, Outcome::CancelledLate)
    );
    let out = respond(&mut call, 1, &inv, 487, "Request Terminated", T0 + 2_600);
    assert_eq!(to_trunk(&out, "ACK").len(), 1);
    call.handle(Event::Ack, T0 + 2_700);
    assert!(call.is_done());
}

#[test]
fn a_branch_given_up_on_is_cancelled_or_hung_up_when_it_wakes() {
    let (mut call, out) = Call::start(
        INVITE.as_bytes().to_vec(),
        setup(&["+74951234567"], vec![trunk("a", 5091), trunk("b", 5092)]),
        policy(),
        T0,
    );
    let (_, inv_a) = sent_invite(&out).unwrap();
    let out = call.handle(Event::Timer(Timer::NoProvisional(1)), T0 + 2_000);
    assert!(
        to_trunk(&out, "CANCEL").is_empty(),
        "trunk a said nothing: no CANCEL yet"
    );
    let (_, inv_b) = sent_invite(&out).unwrap();
    // Trunk a rings late: CANCEL.
    let out = respond(&mut call, 1, &inv_a, 180, "Ringing", T0 + 2_500);
    assert_eq!(to_trunk(&out, "CANCEL").len(), 1);
    assert!(
        to_carrier(&out).is_empty(),
        "the caller never hears the abandoned branch"
    );
    assert_eq!(attempts(&out)[0].outcome, Outcome::CancelledLate);
    // ...and answers anyway (the CANCEL crossed its 200): ACK, then BYE.
    let out = respond(&mut call, 1, &inv_a, 200, "OK", T0 + 2_600);
    let ack = to_trunk(&out, "ACK");
    let bye = to_trunk(&out, "BYE");
    assert_eq!((ack.len(), bye.len()), (1, 1), "{out:?}");
    let bye = wire::parse(&bye[0]).unwrap();
    assert_eq!(
        (bye.to_tag(), bye.cseq()),
        (Some("trunktag"), Some((2, "BYE".into())))
    );
    assert!(to_carrier(&out).is_empty());
    let a = attempts(&out);
    assert_eq!(
        (a[0].attempt, a[0].outcome, a[0].final_code, a[0].failover),
        (1, Outcome::AnsweredLateReleased, 408, 1),
        "the same row, rewritten"
    );
    // Its retransmitted 200 gets another ACK but no second BYE.
    let out = respond(&mut call, 1, &inv_a, 200, "OK", T0 + 3_100);
    assert_eq!(
        (to_trunk(&out, "ACK").len(), to_trunk(&out, "BYE").len()),
        (1, 0)
    );
    // Trunk b answers: the call is b's.
    let out = respond(&mut call, 2, &inv_b, 200, "OK", T0 + 4_000);
    assert_eq!(to_carrier(&out), vec!["SIP/2.0 200 OK"]);
    let bye_ok = {
        let b = crate::originate::bye_for_2xx(
            &wire::parse(&reply(&inv_a, 200, "OK")).unwrap(),
            &policy().me,
            false,
            &branch(&call.id, 1, true),
        );
        let m = wire::parse(&b).unwrap();
        wire::response(&m, 200, "OK", None, &[])
    };
    let out = call.handle(
        Event::Response {
            attempt: 1,
            msg: &wire::parse(&bye_ok).unwrap(),
        },
        T0 + 4_100,
    );
    assert!(
        out.contains(&Action::Disarm(Timer::Resend(1))),
        "the BYE was answered"
    );
    call.handle(Event::Bye { from_caller: true }, T0 + 9_000);
    assert!(call.is_done());
}

#[test]
fn a_hundred_then_silence_fails_over_at_the_ringing_timeout() {
    let (mut call, out) = Call::start(
        INVITE.as_bytes().to_vec(),
        setup(&["+74951234567"], vec![trunk("a", 5091), trunk("b", 5092)]),
        policy(),
        T0,
    );
    assert_eq!(armed(&out, Timer::Ringing(1)), Some(T0 + 5_000));
    let (_, inv) = sent_invite(&out).unwrap();
    let out = respond(&mut call, 1, &inv, 100, "Trying", T0 + 50);
    assert!(out.contains(&Action::Disarm(Timer::NoProvisional(1))));
    assert!(
        !out.contains(&Action::Disarm(Timer::Ringing(1))),
        "100 is not ringing"
    );
    let out = call.handle(Event::Timer(Timer::Ringing(1)), T0 + 5_000);
    assert!(
        out.iter().any(|a| matches!(a, Action::TrunkFailed { trunk, reason } if trunk == "a" && reason.contains("no ringing"))),
        "counts against the trunk: {out:?}"
    );
    assert_eq!(
        to_trunk(&out, "CANCEL").len(),
        1,
        "it sent 100: CANCEL it now"
    );
    let a = attempts(&out);
    assert_eq!(
        (a[0].outcome, a[0].failover, a[0].final_code),
        (Outcome::Timeout, 1, 408)
    );
    assert!(
        a[0].reason.contains("no ringing within 5000 ms"),
        "{}",
        a[0].reason
    );
    assert_eq!(sent_invite(&out).unwrap().0.port(), 5092);
    // Ringing in time disarms it.
    let (mut call, out) = Call::start(
        INVITE.as_bytes().to_vec(),
        setup(&["+74951234567"], vec![trunk("a", 5091)]),
        policy(),
        T0,
    );
    let (_, inv) = sent_invite(&out).unwrap();
    let out = respond(&mut call, 1, &inv, 183, "Session Progress", T0 + 400);
    assert!(out.contains(&Action::Disarm(Timer::Ringing(1))));
    assert!(call
        .handle(Event::Timer(Timer::Ringing(1)), T0 + 5_000)
        .is_empty());
}

#[test]
fn final_replies_are_retransmitted_until_the_ack() {
    let (mut call, out) = Call::start(
        INVITE.as_bytes().to_vec(),
        setup(&["+74951234567"], vec![trunk("a", 5091)]),
        policy(),
        T0,
    );
    let (_, inv) = sent_invite(&out).unwrap();
    let out = respond(&mut call, 1, &inv, 486, "Busy Here", T0 + 100);
    assert_eq!(armed(&out, Timer::ReplyRetransmit), Some(T0 + 600));
    assert_eq!(armed(&out, Timer::ReplyTimeout), Some(T0 + 100 + 32_000));
    let out = call.handle(Event::Timer(Timer::ReplyRetransmit), T0 + 600);
    assert_eq!(to_carrier(&out), vec!["SIP/2.0 486 Busy Here"]);
    assert_eq!(
        armed(&out, Timer::ReplyRetransmit),
        Some(T0 + 1_600),
        "doubling (Timer G)"
    );
    assert!(!call.is_done());
    let out = call.handle(Event::Ack, T0 + 700);
    assert!(out.contains(&Action::Disarm(Timer::ReplyRetransmit)));
    assert!(call.is_done());
    assert_eq!(
        call.final_reply(),
        Some((486, "trunktag")),
        "what a tombstone repeats"
    );
    // Over TCP nothing is retransmitted.
    let mut s = setup(&["+74951234567"], vec![trunk("a", 5091)]);
    s.carrier_reliable = true;
    let (mut call, out) = Call::start(INVITE.as_bytes().to_vec(), s, policy(), T0);
    let (_, inv) = sent_invite(&out).unwrap();
    let out = respond(&mut call, 1, &inv, 486, "Busy Here", T0 + 100);
    assert_eq!(armed(&out, Timer::ReplyRetransmit), None);
    assert!(call.is_done());
}

#[test]
fn without_an_ack_timer_h_ends_the_wait() {
    let (mut call, _) = Call::refuse(
        INVITE.as_bytes().to_vec(),
        setup(&[], vec![]),
        policy(),
        404,
        Disposition::RejectedQuarantine,
        T0,
    );
    assert!(!call.is_done());
    let out = call.handle(Event::Timer(Timer::ReplyTimeout), T0 + 32_000);
    assert!(out.contains(&Action::Disarm(Timer::ReplyRetransmit)));
    assert!(call.is_done());
    assert_eq!(call.final_reply().map(|(c, _)| c), Some(404));
}

#[test]
fn ring_timeout_hunts_to_the_next_destination() {
    let (mut call, out) = Call::start(
        INVITE.as_bytes().to_vec(),
        setup(
            &["+74951234567", "+74957654321"],
            vec![trunk("a", 5091), trunk("b", 5092)],
        ),
        policy(),
        T0,
    );
    let (_, inv) = sent_invite(&out).unwrap();
    let out = respond(&mut call, 1, &inv, 180, "Ringing", T0 + 100);
    assert!(out.contains(&Action::Arm {
        timer: Timer::Ring(1),
        at_ms: T0 + 20_100
    }));
    let out = call.handle(Event::Timer(Timer::Ring(1)), T0 + 20_100);
    assert_eq!(to_trunk(&out, "CANCEL").len(), 1);
    let a = attempts(&out);
    assert_eq!((a[0].outcome, a[0].failover), (Outcome::NoAnswer, 0));
    let (addr, inv2) = sent_invite(&out).unwrap();
    assert_eq!(addr.port(), 5091, "hunting starts again at the first trunk");
    assert!(String::from_utf8_lossy(&inv2).starts_with("INVITE sip:+74957654321@"));
    respond(&mut call, 2, &inv2, 180, "Ringing", T0 + 20_200);
    let out = call.handle(Event::Timer(Timer::Ring(2)), T0 + 40_200);
    assert_eq!(
        to_carrier(&out),
        vec!["SIP/2.0 480 Temporarily Unavailable"]
    );
    let r = record(&out).unwrap();
    assert_eq!(
        (r.disposition, r.attempts, r.destination.as_str()),
        (Disposition::Missed, 2, "+74957654321")
    );
}

#[test]
fn every_trunk_failing_gives_480_and_a_failed_call() {
    let (mut call, out) = Call::start(
        INVITE.as_bytes().to_vec(),
        setup(&["+74951234567"], vec![trunk("a", 5091), trunk("b", 5092)]),
        policy(),
        T0,
    );
    let (_, inv_a) = sent_invite(&out).unwrap();
    let out = respond(&mut call, 1, &inv_a, 502, "Bad Gateway", T0 + 10);
    let (_, inv_b) = sent_invite(&out).unwrap();
    let out = call.handle(Event::TransportError { attempt: 2 }, T0 + 20);
    let a = attempts(&out);
    assert_eq!((a[0].outcome, a[0].failover), (Outcome::TransportError, 0));
    assert_eq!(
        to_carrier(&out),
        vec!["SIP/2.0 480 Temporarily Unavailable"],
        "not 503: carriers read it as the node being down"
    );
    let r = record(&out).unwrap();
    assert_eq!((r.disposition, r.attempts), (Disposition::Failed, 2));
    // A late reply of a given-up attempt is ACKed and dropped.
    let out = respond(&mut call, 2, &inv_b, 500, "Oops", T0 + 30);
    assert_eq!(to_trunk(&out, "ACK").len(), 1);
    assert!(to_carrier(&out).is_empty());
    call.handle(Event::Ack, T0 + 40);
    assert!(call.is_done());
}

#[test]
fn the_all_trunks_failed_reply_is_configurable() {
    for code in [500u16, 503] {
        let mut p = policy();
        p.all_failed_code = code;
        let (mut call, out) = Call::start(
            INVITE.as_bytes().to_vec(),
            setup(&["+74951234567"], vec![trunk("a", 5091)]),
            p,
            T0,
        );
        let (_, inv) = sent_invite(&out).unwrap();
        let out = respond(&mut call, 1, &inv, 502, "Bad Gateway", T0 + 10);
        let replies = to_carrier(&out);
        assert_eq!(replies.len(), 1, "{replies:?}");
        assert!(
            replies[0].starts_with(&format!("SIP/2.0 {code} ")),
            "{replies:?}"
        );
        assert_eq!(record(&out).unwrap().disposition, Disposition::Failed);
    }
}

#[test]
fn a_bye_on_the_early_dialog_ends_the_call_like_a_cancel() {
    let (mut call, out) = Call::start(
        INVITE.as_bytes().to_vec(),
        setup(&["+74951234567"], vec![trunk("a", 5091), trunk("b", 5092)]),
        policy(),
        T0,
    );
    let (_, inv) = sent_invite(&out).unwrap();
    respond(&mut call, 1, &inv, 180, "Ringing", T0 + 100);
    let out = call.handle(Event::Bye { from_caller: true }, T0 + 1_000);
    assert_eq!(to_carrier(&out), vec!["SIP/2.0 487 Request Terminated"]);
    assert_eq!(to_trunk(&out, "CANCEL").len(), 1, "the trunk stops ringing");
    assert!(
        sent_invite(&out).is_none(),
        "no failover: the caller is gone"
    );
    let a = attempts(&out);
    assert_eq!(
        (a[0].outcome, a[0].reason.as_str()),
        (Outcome::Canceled, "BYE before the answer")
    );
    assert_eq!(record(&out).unwrap().disposition, Disposition::Abandoned);
    // The trunk's 487 to its INVITE is ACKed and goes no further.
    let out = respond(&mut call, 1, &inv, 487, "Request Terminated", T0 + 1_050);
    assert_eq!(to_trunk(&out, "ACK").len(), 1);
    assert!(to_carrier(&out).is_empty() && record(&out).is_none());
}

#[test]
fn a_trunks_bye_on_the_early_dialog_does_not_end_the_call() {
    let (mut call, out) = Call::start(
        INVITE.as_bytes().to_vec(),
        setup(&["+74951234567"], vec![trunk("a", 5091), trunk("b", 5092)]),
        policy(),
        T0,
    );
    let (_, inv) = sent_invite(&out).unwrap();
    respond(&mut call, 1, &inv, 180, "Ringing", T0 + 100);
    // A callee must not send one (RFC 3261 §15): not taken as the caller
    // hanging up; the trunk's final reply decides.
    let out = call.handle(Event::Bye { from_caller: false }, T0 + 1_000);
    assert!(
        to_carrier(&out).is_empty() && record(&out).is_none(),
        "{out:?}"
    );
    let out = respond(&mut call, 1, &inv, 503, "Service Unavailable", T0 + 1_100);
    assert!(sent_invite(&out).is_some(), "a 503 still fails over");
}

#[test]
fn the_caller_never_waits_past_the_overall_timer() {
    let mut p = policy();
    p.overall_timeout_ms = 5_000;
    let (mut call, out) = Call::start(
        INVITE.as_bytes().to_vec(),
        setup(&["+74951234567"], vec![trunk("a", 5091)]),
        p,
        T0,
    );
    let (_, inv) = sent_invite(&out).unwrap();
    respond(&mut call, 1, &inv, 183, "Session Progress", T0 + 100);
    let out = call.handle(Event::Timer(Timer::Overall), T0 + 5_000);
    assert_eq!(to_carrier(&out), vec!["SIP/2.0 408 Request Timeout"]);
    assert_eq!(to_trunk(&out, "CANCEL").len(), 1);
    assert_eq!(record(&out).unwrap().disposition, Disposition::Missed);
}

#[test]
fn max_duration_closes_an_answered_call_as_timeout() {
    let (mut call, out) = Call::start(
        INVITE.as_bytes().to_vec(),
        setup(&["+74951234567"], vec![trunk("a", 5091)]),
        policy(),
        T0,
    );
    let (_, inv) = sent_invite(&out).unwrap();
    respond(&mut call, 1, &inv, 200, "OK", T0 + 1_000);
    let out = call.handle(Event::Timer(Timer::MaxDuration), T0 + 3_601_000);
    let r = record(&out).unwrap();
    assert_eq!(
        (r.disposition, r.talk_ms),
        (Disposition::Timeout, 3_600_000)
    );
    // Both legs are hung up, and each BYE is retransmitted until answered.
    let to_caller: Vec<_> = to_carrier(&out)
        .into_iter()
        .filter(|l| l.starts_with("BYE "))
        .collect();
    assert_eq!(to_caller, vec!["BYE sip:caller@127.0.0.1:5070 SIP/2.0"]);
    assert_eq!(to_trunk(&out, "BYE").len(), 1);
    assert!(armed(&out, Timer::Resend(0)).is_some() && armed(&out, Timer::Resend(1)).is_some());
    assert!(!call.is_done(), "until the BYEs are answered or time out");
    call.handle(Event::Timer(Timer::Resend(0)), T0 + 3_601_000 + 32_000);
    call.handle(Event::Timer(Timer::Resend(1)), T0 + 3_601_000 + 32_000);
    assert!(call.is_done());
}

#[test]
fn release_hangs_up_an_answered_call_and_fails_a_ringing_one() {
    let (mut call, out) = Call::start(
        INVITE.as_bytes().to_vec(),
        setup(&["+74951234567"], vec![trunk("a", 5091)]),
        policy(),
        T0,
    );
    let (_, inv) = sent_invite(&out).unwrap();
    respond(&mut call, 1, &inv, 200, "OK", T0 + 1_000);
    let out = call.handle(Event::Release, T0 + 11_000);
    assert_eq!(to_trunk(&out, "BYE").len(), 1);
    assert!(to_carrier(&out).iter().any(|l| l.starts_with("BYE ")));
    let r = record(&out).unwrap();
    assert_eq!((r.disposition, r.talk_ms), (Disposition::Answered, 10_000));

    let (mut call, out) = Call::start(
        INVITE.as_bytes().to_vec(),
        setup(&["+74951234567"], vec![trunk("a", 5091)]),
        policy(),
        T0,
    );
    let (_, inv) = sent_invite(&out).unwrap();
    respond(&mut call, 1, &inv, 180, "Ringing", T0 + 100);
    let out = call.handle(Event::Release, T0 + 1_000);
    assert_eq!(to_trunk(&out, "CANCEL").len(), 1);
    assert_eq!(to_carrier(&out), vec!["SIP/2.0 503 Service Unavailable"]);
    assert_eq!(record(&out).unwrap().disposition, Disposition::Failed);
}

#[test]
fn no_trunks_means_480() {
    let (_call, out) = Call::start(
        INVITE.as_bytes().to_vec(),
        setup(&["+74951234567"], vec![]),
        policy(),
        T0,
    );
    assert_eq!(
        to_carrier(&out),
        vec!["SIP/2.0 480 Temporarily Unavailable"]
    );
    assert_eq!(record(&out).unwrap().disposition, Disposition::Failed);
}

/// A number's status decides the reply and the row, through the code the
/// shard uses (`shard::verdict`) and the refused call's own machine.
#[test]
fn rejected_calls_are_recorded() {
    use crate::shard::verdict;
    for reject_code in [404, 410, 480] {
        let cases = [
            (
                NumberStatus::Quarantine,
                reject_code,
                Disposition::RejectedQuarantine,
            ),
            (NumberStatus::Stock, reject_code, Disposition::RejectedStock),
            (NumberStatus::Unknown, 404, Disposition::RejectedUnknown),
        ];
        for (status, code, disposition) in cases {
            let v = verdict(status, false, reject_code);
            assert_eq!(
                v,
                Some((code, disposition)),
                "{status:?} with reject_code {reject_code}"
            );
            let mut s = setup(&[], vec![]);
            s.status = status;
            let (call, out) = Call::refuse(
                INVITE.as_bytes().to_vec(),
                s,
                policy(),
                code,
                disposition,
                T0,
            );
            let reply = format!("SIP/2.0 {code} {}", wire::reason_phrase(code));
            assert_eq!(to_carrier(&out), vec![reply.clone()]);
            let r = record(&out).unwrap();
            assert_eq!(
                (r.disposition, r.number_status, r.attempts, r.final_code),
                (disposition, status, 0, code)
            );
            assert!(!call.is_done(), "{reply} waits for its ACK");
        }
    }
    assert_eq!(verdict(NumberStatus::Active, false, 404), None, "routed");
    assert_eq!(
        verdict(NumberStatus::Active, true, 404),
        Some((487, Disposition::Abandoned)),
        "cancelled during the lookup"
    );
    assert_eq!(wire::reason_phrase(410), "Gone");
    assert_eq!(wire::reason_phrase(480), "Temporarily Unavailable");
}
