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
