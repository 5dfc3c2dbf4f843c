//! Fault tests: nothing is lost when ClickHouse goes away under load or the
//! router is killed mid-load. Each asserts exact row counts at the end.
//! They own a private ClickHouse (they stop it), so they run on their own.

use std::time::Duration;

use dialmark_e2e::process::free_port;
use dialmark_e2e::router::{RouterOptions, TestRouter};
use dialmark_e2e::services::{PrivateClickHouse, PrivateRedis};
use dialmark_e2e::sipp::{self, Scenario, Uas};
use dialmark_e2e::tracker::{config_on, single_redis, TestTracker};
use dialmark_e2e::{env, webhook};

async fn provision(t: &TestTracker) -> String {
    provision_site(t).await.1
}

/// A site with a pool of one number: (site, number).
async fn provision_site(t: &TestTracker) -> (String, String) {
    let (site, _, numbers) = dialmark_e2e::tracker::provision(t, 1).await;
    (site, numbers[0].clone())
}

/// (rows in `calls` after merge, distinct calls, attempts after merge).
async fn counts(cfg: &dialmark_schemas::config::ClickHouseConfig, number: &str) -> (u64, u64, u64) {
    let db = dialmark_schemas::ch::client(cfg);
    for t in ["calls", "call_attempts"] {
        // Merge now: what remains is what a report sees.
        let _ = db
            .query(&format!("OPTIMIZE TABLE {t} FINAL"))
            .execute()
            .await;
    }
    let (rows, distinct): (u64, u64) = db
        .query("SELECT count(), uniqExact(sip_call_id) FROM calls WHERE number = ? AND disposition = 'answered' AND ended != 0")
        .bind(number)
        .fetch_one()
        .await
        .unwrap_or((0, 0));
    let attempts: u64 = db
        .query("SELECT count() FROM call_attempts WHERE call_id IN (SELECT call_id FROM calls WHERE number = ?)")
        .bind(number)
        .fetch_one()
        .await
        .unwrap_or(0);
    (rows, distinct, attempts)
}

async fn wait_counts(
    cfg: &dialmark_schemas::config::ClickHouseConfig,
    number: &str,
    want: u64,
    secs: u64,
) -> (u64, u64, u64) {
    let mut c = (0, 0, 0);
    for _ in 0..secs * 2 {
        c = counts(cfg, number).await;
        if c.1 >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    c
}

#[tokio::test(flavor = "multi_thread")]
async fn clickhouse_down_for_30s_under_load_loses_nothing() {
    let ch = PrivateClickHouse::start();
    let t = TestTracker::start(config_on(ch.config("faultch"), single_redis(), "").await).await;
    let number = provision(&t).await;
    let pb = free_port();
    let _b = Uas::start(pb, Scenario::Builtin("uas"));
    let r = TestRouter::start(
        &t.config,
        RouterOptions {
            trunks: &[("b", pb)],
            router: "",
            probe: "",
        },
    );

    let port = r.sip_port;
    let n = number.clone();
    let load = tokio::task::spawn_blocking(move || {
        sipp::uac(
            port,
            &n,
            Scenario::Builtin("uac"),
            "127.0.0.1",
            200,
            &["-r", "20", "-d", "300"],
        )
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let down = std::time::Instant::now();
    ch.down();
    let run = load.await.unwrap();
    assert_eq!(
        run.successful(),
        200,
        "every call completes while ClickHouse is down:\n{}",
        run.output
    );
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(down.elapsed())).await;
    ch.up();
    let (rows, distinct, attempts) = wait_counts(&t.config.clickhouse, &number, 200, 40).await;
    assert_eq!(
        (rows, distinct, attempts),
        (200, 200, 200),
        "every call and attempt exactly once\n{}",
        r.proc.output()
    );
}

/// A router (re)started while ClickHouse is away serves calls at once and
/// delivers their rows once ClickHouse is back and migrated, into a
/// database it never saw before: none lost, none set aside as rejected.
#[tokio::test(flavor = "multi_thread")]
async fn router_started_while_clickhouse_is_down_routes_and_delivers_later() {
    let ch = PrivateClickHouse::start();
    let t = TestTracker::start(config_on(ch.config("chstart"), single_redis(), "").await).await;
    let number = provision(&t).await;
    let mut rc = t.config.clone();
    rc.clickhouse.database = "t_chstart_router".into();
    ch.down();
    let pb = free_port();
    let _b = Uas::start(pb, Scenario::Builtin("uas"));
    let r = TestRouter::start(
        &rc,
        RouterOptions {
            trunks: &[("b", pb)],
            router: "",
            probe: "",
        },
    );
    let port = r.sip_port;
    let n = number.clone();
    let run = tokio::task::spawn_blocking(move || {
        sipp::uac(
            port,
            &n,
            Scenario::Builtin("uac"),
            "127.0.0.1",
            20,
            &["-r", "10", "-d", "200"],
        )
    })
    .await
    .unwrap();
    assert_eq!(
        run.successful(),
        20,
        "calls route while ClickHouse is down:\n{}",
        run.output
    );
    assert!(
        r.proc
            .output()
            .contains("ClickHouse is unreachable: serving anyway"),
        "{}",
        r.proc.output()
    );
    ch.up();
    let (rows, distinct, attempts) = wait_counts(&rc.clickhouse, &number, 20, 40).await;
    assert_eq!(
        (rows, distinct, attempts),
        (20, 20, 20),
        "every call and attempt once, after the migrations ran\n{}",
        r.proc.output()
    );
    assert!(r.proc.output().contains("ClickHouse is back and migrated"));
}

#[tokio::test(flavor = "multi_thread")]
async fn router_killed_mid_load_loses_no_finished_call() {
    let ch = PrivateClickHouse::start();
    let t = TestTracker::start(config_on(ch.config("faultkill"), single_redis(), "").await).await;
    let number = provision(&t).await;
    let pb = free_port();
    let _b = Uas::start(pb, Scenario::Builtin("uas"));
    let mut r = TestRouter::start(
        &t.config,
        RouterOptions {
            trunks: &[("b", pb)],
            router: "",
            probe: "",
        },
    );

    let port = r.sip_port;
    let n = number.clone();
    // Some calls finish, some are cut by the kill and time out on the carrier side.
    let load = tokio::task::spawn_blocking(move || {
        sipp::uac(
            port,
            &n,
            Scenario::Builtin("uac"),
            "127.0.0.1",
            120,
            &["-r", "20", "-d", "1000", "-recv_timeout", "4000"],
        )
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    r.proc.kill9();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Restart on the same config and spool: the spool is replayed.
    r.restart();
    let run = load.await.unwrap();
    let ok = run.successful();
    assert!(
        ok > 20 && ok < 120,
        "the kill must cut the load somewhere in the middle: {ok} succeeded\n{}",
        run.output
    );
    let (rows, distinct, _) = wait_counts(&t.config.clickhouse, &number, ok, 30).await;
    assert_eq!(
        distinct,
        ok,
        "every call the carrier saw completed is recorded\n{}",
        r.proc.output()
    );
    assert_eq!(rows, distinct, "and recorded once");
    // Calls that were talking at the kill had a row from their answer;
    // the restart closed them as node_lost: none is left open.
    let db = dialmark_schemas::ch::client(&t.config.clickhouse);
    let (lost, open): (u64, u64) = db
        .query(
            "SELECT countIf(disposition = 'node_lost' AND ended >= answered AND answered > 0), countIf(ended = 0) \
             FROM calls FINAL WHERE number = ?",
        )
        .bind(&number)
        .fetch_one()
        .await
        .unwrap();
    assert!(
        lost >= 1,
        "the calls up at the kill are on record as node_lost\n{}",
        r.proc.output()
    );
    assert_eq!(open, 0, "no call is left open");
}

async fn visit(t: &TestTracker, site: &str) -> serde_json::Value {
    t.visit(serde_json::json!({"site": site, "url": "https://shop.test/?utm_source=google", "utm_source": "google"}))
        .await
}

async fn answered(
    cfg: &dialmark_schemas::config::ClickHouseConfig,
    number: &str,
    want: u64,
) -> u64 {
    let mut n = 0;
    for _ in 0..60 {
        n = counts(cfg, number).await.1;
        if n >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    n
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_down_keeps_cached_numbers_routing_and_recovers_without_restart() {
    let redis = PrivateRedis::start();
    let t = TestTracker::start(config_on(env::clickhouse("faultredis"), redis.config(), "").await)
        .await;
    let (site, number) = provision_site(&t).await;
    let pb = free_port();
    let _b = Uas::start(pb, Scenario::Builtin("uas"));
    let r = TestRouter::start(
        &t.config,
        RouterOptions {
            trunks: &[("b", pb)],
            router: "route_cache_ms = 300",
            probe: "",
        },
    );
    let call = |port: u16, n: String| {
        tokio::task::spawn_blocking(move || {
            sipp::uac(
                port,
                &n,
                Scenario::Builtin("uac"),
                "127.0.0.1",
                1,
                &["-d", "200"],
            )
        })
    };

    assert!(
        call(r.sip_port, number.clone()).await.unwrap().success,
        "before the outage"
    );
    redis.down();
    tokio::time::sleep(Duration::from_millis(600)).await; // the cached record is stale now
    let run = call(r.sip_port, number.clone()).await.unwrap();
    assert!(
        run.success,
        "a cached number keeps routing while Redis is down\n{}",
        r.proc.output()
    );
    let v = visit(&t, &site).await;
    assert_eq!(
        (v["kind"].as_str(), v["number"].as_str()),
        (Some("static"), Some("+74950000000")),
        "snippet keeps the site's number: {v}"
    );

    redis.up();
    let mut kind = String::new();
    for _ in 0..40 {
        kind = visit(&t, &site).await["kind"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if kind == "pool" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(kind, "pool", "the tracker recovers without a restart");
    assert!(
        call(r.sip_port, number.clone()).await.unwrap().success,
        "after the outage"
    );
    assert_eq!(
        answered(&t.config.clickhouse, &number, 3).await,
        3,
        "all three calls recorded"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn trunk_killed_mid_load_fails_over_without_long_waits_and_alerts() {
    let t = TestTracker::start(config_on(env::clickhouse("faulttrunk"), single_redis(), "").await)
        .await;
    let number = provision(&t).await;
    let (hook_port, hooks) = webhook::receiver();
    let (pa, pb) = (free_port(), free_port());
    let a = Uas::start(pa, Scenario::Builtin("uas"));
    let _b = Uas::start(pb, Scenario::Builtin("uas"));
    let extra = format!("alert_webhook = \"http://127.0.0.1:{hook_port}/\"");
    let r = TestRouter::start(
        &t.config,
        RouterOptions {
            trunks: &[("a", pa), ("b", pb)],
            router: &extra,
            probe: "interval_seconds = 1\ntimeout_ms = 400\ndown_after = 2\nup_after = 1",
        },
    );
    let port = r.sip_port;
    let n = number.clone();
    let load = tokio::task::spawn_blocking(move || {
        sipp::uac(
            port,
            &n,
            Scenario::Builtin("uac"),
            "127.0.0.1",
            60,
            &["-r", "10", "-d", "200", "-recv_timeout", "3000"],
        )
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(a); // trunk A dies mid-load
    let run = load.await.unwrap();
    // Calls talking on A when it died lose their BYE reply (the dialog was
    // on A): at most the calls of the last ~0.3 s before the kill.
    let ok = run.successful();
    assert!(
        ok >= 56,
        "calls are failed over to B ({ok} of 60 succeeded):\n{}\n{}",
        run.output,
        r.proc.output()
    );
    // Every call was answered (on A before the kill, on B after it).
    assert_eq!(answered(&t.config.clickhouse, &number, 60).await, 60);
    for _ in 0..40 {
        if hooks
            .lock()
            .unwrap()
            .iter()
            .any(|b| b.body.contains("DialmarkTrunkDown") && b.body.contains("\"a\""))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        hooks
            .lock()
            .unwrap()
            .iter()
            .any(|b| b.body.contains("DialmarkTrunkDown") && b.body.contains("\"a\"")),
        "trunk a down alert"
    );
    // Callers never wait on a dead trunk longer than the failover timer
    // (1 s here): calls sent to A after it died and before the probes
    // downed it timed out at the timer, measured in milliseconds.
    let db = dialmark_schemas::ch::client(&t.config.clickhouse);
    let (timeouts, longest): (u64, u32) = db
        .query(
            "SELECT count(), max(duration_ms) FROM call_attempts FINAL \
             WHERE trunk = 'a' AND outcome = 'timeout' AND call_id IN (SELECT call_id FROM calls WHERE number = ?)",
        )
        .bind(&number)
        .fetch_one()
        .await
        .unwrap();
    assert!(
        timeouts > 0,
        "no call timed out on the dead trunk: nothing measured"
    );
    assert!(
        (1_000..=1_500).contains(&longest),
        "a timed-out attempt lasted {longest} ms ({timeouts} timeouts); the timer is 1000 ms"
    );
}

/// Visits answered while ClickHouse is away wait in the tracker's spool and
/// land exactly once when it is back (counted without FINAL: no duplicate
/// is stored at all).
#[tokio::test(flavor = "multi_thread")]
async fn tracker_visits_survive_a_clickhouse_outage_exactly_once() {
    let ch = PrivateClickHouse::start();
    let t = TestTracker::start(config_on(ch.config("faultvisits"), single_redis(), "").await).await;
    let (site, _) = provision_site(&t).await;
    ch.down();
    for _ in 0..40 {
        let v = visit(&t, &site).await;
        assert!(
            v["number"].is_string(),
            "visits are answered while ClickHouse is down: {v}"
        );
    }
    ch.up();
    let db = dialmark_schemas::ch::client(&t.config.clickhouse);
    let mut n = 0u64;
    for _ in 0..120 {
        n = db
            .query("SELECT count() FROM visits WHERE site = ?")
            .bind(&site)
            .fetch_one()
            .await
            .unwrap_or(0);
        if n >= 40 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(n, 40, "every visit, once");
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let again: u64 = db
        .query("SELECT count() FROM visits WHERE site = ?")
        .bind(&site)
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(again, 40, "and no replay after");
}
