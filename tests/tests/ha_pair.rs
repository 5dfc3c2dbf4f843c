//! The active/standby pair (#19): two routers with `[router.ha]` on one
//! SIP address. The standby answers `/healthz` and `/metrics` and binds
//! nothing; the active holds the leader lease in Redis. The active is
//! killed (SIGKILL) with a call up: the standby holds the lease and serves
//! the address within 5 s (default 3 s lease); the call's BYE, sent by
//! the carrier to the same address, reaches the trunk through it, and the
//! call's row has its whole talk time; a call whose INVITE was sent at the
//! kill is answered through it (the carrier's retransmissions reach it); a
//! later call too; the call ringing at the death has its row as
//! `node_lost`; every call is on record once, and no dialog record is left
//! in Redis; an operator's trunk override on the dead node holds on the
//! new one, and so does a trunk it found down (since then, not found
//! again) or degraded by its calls' quality (its alert not sent again); an
//! adopted call whose BYE never comes is hung up at the maximum duration.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use dialmark_e2e::env::unique;
use dialmark_e2e::process::free_port;
use dialmark_e2e::rawsip::{self, answered_call, contact, in_dialog, Peer};
use dialmark_e2e::router::{RouterOptions, TestRouter};
use dialmark_e2e::sipp::{Scenario, Uas};
use dialmark_e2e::world::{call, calls, place_calls, reject, spawn_call, wait_for, world, World};
use dialmark_schemas::store::Redis;

const S: Duration = Duration::from_secs(1);

/// The Redis keys matching `pattern`.
async fn keys(r: &Redis, pattern: &str) -> Vec<String> {
    redis::cmd("KEYS")
        .arg(pattern)
        .query_async(&mut r.clone())
        .await
        .unwrap()
}

/// The node's `dialmark_router_ha_leader` (-1: no answer; a run of
/// five pair tests at once has seen one `/metrics` reset mid-takeover).
fn leader(r: &TestRouter) -> f64 {
    r.try_metric("dialmark_router_ha_leader")
        .and_then(|m| m.first().map(|(_, v)| *v))
        .unwrap_or(-1.0)
}

/// An active and a standby router of a new pair group (returned too) on
/// `w`'s tracker, with trunk b ringing `ring_ms` before it answers and
/// trunk c dead (after b; probed every second, down at the first miss).
fn pair(w: &World, ring_ms: u32) -> (TestRouter, TestRouter, String, Uas) {
    let (pb, pc) = (free_port(), free_port());
    let b = Uas::start(
        pb,
        Scenario::File("uas_ring_answer.xml", vec![("PAUSE", ring_ms.to_string())]),
    );
    let group = unique("pair");
    let ha = format!("[router.ha]\nenabled = true\ngroup = \"{group}\"\n");
    let active = TestRouter::start(
        &w.tracker.config,
        RouterOptions {
            trunks: &[("b", pb), ("c", pc)],
            router: &ha,
            probe: "interval_seconds = 1\ntimeout_ms = 300\ndown_after = 1\nup_after = 2",
        },
    );
    let standby = active.standby();
    (active, standby, group, b)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_standby_serves_the_address_within_5_s_of_the_actives_death() {
    let w = world("hapair").await;
    // Trunk b rings 2 s, then answers.
    let (mut active, standby, group, _b) = pair(&w, 2000);
    assert_eq!(leader(&active), 1.0, "the first node holds the lease");
    assert_eq!(leader(&standby), 0.0, "the second one waits");
    let before = call(
        active.sip_port,
        &w.number,
        Scenario::Builtin("uac"),
        "127.0.0.1",
        &[],
    )
    .await;
    assert!(before.success, "{}", before.output);
    calls(&w, &w.number, 1).await;
    // An operator's override on the active: the pair keeps it.
    let set = ureq::post(&format!(
        "http://127.0.0.1:{}/trunks/b/weight=7?actor=noc",
        active.http_port
    ))
    .send_empty()
    .expect("trunk command");
    assert_eq!(set.status(), 200);
    // Trunk c found down by the active's probes: the pair keeps that too.
    let c_down = |r: &TestRouter| {
        let st = r.status();
        let c = st["trunks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == "c")
            .cloned()
            .unwrap();
        (!c["up"].as_bool().unwrap()).then(|| c["since_unix"].as_u64().unwrap())
    };
    let until = Instant::now() + Duration::from_secs(5);
    let down_since = loop {
        if let Some(since) = c_down(&active) {
            break since;
        }
        assert!(Instant::now() < until, "trunk c never went down");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // A call up at the death: answered through the active, its record in
    // Redis for the standby.
    let up = spawn_call(
        active.sip_port,
        &w.number,
        Scenario::Builtin("uac"),
        "127.0.0.1",
        &["-d", "6000"],
    );
    let redis = Redis::connect(&w.tracker.config.redis).await.unwrap();
    // This test's dialog records (other tests run alongside).
    let records = || {
        let (mut r, number) = (redis.clone(), w.number.clone());
        async move {
            let mut ours = Vec::new();
            for k in keys(&r, "dm:dialog:*").await {
                let v: Option<String> =
                    redis::cmd("GET").arg(&k).query_async(&mut r).await.unwrap();
                if v.is_some_and(|v| v.contains(&number)) {
                    ours.push(k);
                }
            }
            ours
        }
    };
    let until = Instant::now() + Duration::from_secs(5);
    while records().await.is_empty() {
        assert!(Instant::now() < until, "no dialog record for the call up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And a call ringing at the death: it never gets its answer (the new
    // active does not know it; its caller gives up after 8 s).
    let _ringing = spawn_call(
        active.sip_port,
        &w.number,
        Scenario::Builtin("uac"),
        "127.0.0.1",
        &["-timeout", "8s"],
    );
    let ringing_list = format!("dm:ha:{group}:ringing:*");
    let ringing = || keys(&redis, &ringing_list);
    let until = Instant::now() + Duration::from_secs(5);
    while ringing().await.is_empty() {
        assert!(Instant::now() < until, "the call never rang");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    active.proc.kill9();
    let killed = Instant::now();
    let during = spawn_call(
        active.sip_port,
        &w.number,
        Scenario::Builtin("uac"),
        "127.0.0.1",
        &[],
    );
    let mut took = None;
    while killed.elapsed() < Duration::from_secs(15) {
        if leader(&standby) == 1.0 && dialmark_e2e::process::udp_bound(active.sip_port) {
            took = Some(killed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = took.expect("the standby never took over");
    println!("the standby serves the address {took:?} after the active's death");
    assert!(took <= Duration::from_secs(5), "took over after {took:?}");
    let during = during.await.unwrap();
    assert!(
        during.success,
        "the call sent at the kill was answered through the new active:\n{}\n{}",
        during.output,
        standby.proc.output()
    );
    let after = call(
        standby.sip_port,
        &w.number,
        Scenario::Builtin("uac"),
        "127.0.0.1",
        &[],
    )
    .await;
    assert!(after.success, "{}", after.output);
    let up = up.await.unwrap();
    assert!(
        up.success,
        "the BYE of the call up at the death reached the trunk:\n{}\n{}",
        up.output,
        standby.proc.output()
    );
    let rows = calls(&w, &w.number, 5).await;
    let lost: Vec<_> = rows
        .iter()
        .filter(|r| r.disposition == "node_lost")
        .collect();
    assert_eq!(lost.len(), 1, "the call ringing at the death: {rows:?}");
    assert_eq!(
        rows.iter().filter(|r| r.disposition == "answered").count(),
        4,
        "{rows:?}"
    );
    assert!(
        ringing().await.is_empty(),
        "the dead node's ringing list is gone"
    );
    let longest = rows.iter().map(|r| r.talk_ms).max().unwrap();
    assert!(
        (5_500..8_000).contains(&longest),
        "the call up at the death talked to its BYE: {rows:?}"
    );
    let until = Instant::now() + Duration::from_secs(5);
    while !records().await.is_empty() {
        assert!(
            Instant::now() < until,
            "dialog records left: {:?}",
            records().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        standby.proc.output().contains("holding the leader lease"),
        "the takeover is in the log"
    );
    assert_eq!(
        standby.status()["trunks"][0]["why"],
        "weight 7 by noc",
        "the operator's override was taken over"
    );
    assert_eq!(
        c_down(&standby),
        Some(down_since),
        "trunk c down since the active found it, not found again"
    );
}

/// The lease itself: one holder; a renewal finds a lapsed lease taken by
/// the other node (and the loser must stop); only the holder releases it.
#[tokio::test]
async fn the_leader_lease_has_one_holder() {
    use dialmark_router::ha::{Lease, Renewal};
    use dialmark_schemas::config::HaConfig;
    let mut redis = Redis::connect(&dialmark_e2e::tracker::single_redis())
        .await
        .unwrap();
    let group = unique("lease");
    let node = |name: &str| {
        Lease::new(&HaConfig {
            enabled: true,
            group: group.clone(),
            node: name.into(),
            lease_ms: 1_000,
        })
    };
    let (a, b) = (node("a"), node("b"));
    assert!(a.acquire(&mut redis).await.unwrap());
    assert!(!b.acquire(&mut redis).await.unwrap(), "held by a");
    assert_eq!(a.renew(&mut redis).await, Renewal::Held);
    b.release(&mut redis).await.unwrap();
    assert!(
        !b.acquire(&mut redis).await.unwrap(),
        "b cannot release a's lease"
    );
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert!(b.acquire(&mut redis).await.unwrap(), "lapsed: b takes it");
    assert_eq!(a.renew(&mut redis).await, Renewal::Lost("b".into()));
    b.release(&mut redis).await.unwrap();
    assert!(
        a.acquire(&mut redis).await.unwrap(),
        "released: a takes it at once"
    );
    a.release(&mut redis).await.unwrap();
}

/// The issue's kill test, bounded: 220 calls at 20 a second, each
/// answered after 1 s of ringing and held 15 s; the active is killed with
/// SIGKILL right after the last INVITE (about 200 calls talking, 20
/// ringing). Every talking call's BYE reaches the trunk through the new
/// active and its row has its whole talk time; the ringing ones are
/// `node_lost`; every call has exactly one row.
#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_talking_and_twenty_ringing_calls_are_all_on_record() {
    let w = world("hascale").await;
    let (mut active, standby, _, _b) = pair(&w, 1000);
    let started = Instant::now();
    let sip_port = active.sip_port;
    let kill = async {
        tokio::time::sleep(Duration::from_millis(11_200).saturating_sub(started.elapsed())).await;
        active.proc.kill9();
    };
    let (run, ()) = tokio::join!(
        place_calls(
            sip_port,
            &w.number,
            Scenario::Builtin("uac"),
            220,
            &[
                "-r",
                "20",
                "-d",
                "15000",
                "-recv_timeout",
                "12000",
                "-timeout",
                "39s"
            ],
        ),
        kill
    );
    let talked = run.successful();
    let rows = calls(&w, &w.number, 220).await;
    let answered: Vec<_> = rows
        .iter()
        .filter(|r| r.disposition == "answered")
        .collect();
    let lost = rows.iter().filter(|r| r.disposition == "node_lost").count();
    println!(
        "{} answered, {lost} node_lost; the carrier saw {talked} calls end well",
        answered.len()
    );
    assert_eq!(answered.len() + lost, 220, "one row per call: {rows:?}");
    assert_eq!(
        answered.len() as u64,
        talked,
        "each answered call ended with its BYE through the new active:\n{}\n{}",
        run.output,
        standby.proc.output()
    );
    assert!(
        (180..=215).contains(&answered.len()) && (5..=40).contains(&lost),
        "about 200 talking and 20 ringing at the kill: {} / {lost}",
        answered.len()
    );
    assert!(
        answered
            .iter()
            .all(|r| (14_000..17_000).contains(&r.talk_ms)),
        "whole talk times: {answered:?}"
    );
}

/// A trunk the active degraded by its calls' quality stays degraded at the
/// new active, since then, with its alert not sent again (no alert storm
/// at takeover).
#[tokio::test(flavor = "multi_thread")]
async fn a_trunk_degraded_by_its_calls_stays_degraded_after_the_takeover() {
    let w = world("haqual").await;
    let (hook_port, hooks) = dialmark_e2e::webhook::receiver();
    let (pa, pb) = (free_port(), free_port());
    let _a = Uas::start(pa, reject(503, "Service Unavailable"));
    let _b = Uas::start(pb, Scenario::Builtin("uas"));
    let group = unique("pairq");
    let router = format!(
        "alert_webhook = \"http://127.0.0.1:{hook_port}/alert\"\nalert_hold_down_seconds = 1\n\
         [router.ha]\nenabled = true\ngroup = \"{group}\"\n\
         [router.quality]\nwindow_seconds = 10\nmin_attempts = 10\nrecovery_seconds = 600\nprobe_percent = 20"
    );
    let mut active = TestRouter::start(
        &w.tracker.config,
        RouterOptions {
            trunks: &[("a", pa), ("b", pb)],
            router: &router,
            probe: "",
        },
    );
    let standby = active.standby();
    assert_eq!(leader(&active), 1.0, "the first node holds the lease");

    // a answers every call with 503: b carries them, a is degraded.
    let run = place_calls(
        active.sip_port,
        &w.number,
        Scenario::Builtin("uac"),
        20,
        &["-r", "10"],
    )
    .await;
    assert!(run.success, "{}", run.output);
    wait_for("a degraded at the active", 15, || {
        active.trunk_state("a") == "degraded"
    })
    .await;
    let degraded_alerts = || {
        let log = hooks.lock().unwrap();
        let of = |resolved: bool| {
            log.iter()
                .filter(|b| {
                    b.body.contains("DialmarkTrunkDegraded")
                        && b.body.contains("endsAt") == resolved
                })
                .count()
        };
        (of(false), of(true))
    };
    wait_for("the degraded alert", 10, || degraded_alerts() == (1, 0)).await;
    // Kept for the pair before the death (the writes are queued).
    let redis = Redis::connect(&w.tracker.config.redis).await.unwrap();
    let saved = format!("dm:ha:{group}:degraded");
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let has: bool = redis::cmd("HEXISTS")
            .arg(&saved)
            .arg("a")
            .query_async(&mut redis.clone())
            .await
            .unwrap();
        if has {
            break;
        }
        assert!(
            Instant::now() < until,
            "a's degradation never reached Redis"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    active.proc.kill9();
    wait_for("the standby's takeover", 15, || leader(&standby) == 1.0).await;
    assert_eq!(
        standby.trunk_state("a"),
        "degraded",
        "a stays degraded at the new active:\n{}",
        standby.proc.output()
    );
    assert!(
        standby
            .proc
            .output()
            .contains("trunk degraded as the pair's last active left it"),
        "the takeover of a's state is in the log"
    );
    // Past the alert hold-down and a few quality ticks: no second alert,
    // no recovery sent.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(degraded_alerts(), (1, 0), "no alert at the takeover");
    assert_eq!(standby.trunk_state("a"), "degraded");
}

/// An adopted call whose BYE never comes is hung up by the new active at
/// `router.max_call_seconds` from its answer, as its own node would have:
/// a BYE to each side (along its route, to the trunk's Contact, with a
/// CSeq above any the caller sent through the new active), and its row
/// closed as `timeout` with the talk time to the limit; its record gone.
#[tokio::test(flavor = "multi_thread")]
async fn an_adopted_call_is_hung_up_at_the_maximum_duration() {
    let w = world("hamaxdur").await;
    let trunk = Peer::bind();
    let group = unique("pairm");
    let router =
        format!("max_call_seconds = 6\n[router.ha]\nenabled = true\ngroup = \"{group}\"\n");
    let mut active = TestRouter::start(
        &w.tracker.config,
        RouterOptions {
            trunks: &[("a", trunk.port())],
            router: &router,
            probe: "",
        },
    );
    let standby = active.standby();
    let rt: SocketAddr = format!("127.0.0.1:{}", active.sip_port).parse().unwrap();
    let carrier = Peer::bind();
    let call_id = format!("{}@ha", uuid::Uuid::new_v4().simple());
    let ok = answered_call(&carrier, &trunk, rt, &w.number, &call_id);
    let redis = Redis::connect(&w.tracker.config.redis).await.unwrap();
    let record = || {
        let (mut r, key) = (redis.clone(), format!("dm:dialog:{call_id}"));
        async move {
            let v: Option<String> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut r)
                .await
                .unwrap();
            v
        }
    };
    let until = Instant::now() + Duration::from_secs(5);
    while record().await.is_none() {
        assert!(Instant::now() < until, "no dialog record for the call");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    active.proc.kill9();
    wait_for("the standby's takeover", 15, || leader(&standby) == 1.0).await;
    // An in-dialog request from the caller: the new active adopts the call.
    let from = format!("<sip:+79161234567@{}>;tag=ctag", carrier.addr);
    let info = in_dialog(
        "INFO",
        &contact(&ok),
        &carrier,
        rt,
        &from,
        &ok.header("to").unwrap(),
        &call_id,
        7,
        &rawsip::branch(),
        &[],
    );
    carrier.send(rt, &info);
    let fwd = trunk.expect(5 * S, "the INFO through the new active", |m| {
        m.is_request("INFO")
    });
    trunk.send(fwd.from, &fwd.reply(200, "", &[]));
    carrier.expect(3 * S, "200 to the INFO", |m| m.is_reply(200, "INFO"));

    let bye = carrier.expect(12 * S, "BYE to the caller at the maximum duration", |m| {
        m.is_request("BYE")
    });
    let after = bye.at - ok.at;
    assert!(
        after >= Duration::from_millis(5_900) && after <= Duration::from_millis(8_000),
        "BYE {after:?} after the answer"
    );
    let to_trunk = trunk.expect(3 * S, "BYE to the callee", |m| m.is_request("BYE"));
    assert_eq!(
        to_trunk.parsed().uri(),
        Some(format!("sip:pbx@{}", trunk.addr).as_str())
    );
    let cseq = |m: &rawsip::Msg| -> u32 {
        m.header("cseq")
            .and_then(|c| c.split_whitespace().next().and_then(|n| n.parse().ok()))
            .unwrap_or(0)
    };
    assert!(
        cseq(&to_trunk) > 7,
        "above the caller's INFO: {}",
        cseq(&to_trunk)
    );
    carrier.send(bye.from, &bye.reply(200, "", &[]));
    trunk.send(to_trunk.from, &to_trunk.reply(200, "", &[]));

    let rows = calls(&w, &w.number, 1).await;
    assert_eq!(
        (rows[0].disposition.as_str(), rows[0].talk_ms),
        ("timeout", 6_000),
        "{rows:?}"
    );
    let until = Instant::now() + Duration::from_secs(5);
    while record().await.is_some() {
        assert!(Instant::now() < until, "the dialog record is left");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
