//! What a call to each kind of number gets and how it is recorded, end to
//! end (real tracker records in Redis, the router binary, SIPp, the rows in
//! ClickHouse): a static number carries its source label, an overflow
//! number says so, a lease that ended a moment ago still attributes the
//! call (and one that ended outside the window does not), stock numbers
//! are refused with the configured code (404, 410, 480), and a number the
//! router never saw while Redis is down is refused with 480 and recorded.

use std::time::Duration;

use clickhouse::Row;
use dialmark_e2e::env::unique_number;
use dialmark_e2e::process::free_port;
use dialmark_e2e::router::{RouterOptions, TestRouter};
use dialmark_e2e::services::PrivateRedis;
use dialmark_e2e::sipp::{self, Scenario, Uas};
use dialmark_e2e::tracker::{config, config_on, single_redis, TestTracker};
use dialmark_e2e::world::call;
use dialmark_tracker::inventory::{AddNumbers, PoolDef, Site};
use serde::Deserialize;

#[derive(Row, Deserialize, Debug, PartialEq)]
struct Row3 {
    disposition: String,
    final_code: u16,
    attribution: String,
    source_label: String,
    session_id: String,
    confidence: String,
}

/// The completed calls of `number`, once there are `want`.
async fn rows(t: &TestTracker, number: &str, want: usize) -> Vec<Row3> {
    let db = dialmark_schemas::ch::client(&t.config.clickhouse);
    let mut rows = Vec::new();
    for _ in 0..100 {
        rows = db
            .query(
                "SELECT toString(disposition), final_code, toString(attribution), source_label, session_id, toString(attribution_confidence) \
                 FROM calls FINAL WHERE number = ? AND ended != 0 ORDER BY received",
            )
            .bind(number)
            .fetch_all()
            .await
            .unwrap();
        if rows.len() >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(rows.len(), want, "calls of {number}: {rows:?}");
    rows
}

async fn place(r: &TestRouter, number: &str, scenario: Scenario) -> sipp::UacRun {
    call(r.sip_port, number, scenario, "127.0.0.1", &["-d", "200"]).await
}

fn expect(code: u16) -> Scenario {
    Scenario::File("uac_expect.xml", vec![("CODE", code.to_string())])
}

fn router(t: &TestTracker, trunk: u16, extra: &str) -> TestRouter {
    TestRouter::start(
        &t.config,
        RouterOptions {
            trunks: &[("b", trunk)],
            router: extra,
            probe: "",
        },
    )
}

/// A site with a pool that overflows to its own number, plus a static one.
async fn site(t: &TestTracker) -> (String, String, String, String) {
    let inv = &t.state.inventory;
    let (site, pool) = (
        dialmark_e2e::env::unique("site"),
        dialmark_e2e::env::unique("pool"),
    );
    let (pooled, overflow, stat) = (unique_number(), unique_number(), unique_number());
    inv.put_site(Site {
        id: site.clone(),
        origins: vec![dialmark_e2e::tracker::ORIGIN.into()],
        replace: vec!["+74950000000".into()],
        display_mask: String::new(),
        default_pool: pool.clone(),
        geo_pools: vec![],
        ignore_referrers: vec![],
        lines: vec![],
        webhook: None,
    })
    .await
    .unwrap();
    inv.put_pool(
        PoolDef {
            id: pool.clone(),
            site: site.clone(),
            overflow_number: Some(overflow.clone()),
            destinations: vec!["+74951234567".into()],
            trunk_group: "default".into(),
        },
        "test",
    )
    .await
    .unwrap();
    let now = dialmark_schemas::unix_now();
    inv.add_numbers(
        AddNumbers {
            numbers: vec![pooled.clone()],
            pool: Some(pool.clone()),
            ..Default::default()
        },
        "test",
        now,
    )
    .await
    .unwrap();
    inv.add_numbers(
        AddNumbers {
            numbers: vec![stat.clone()],
            site: Some(site.clone()),
            source_label: Some("billboard-tverskaya".into()),
            destinations: vec!["+74951234567".into()],
            ..Default::default()
        },
        "test",
        now,
    )
    .await
    .unwrap();
    (site, pooled, overflow, stat)
}

async fn visit(t: &TestTracker, site: &str) -> serde_json::Value {
    t.visit(serde_json::json!({"site": site, "url": "https://shop.test/?utm_source=google", "utm_source": "google"}))
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn static_and_overflow_numbers_are_attributed_on_the_call() {
    let t = TestTracker::start(config("nstatic", single_redis(), "").await).await;
    let (_, _, overflow, stat) = site(&t).await;
    let pb = free_port();
    let _b = Uas::start(pb, Scenario::Builtin("uas"));
    let r = router(&t, pb, "");
    for n in [&stat, &overflow] {
        let run = place(&r, n, Scenario::Builtin("uac")).await;
        assert!(run.success, "{}\n{}", run.output, r.proc.output());
    }
    let s = rows(&t, &stat, 1).await;
    assert_eq!(
        (
            s[0].disposition.as_str(),
            s[0].attribution.as_str(),
            s[0].source_label.as_str()
        ),
        ("answered", "static", "billboard-tverskaya")
    );
    let o = rows(&t, &overflow, 1).await;
    assert_eq!(
        (o[0].disposition.as_str(), o[0].attribution.as_str()),
        ("answered", "overflow")
    );
}

/// A lease that ended inside the attribution window still names its visit;
/// outside it, nobody.
#[tokio::test(flavor = "multi_thread")]
async fn a_recent_lease_attributes_a_call_inside_the_window_only() {
    let t = TestTracker::start(
        config(
            "nrecent",
            single_redis(),
            "hold_seconds = 1\nmax_hold_seconds = 1\nattribution_window_seconds = 3\ncooldown_seconds = 600",
        )
        .await,
    )
    .await;
    let (site, pooled, _, _) = site(&t).await;
    let v = visit(&t, &site).await;
    assert_eq!(v["number"], pooled.as_str(), "{v}");
    let session = v["session_id"].as_str().unwrap().to_string();
    let pb = free_port();
    let _b = Uas::start(pb, Scenario::Builtin("uas"));
    let r = router(&t, pb, "route_cache_ms = 100");
    // The lease ends after 1 s; the call 1 s later is inside the 3-s window.
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let run = place(&r, &pooled, Scenario::Builtin("uac")).await;
    assert!(run.success, "{}\n{}", run.output, r.proc.output());
    // 4 s later it is outside.
    tokio::time::sleep(Duration::from_millis(4_000)).await;
    let run = place(&r, &pooled, Scenario::Builtin("uac")).await;
    assert!(run.success, "{}", run.output);
    let c = rows(&t, &pooled, 2).await;
    assert_eq!(
        (
            c[0].attribution.as_str(),
            c[0].session_id.as_str(),
            c[0].confidence.as_str()
        ),
        ("recent_lease", session.as_str(), "recent_sole"),
        "inside the window: {c:?}"
    );
    assert_eq!(
        (
            c[1].attribution.as_str(),
            c[1].session_id.as_str(),
            c[1].confidence.as_str()
        ),
        ("none", "", "none"),
        "outside the window: {c:?}"
    );
}

/// Two leases of one number ended inside the window (the window counts
/// from each lease's end): the call goes to the latest, marked contested.
#[tokio::test(flavor = "multi_thread")]
async fn a_call_inside_two_leases_windows_is_contested() {
    let t = TestTracker::start(
        config(
            "ncontest",
            single_redis(),
            "hold_seconds = 1\nmax_hold_seconds = 1\nattribution_window_seconds = 8\ncooldown_seconds = 0",
        )
        .await,
    )
    .await;
    let (site, pooled, _, _) = site(&t).await;
    let first = visit(&t, &site).await;
    assert_eq!(first["number"], pooled.as_str(), "{first}");
    // The first lease ends after 1 s; a second visitor gets the number.
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let second = visit(&t, &site).await;
    assert_eq!(second["number"], pooled.as_str(), "{second}");
    assert_ne!(second["session_id"], first["session_id"]);
    let pb = free_port();
    let _b = Uas::start(pb, Scenario::Builtin("uas"));
    let r = router(&t, pb, "route_cache_ms = 100");
    // Both ended by now, both within 8 s.
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let run = place(&r, &pooled, Scenario::Builtin("uac")).await;
    assert!(run.success, "{}\n{}", run.output, r.proc.output());
    let c = rows(&t, &pooled, 1).await;
    assert_eq!(
        (
            c[0].attribution.as_str(),
            c[0].session_id.as_str(),
            c[0].confidence.as_str()
        ),
        (
            "recent_lease",
            second["session_id"].as_str().unwrap(),
            "recent_contested"
        ),
        "{c:?}"
    );
}

/// Stock numbers are refused with `router.reject_code` and recorded.
#[tokio::test(flavor = "multi_thread")]
async fn stock_numbers_get_the_configured_reject_code() {
    let t = TestTracker::start(config("nstock", single_redis(), "").await).await;
    let pb = free_port();
    let _b = Uas::start(pb, Scenario::Builtin("uas"));
    for code in [404u16, 410, 480] {
        let n = unique_number();
        t.state
            .inventory
            .add_numbers(
                AddNumbers {
                    numbers: vec![n.clone()],
                    ..Default::default()
                },
                "test",
                dialmark_schemas::unix_now(),
            )
            .await
            .unwrap();
        let r = router(&t, pb, &format!("reject_code = {code}"));
        let run = place(&r, &n, expect(code)).await;
        assert!(run.success, "stock with reject_code {code}: {}", run.output);
        let c = rows(&t, &n, 1).await;
        assert_eq!(
            (c[0].disposition.as_str(), c[0].final_code),
            ("rejected_stock", code)
        );
    }
}

/// Redis down and the number never looked up: the node cannot route it,
/// says 480 (not 503, which carriers read as "node down"), and records it.
#[tokio::test(flavor = "multi_thread")]
async fn an_uncached_number_while_redis_is_down_gets_480_and_a_row() {
    let redis = PrivateRedis::start();
    let t = TestTracker::start(
        config_on(dialmark_e2e::env::clickhouse("nredis"), redis.config(), "").await,
    )
    .await;
    let (_, pooled, _, _) = site(&t).await;
    let pb = free_port();
    let _b = Uas::start(pb, Scenario::Builtin("uas"));
    let r = router(&t, pb, "");
    redis.down();
    let run = place(&r, &pooled, expect(480)).await;
    assert!(run.success, "{}\n{}", run.output, r.proc.output());
    let c = rows(&t, &pooled, 1).await;
    assert_eq!(
        (c[0].disposition.as_str(), c[0].final_code),
        ("failed", 480)
    );
    assert!(
        r.proc.output().contains("number lookup impossible"),
        "{}",
        r.proc.output()
    );
    redis.up();
}
