//! Tiny, bounded runs of the load benches' own tools (`benches/src/bin`),
//! so a change to the snippet API, the rows or the sink that would break a
//! bench fails here, not on the next bench run: `tracker_load` against a
//! real tracker in both of its modes, and the sink bench against the test
//! ClickHouse. The benches themselves (`benches/*/run`) stay out of
//! `ops/test`: they take minutes and measure the whole machine.

use std::collections::BTreeMap;
use std::process::{Command, Output};

use dialmark_e2e::env::{clickhouse, scratch_dir};
use dialmark_e2e::process::bin;
use dialmark_e2e::tracker::{self, provision, TestTracker};
use dialmark_tracker::inventory::Site;
use serde_json::Value;

const ORIGIN: &str = "http://shop.bench.test";

/// Runs one of the bench tools to its end; fails the test unless it succeeded.
fn run(tool: &str, cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {tool}: {e}"));
    assert!(
        out.status.success(),
        "{tool} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `tracker_load` against `t` for `site`; its JSON summary.
fn tracker_load(t: &TestTracker, site: &str, args: &[&str]) -> Value {
    let out = run(
        "tracker_load",
        Command::new(bin("tracker_load"))
            .args([
                "--addr",
                &t.addr.to_string(),
                "--site",
                site,
                "--origin",
                ORIGIN,
            ])
            .args(args),
    );
    serde_json::from_slice(&out.stdout).expect("tracker_load prints one JSON object")
}

fn counts(v: &Value) -> BTreeMap<String, u64> {
    serde_json::from_value(v.clone()).expect("a map of counts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracker_load_measures_real_visits_in_both_modes() {
    // One load generator on one address: no per-network lease cap.
    let config = tracker::config(
        "bench_tools_load",
        tracker::single_redis(),
        "leases_per_network_per_minute = 0\n",
    )
    .await;
    let t = TestTracker::start(config).await;
    let (site, pool, _) = provision(&t, 1500).await;
    t.state
        .inventory
        .put_site(Site {
            id: site.clone(),
            origins: vec![ORIGIN.into()],
            replace: vec!["+74950000000".into()],
            display_mask: String::new(),
            default_pool: pool,
            geo_pools: vec![],
            ignore_referrers: vec![],
            lines: vec![],
            webhook: None,
        })
        .await
        .expect("site with the load generator's origin");
    let lat = scratch_dir("tracker-load").join("latencies");

    // Open loop: 150 visits/s, each due in the measured second counted once.
    let open = tracker_load(
        &t,
        &site,
        &[
            "--rate",
            "150",
            "--seconds",
            "1",
            "--warmup",
            "0.2",
            "--connections",
            "4",
            "--keepalives",
            "1",
            "--latencies",
            lat.to_str().expect("utf-8 path"),
        ],
    );
    let visits = open["visits"].as_u64().expect("visits");
    assert!(
        (145..=155).contains(&visits),
        "open loop counted {visits} visits: {open}"
    );
    assert_eq!(open["mode"], "open");
    assert_eq!(open["keepalives"].as_u64(), Some(visits), "{open}");
    assert_eq!(
        counts(&open["kinds"]),
        BTreeMap::from([("pool".into(), visits)]),
        "{open}"
    );
    assert_eq!(
        counts(&open["status"]),
        BTreeMap::from([("200".into(), 2 * visits)]),
        "{open}"
    );
    assert_eq!(open["io_errors"], 0);
    let lines = std::fs::read_to_string(&lat).expect("latencies file");
    let mut us: Vec<u64> = lines
        .lines()
        .map(|l| {
            let f: Vec<u64> = l.split(' ').filter_map(|x| x.parse().ok()).collect();
            assert_eq!(f.len(), 2, "START_US LATENCY_US: {l:?}");
            f[1]
        })
        .collect();
    assert_eq!(us.len() as u64, visits, "one line per counted visit");
    // The reported percentiles are those of the visits it wrote down.
    us.sort_unstable();
    let rank = |p: f64| us[((p * us.len() as f64).ceil() as usize).clamp(1, us.len()) - 1];
    for (name, p) in [("p50", 0.5), ("p99", 0.99), ("max", 1.0)] {
        let reported = open["visit_ms"][name].as_f64().expect(name);
        assert!(
            (reported - rank(p) as f64 / 1000.0).abs() < 1e-9,
            "{name} {reported} ms is not the file's {} us: {open}",
            rank(p)
        );
    }
    assert!(rank(0.5) > 0, "a visit takes time: {open}");

    // Closed loop: as fast as two connections go, for a moment.
    let closed = tracker_load(
        &t,
        &site,
        &["--seconds", "0.3", "--warmup", "0.1", "--connections", "2"],
    );
    let visits = closed["visits"].as_u64().expect("visits");
    assert!(visits > 0, "{closed}");
    assert_eq!(closed["mode"], "closed");
    assert_eq!(
        counts(&closed["kinds"]),
        BTreeMap::from([("pool".into(), visits)]),
        "{closed}"
    );
    assert_eq!(closed["io_errors"], 0);
}

#[test]
fn sink_bench_gets_every_row_into_clickhouse() {
    let ch = clickhouse("bench_tools_sink");
    let dir = scratch_dir("sink-bench");
    let md = dir.join("result.md");
    run(
        "the sink bench",
        Command::new(bin("sink"))
            .args(["--clickhouse", &ch.url, "--database", &ch.database])
            .args(["--rows", "3000", "--batches", "1000", "--fsync-rows", "20"])
            .arg("--spool")
            .arg(dir.join("spool"))
            .arg("--markdown")
            .arg(&md),
    );
    let md = std::fs::read_to_string(&md).expect("markdown written");
    assert!(
        md.contains("| 1000 |") && md.contains("3000 ✓ / 3000 ✓"),
        "every row of the live run and of the replay counted back:\n{md}"
    );
}
