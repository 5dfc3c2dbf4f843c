//! dialmark on a ClickHouse cluster of two real servers, one shard each
//! (started by `ops/test`): the migrations make the local tables on both
//! and Distributed tables over them; the sink's rows land on both shards,
//! every version of a row on the same one, and read back whole through the
//! Distributed tables the moment the sink has them acknowledged; a schema
//! upgraded on the cluster brings the Distributed tables' columns along; a
//! cluster that does not match the config is refused with the reason.
//! The reports over the cluster are compared with one server's answers by
//! `schemas/check/check_reports.py --cluster` (also in `ops/test`).

use std::time::Duration;

use dialmark_e2e::cluster::{attempt, drop_all, wait_inserted};
use dialmark_e2e::env;
use dialmark_schemas::config::{ClickHouseConfig, SinkConfig};
use dialmark_schemas::rows::CallAttempt;
use dialmark_schemas::sink::Sink;
use dialmark_schemas::{ch, cluster, migrate, Error};

const ID_BASE: u128 = 0xd1a1_0000_0000;

/// A number from one server, with no database selected.
async fn on(cfg: &ClickHouseConfig, url: &str, sql: &str) -> u64 {
    ch::member_client(cfg, url)
        .query(sql)
        .fetch_one()
        .await
        .unwrap_or_else(|e| panic!("{url}: {sql}: {e}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn sink_rows_land_on_both_shards_and_read_back_whole() {
    const CALLS: u32 = 400;
    let cfg = env::clickhouse_cluster("cluster_sink");
    let report = migrate::run(&cfg).await.unwrap();
    assert_eq!(report.applied.len(), migrate::MIGRATIONS.len());
    let again = migrate::run(&cfg).await.unwrap();
    assert!(again.applied.is_empty(), "{again:?}");

    // Every call's attempt twice: the first row, then its rewrite after a
    // late reply (a higher version, the talk time corrected), as the
    // router writes them.
    let spool = env::scratch_dir("cluster-sink");
    let sc = SinkConfig {
        batch_rows: 150,
        flush_ms: 50,
        spool_dir: spool,
        ..SinkConfig::default()
    };
    let (sink, task) =
        Sink::<CallAttempt>::spawn(ch::client(&cfg), &sc, "test", Duration::ZERO).unwrap();
    for call in 0..CALLS {
        sink.push(attempt(ID_BASE, call, 1, 1000)).unwrap();
    }
    for call in 0..CALLS {
        sink.push(attempt(ID_BASE, call, 2, 57_000)).unwrap();
    }
    wait_inserted(&sink, u64::from(2 * CALLS), Duration::from_secs(10)).await;
    drop(sink);
    task.await.unwrap();

    // Acknowledged means on the shards (insert_distributed_sync): no wait.
    // (Counts without FINAL would depend on when the shards merged the
    // two versions.)
    let local = cluster::local_database(&cfg.database);
    let mut calls = Vec::new();
    for url in &cfg.servers {
        calls.push(
            on(
                &cfg,
                url,
                &format!("SELECT uniqExact(call_id) FROM {local}.call_attempts"),
            )
            .await,
        );
    }
    assert!(calls.iter().all(|&n| n > 0), "calls per shard {calls:?}");
    // Both versions of a call on the same shard: the calls per shard add
    // up to the calls, none on two shards.
    assert_eq!(calls.iter().sum::<u64>(), u64::from(CALLS), "{calls:?}");

    // Through the Distributed table, from either server: FINAL keeps the
    // rewrite of every call, once.
    for url in &cfg.servers {
        let db = ClickHouseConfig {
            url: url.clone(),
            ..cfg.clone()
        };
        let (n, talk): (u64, u64) = ch::client(&db)
            .query("SELECT count(), sum(talk_ms) FROM call_attempts FINAL")
            .fetch_one()
            .await
            .unwrap();
        assert_eq!(
            (n, talk),
            (u64::from(CALLS), u64::from(CALLS) * 57_000),
            "via {url}"
        );
        // An IN over another Distributed table (GLOBAL on a cluster).
        let n: u64 = ch::client(&db)
            .query(
                "SELECT count() FROM call_attempts FINAL WHERE call_id IN \
                 (SELECT call_id FROM call_attempts WHERE version = 2 AND started % 2 = 0)",
            )
            .fetch_one()
            .await
            .unwrap();
        assert_eq!(n, u64::from(CALLS / 2), "via {url}");
    }
    drop_all(&cfg).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upgraded_cluster_has_the_new_columns_in_its_distributed_tables() {
    let cfg = env::clickhouse_cluster("cluster_upgrade");
    // A cluster made by an older release: migrations up to 0005.
    let old = cluster::apply_list(&cfg, &migrate::MIGRATIONS[..5])
        .await
        .unwrap();
    assert_eq!(old.applied, [1, 2, 3, 4, 5]);
    let up = migrate::run(&cfg).await.unwrap();
    assert_eq!(
        up.applied,
        (6..=migrate::MIGRATIONS.len() as u32).collect::<Vec<_>>()
    );
    let local = cluster::local_database(&cfg.database);
    let describe = |db: String, table: &'static str| {
        let url = cfg.servers[1].clone();
        let cfg = cfg.clone();
        async move {
            ch::member_client(&cfg, &url)
                .query(
                    "SELECT concat(name, ' ', type, ' ', default_kind, ' ', default_expression) \
                     FROM system.columns WHERE database = ? AND table = ?",
                )
                .bind(db)
                .bind(table)
                .fetch_all::<String>()
                .await
                .unwrap()
        }
    };
    for table in ["call_attempts", "calls", "trunk_events", "visits"] {
        let want = describe(local.clone(), table).await;
        let have = describe(cfg.database.clone(), table).await;
        assert_eq!(have, want, "{table}: Distributed vs local columns");
    }
    // 0006's column with its DEFAULT and 0012's, in the Distributed table.
    let cols = describe(cfg.database.clone(), "call_attempts").await;
    assert!(
        cols.iter()
            .any(|c| c.starts_with("duration_ms UInt32 DEFAULT")),
        "{cols:?}"
    );
    assert!(
        cols.iter().any(|c| c.starts_with("site String")),
        "{cols:?}"
    );
    drop_all(&cfg).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_unlike_the_config_is_refused_with_the_reason() {
    let cfg = env::clickhouse_cluster("cluster_refused");
    // One server listed of the cluster's two.
    let one = ClickHouseConfig {
        servers: cfg.servers[..1].to_vec(),
        ..cfg.clone()
    };
    let err = migrate::run(&one).await.unwrap_err();
    assert!(
        matches!(&err, Error::Cluster { reason, .. } if reason.contains("has 2 shards")),
        "{err}"
    );
    let unknown = ClickHouseConfig {
        cluster: "no_such_cluster".into(),
        ..cfg.clone()
    };
    let err = migrate::run(&unknown).await.unwrap_err().to_string();
    assert!(err.contains("knows no cluster 'no_such_cluster'"), "{err}");
    // The same server twice (as two URLs) is one shard, not two.
    let twice = ClickHouseConfig {
        servers: vec![
            cfg.servers[0].clone(),
            cfg.servers[0].replace("127.0.0.1", "localhost"),
        ],
        ..cfg.clone()
    };
    let err = migrate::run(&twice).await.unwrap_err().to_string();
    assert!(err.contains("is shard") && err.contains(", like "), "{err}");
    drop_all(&cfg).await;
}
