//! The migration runner against the real ClickHouse 18.16 started by ops/test.

use clickhouse::Row;
use dialmark_e2e::env;
use dialmark_schemas::{ch, migrate};
use serde::{Deserialize, Serialize};

#[derive(Row, Serialize, Deserialize)]
struct Applied {
    version: u32,
    name: String,
    checksum: String,
    applied_at: u32,
}

#[tokio::test]
async fn applies_once_then_skips_and_detects_tampering() {
    let cfg = env::clickhouse("migrate");
    let server = ch::server_client(&cfg);

    let first = migrate::apply(&server, &cfg.database).await.unwrap();
    let all: Vec<u32> = migrate::MIGRATIONS.iter().map(|m| m.version).collect();
    assert_eq!(first.applied, all);
    assert!(first.skipped.is_empty());

    let db = ch::client(&cfg);
    let tables: Vec<String> = db
        .query("SELECT name FROM system.tables WHERE database = ? ORDER BY name")
        .bind(&cfg.database)
        .fetch_all()
        .await
        .unwrap();
    for t in [
        "call_attempts",
        "calls",
        "number_events",
        "number_leases",
        "schema_migrations",
        "trunk_events",
        "visits",
    ] {
        assert!(
            tables.iter().any(|n| n == t),
            "table {t} missing: {tables:?}"
        );
    }

    let second = migrate::apply(&server, &cfg.database).await.unwrap();
    assert!(second.applied.is_empty());
    assert_eq!(second.skipped, all);

    // A recorded migration whose text no longer matches must stop start-up.
    let mut ins = db.insert::<Applied>("schema_migrations").await.unwrap();
    ins.write(&Applied {
        version: 1,
        name: "0001_base.sql".into(),
        checksum: "0000000000000000".into(),
        applied_at: dialmark_schemas::unix_now() + 10,
    })
    .await
    .unwrap();
    ins.end().await.unwrap();
    let err = migrate::apply(&server, &cfg.database).await.unwrap_err();
    assert!(
        matches!(
            err,
            dialmark_schemas::Error::MigrationChanged { version: 1, .. }
        ),
        "{err}"
    );

    server
        .query(&format!("DROP DATABASE {}", cfg.database))
        .execute()
        .await
        .unwrap();
}

#[tokio::test]
async fn refuses_a_database_name_that_is_not_an_identifier() {
    let mut cfg = env::clickhouse("migrate_bad");
    cfg.database = "x; DROP TABLE y".into();
    let err = migrate::apply(&ch::server_client(&cfg), &cfg.database)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("identifier"), "{err}");
}

/// Migration 4 rebuilds `calls` and `call_attempts` with a version: rows
/// stored before it stay, the newest of two rows of a call wins even in
/// one INSERT, and the rollup views follow the new tables.
#[tokio::test]
async fn versioned_rebuild_keeps_rows_and_views() {
    let cfg = env::clickhouse("migrate4");
    let server = ch::server_client(&cfg);
    migrate::apply_list(&server, &cfg.database, &migrate::MIGRATIONS[..3])
        .await
        .unwrap();
    let db = ch::client(&cfg);
    let old = "00000000-0000-4000-8000-000000000001";
    for sql in [
        format!("INSERT INTO calls (call_id, sip_call_id, received, answered, ended, disposition, number, site, caller) \
                 VALUES (toUUID('{old}'), 'old-1', 1700000000, 1700000003, 1700000063, 'answered', '+74950000001', 'shop', '+79161234567')"),
        format!("INSERT INTO call_attempts (call_id, attempt, trunk, started, ended, outcome, final_code) \
                 VALUES (toUUID('{old}'), 1, 'a', 1700000000, 1700000063, 'answered', 200)"),
    ] {
        db.query(&sql).execute().await.unwrap();
    }
    let report = migrate::apply(&server, &cfg.database).await.unwrap();
    let rest: Vec<u32> = migrate::MIGRATIONS[3..].iter().map(|m| m.version).collect();
    assert_eq!(report.applied, rest);
    let kept: Vec<(String, u64)> = db
        .query("SELECT sip_call_id, version FROM calls")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(kept, [("old-1".to_string(), 1_700_000_063_000)]);
    let kept: u64 = db
        .query("SELECT count() FROM call_attempts WHERE trunk = 'a' AND version = 1700000063000")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(kept, 1);
    // Two rows of one call in one INSERT: the higher version wins.
    let new = "00000000-0000-4000-8000-000000000002";
    db.query(&format!(
        "INSERT INTO calls (call_id, sip_call_id, received, answered, ended, disposition, site, version) VALUES \
         (toUUID('{new}'), 'new-1', 1700001000, 1700001002, 1700001090, 'node_lost', 'shop', 1700001090001), \
         (toUUID('{new}'), 'new-1', 1700001000, 1700001002, 0, 'answered', 'shop', 1700001002000)"
    ))
    .execute()
    .await
    .unwrap();
    let d: String = db
        .query("SELECT toString(disposition) FROM calls FINAL WHERE sip_call_id = 'new-1'")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(d, "node_lost");
    // The views feed from the new tables.
    db.query(&format!(
        "INSERT INTO call_attempts (call_id, attempt, trunk, started, ended, outcome, final_code, version) \
         VALUES (toUUID('{new}'), 1, 'b', 1700001000, 1700001090, 'answered_late_released', 408, 1)"
    ))
    .execute()
    .await
    .unwrap();
    let n: u64 = db
        .query("SELECT uniqExactMerge(attempts) FROM trunk_hourly WHERE trunk = 'b'")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(
        n, 1,
        "trunk_hourly_mv is attached to the rebuilt call_attempts"
    );
    let callers: u64 = db
        .query("SELECT count() FROM caller_first_seen WHERE caller = '+79161234567'")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(callers, 1, "the backfilled rollup is kept");
}
