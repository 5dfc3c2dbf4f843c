//! The routing node's capacity behaviour end to end: calls spread over
//! two shards keep every in-dialog request on its call (INVITE, 180, 200,
//! ACK, re-INVITE, BYE), and a node over its memory budget refuses new
//! calls with 503 + Retry-After, answers OPTIONS 503, records every
//! refused call as `overload`, and takes calls again once load drops.
//! Time a message spent in the socket's buffer counts as queueing: a node
//! that fell behind its socket sheds the stale new calls.

use std::time::Duration;

use dialmark_e2e::process::free_port;
use dialmark_e2e::rawsip::{self, in_dialog, Peer};
use dialmark_e2e::router::{RouterOptions, TestRouter};
use dialmark_e2e::sipp::{self, Scenario, Uas};
use dialmark_e2e::world::world;

/// Completed calls of a number by disposition.
async fn dispositions(w: &dialmark_e2e::world::World, want: u64) -> Vec<(String, u64)> {
    let db = dialmark_schemas::ch::client(&w.tracker.config.clickhouse);
    let mut rows: Vec<(String, u64)> = Vec::new();
    for _ in 0..150 {
        rows = db
            .query(
                "SELECT toString(disposition) AS d, count() FROM calls FINAL \
                 WHERE number = ? AND ended != 0 GROUP BY d ORDER BY d",
            )
            .bind(&w.number)
            .fetch_all()
            .await
            .unwrap();
        if rows.iter().map(|r| r.1).sum::<u64>() >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    rows
}

/// A router with these `[router]` settings and one trunk that rings
/// `ring_ms`, then answers.
fn ringing_node(w: &dialmark_e2e::world::World, ring_ms: u32, router: &str) -> (Uas, TestRouter) {
    let pa = free_port();
    let uas = Uas::start(
        pa,
        Scenario::File("uas_ring_answer.xml", vec![("PAUSE", ring_ms.to_string())]),
    );
    let r = TestRouter::start(
        &w.tracker.config,
        RouterOptions {
            trunks: &[("a", pa)],
            router,
            probe: "",
        },
    );
    (uas, r)
}

/// A carrier's INVITE of a new call (Call-ID tagged `label`) to `rt`.
fn send_new_call(carrier: &Peer, rt: std::net::SocketAddr, number: &str, label: &str) {
    let text = rawsip::Invite {
        number,
        call_id: &format!("{}@{label}", uuid::Uuid::new_v4().simple()),
        branch: &rawsip::branch(),
        from_tag: "ctag",
        max_forwards: 70,
        extra: &[],
    }
    .text(carrier, rt);
    carrier.send(rt, &text);
}

/// Places `calls` short SIPp calls; each must be answered or refused 503.
async fn calls_answered_or_refused(r: &TestRouter, w: &dialmark_e2e::world::World, calls: u32) {
    let (port, number) = (r.sip_port, w.number.clone());
    let run = tokio::task::spawn_blocking(move || {
        sipp::uac(
            port,
            &number,
            Scenario::File("uac_or_503.xml", vec![("HOLD", "100".into())]),
            "127.0.0.1",
            calls,
            &[],
        )
    })
    .await
    .unwrap();
    assert!(run.success, "{}", run.output);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_shards_route_every_request_of_many_calls() {
    let w = world("cshards").await;
    let pa = free_port();
    let _a = Uas::start(pa, Scenario::File("uas_reinvite.xml", vec![]));
    let r = TestRouter::start(
        &w.tracker.config,
        RouterOptions {
            trunks: &[("a", pa)],
            router: "shards = 2",
            probe: "",
        },
    );
    let calls = 200;
    let run = tokio::task::spawn_blocking({
        let (port, number) = (r.sip_port, w.number.clone());
        move || {
            sipp::uac(
                port,
                &number,
                Scenario::File("uac_reinvite.xml", vec![("HOLD", "300".into())]),
                "127.0.0.1",
                calls,
                &["-r", "50"],
            )
        }
    })
    .await
    .unwrap();
    assert!(run.success, "{}\n{}", run.output, r.proc.output());
    assert_eq!(run.successful(), u64::from(calls));
    let rows = dispositions(&w, u64::from(calls)).await;
    assert_eq!(rows, [("answered".to_string(), u64::from(calls))]);
    // Both shards carried calls.
    let per_shard = r.metric("dialmark_router_calls_routed_total");
    assert_eq!(per_shard.len(), 2, "{per_shard:?}");
    assert!(per_shard.iter().all(|(_, n)| *n >= 40.0), "{per_shard:?}");
    assert_eq!(
        per_shard.iter().map(|(_, n)| *n).sum::<f64>(),
        f64::from(calls)
    );
    // jemalloc's counters, what tells a memory peak's leftovers apart.
    let alloc: std::collections::HashMap<String, f64> = r
        .metric("dialmark_router_allocator_bytes")
        .into_iter()
        .collect();
    let kind = |k: &str| alloc[&format!("dialmark_router_allocator_bytes{{kind=\"{k}\"}}")];
    assert!(kind("allocated") > 0.0, "{alloc:?}");
    assert!(kind("allocated") <= kind("active"), "{alloc:?}");
    assert!(kind("active") <= kind("resident"), "{alloc:?}");
    assert!(kind("metadata") > 0.0, "{alloc:?}");
    // One arena (main.rs): fewer leftovers after a peak.
    assert_eq!(
        r.metric("dialmark_router_allocator_arenas"),
        [("dialmark_router_allocator_arenas".to_string(), 1.0)]
    );
    // jemalloc's full report, for the NOC.
    let report = ureq::get(&format!("http://127.0.0.1:{}/debug/allocator", r.http_port))
        .call()
        .expect("/debug/allocator")
        .body_mut()
        .read_to_string()
        .expect("report");
    assert!(report.contains("metadata"), "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn over_its_memory_budget_the_node_sheds_new_calls_and_recovers() {
    let w = world("cbudget").await;
    // Each call rings 4 s: held calls pile up past a 1 MiB budget.
    let (_a, r) = ringing_node(&w, 4000, "max_memory_mb = 1\nretry_after_seconds = 7");
    let placed = 600u32;
    let load = tokio::task::spawn_blocking({
        let (port, number) = (r.sip_port, w.number.clone());
        move || {
            sipp::uac(
                port,
                &number,
                Scenario::File("uac_or_503.xml", vec![("HOLD", "200".into())]),
                "127.0.0.1",
                placed,
                &["-r", "150", "-l", "1000"],
            )
        }
    });
    // While the budget is full: a raw INVITE sees 503 + Retry-After and
    // an OPTIONS ping sees 503.
    let (carrier, pinger) = (Peer::bind(), Peer::bind());
    let rt: std::net::SocketAddr = format!("127.0.0.1:{}", r.sip_port).parse().unwrap();
    let mut refused = None;
    let mut options_503 = false;
    for _ in 0..80 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let ping = in_dialog(
            "OPTIONS",
            &format!("sip:{rt}"),
            &pinger,
            rt,
            "<sip:ping@carrier>;tag=p",
            "<sip:node@dialmark>",
            &format!("{}@ping", uuid::Uuid::new_v4().simple()),
            1,
            &rawsip::branch(),
            &[],
        )
        .replace("Route: ", "X-No-Route: ");
        pinger.send(rt, &ping);
        if let Some(m) = pinger.recv(Duration::from_secs(1)) {
            options_503 |= m.is_reply(503, "OPTIONS");
        }
        if refused.is_none() {
            send_new_call(&carrier, rt, &w.number, "shed");
            let (m, _) = carrier.wait(Duration::from_secs(1), |m| {
                m.parsed().status().is_some_and(|c| c >= 180)
            });
            refused = m.filter(|m| m.is_reply(503, "INVITE"));
        }
        if refused.is_some() && options_503 {
            break;
        }
    }
    let refused = refused.expect("a new call was refused while the budget was full");
    assert_eq!(refused.header("retry-after").as_deref(), Some("7"));
    assert!(options_503, "OPTIONS answered 503 while refusing calls");
    let run = load.await.unwrap();
    assert!(
        run.success,
        "every call answered or refused with 503:\n{}",
        run.output
    );
    let rows = dispositions(&w, u64::from(placed) + 1).await;
    let count = |d: &str| rows.iter().find(|r| r.0 == d).map_or(0, |r| r.1);
    assert_eq!(
        count("answered") + count("overload"),
        u64::from(placed) + 1,
        "every call is on record, answered or refused: {rows:?}"
    );
    assert!(
        count("overload") >= 50,
        "the budget refused calls: {rows:?}"
    );
    assert!(
        count("answered") >= 200,
        "the budget's worth was served: {rows:?}"
    );
    // Load gone: the node takes calls again.
    calls_answered_or_refused(&r, &w, 5).await;
    let rows = dispositions(&w, u64::from(placed) + 6).await;
    let answered_after = rows.iter().find(|r| r.0 == "answered").map_or(0, |r| r.1);
    assert_eq!(answered_after, count("answered") + 5, "{rows:?}");
    let status = r.status();
    assert_eq!(status["refusing_new_calls"], false, "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn new_calls_that_waited_in_the_socket_buffer_are_shed() {
    let w = world("csocket").await;
    let (_a, r) = ringing_node(&w, 100, "overload_delay_ms = 200\nretry_after_seconds = 9");
    // The node stops reading (a stall: CPU starved, swapped out) while
    // new calls arrive; they wait in its socket buffer past the delay.
    let carrier = Peer::bind();
    let rt: std::net::SocketAddr = format!("127.0.0.1:{}", r.sip_port).parse().unwrap();
    r.signal("STOP");
    // kill returns before every thread has stopped; a thread still
    // running would read (and route) an INVITE before the stall.
    let tasks = format!("/proc/{}/task", r.proc.pid());
    dialmark_e2e::process::wait_until(
        "every router thread stopped",
        Duration::from_secs(5),
        || {
            std::fs::read_dir(&tasks).unwrap().all(|t| {
                let stat =
                    std::fs::read_to_string(t.unwrap().path().join("stat")).unwrap_or_default();
                stat.rsplit_once(") ")
                    .is_some_and(|(_, rest)| rest.starts_with('T') || rest.starts_with('t'))
            })
        },
    );
    let stale = 6;
    for i in 0..stale {
        send_new_call(&carrier, rt, &w.number, &format!("stale{i}"));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    r.signal("CONT");
    // By Call-ID: unacknowledged 503s are retransmitted.
    let mut finals = std::collections::HashMap::new();
    while finals.len() < stale {
        let (m, _) = carrier.wait(Duration::from_secs(5), |m| {
            m.parsed().status().is_some_and(|c| c >= 180)
        });
        let m = m.expect("every stale INVITE got a reply");
        finals.insert(m.header("call-id"), m);
    }
    for m in finals.values() {
        assert!(m.is_reply(503, "INVITE"), "{}", m.start_line());
        assert_eq!(m.header("retry-after").as_deref(), Some("9"));
    }
    // Caught up: fresh calls are routed and answered.
    tokio::time::sleep(Duration::from_millis(300)).await;
    calls_answered_or_refused(&r, &w, 4).await;
    let rows = dispositions(&w, stale as u64 + 4).await;
    assert_eq!(
        rows,
        vec![
            ("answered".to_string(), 4),
            ("overload".to_string(), stale as u64)
        ],
        "each stale call on record as overload, the later ones answered"
    );
    let drops = r.metric("dialmark_udp_receive_drops_total");
    assert_eq!(
        drops.len(),
        1,
        "the socket's drop counter is exported: {drops:?}"
    );
}
