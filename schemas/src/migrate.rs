//! ClickHouse migrations: the DDL files under `schemas/migrations/`, embedded
//! at build time, applied in version order, each recorded in
//! `schema_migrations` with a checksum. Applying is idempotent (already
//! recorded versions are skipped, every statement is `IF NOT EXISTS`), and a
//! recorded migration whose text changed afterwards stops start-up instead
//! of silently diverging.

use clickhouse::{Client, Row};
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use crate::config::ClickHouseConfig;
use crate::error::Error;
use crate::sink::SchemaGate;

/// How often a service that started without ClickHouse tries its
/// migrations again.
const RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// One migration file.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, in order. A test checks this list against the files.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_base.sql",
        sql: include_str!("../migrations/0001_base.sql"),
    },
    Migration {
        version: 2,
        name: "0002_rollups.sql",
        sql: include_str!("../migrations/0002_rollups.sql"),
    },
    Migration {
        version: 3,
        name: "0003_number_event_order.sql",
        sql: include_str!("../migrations/0003_number_event_order.sql"),
    },
    Migration {
        version: 4,
        name: "0004_versioned_calls.sql",
        sql: include_str!("../migrations/0004_versioned_calls.sql"),
    },
    Migration {
        version: 5,
        name: "0005_untrusted_sources.sql",
        sql: include_str!("../migrations/0005_untrusted_sources.sql"),
    },
    Migration {
        version: 6,
        name: "0006_attempt_duration.sql",
        sql: include_str!("../migrations/0006_attempt_duration.sql"),
    },
    Migration {
        version: 7,
        name: "0007_trunk_quality.sql",
        sql: include_str!("../migrations/0007_trunk_quality.sql"),
    },
    Migration {
        version: 8,
        name: "0008_touches.sql",
        sql: include_str!("../migrations/0008_touches.sql"),
    },
    Migration {
        version: 9,
        name: "0009_visits_no_lease.sql",
        sql: include_str!("../migrations/0009_visits_no_lease.sql"),
    },
    Migration {
        version: 10,
        name: "0010_attribution_confidence.sql",
        sql: include_str!("../migrations/0010_attribution_confidence.sql"),
    },
    Migration {
        version: 11,
        name: "0011_pool_samples.sql",
        sql: include_str!("../migrations/0011_pool_samples.sql"),
    },
    Migration {
        version: 12,
        name: "0012_attempt_site.sql",
        sql: include_str!("../migrations/0012_attempt_site.sql"),
    },
];

/// A row of `schema_migrations`.
#[derive(Debug, Row, Serialize, Deserialize)]
pub(crate) struct Applied {
    pub(crate) version: u32,
    name: String,
    checksum: String,
    applied_at: u32,
}

/// How one server of a replicated cluster (`clickhouse.replicated`) runs
/// the migrations: every MergeTree table is created as its
/// `Replicated*MergeTree` twin under `zk_root` in ZooKeeper, and a
/// follower (a shard's replica other than the one that runs them first)
/// skips the ALTERs and INSERTs, which reach it through ZooKeeper. CREATE,
/// DROP and RENAME are local to each replica on 18.16, so every replica
/// runs those.
#[derive(Debug, Clone, Copy)]
pub struct Replica<'a> {
    /// ZooKeeper path of the shard's tables, `{shard}` macro included.
    pub zk_root: &'a str,
    pub follower: bool,
}

impl Replica<'_> {
    /// `sql` as this replica runs it; `None`: it arrives by replication.
    pub fn statement(&self, sql: &str) -> Option<String> {
        let head = sql.trim_start().to_ascii_uppercase();
        if self.follower && (head.starts_with("ALTER") || head.starts_with("INSERT")) {
            return None;
        }
        Some(replicated_engine(sql, self.zk_root))
    }
}

/// `CREATE TABLE ... ENGINE = XMergeTree(args)` as `ENGINE =
/// ReplicatedXMergeTree('{zk_root}/{table}', '{replica}', args)`; any other
/// statement unchanged. The path names the table as created: a table
/// renamed later keeps its path.
fn replicated_engine(sql: &str, zk_root: &str) -> String {
    const CREATE: &str = "CREATE TABLE IF NOT EXISTS ";
    const ENGINE: &str = "ENGINE = ";
    let upper = sql.to_ascii_uppercase();
    let (Some(c), Some(e)) = (upper.find(CREATE), upper.find(ENGINE)) else {
        return sql.to_string();
    };
    let table: String = sql[c + CREATE.len()..]
        .chars()
        .take_while(|ch| ch.is_ascii_alphanumeric() || *ch == '_')
        .collect();
    let rest = &sql[e + ENGINE.len()..];
    let kind_len = rest
        .find(|ch: char| !ch.is_ascii_alphanumeric())
        .unwrap_or(rest.len());
    let kind = &rest[..kind_len];
    if !kind.ends_with("MergeTree") || kind.starts_with("Replicated") {
        return sql.to_string();
    }
    let after = &rest[kind_len..];
    let (args, tail) = match after.strip_prefix('(').and_then(|a| a.split_once(')')) {
        Some((args, tail)) if !args.trim().is_empty() => (format!(", {}", args.trim()), tail),
        Some((_, tail)) => (String::new(), tail),
        None => (String::new(), after),
    };
    format!(
        "{}{ENGINE}Replicated{kind}('{zk_root}/{table}', '{{replica}}'{args}){tail}",
        &sql[..e]
    )
}

/// What [`apply`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub applied: Vec<u32>,
    pub skipped: Vec<u32>,
}

impl Migration {
    /// The statements of the file, comments and blank lines removed.
    pub fn statements(&self) -> Vec<String> {
        let text: String = self
            .sql
            .lines()
            .filter(|l| !l.trim_start().starts_with("--"))
            .map(|l| format!("{l}\n"))
            .collect();
        text.split(';')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// FNV-1a of the file text: stable across builds and platforms.
    pub fn checksum(&self) -> String {
        format!("{:016x}", crate::fnv1a(self.sql.as_bytes()))
    }
}

/// Applies every pending migration where `cfg` says: on the one server, or
/// on every server of `cfg.cluster` with the Distributed tables over them
/// ([`crate::cluster`]).
pub async fn run(cfg: &ClickHouseConfig) -> Result<Report, Error> {
    if cfg.cluster.is_empty() {
        apply(&crate::ch::server_client(cfg), &cfg.database).await
    } else {
        crate::cluster::apply(cfg).await
    }
}

/// [`run`] for a service starting up. ClickHouse unreachable (one server
/// of a cluster, too) does not stop the start: calls and visits do not wait
/// for the analytics. The migrations are then retried every [`RETRY`] in
/// the background and the returned gate opens once they ran; the sinks keep
/// their rows in the spool until then. The failed attempts count in
/// `dialmark_sink_insert_errors{table="schema_migrations"}` (the
/// ClickHouseUnreachable alert). Errors a retry cannot fix (a migration
/// changed, a cluster unlike the config) stop the start.
pub async fn run_or_retry(cfg: &ClickHouseConfig) -> Result<SchemaGate, Error> {
    let first = match run(cfg).await {
        Ok(_) => return Ok(SchemaGate::open()),
        Err(e) if e.is_retryable() => e,
        Err(e) => return Err(e),
    };
    warn!(
        error = %first,
        "ClickHouse is unreachable: serving anyway; rows wait in the spool until the migrations ran"
    );
    let (open, gate) = SchemaGate::closed();
    let cfg = cfg.clone();
    tokio::spawn(async move {
        let mut failures = 1u64;
        loop {
            metrics::gauge!("dialmark_sink_insert_errors", "table" => "schema_migrations")
                .set(failures as f64);
            tokio::time::sleep(RETRY).await;
            match run(&cfg).await {
                Ok(report) => {
                    info!(
                        applied = ?report.applied,
                        "ClickHouse is back and migrated: delivering the spooled rows"
                    );
                    let _ = open.send(true);
                    return;
                }
                Err(e) if e.is_retryable() => warn!(error = %e, "ClickHouse still unreachable"),
                Err(e) => {
                    error!(error = %e, "ClickHouse migrations failed; rows stay in the spool")
                }
            }
            failures += 1;
        }
    });
    Ok(gate)
}

/// Creates the database if needed and applies every pending migration.
///
/// `server` is a client without a database; the database name must be a
/// plain identifier (checked by config validation).
pub async fn apply(server: &Client, database: &str) -> Result<Report, Error> {
    apply_list(server, database, MIGRATIONS).await
}

/// Applies `migrations` (a prefix of [`MIGRATIONS`]; upgrade tests start
/// from an older schema with it).
pub async fn apply_list(
    server: &Client,
    database: &str,
    migrations: &[Migration],
) -> Result<Report, Error> {
    apply_as(server, database, migrations, None).await
}

/// The migrations `server` has recorded in `database` (none if it has no
/// `schema_migrations` yet).
pub(crate) async fn applied(server: &Client, database: &str) -> Result<Vec<Applied>, Error> {
    let exists: u64 = server
        .query(
            "SELECT count() FROM system.tables WHERE database = ? AND name = 'schema_migrations'",
        )
        .bind(database)
        .fetch_one()
        .await?;
    if exists == 0 {
        return Ok(Vec::new());
    }
    Ok(server
        .clone()
        .with_database(database)
        .query("SELECT version, name, checksum, toUInt32(applied_at) FROM schema_migrations FINAL ORDER BY version")
        .fetch_all()
        .await?)
}

/// Records `rows` in `schema_migrations` of `db` (a client bound to it).
pub(crate) async fn record(db: &Client, rows: &[Applied]) -> Result<(), Error> {
    let mut insert = db.insert::<Applied>("schema_migrations").await?;
    for row in rows {
        insert.write(row).await?;
    }
    insert.end().await?;
    Ok(())
}

/// [`apply_list`] on one replica of a replicated cluster (`replica`), or
/// on a plain server (`None`).
pub async fn apply_as(
    server: &Client,
    database: &str,
    migrations: &[Migration],
    replica: Option<Replica<'_>>,
) -> Result<Report, Error> {
    if !crate::config::is_identifier(database) {
        return Err(Error::MigrationInvalid {
            name: database.into(),
            reason: "database name is not a plain identifier".into(),
        });
    }
    server
        .query(&format!("CREATE DATABASE IF NOT EXISTS {database}"))
        .execute()
        .await?;
    let db = server.clone().with_database(database);
    db.query(
        "CREATE TABLE IF NOT EXISTS schema_migrations (\
            version UInt32, name String, checksum String, applied_at DateTime\
         ) ENGINE = ReplacingMergeTree ORDER BY version",
    )
    .execute()
    .await?;
    let done = applied(server, database).await?;
    let mut report = Report::default();
    for m in migrations {
        let checksum = m.checksum();
        if let Some(prev) = done.iter().find(|a| a.version == m.version) {
            if prev.checksum != checksum {
                return Err(Error::MigrationChanged {
                    version: m.version,
                    name: m.name.into(),
                    applied: prev.checksum.clone(),
                    current: checksum,
                });
            }
            report.skipped.push(m.version);
            continue;
        }
        let statements = m.statements();
        if statements.is_empty() {
            return Err(Error::MigrationInvalid {
                name: m.name.into(),
                reason: "no statements".into(),
            });
        }
        for sql in statements {
            let sql = match replica {
                None => sql,
                Some(r) => match r.statement(&sql) {
                    Some(sql) => sql,
                    None => continue,
                },
            };
            db.query(&sql).execute().await?;
        }
        record(
            &db,
            &[Applied {
                version: m.version,
                name: m.name.into(),
                checksum,
                applied_at: crate::unix_now(),
            }],
        )
        .await?;
        info!(
            migration.version = m.version,
            migration.name = m.name,
            "applied migration"
        );
        report.applied.push(m.version);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_is_listed_in_order() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        let listed: Vec<&str> = MIGRATIONS.iter().map(|m| m.name).collect();
        assert_eq!(files, listed);
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1);
            assert!(m.name.starts_with(&format!("{:04}_", m.version)));
        }
    }

    #[test]
    fn statements_split_and_skip_comments() {
        let m = Migration {
            version: 9,
            name: "x",
            sql: "-- a; comment\nCREATE TABLE a (x UInt8) ENGINE = Memory;\n\nCREATE TABLE b (y String) ENGINE = Memory;\n",
        };
        let s = m.statements();
        assert_eq!(s.len(), 2);
        assert!(s[0].starts_with("CREATE TABLE a"));
        // FNV-1a of the text, as 16 hex digits: a changed file is noticed.
        let sum = m.checksum();
        assert!(
            sum.len() == 16 && sum.bytes().all(|b| b.is_ascii_hexdigit()),
            "{sum}"
        );
        let edited = Migration {
            sql: "-- a; comment\nCREATE TABLE a (x UInt16) ENGINE = Memory;\n",
            ..m
        };
        assert_ne!(edited.checksum(), sum);
        assert_eq!(m.checksum(), sum, "stable");
    }

    #[test]
    fn replicas_create_replicated_tables_and_followers_skip_what_zookeeper_carries() {
        let leader = Replica {
            zk_root: "/clickhouse/dialmark/c/db_local/{shard}",
            follower: false,
        };
        let sql = "CREATE TABLE IF NOT EXISTS calls_v4 (\n  a UInt8\n) ENGINE = ReplacingMergeTree(version)\nORDER BY a";
        assert_eq!(
            leader.statement(sql).unwrap(),
            "CREATE TABLE IF NOT EXISTS calls_v4 (\n  a UInt8\n) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/dialmark/c/db_local/{shard}/calls_v4', '{replica}', version)\nORDER BY a"
        );
        assert_eq!(
            leader
                .statement("CREATE TABLE IF NOT EXISTS v (a UInt8) ENGINE = AggregatingMergeTree ORDER BY a")
                .unwrap(),
            "CREATE TABLE IF NOT EXISTS v (a UInt8) ENGINE = ReplicatedAggregatingMergeTree('/clickhouse/dialmark/c/db_local/{shard}/v', '{replica}') ORDER BY a"
        );
        let follower = Replica {
            follower: true,
            ..leader
        };
        assert_eq!(
            follower.statement("ALTER TABLE calls ADD COLUMN x UInt8"),
            None
        );
        assert_eq!(
            follower.statement("\nINSERT INTO calls_v4 SELECT * FROM calls"),
            None
        );
        assert!(leader
            .statement("ALTER TABLE calls ADD COLUMN x UInt8")
            .is_some());
        let rename = "RENAME TABLE calls TO calls_v3, calls_v4 TO calls";
        assert_eq!(follower.statement(rename).unwrap(), rename);
        // Every table of every migration becomes replicated.
        for m in MIGRATIONS {
            for s in m.statements() {
                let out = leader.statement(&s).unwrap();
                if s.contains("MergeTree") {
                    assert!(out.contains("ENGINE = Replicated"), "{}: {out}", m.name);
                } else {
                    assert_eq!(out, s);
                }
            }
        }
    }

    #[test]
    fn base_ddl_stays_in_the_portable_subset() {
        for m in MIGRATIONS {
            let up = m.sql.to_uppercase();
            for banned in [
                "DATETIME64",
                "IPV4",
                "IPV6",
                " TTL ",
                "ASOF",
                "LOWCARDINALITY",
            ] {
                assert!(!up.contains(banned), "{} uses {banned}", m.name);
            }
        }
    }
}
