//! The routing node's SIP edges end to end: the real router binary between
//! scripted peers (raw UDP sockets that play carrier SBCs and trunks with
//! exact timing) and SIPp, with the rows checked in ClickHouse. Abandoned
//! branches (late ringing CANCELled, late answers hung up, never a CANCEL
//! before a provisional), "100 Trying then silence", early and confirmed
//! dialogs routed by their tags whoever sends (PRACK, UPDATE, INFO, a BYE
//! from the carrier's other SBC, CANCEL and ACK of a re-INVITE), final
//! replies retransmitted until the ACK and recorded once, replies that
//! must come from where the request went, 480/482/483, the drain deadline
//! and the maximum call duration hanging up both legs.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use dialmark_e2e::process::free_port;
use dialmark_e2e::rawsip::{
    self, ack_2xx, answered_call, contact, in_dialog, invite, Invite, Peer,
};
use dialmark_e2e::router::{RouterOptions, TestRouter};
use dialmark_e2e::sipp::{Scenario, Uas};
use dialmark_e2e::world::{
    attempts, attempts_until, call, calls, expect, reject, wait_for, world, World,
};

const S: Duration = Duration::from_secs(1);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn router_addr(r: &TestRouter) -> SocketAddr {
    format!("127.0.0.1:{}", r.sip_port).parse().unwrap()
}

fn start(w: &World, trunks: &[(&str, u16)], router: &str, probe: &str) -> TestRouter {
    TestRouter::start(
        &w.tracker.config,
        RouterOptions {
            trunks,
            router,
            probe,
        },
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trunk_that_wakes_after_failover_is_cancelled_and_its_late_answer_hung_up() {
    let w = world("ewake").await;
    let a = Peer::bind();
    let pb = free_port();
    let _b = Uas::start(pb, Scenario::Builtin("uas"));
    let r = start(&w, &[("a", a.port()), ("b", pb)], "", "");
    let carrier = tokio::task::spawn_blocking({
        let (port, number) = (r.sip_port, w.number.clone());
        move || {
            dialmark_e2e::sipp::uac(
                port,
                &number,
                Scenario::Builtin("uac"),
                "127.0.0.1",
                1,
                &["-d", "3000"],
            )
        }
    });
    let inv = a.expect(5 * S, "INVITE at trunk a", |m| m.is_request("INVITE"));
    let tag = "late-a";
    // Silent past the 1 s failover (only our INVITE and its retransmissions
    // arrive: never a CANCEL before a provisional), then it rings.
    let (cancel, seen) = a.wait(ms(2500), |m| m.is_request("CANCEL"));
    assert!(cancel.is_none(), "CANCEL before any provisional: {seen:?}");
    assert!(seen.iter().all(|m| m.is_request("INVITE")), "{seen:?}");
    a.send(inv.from, &inv.reply(180, tag, &[]));
    let cancel = a.expect(2 * S, "CANCEL after the late 180", |m| {
        m.is_request("CANCEL")
    });
    assert_eq!(
        cancel.branch(),
        inv.branch(),
        "the CANCEL names the INVITE's branch"
    );
    // Its 200 crossed the CANCEL: the node ACKs it and hangs up.
    a.send(inv.from, &cancel.reply(200, tag, &[]));
    a.send(
        inv.from,
        &inv.reply(200, tag, &[("Contact", format!("<sip:pbx@{}>", a.addr))]),
    );
    let ack = a.expect(2 * S, "ACK of the late 200", |m| m.is_request("ACK"));
    let bye = a.expect(2 * S, "BYE of the late 200", |m| m.is_request("BYE"));
    assert_eq!(
        ack.parsed().uri(),
        Some(format!("sip:pbx@{}", a.addr).as_str())
    );
    assert_eq!(bye.parsed().to_tag(), Some(tag));
    a.send(bye.from, &bye.reply(200, "", &[]));
    // Nothing more: the BYE was answered, no retransmission follows.
    let more = a.drain(ms(1200));
    assert!(!more.iter().any(|m| m.is_request("BYE")), "{more:?}");
    let run = carrier.await.unwrap();
    assert!(
        run.success,
        "the caller talked to trunk b\n{}\n{}",
        run.output,
        r.proc.output()
    );
    let rows = attempts_until(&w, &w.number, 2, |r| r[0].outcome != "timeout").await;
    assert_eq!(
        (
            rows[0].trunk.as_str(),
            rows[0].outcome.as_str(),
            rows[0].failover
        ),
        ("a", "answered_late_released", 1)
    );
    assert_eq!(
        (rows[1].trunk.as_str(), rows[1].outcome.as_str()),
        ("b", "answered")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_callers_cancel_before_any_provisional_waits_for_one() {
    let w = world("ecancel").await;
    let a = Peer::bind();
    let r = start(&w, &[("a", a.port())], "", "");
    let carrier = Peer::bind();
    let rt = router_addr(&r);
    let call_id = format!("{}@edge", uuid::Uuid::new_v4().simple());
    let text = invite(&carrier, rt, &w.number, &call_id);
    let inv = a.expect(3 * S, "INVITE at trunk a", |m| m.is_request("INVITE"));
    // The caller hangs up at once: 200 for the CANCEL, 487 for the INVITE.
    let cancel = text
        .replacen("INVITE sip:", "CANCEL sip:", 1)
        .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL");
    carrier.send(rt, &cancel);
    carrier.expect(2 * S, "200 for the CANCEL", |m| m.is_reply(200, "CANCEL"));
    let r487 = carrier.expect(2 * S, "487", |m| m.is_reply(487, "INVITE"));
    // ACK it (hop by hop, same branch as the INVITE).
    let ack = text
        .replacen("INVITE sip:", "ACK sip:", 1)
        .replace("CSeq: 1 INVITE", "CSeq: 1 ACK")
        .replace(
            &format!("To: <sip:{}@{rt}>", w.number),
            &format!("To: {}", r487.header("to").unwrap()),
        );
    carrier.send(rt, &ack);
    // Trunk a said nothing yet: no CANCEL may come until it does.
    let (early, seen) = a.wait(ms(800), |m| m.is_request("CANCEL"));
    assert!(early.is_none(), "CANCEL before a provisional: {seen:?}");
    a.send(inv.from, &inv.reply(180, "ta", &[]));
    let c = a.expect(2 * S, "CANCEL after the 180", |m| m.is_request("CANCEL"));
    a.send(c.from, &c.reply(200, "ta", &[]));
    a.send(inv.from, &inv.reply(487, "ta", &[]));
    a.expect(2 * S, "ACK of the 487", |m| m.is_request("ACK"));
    let rows = attempts_until(&w, &w.number, 1, |r| r[0].outcome != "canceled").await;
    assert_eq!(
        (rows[0].outcome.as_str(), rows[0].final_code),
        ("cancelled_late", 487)
    );
    let c = calls(&w, &w.number, 1).await;
    assert_eq!(
        (c[0].disposition.as_str(), c[0].final_code),
        ("abandoned", 487)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_then_silence_fails_over_at_the_ringing_timeout_and_downs_the_trunk() {
    let w = world("esilence").await;
    let a = Peer::bind();
    let pb = free_port();
    let _b = Uas::start(pb, Scenario::Builtin("uas"));
    // Probes off; one passive failure downs a trunk.
    let r = start(
        &w,
        &[("a", a.port()), ("b", pb)],
        "ringing_timeout_ms = 2000",
        "interval_seconds = 0\ndown_after = 1",
    );
    let carrier = tokio::task::spawn_blocking({
        let (port, number) = (r.sip_port, w.number.clone());
        move || {
            dialmark_e2e::sipp::uac(
                port,
                &number,
                Scenario::Builtin("uac"),
                "127.0.0.1",
                1,
                &["-d", "200"],
            )
        }
    });
    let inv = a.expect(5 * S, "INVITE at trunk a", |m| m.is_request("INVITE"));
    a.send(inv.from, &inv.reply(100, "", &[]));
    let cancel = a.expect(4 * S, "CANCEL at the ringing timeout", |m| {
        m.is_request("CANCEL")
    });
    let after = cancel.at - inv.at;
    assert!(
        after >= Duration::from_millis(1950) && after <= Duration::from_millis(2500),
        "failed over {after:?} after the INVITE; the timer is 2000 ms"
    );
    a.send(cancel.from, &cancel.reply(200, "", &[]));
    a.send(inv.from, &inv.reply(487, "ta", &[]));
    a.expect(2 * S, "ACK of the 487", |m| m.is_request("ACK"));
    let run = carrier.await.unwrap();
    assert!(run.success, "{}\n{}", run.output, r.proc.output());
    let rows = attempts(&w, &w.number, 2).await;
    assert_eq!(
        (
            rows[0].trunk.as_str(),
            rows[0].outcome.as_str(),
            rows[0].final_code,
            rows[0].failover
        ),
        ("a", "timeout", 408, 1)
    );
    assert_eq!(rows[1].trunk.as_str(), "b");
    assert!(
        rows.iter().all(|r| r.site == w.site),
        "each attempt carries the call's site: {rows:?}"
    );
    // It counted against trunk a: down, with the reason, on record.
    let db = dialmark_schemas::ch::client(&w.tracker.config.clickhouse);
    let mut events: Vec<(String, String, String)> = Vec::new();
    for _ in 0..50 {
        events = db
            .query("SELECT trunk, toString(state), reason FROM trunk_events FINAL ORDER BY ts")
            .fetch_all()
            .await
            .unwrap();
        if !events.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!((events[0].0.as_str(), events[0].1.as_str()), ("a", "down"));
    assert!(events[0].2.contains("no ringing"), "{events:?}");
}

/// An early dialog with 100rel: PRACK and INFO from the caller, UPDATE
/// from the callee, all through the node by their tags; then the answer,
/// and the BYE from the carrier's other SBC.
#[tokio::test(flavor = "multi_thread")]
async fn early_and_confirmed_dialogs_route_by_tags_whoever_sends() {
    let w = world("eearly").await;
    let trunk = Peer::bind();
    let r = start(&w, &[("a", trunk.port())], "", "");
    let (carrier, sbc2) = (Peer::bind(), Peer::bind());
    let rt = router_addr(&r);
    let call_id = format!("{}@edge", uuid::Uuid::new_v4().simple());
    invite(&carrier, rt, &w.number, &call_id);
    let inv = trunk.expect(3 * S, "INVITE", |m| m.is_request("INVITE"));
    let rr = inv.header("record-route").expect("the node record-routes");
    let caller = format!("<sip:+79161234567@{}>;tag=ctag", carrier.addr);
    let callee_contact = format!("<sip:pbx@{}>", trunk.addr);
    let early = [
        ("Require", "100rel".to_string()),
        ("RSeq", "1".to_string()),
        ("Contact", callee_contact.clone()),
        ("Record-Route", rr.clone()),
    ];
    trunk.send(inv.from, &inv.reply(183, "tt", &early));
    let p183 = carrier.expect(2 * S, "183", |m| m.is_reply(183, "INVITE"));
    let callee = p183.header("to").unwrap();
    assert!(callee.contains("tag=tt"));

    // Caller -> callee in the early dialog: PRACK, INFO.
    for (method, cseq, extra) in [
        ("PRACK", 2, &["RAck: 1 1 INVITE"][..]),
        ("INFO", 3, &[][..]),
    ] {
        let req = in_dialog(
            method,
            &contact(&p183),
            &carrier,
            rt,
            &caller,
            &callee,
            &call_id,
            cseq,
            &rawsip::branch(),
            extra,
        );
        carrier.send(rt, &req);
        let got = trunk.expect(2 * S, method, |m| m.is_request(method));
        assert!(
            got.parsed().header("route").is_none(),
            "{method}: our Route is popped"
        );
        trunk.send(got.from, &got.reply(200, "", &[]));
        carrier.expect(2 * S, &format!("200 for {method}"), |m| {
            m.is_reply(200, method)
        });
    }
    // Callee -> caller: UPDATE.
    let update = in_dialog(
        "UPDATE",
        &format!("sip:caller@{}", carrier.addr),
        &trunk,
        rt,
        &callee,
        &caller,
        &call_id,
        1,
        &rawsip::branch(),
        &[],
    );
    trunk.send(rt, &update);
    let got = carrier.expect(2 * S, "UPDATE", |m| m.is_request("UPDATE"));
    carrier.send(got.from, &got.reply(200, "", &[]));
    trunk.expect(2 * S, "200 for UPDATE", |m| m.is_reply(200, "UPDATE"));

    // Answer, ACK end to end.
    trunk.send(
        inv.from,
        &inv.reply(
            200,
            "tt",
            &[("Contact", callee_contact), ("Record-Route", rr)],
        ),
    );
    let ok = carrier.expect(2 * S, "200 OK", |m| m.is_reply(200, "INVITE"));
    ack_2xx(&carrier, rt, &ok, &call_id);
    trunk.expect(2 * S, "ACK", |m| m.is_request("ACK"));
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // The BYE comes from the carrier's other SBC: matched by its tags.
    let bye = in_dialog(
        "BYE",
        &contact(&ok),
        &sbc2,
        rt,
        &caller,
        &callee,
        &call_id,
        4,
        &rawsip::branch(),
        &[],
    );
    sbc2.send(rt, &bye);
    let got = trunk.expect(2 * S, "BYE", |m| m.is_request("BYE"));
    trunk.send(got.from, &got.reply(200, "", &[]));
    sbc2.expect(2 * S, "200 for the BYE at the SBC that sent it", |m| {
        m.is_reply(200, "BYE")
    });
    let c = calls(&w, &w.number, 1).await;
    assert_eq!(c[0].disposition, "answered");
    assert!(c[0].talk_ms >= 1_000, "{:?}", c[0]);
    // Not one of our dialogs: 481, never relayed.
    let stray = in_dialog(
        "BYE",
        &contact(&ok),
        &sbc2,
        rt,
        &caller,
        "<sip:x@y>;tag=nope",
        &call_id,
        5,
        &rawsip::branch(),
        &[],
    );
    sbc2.send(rt, &stray);
    sbc2.expect(2 * S, "481", |m| m.is_reply(481, "BYE"));
    // Nor is a BYE without a To tag (no dialog at all).
    let untagged = in_dialog(
        "BYE",
        &contact(&ok),
        &sbc2,
        rt,
        &caller,
        "<sip:x@y>",
        &call_id,
        6,
        &rawsip::branch(),
        &[],
    );
    sbc2.send(rt, &untagged);
    sbc2.expect(2 * S, "481 without a To tag", |m| m.is_reply(481, "BYE"));
}

/// RFC 3261 §15: the caller may hang up an early dialog with a BYE. It
/// reaches the ringing trunk along the dialog, the trunk also gets a
/// CANCEL (it stops ringing even if it ignores the BYE), the caller's
/// INVITE gets 487 and the call is recorded as abandoned, not failed over.
#[tokio::test(flavor = "multi_thread")]
async fn a_bye_on_the_early_dialog_reaches_the_trunk_and_abandons_the_call() {
    let w = world("eebye").await;
    let (ta, tb) = (Peer::bind(), Peer::bind());
    let r = start(&w, &[("a", ta.port()), ("b", tb.port())], "", "");
    let carrier = Peer::bind();
    let rt = router_addr(&r);
    let call_id = format!("{}@edge", uuid::Uuid::new_v4().simple());
    invite(&carrier, rt, &w.number, &call_id);
    let inv = ta.expect(3 * S, "INVITE", |m| m.is_request("INVITE"));
    let rr = inv.header("record-route").expect("the node record-routes");
    ta.send(
        inv.from,
        &inv.reply(
            180,
            "tt",
            &[
                ("Contact", format!("<sip:pbx@{}>", ta.addr)),
                ("Record-Route", rr),
            ],
        ),
    );
    let ringing = carrier.expect(2 * S, "180", |m| m.is_reply(180, "INVITE"));
    let bye = in_dialog(
        "BYE",
        &contact(&ringing),
        &carrier,
        rt,
        &format!("<sip:+79161234567@{}>;tag=ctag", carrier.addr),
        &ringing.header("to").unwrap(),
        &call_id,
        2,
        &rawsip::branch(),
        &[],
    );
    carrier.send(rt, &bye);
    // The node answers the INVITE as soon as it relays the BYE.
    carrier.expect(2 * S, "487 for the INVITE", |m| m.is_reply(487, "INVITE"));
    let got = ta.expect(2 * S, "BYE", |m| m.is_request("BYE"));
    ta.send(got.from, &got.reply(200, "", &[]));
    carrier.expect(2 * S, "200 for the BYE", |m| m.is_reply(200, "BYE"));
    let cancel = ta.expect(2 * S, "CANCEL", |m| m.is_request("CANCEL"));
    ta.send(cancel.from, &cancel.reply(200, "", &[]));
    ta.send(inv.from, &inv.reply(487, "tt", &[]));
    ta.expect(2 * S, "ACK for the 487", |m| m.is_request("ACK"));
    let c = calls(&w, &w.number, 1).await;
    assert_eq!((c[0].disposition.as_str(), c[0].attempts), ("abandoned", 1));
    assert!(
        tb.wait(Duration::from_millis(300), |m| m.is_request("INVITE"))
            .0
            .is_none(),
        "no failover after the caller left"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_and_ack_of_a_reinvite_follow_its_branch() {
    let w = world("ereinv").await;
    let trunk = Peer::bind();
    let r = start(&w, &[("a", trunk.port())], "", "");
    let carrier = Peer::bind();
    let rt = router_addr(&r);
    let call_id = format!("{}@edge", uuid::Uuid::new_v4().simple());
    let ok = answered_call(&carrier, &trunk, rt, &w.number, &call_id);
    let (caller, callee) = (
        format!("<sip:+79161234567@{}>;tag=ctag", carrier.addr),
        ok.header("to").unwrap(),
    );
    // re-INVITE, then its CANCEL, with one branch.
    let b = rawsip::branch();
    let reinvite = in_dialog(
        "INVITE",
        &contact(&ok),
        &carrier,
        rt,
        &caller,
        &callee,
        &call_id,
        2,
        &b,
        &[],
    );
    carrier.send(rt, &reinvite);
    let fwd = trunk.expect(2 * S, "re-INVITE", |m| m.is_request("INVITE"));
    let cancel = reinvite
        .replacen("INVITE sip:", "CANCEL sip:", 1)
        .replace("CSeq: 2 INVITE", "CSeq: 2 CANCEL");
    carrier.send(rt, &cancel);
    let fc = trunk.expect(2 * S, "CANCEL of the re-INVITE", |m| m.is_request("CANCEL"));
    assert_eq!(
        fc.branch(),
        fwd.branch(),
        "one branch for the re-INVITE and its CANCEL"
    );
    trunk.send(fc.from, &fc.reply(200, "", &[]));
    carrier.expect(2 * S, "200 for the CANCEL", |m| m.is_reply(200, "CANCEL"));
    trunk.send(fwd.from, &fwd.reply(487, "", &[]));
    carrier.expect(2 * S, "487 for the re-INVITE", |m| {
        m.is_reply(487, "INVITE")
    });
    let ack = reinvite
        .replacen("INVITE sip:", "ACK sip:", 1)
        .replace("CSeq: 2 INVITE", "CSeq: 2 ACK");
    carrier.send(rt, &ack);
    let fa = trunk.expect(2 * S, "ACK of the 487", |m| m.is_request("ACK"));
    assert_eq!(
        fa.branch(),
        fwd.branch(),
        "the failure ACK follows the re-INVITE's branch"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn final_error_replies_are_retransmitted_until_the_ack_and_recorded_once() {
    let w = world("eretx").await;
    let pb = free_port();
    let _b = Uas::start(pb, Scenario::Builtin("uas"));
    let r = start(&w, &[("b", pb)], "", "");
    let carrier = Peer::bind();
    let rt = router_addr(&r);
    let call_id = format!("{}@edge", uuid::Uuid::new_v4().simple());
    let text = invite(&carrier, rt, &w.quarantine, &call_id);
    let first = carrier.expect(3 * S, "404", |m| m.is_reply(404, "INVITE"));
    // No ACK: Timer G repeats it at 0.5 s, then 1 s.
    let again = carrier.expect(2 * S, "404 again", |m| m.is_reply(404, "INVITE"));
    let third = carrier.expect(3 * S, "404 a third time", |m| m.is_reply(404, "INVITE"));
    let (g1, g2) = (again.at - first.at, third.at - again.at);
    assert!(
        g1 >= Duration::from_millis(400) && g1 <= Duration::from_millis(800),
        "{g1:?}"
    );
    assert!(
        g2 >= Duration::from_millis(900) && g2 <= Duration::from_millis(1400),
        "{g2:?}"
    );
    // The carrier retransmits its INVITE: the same reply, no new call.
    carrier.send(rt, &text);
    let dup = carrier.expect(2 * S, "404 to the retransmitted INVITE", |m| {
        m.is_reply(404, "INVITE")
    });
    assert_eq!(
        dup.header("to"),
        first.header("to"),
        "the same reply, same tag"
    );
    let ack = text
        .replacen("INVITE sip:", "ACK sip:", 1)
        .replace("CSeq: 1 INVITE", "CSeq: 1 ACK")
        .replace(
            &format!("To: <sip:{}@{rt}>", w.quarantine),
            &format!("To: {}", first.header("to").unwrap()),
        );
    carrier.send(rt, &ack);
    let after = carrier.drain(ms(2500));
    assert!(after.is_empty(), "nothing after the ACK: {after:?}");
    // One row, not one per INVITE (no FINAL: duplicates must not exist).
    let db = dialmark_schemas::ch::client(&w.tracker.config.clickhouse);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let n: u64 = db
        .query("SELECT count() FROM calls WHERE sip_call_id = ?")
        .bind(&call_id)
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(n, 1);
    let c = calls(&w, &w.quarantine, 1).await;
    assert_eq!(c[0].disposition, "rejected_quarantine");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_trunk_failing_gives_480_and_hop_and_loop_refusals_are_recorded() {
    let w = world("e480").await;
    let (pa, pb) = (free_port(), free_port());
    let _a = Uas::start(pa, reject(503, "Service Unavailable"));
    let _b = Uas::start(pb, reject(503, "Service Unavailable"));
    let r = start(&w, &[("a", pa), ("b", pb)], "", "");
    let run = call(r.sip_port, &w.number, expect(480), "127.0.0.1", &[]).await;
    assert!(run.success, "{}\n{}", run.output, r.proc.output());
    let carrier = Peer::bind();
    let rt = router_addr(&r);
    for (code, mf, via) in [
        (483, 0, String::new()),
        (
            482,
            70,
            format!("Via: SIP/2.0/UDP {rt};branch=z9hG4bK-dm-looped-1"),
        ),
    ] {
        let text = Invite {
            number: &w.number,
            call_id: &format!("{}@edge", uuid::Uuid::new_v4().simple()),
            branch: &rawsip::branch(),
            from_tag: "ctag",
            max_forwards: mf,
            extra: &[],
        }
        .text(&carrier, rt);
        let text = if via.is_empty() {
            text
        } else {
            text.replacen("Max-Forwards", &format!("{via}\r\nMax-Forwards"), 1)
        };
        carrier.send(rt, &text);
        carrier.expect(2 * S, &format!("{code}"), |m| m.is_reply(code, "INVITE"));
    }
    let c = calls(&w, &w.number, 3).await;
    let mut codes: Vec<(String, u16, u8)> = c
        .iter()
        .map(|c| (c.disposition.clone(), c.final_code, c.attempts))
        .collect();
    codes.sort();
    assert_eq!(
        codes,
        [
            ("failed".into(), 480, 2),
            ("failed".into(), 482, 0),
            ("failed".into(), 483, 0)
        ]
    );
}

/// OPTIONS probes carry random branches, and only the trunk probed can
/// answer one: a 503 from elsewhere with the right branch is ignored
/// (with `down_after = 1` it would down the trunk at once), the trunk's
/// own 503 does.
#[tokio::test(flavor = "multi_thread")]
async fn probe_branches_are_random_and_only_the_trunk_can_answer_them() {
    let w = world("eprobe").await;
    let (a, spoofer) = (Peer::bind(), Peer::bind());
    let r = start(
        &w,
        &[("a", a.port())],
        "",
        "interval_seconds = 1\ntimeout_ms = 900\ndown_after = 1\nup_after = 1",
    );
    let rt = router_addr(&r);
    let state = || {
        r.status()["trunks"][0]["state"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let mut branches = Vec::new();
    for _ in 0..3 {
        let o = a.expect(3 * S, "OPTIONS", |m| m.is_request("OPTIONS"));
        spoofer.send(rt, &o.reply(503, "", &[]));
        tokio::time::sleep(ms(50)).await;
        a.send(o.from, &o.reply(200, "", &[]));
        branches.push(o.branch());
    }
    // 128 random bits each (no counter an attacker could guess).
    let random: Vec<&str> = branches
        .iter()
        .map(|b| b.rsplit('-').next().unwrap_or_default())
        .collect();
    assert!(
        random
            .iter()
            .all(|r| r.len() == 32 && r.chars().all(|c| c.is_ascii_hexdigit()))
            && random[0] != random[1]
            && random[1] != random[2],
        "{branches:?}"
    );
    assert_eq!(state(), "up");
    let spoofed: f64 = r
        .metric("dialmark_sip_spoofed_responses_total")
        .iter()
        .map(|(_, v)| v)
        .sum();
    assert!(spoofed >= 3.0, "every spoofed reply counted: {spoofed}");
    assert!(
        !r.status()["recent_trunk_events"]
            .to_string()
            .contains("→ down"),
        "{}",
        r.status()
    );
    let o = a.expect(3 * S, "OPTIONS", |m| m.is_request("OPTIONS"));
    a.send(o.from, &o.reply(503, "", &[]));
    wait_for("a down on its own 503", 5, || state() == "down").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reply_from_elsewhere_neither_fails_the_call_over_nor_ends_it() {
    let w = world("espoof").await;
    let (a, spoofer) = (Peer::bind(), Peer::bind());
    let pb = free_port();
    let _b = Uas::start(pb, Scenario::Builtin("uas"));
    let r = start(&w, &[("a", a.port()), ("b", pb)], "", "");
    let carrier = Peer::bind();
    let rt = router_addr(&r);
    let call_id = format!("{}@edge", uuid::Uuid::new_v4().simple());
    invite(&carrier, rt, &w.number, &call_id);
    let inv = a.expect(3 * S, "INVITE", |m| m.is_request("INVITE"));
    a.send(inv.from, &inv.reply(180, "ta", &[]));
    carrier.expect(2 * S, "180", |m| m.is_reply(180, "INVITE"));
    // Someone else sends a 503 with trunk a's branch: ignored.
    spoofer.send(rt, &inv.reply(503, "evil", &[]));
    let (fo, _) = carrier.wait(ms(1500), |m| !m.is_reply(180, "INVITE"));
    assert!(fo.is_none(), "the spoofed 503 changed the call: {fo:?}");
    a.send(
        inv.from,
        &inv.reply(200, "ta", &[("Contact", format!("<sip:pbx@{}>", a.addr))]),
    );
    let ok = carrier.expect(2 * S, "200 from trunk a", |m| m.is_reply(200, "INVITE"));
    ack_2xx(&carrier, rt, &ok, &call_id);
    let rows = attempts(&w, &w.number, 0).await;
    assert!(rows.is_empty(), "still talking: no attempt row yet");
    let bye = in_dialog(
        "BYE",
        &contact(&ok),
        &carrier,
        rt,
        &format!("<sip:+79161234567@{}>;tag=ctag", carrier.addr),
        &ok.header("to").unwrap(),
        &call_id,
        2,
        &rawsip::branch(),
        &[],
    );
    carrier.send(rt, &bye);
    let got = a.expect(2 * S, "BYE", |m| m.is_request("BYE"));
    a.send(got.from, &got.reply(200, "", &[]));
    let rows = attempts(&w, &w.number, 1).await;
    assert_eq!(
        (rows[0].trunk.as_str(), rows[0].outcome.as_str()),
        ("a", "answered")
    );
}

/// SIGTERM: OPTIONS answer 503 while draining; the call still up at the
/// drain deadline is hung up both ways and recorded whole; the node exits.
#[tokio::test(flavor = "multi_thread")]
async fn the_drain_deadline_hangs_up_both_legs_and_records_the_call() {
    let w = world("edrain").await;
    let trunk = Peer::bind();
    let mut r = start(&w, &[("a", trunk.port())], "drain_seconds = 2", "");
    let carrier = Peer::bind();
    let rt = router_addr(&r);
    let call_id = format!("{}@edge", uuid::Uuid::new_v4().simple());
    answered_call(&carrier, &trunk, rt, &w.number, &call_id);
    let options = |peer: &Peer| {
        let text = in_dialog(
            "OPTIONS",
            &format!("sip:{rt}"),
            peer,
            rt,
            "<sip:ping@carrier>;tag=p",
            "<sip:node@dialmark>",
            &format!("{}@ping", uuid::Uuid::new_v4().simple()),
            1,
            &rawsip::branch(),
            &[],
        )
        .replace("Route: ", "X-No-Route: ");
        peer.send(rt, &text);
        peer.expect(2 * S, "OPTIONS reply", |m| {
            m.parsed().cseq().is_some_and(|(_, x)| x == "OPTIONS")
        })
    };
    let pinger = Peer::bind();
    assert!(options(&pinger).is_reply(200, "OPTIONS"));
    let signalled = Instant::now();
    r.signal("TERM");
    let mut o = options(&pinger);
    while !o.is_reply(503, "OPTIONS") && signalled.elapsed() < Duration::from_millis(1500) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        o = options(&pinger);
    }
    assert!(o.is_reply(503, "OPTIONS"), "draining: {}", o.start_line());
    // At the deadline both legs get a BYE.
    let to_caller = carrier.expect(4 * S, "BYE to the caller", |m| m.is_request("BYE"));
    let to_callee = trunk.expect(2 * S, "BYE to the callee", |m| m.is_request("BYE"));
    let at = signalled.elapsed();
    assert!(
        at >= Duration::from_millis(1900),
        "hung up before the deadline: {at:?}"
    );
    assert_eq!(to_caller.parsed().to_tag(), Some("ctag"));
    assert_eq!(to_callee.parsed().to_tag(), Some("tt"));
    carrier.send(to_caller.from, &to_caller.reply(200, "", &[]));
    trunk.send(to_callee.from, &to_callee.reply(200, "", &[]));
    let status = r
        .proc
        .terminate(Duration::from_secs(10))
        .expect("router exits");
    assert!(status.success(), "{}", r.proc.output());
    let c = calls(&w, &w.number, 1).await;
    assert_eq!(c[0].disposition, "answered");
    assert!(c[0].talk_ms >= 1_500, "{:?}", c[0]);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_maximum_call_duration_hangs_up_both_legs() {
    let w = world("emaxdur").await;
    let trunk = Peer::bind();
    let r = start(&w, &[("a", trunk.port())], "max_call_seconds = 2", "");
    let carrier = Peer::bind();
    let rt = router_addr(&r);
    let call_id = format!("{}@edge", uuid::Uuid::new_v4().simple());
    let ok = answered_call(&carrier, &trunk, rt, &w.number, &call_id);
    let bye = carrier.expect(4 * S, "BYE to the caller at the maximum duration", |m| {
        m.is_request("BYE")
    });
    let after = bye.at - ok.at;
    assert!(after >= ms(1900) && after <= ms(2600), "{after:?}");
    let to_trunk = trunk.expect(2 * S, "BYE to the callee", |m| m.is_request("BYE"));
    assert_eq!(
        to_trunk.parsed().uri(),
        Some(format!("sip:pbx@{}", trunk.addr).as_str())
    );
    // The caller answers; the trunk does not at first: its BYE is repeated.
    carrier.send(bye.from, &bye.reply(200, "", &[]));
    let again = trunk.expect(2 * S, "the BYE retransmitted", |m| m.is_request("BYE"));
    trunk.send(again.from, &again.reply(200, "", &[]));
    let c = calls(&w, &w.number, 1).await;
    assert_eq!(c[0].disposition, "timeout");
    let rows = attempts(&w, &w.number, 1).await;
    assert_eq!(rows[0].outcome, "answered");
}

/// Untrusted INVITEs (UDP or TCP): 403 each, but one `calls` row per
/// source and minute and a count per source; TCP connections per source
/// are capped.
#[tokio::test(flavor = "multi_thread")]
async fn untrusted_invites_are_counted_and_sampled_and_tcp_per_source_is_capped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let w = world("eabuse").await;
    let pb = free_port();
    let _b = Uas::start(pb, Scenario::Builtin("uas"));
    let mut r = start(&w, &[("b", pb)], "", "");
    let rt = router_addr(&r);
    let flood = Peer::bind_on("127.0.0.2");
    for _ in 0..40 {
        let text = Invite {
            number: &w.number,
            call_id: &format!("{}@flood", uuid::Uuid::new_v4().simple()),
            branch: &rawsip::branch(),
            from_tag: "f",
            max_forwards: 70,
            extra: &[],
        }
        .text(&flood, rt);
        flood.send(rt, &text);
        flood.expect(2 * S, "403", |m| m.is_reply(403, "INVITE"));
    }
    // Over TCP from another untrusted address: 403 on its connection.
    let connect = || async {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind("127.0.0.3:0".parse().unwrap()).unwrap();
        s.connect(rt).await.unwrap()
    };
    let mut conn = connect().await;
    let me = conn.local_addr().unwrap();
    let text = format!(
        "INVITE sip:{n}@{rt} SIP/2.0\r\nVia: SIP/2.0/TCP {me};branch={b}\r\nMax-Forwards: 70\r\n\
         From: <sip:+79160000000@{me}>;tag=t\r\nTo: <sip:{n}@{rt}>\r\nCall-ID: {c}@tcp\r\nCSeq: 1 INVITE\r\n\
         Content-Length: 0\r\n\r\n",
        n = w.number,
        b = rawsip::branch(),
        c = uuid::Uuid::new_v4().simple(),
    );
    conn.write_all(text.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(2 * S, conn.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("SIP/2.0 403 "));
    // 70 more connections from that address: past 64 the node closes them.
    let mut held = Vec::new();
    for _ in 0..70 {
        held.push(connect().await);
    }
    tokio::time::sleep(ms(500)).await;
    let mut closed = 0;
    for c in &mut held {
        let mut one = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(ms(20), c.read(&mut one)).await {
            closed += 1;
        }
    }
    assert!(
        (6..=8).contains(&closed),
        "{closed} of 70 refused; the cap is 64 per source"
    );
    drop(held);
    r.signal("TERM");
    let status = r
        .proc
        .terminate(Duration::from_secs(15))
        .expect("router exits");
    assert!(status.success(), "{}", r.proc.output());
    let db = dialmark_schemas::ch::client(&w.tracker.config.clickhouse);
    let mut counts: Vec<(String, u64)> = Vec::new();
    for _ in 0..50 {
        counts = db
            .query("SELECT source, sum(requests) FROM untrusted_sources FINAL GROUP BY source ORDER BY source")
            .fetch_all()
            .await
            .unwrap();
        if counts.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        counts,
        [("127.0.0.2".to_string(), 40), ("127.0.0.3".to_string(), 1)]
    );
    let sampled: u64 = db
        .query("SELECT count() FROM calls FINAL WHERE number = ? AND disposition = 'rejected_untrusted'")
        .bind(&w.number)
        .fetch_one()
        .await
        .unwrap();
    assert!(
        (2..=3).contains(&sampled),
        "one calls row per source and minute, not 41: {sampled}"
    );
}

/// `[[router.trunks]]` text for one trunk with a transport.
fn trunk_toml(name: &str, port: u16, transport: &str) -> String {
    format!("[[router.trunks]]\nname = \"{name}\"\naddress = \"127.0.0.1:{port}\"\ntransport = \"{transport}\"\n")
}

/// A TCP trunk: the node opens a connection, double-record-routes the
/// UDP carrier's call onto it, reuses it for the dialog, and reopens it
/// for the BYE once the trunk closed it.
#[tokio::test(flavor = "multi_thread")]
async fn a_tcp_trunk_gets_a_connection_reused_by_the_dialog_and_reopened() {
    let w = world("etcp").await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tp = listener.local_addr().unwrap().port();
    let r = start(&w, &[], &trunk_toml("a", tp, "tcp"), "");
    let carrier = Peer::bind();
    let rt = router_addr(&r);
    let call_id = format!("{}@edge", uuid::Uuid::new_v4().simple());
    invite(&carrier, rt, &w.number, &call_id);
    let (conn, _) = tokio::time::timeout(3 * S, listener.accept())
        .await
        .unwrap()
        .unwrap();
    let mut trunk = rawsip::TcpPeer::new(conn);
    let inv = trunk
        .expect(3 * S, "INVITE over TCP", |m| m.is_request("INVITE"))
        .await;
    assert!(
        inv.parsed().top_via().unwrap().starts_with("SIP/2.0/TCP "),
        "{}",
        inv.text
    );
    let rr = inv.header("record-route").unwrap();
    assert_eq!(
        rr,
        format!("<sip:{rt};transport=tcp;lr>, <sip:{rt};lr>"),
        "double Record-Route on the UDP-to-TCP switch, the trunk's side first"
    );
    let pbx = ("Contact", format!("<sip:pbx@127.0.0.1:{tp};transport=tcp>"));
    trunk.send(&inv.reply(180, "tt", &[])).await;
    trunk
        .send(&inv.reply(200, "tt", &[pbx, ("Record-Route", rr)]))
        .await;
    let ok = carrier.expect(2 * S, "200 OK", |m| m.is_reply(200, "INVITE"));
    ack_2xx(&carrier, rt, &ok, &call_id);
    let ack = trunk
        .expect(2 * S, "ACK on the same connection", |m| m.is_request("ACK"))
        .await;
    assert!(
        ack.parsed().header("route").is_none(),
        "both of our Route entries are popped"
    );
    // The trunk closes its connection; the BYE reopens one.
    drop(trunk);
    let caller = format!("<sip:+79161234567@{}>;tag=ctag", carrier.addr);
    let bye = in_dialog(
        "BYE",
        &contact(&ok),
        &carrier,
        rt,
        &caller,
        &ok.header("to").unwrap(),
        &call_id,
        2,
        &rawsip::branch(),
        &[],
    );
    // If the BYE beats the node to the close, it is written to the dead
    // connection and lost; the carrier's UDP retransmission (Timer E, as
    // a real carrier's) then finds it closed and gets a new one.
    let mut accepted = None;
    for _ in 0..8 {
        carrier.send(rt, &bye);
        if let Ok(conn) = tokio::time::timeout(ms(500), listener.accept()).await {
            accepted = Some(conn.unwrap().0);
            break;
        }
    }
    let mut trunk = rawsip::TcpPeer::new(accepted.expect("the BYE reopened a connection"));
    let got = trunk
        .expect(3 * S, "BYE on a new connection", |m| m.is_request("BYE"))
        .await;
    trunk.send(&got.reply(200, "", &[])).await;
    carrier.expect(2 * S, "200 for the BYE", |m| m.is_reply(200, "BYE"));
    let c = calls(&w, &w.number, 1).await;
    assert_eq!(
        (c[0].disposition.as_str(), c[0].final_trunk.as_str()),
        ("answered", "a")
    );
}

/// An `auto` trunk: small requests over UDP, one over 1,300 bytes over TCP
/// (RFC 3261 §18.1.1), its Via saying so.
#[tokio::test(flavor = "multi_thread")]
async fn a_large_request_to_an_auto_trunk_goes_over_tcp() {
    let w = world("eauto").await;
    // The trunk listens on one port for both: a UDP port whose TCP twin
    // is free (an outgoing connection may hold it).
    let (udp, listener) = loop {
        let udp = Peer::bind();
        if let Ok(l) = tokio::net::TcpListener::bind(udp.addr).await {
            break (udp, l);
        }
    };
    let r = start(&w, &[], &trunk_toml("a", udp.port(), "auto"), "");
    let carrier = Peer::bind();
    let rt = router_addr(&r);
    // Small: UDP.
    let call_id = format!("{}@small", uuid::Uuid::new_v4().simple());
    invite(&carrier, rt, &w.number, &call_id);
    let inv = udp.expect(3 * S, "a small INVITE over UDP", |m| m.is_request("INVITE"));
    udp.send(inv.from, &inv.reply(486, "ta", &[]));
    carrier.expect(2 * S, "486", |m| m.is_reply(486, "INVITE"));
    // Large: TCP.
    let pad = format!("X-Pad: {}", "p".repeat(1_400));
    let text = Invite {
        number: &w.number,
        call_id: &format!("{}@large", uuid::Uuid::new_v4().simple()),
        branch: &rawsip::branch(),
        from_tag: "ctag",
        max_forwards: 70,
        extra: &[&pad],
    }
    .text(&carrier, rt);
    carrier.send(rt, &text);
    let (conn, _) = tokio::time::timeout(3 * S, listener.accept())
        .await
        .unwrap()
        .unwrap();
    let mut trunk = rawsip::TcpPeer::new(conn);
    let inv = trunk
        .expect(3 * S, "the large INVITE over TCP", |m| {
            m.is_request("INVITE")
        })
        .await;
    assert!(inv.text.len() > 1_300);
    assert!(inv.parsed().top_via().unwrap().starts_with("SIP/2.0/TCP "));
    trunk.send(&inv.reply(486, "tb", &[])).await;
    trunk
        .expect(2 * S, "its ACK over TCP too", |m| m.is_request("ACK"))
        .await;
    let late = udp.drain(ms(300));
    assert!(
        !late.iter().any(|m| m.is_request("INVITE")),
        "not also over UDP: {late:?}"
    );
}

/// A carrier over TCP closes its connection mid-call: the callee's BYE
/// reaches it on a new connection to where its Via says it listens.
#[tokio::test(flavor = "multi_thread")]
async fn a_tcp_carrier_that_closed_its_connection_gets_the_bye_on_a_new_one() {
    let w = world("etcpc").await;
    let trunk = Peer::bind();
    let r = start(&w, &[("a", trunk.port())], "", "");
    let rt = router_addr(&r);
    let sbc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listen = sbc.local_addr().unwrap();
    let mut carrier = rawsip::TcpPeer::connect(rt).await;
    let call_id = format!("{}@tcpc", uuid::Uuid::new_v4().simple());
    let caller = format!("<sip:+79161234567@{listen}>;tag=ctag");
    carrier
        .send(&format!(
            "INVITE sip:{n}@{rt} SIP/2.0\r\nVia: SIP/2.0/TCP {listen};branch={b}\r\nMax-Forwards: 70\r\n\
             From: {caller}\r\nTo: <sip:{n}@{rt}>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\n\
             Contact: <sip:caller@{listen};transport=tcp>\r\nContent-Length: 0\r\n\r\n",
            n = w.number,
            b = rawsip::branch(),
        ))
        .await;
    rawsip::answer(&trunk);
    let ok = carrier
        .expect(3 * S, "200 on the carrier's connection", |m| {
            m.is_reply(200, "INVITE")
        })
        .await;
    let callee = ok.header("to").unwrap();
    carrier
        .send(&format!(
            "ACK {} SIP/2.0\r\nVia: SIP/2.0/TCP {listen};branch={b}\r\nRoute: <sip:{rt};lr>\r\nMax-Forwards: 70\r\n\
             From: {caller}\r\nTo: {callee}\r\nCall-ID: {call_id}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
            contact(&ok),
            b = rawsip::branch(),
        ))
        .await;
    trunk.expect(2 * S, "ACK", |m| m.is_request("ACK"));
    drop(carrier);
    tokio::time::sleep(ms(200)).await;
    let bye = in_dialog(
        "BYE",
        &format!("sip:caller@{listen};transport=tcp"),
        &trunk,
        rt,
        &callee,
        &caller,
        &call_id,
        1,
        &rawsip::branch(),
        &[],
    );
    trunk.send(rt, &bye);
    let (conn, _) = tokio::time::timeout(3 * S, sbc.accept())
        .await
        .unwrap()
        .unwrap();
    let mut back = rawsip::TcpPeer::new(conn);
    let got = back
        .expect(3 * S, "BYE on the reopened connection", |m| {
            m.is_request("BYE")
        })
        .await;
    back.send(&got.reply(200, "", &[])).await;
    trunk.expect(2 * S, "200 for the BYE", |m| m.is_reply(200, "BYE"));
}

/// A TCP trunk that refuses the connection is a transport error: the next
/// trunk gets the call at once, not after the provisional timeout.
#[tokio::test(flavor = "multi_thread")]
async fn a_tcp_trunk_refusing_the_connection_fails_over_at_once() {
    let w = world("etcpref").await;
    let refused = free_port();
    let b = Peer::bind();
    let trunks = format!(
        "{}{}priority = 1\n",
        trunk_toml("a", refused, "tcp"),
        trunk_toml("b", b.port(), "udp")
    );
    let r = start(&w, &[], &trunks, "");
    let carrier = Peer::bind();
    let rt = router_addr(&r);
    let call_id = format!("{}@edge", uuid::Uuid::new_v4().simple());
    let sent = Instant::now();
    invite(&carrier, rt, &w.number, &call_id);
    let inv = b.expect(3 * S, "INVITE at trunk b", |m| m.is_request("INVITE"));
    assert!(
        inv.at - sent < ms(800),
        "failed over after {:?}",
        inv.at - sent
    );
    b.send(inv.from, &inv.reply(486, "tb", &[]));
    carrier.expect(2 * S, "486", |m| m.is_reply(486, "INVITE"));
    let rows = attempts(&w, &w.number, 2).await;
    assert_eq!(
        (
            rows[0].trunk.as_str(),
            rows[0].outcome.as_str(),
            rows[0].failover
        ),
        ("a", "transport_error", 1)
    );
}
