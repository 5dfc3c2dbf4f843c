//! What the ClickHouse cluster tests share: dropping a test's databases on
//! every server, the call-attempt rows they write and waiting for the sink
//! to have inserted them.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use dialmark_schemas::config::ClickHouseConfig;
use dialmark_schemas::rows::{CallAttempt, Outcome, Table};
use dialmark_schemas::sink::Sink;
use dialmark_schemas::{ch, cluster};

/// Waits until `sink` has inserted `total` rows in all, failing after
/// `within`.
pub async fn wait_inserted<T: Table>(sink: &Sink<T>, total: u64, within: Duration) {
    let stats = sink.stats().clone();
    let until = Instant::now() + within;
    while stats.inserted.load(Ordering::Relaxed) < total && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stats.inserted.load(Ordering::Relaxed), total);
}

/// Drops the test's databases (`database` and its `_local`) on every
/// server of the cluster.
pub async fn drop_all(cfg: &ClickHouseConfig) {
    for url in &cfg.servers {
        let server = ch::member_client(cfg, url);
        for db in [cfg.database.clone(), cluster::local_database(&cfg.database)] {
            server
                .query(&format!("DROP DATABASE IF EXISTS {db}"))
                .execute()
                .await
                .unwrap();
        }
    }
}

/// An answered attempt of call number `call` (its id from `id_base`), at
/// row `version`, talking `talk_ms`.
pub fn attempt(id_base: u128, call: u32, version: u64, talk_ms: u32) -> CallAttempt {
    CallAttempt {
        call_id: uuid::Uuid::from_u128(id_base + u128::from(call)),
        attempt: 1,
        sip_call_id: format!("cluster-{id_base:x}-{call}"),
        trunk: "trunk-a".into(),
        destination: "+74951234567".into(),
        started: 1_800_000_000 + call,
        ended: 1_800_000_060 + call,
        pdd_ms: 900,
        answer_ms: 3000,
        talk_ms,
        final_code: 200,
        reason: String::new(),
        outcome: Outcome::Answered,
        failover: 0,
        version,
        duration_ms: 60_000,
        site: "shop".into(),
    }
}
