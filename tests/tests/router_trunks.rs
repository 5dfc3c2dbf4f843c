//! Trunk settings that do what they say, counted over real SIPp trunks:
//! `weight` shares the calls of equal-priority trunks in proportion,
//! `max_cps` caps the attempts a trunk starts per second (the next trunk
//! gets the rest, and the skips are counted), `max_calls` caps a trunk's
//! calls at once.

use std::time::Duration;

use dialmark_e2e::process::free_port;
use dialmark_e2e::router::{RouterOptions, TestRouter};
use dialmark_e2e::sipp::{self, Scenario, Uas};
use dialmark_e2e::world::{place_calls, world, World};

fn trunks(list: &[(&str, u16, &str)]) -> String {
    list.iter()
        .map(|(name, port, extra)| {
            format!(
                "[[router.trunks]]\nname = \"{name}\"\naddress = \"127.0.0.1:{port}\"\n{extra}\n"
            )
        })
        .collect()
}

fn start(w: &World, toml: &str) -> TestRouter {
    TestRouter::start(
        &w.tracker.config,
        RouterOptions {
            trunks: &[],
            router: toml,
            probe: "",
        },
    )
}

/// Attempts per trunk of the number's calls, once there are `want` calls.
async fn per_trunk(w: &World, want: u64) -> Vec<(String, u64)> {
    let db = dialmark_schemas::ch::client(&w.tracker.config.clickhouse);
    let mut rows: Vec<(String, u64)> = Vec::new();
    for _ in 0..100 {
        rows = db
            .query(
                "SELECT trunk, count() FROM call_attempts FINAL \
                 WHERE call_id IN (SELECT call_id FROM calls WHERE number = ? AND ended != 0) GROUP BY trunk ORDER BY trunk",
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

async fn load(r: &TestRouter, w: &World, calls: u32, extra: &[&str]) -> sipp::UacRun {
    place_calls(
        r.sip_port,
        &w.number,
        Scenario::Builtin("uac"),
        calls,
        extra,
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn weight_shares_calls_in_proportion() {
    let w = world("tweight").await;
    let (pa, pb) = (free_port(), free_port());
    let _a = Uas::start(pa, Scenario::Builtin("uas"));
    let _b = Uas::start(pb, Scenario::Builtin("uas"));
    let r = start(
        &w,
        &trunks(&[("a", pa, "weight = 1"), ("b", pb, "weight = 3")]),
    );
    let run = load(&r, &w, 40, &["-r", "20", "-d", "100"]).await;
    assert!(run.success, "{}\n{}", run.output, r.proc.output());
    let rows = per_trunk(&w, 40).await;
    let got = |t: &str| rows.iter().find(|r| r.0 == t).map_or(0, |r| r.1);
    assert_eq!(got("a") + got("b"), 40, "{rows:?}");
    assert!(
        (8..=12).contains(&got("a")),
        "weights 1:3 over 40 calls: {rows:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn max_cps_sends_the_excess_to_the_next_trunk_and_counts_it() {
    let w = world("tcps").await;
    let (pa, pb) = (free_port(), free_port());
    let _a = Uas::start(pa, Scenario::Builtin("uas"));
    let _b = Uas::start(pb, Scenario::Builtin("uas"));
    let r = start(
        &w,
        &trunks(&[
            ("a", pa, "priority = 1\nmax_cps = 5"),
            ("b", pb, "priority = 2"),
        ]),
    );
    let run = load(&r, &w, 60, &["-r", "20", "-d", "100"]).await;
    assert!(run.success, "{}\n{}", run.output, r.proc.output());
    let rows = per_trunk(&w, 60).await;
    let got = |t: &str| rows.iter().find(|r| r.0 == t).map_or(0, |r| r.1);
    assert_eq!(got("a") + got("b"), 60, "{rows:?}");
    assert!(got("b") >= 30, "the excess went to b: {rows:?}");
    // No second saw more than 5 attempts start on a (one more may slip
    // in where two shards decide at once).
    let db = dialmark_schemas::ch::client(&w.tracker.config.clickhouse);
    let busiest: u64 = db
        .query(
            "SELECT max(n) FROM (SELECT started, count() AS n FROM call_attempts FINAL \
             WHERE trunk = 'a' AND call_id IN (SELECT call_id FROM calls WHERE number = ?) GROUP BY started)",
        )
        .bind(&w.number)
        .fetch_one()
        .await
        .unwrap();
    assert!(
        busiest <= 6,
        "{busiest} attempts in one second on a trunk capped at 5"
    );
    let skips: f64 = r
        .metric("dialmark_trunk_cps_skips_total{trunk=\"a\"}")
        .iter()
        .map(|(_, v)| v)
        .sum();
    assert_eq!(skips as u64, got("b"), "every call sent past a was counted");
}

#[tokio::test(flavor = "multi_thread")]
async fn max_calls_caps_a_trunks_calls_at_once() {
    let w = world("tcalls").await;
    let (pa, pb) = (free_port(), free_port());
    let _a = Uas::start(pa, Scenario::Builtin("uas"));
    let _b = Uas::start(pb, Scenario::Builtin("uas"));
    let r = start(
        &w,
        &trunks(&[
            ("a", pa, "priority = 1\nmax_calls = 3"),
            ("b", pb, "priority = 2"),
        ]),
    );
    let placing = {
        let (port, number) = (r.sip_port, w.number.clone());
        tokio::task::spawn_blocking(move || {
            sipp::uac(
                port,
                &number,
                Scenario::Builtin("uac"),
                "127.0.0.1",
                12,
                &["-r", "12", "-d", "2000"],
            )
        })
    };
    let mut peak_a = 0;
    for _ in 0..30 {
        let s = r.status();
        let a = s["trunks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == "a")
            .and_then(|t| t["active_calls"].as_u64())
            .unwrap_or(0);
        peak_a = peak_a.max(a);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let run = placing.await.unwrap();
    assert!(run.success, "{}\n{}", run.output, r.proc.output());
    assert_eq!(peak_a, 3, "a carried its 3 calls at once, never more");
    let rows = per_trunk(&w, 12).await;
    let got = |t: &str| rows.iter().find(|r| r.0 == t).map_or(0, |r| r.1);
    assert_eq!((got("a"), got("b")), (3, 9), "{rows:?}");
}
