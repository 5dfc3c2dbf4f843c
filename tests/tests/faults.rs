//! Fault tests: nothing is lost when ClickHouse goes away under load or the
//! router is killed mid-load. Each asserts exact row counts at the end.
//! They own a private ClickHouse (they stop it), so they run on their own.

use std::time::Duration;

use dialmark_e2e::env::{unique, unique_number};
use dialmark_e2e::process::free_port;
use dialmark_e2e::router::{RouterOptions, TestRouter};
use dialmark_e2e::services::PrivateClickHouse;
use dialmark_e2e::sipp::{self, Scenario, Uas};
use dialmark_e2e::tracker::{config_on, single_redis, TestTracker};
use dialmark_tracker::inventory::{AddNumbers, PoolDef, Site};

async fn provision(t: &TestTracker) -> String {
    let inv = &t.state.inventory;
    let (site, pool) = (unique("site"), unique("pool"));
    inv.put_site(Site {
        id: site.clone(),
        origins: vec![],
        replace: vec!["+74950000000".into()],
        display_mask: String::new(),
        default_pool: pool.clone(),
        geo_pools: vec![],
    })
    .await
    .unwrap();
    inv.put_pool(PoolDef {
        id: pool.clone(),
        site,
        overflow_number: None,
        destinations: vec!["+74951234567".into()],
        trunk_group: "default".into(),
    })
    .await
    .unwrap();
    let number = unique_number();
    inv.add_numbers(
        AddNumbers {
            numbers: vec![number.clone()],
            pool: Some(pool),
            ..Default::default()
        },
        "test",
        dialmark_schemas::unix_now(),
    )
    .await
    .unwrap();
    number
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
        .query("SELECT count(), uniqExact(sip_call_id) FROM calls WHERE number = ? AND disposition = 'answered'")
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
            &["-r", "20", "-d", "300", "-recv_timeout", "4000"],
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
}
