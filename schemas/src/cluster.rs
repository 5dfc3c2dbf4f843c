//! ClickHouse on a cluster (`clickhouse.cluster`): on every server of the
//! cluster the migrations run unchanged in `{database}_local` (the
//! MergeTree tables, the rollups' materialized views and their history),
//! and `{database}` holds a `Distributed` table of the same name over each
//! of them, so the sink and the report SQL use the same names as on one
//! server. This module owns that layout: which server is which shard, each
//! table's sharding key and keeping the Distributed tables' columns equal
//! to the local ones after a migration adds one.
//!
//! No ZooKeeper is needed: each server is one shard (no replicas) and the
//! DDL runs on each server in turn instead of `ON CLUSTER`.

use clickhouse::{Client, Row};
use serde::Deserialize;

use crate::config::ClickHouseConfig;
use crate::error::Error;
use crate::migrate::{self, Report};

/// Each table's sharding key. Every version of a row (the same ORDER BY
/// key) must land on one shard, or `FINAL` and the ReplacingMergeTree
/// merges cannot collapse them; a call's attempts go with the call.
pub const SHARD_KEYS: &[(&str, &str)] = &[
    ("visits", "sipHash64(toString(visit_id))"),
    ("number_leases", "sipHash64(toString(event_id))"),
    ("calls", "sipHash64(toString(call_id))"),
    ("call_attempts", "sipHash64(toString(call_id))"),
    ("trunk_events", "sipHash64(toString(event_id))"),
    ("number_events", "sipHash64(toString(event_id))"),
    ("untrusted_sources", "sipHash64(toString(event_id))"),
    ("pool_samples", "sipHash64(pool)"),
    // Rollups, filled on each shard by their views from the local tables;
    // the key only matters to a direct INSERT.
    ("caller_first_seen", "sipHash64(caller)"),
    ("trunk_hourly", "sipHash64(trunk)"),
];

/// The database of a server's own (local) tables.
pub fn local_database(database: &str) -> String {
    format!("{database}_local")
}

#[derive(Debug, Row, Deserialize)]
struct Member {
    shard_num: u32,
    replica_num: u32,
    is_local: u8,
}

#[derive(Debug, Row, Deserialize)]
struct Column {
    name: String,
    #[serde(rename = "type")]
    ty: String,
    default_kind: String,
    default_expression: String,
}

impl Column {
    /// `name Type [DEFAULT expr]` as in ALTER TABLE.
    fn definition(&self) -> String {
        let mut d = format!("`{}` {}", self.name, self.ty);
        if !self.default_kind.is_empty() {
            d += &format!(" {} {}", self.default_kind, self.default_expression);
        }
        d
    }
}

/// Applies the migrations on every server of `cfg.servers` and puts (or
/// brings up to date) the Distributed tables over them, on each server, so
/// any of them can take the sink's writes and the reports.
pub async fn apply(cfg: &ClickHouseConfig) -> Result<Report, Error> {
    apply_list(cfg, migrate::MIGRATIONS).await
}

/// [`apply`] with `migrations` (a prefix of [`migrate::MIGRATIONS`]; upgrade
/// tests start from an older schema with it).
pub async fn apply_list(
    cfg: &ClickHouseConfig,
    migrations: &[migrate::Migration],
) -> Result<Report, Error> {
    let local = local_database(&cfg.database);
    // Every server checked before any is changed: a wrong list leaves
    // nothing half-migrated.
    let mut servers: Vec<(u32, &str, Client)> = Vec::new();
    for url in &cfg.servers {
        let server = crate::ch::member_client(cfg, url);
        let shard = shard_of(&server, cfg, url).await?;
        if let Some((_, other, _)) = servers.iter().find(|(s, _, _)| *s == shard) {
            return Err(cluster(
                url,
                format!("is shard {shard} of '{}', like {other}", cfg.cluster),
            ));
        }
        servers.push((shard, url, server));
    }
    let mut report = Report::default();
    for (_, url, server) in &servers {
        let r = migrate::apply_list(server, &local, migrations).await?;
        for v in r.applied {
            if !report.applied.contains(&v) {
                report.applied.push(v);
            }
        }
        distribute(server, cfg, &local).await.map_err(|e| match e {
            // Named by server, unless a retry may fix it.
            Error::ClickHouse(e) if !crate::ch::retryable(&e) => cluster(url, e.to_string()),
            e => e,
        })?;
    }
    report.applied.sort_unstable();
    report.skipped = migrations
        .iter()
        .map(|m| m.version)
        .filter(|v| !report.applied.contains(v))
        .collect();
    Ok(report)
}

fn cluster(url: &str, reason: impl Into<String>) -> Error {
    Error::Cluster {
        url: url.into(),
        reason: reason.into(),
    }
}

/// Which shard of `cfg.cluster` the server at `url` is, checking that the
/// cluster is the one configured: one shard per listed server, one replica
/// per shard.
async fn shard_of(server: &Client, cfg: &ClickHouseConfig, url: &str) -> Result<u32, Error> {
    let members: Vec<Member> = server
        .query("SELECT shard_num, replica_num, is_local FROM system.clusters WHERE cluster = ?")
        .bind(cfg.cluster.as_str())
        .fetch_all()
        .await?;
    if members.is_empty() {
        return Err(cluster(
            url,
            format!(
                "knows no cluster '{}' (add it to <remote_servers> in its config)",
                cfg.cluster
            ),
        ));
    }
    if members.iter().any(|m| m.replica_num > 1) {
        return Err(cluster(
            url,
            format!(
                "cluster '{}' has replicas: replicated shards need ZooKeeper and are not supported; list one server per shard",
                cfg.cluster
            ),
        ));
    }
    if members.len() != cfg.servers.len() {
        return Err(cluster(
            url,
            format!(
                "cluster '{}' has {} shards here but clickhouse.servers lists {}",
                cfg.cluster,
                members.len(),
                cfg.servers.len()
            ),
        ));
    }
    match members.iter().find(|m| m.is_local == 1) {
        Some(m) => Ok(m.shard_num),
        None => Err(cluster(
            url,
            format!(
                "is not one of the servers of cluster '{}' (no entry of it is this server)",
                cfg.cluster
            ),
        )),
    }
}

/// A Distributed table in `cfg.database` over each local MergeTree table,
/// its columns made equal to the local table's (a migration's ALTER ran on
/// the local table only).
async fn distribute(server: &Client, cfg: &ClickHouseConfig, local: &str) -> Result<(), Error> {
    let db = &cfg.database;
    server
        .query(&format!("CREATE DATABASE IF NOT EXISTS {db}"))
        .execute()
        .await?;
    let tables: Vec<String> = server
        .query(
            "SELECT name FROM system.tables WHERE database = ? \
             AND engine LIKE '%MergeTree' AND name != 'schema_migrations' ORDER BY name",
        )
        .bind(local)
        .fetch_all()
        .await?;
    for table in tables {
        let key = shard_key(&table).ok_or_else(|| Error::MigrationInvalid {
            name: table.clone(),
            reason: "no sharding key for the table (cluster::SHARD_KEYS)".into(),
        })?;
        server
            .query(&format!(
                "CREATE TABLE IF NOT EXISTS {db}.{table} AS {local}.{table} \
                 ENGINE = Distributed({}, {local}, {table}, {key})",
                cfg.cluster
            ))
            .execute()
            .await?;
        // A server that ran dialmark without a cluster has its tables
        // in `{db}` itself: writing there would bypass the cluster.
        let engine: String = server
            .query("SELECT engine FROM system.tables WHERE database = ? AND name = ?")
            .bind(db.as_str())
            .bind(table.as_str())
            .fetch_one()
            .await?;
        if engine != "Distributed" {
            return Err(Error::MigrationInvalid {
                name: format!("{db}.{table}"),
                reason: format!(
                    "is a {engine} table, not Distributed: this server holds a single-server dialmark database; \
                     copy its rows into the cluster and drop it first (ops/README.md, ClickHouse cluster)"
                ),
            });
        }
        let want = columns(server, local, &table).await?;
        let have = columns(server, db, &table).await?;
        for alter in column_changes(&want, &have) {
            server
                .query(&format!("ALTER TABLE {db}.{table} {alter}"))
                .execute()
                .await?;
        }
    }
    Ok(())
}

fn shard_key(table: &str) -> Option<&'static str> {
    SHARD_KEYS
        .iter()
        .find(|(t, _)| *t == table)
        .map(|(_, k)| *k)
}

async fn columns(server: &Client, database: &str, table: &str) -> Result<Vec<Column>, Error> {
    Ok(server
        .query(
            "SELECT name, type, default_kind, default_expression FROM system.columns \
             WHERE database = ? AND table = ?",
        )
        .bind(database)
        .bind(table)
        .fetch_all()
        .await?)
}

/// The ALTER clauses that make `have` (the Distributed table's columns)
/// equal to `want` (the local table's): missing columns added in place,
/// changed types or defaults modified, dropped ones dropped.
fn column_changes(want: &[Column], have: &[Column]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, w) in want.iter().enumerate() {
        match have.iter().find(|h| h.name == w.name) {
            None => {
                let place = match i {
                    0 => " FIRST".to_string(),
                    _ => format!(" AFTER `{}`", want[i - 1].name),
                };
                out.push(format!("ADD COLUMN {}{place}", w.definition()));
            }
            Some(h) if h.definition() != w.definition() => {
                out.push(format!("MODIFY COLUMN {}", w.definition()));
            }
            Some(_) => {}
        }
    }
    for h in have {
        if !want.iter().any(|w| w.name == h.name) {
            out.push(format!("DROP COLUMN `{}`", h.name));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, ty: &str, default: &str) -> Column {
        Column {
            name: name.into(),
            ty: ty.into(),
            default_kind: if default.is_empty() { "" } else { "DEFAULT" }.into(),
            default_expression: default.into(),
        }
    }

    #[test]
    fn columns_follow_the_local_table() {
        let want = [
            col("a", "String", ""),
            col("b", "UInt32", "0"),
            col("c", "UInt64", "toUInt64(b) * 1000"),
        ];
        let have = [
            col("a", "String", ""),
            col("b", "UInt16", ""),
            col("z", "UInt8", ""),
        ];
        assert_eq!(
            column_changes(&want, &have),
            [
                "MODIFY COLUMN `b` UInt32 DEFAULT 0",
                "ADD COLUMN `c` UInt64 DEFAULT toUInt64(b) * 1000 AFTER `b`",
                "DROP COLUMN `z`",
            ]
        );
        assert!(column_changes(&want, &want).is_empty());
    }

    /// Every table the migrations leave behind has a sharding key (a new
    /// table without one would stop a cluster's migrations).
    #[test]
    fn every_table_has_a_sharding_key() {
        let ddl: String = migrate::MIGRATIONS
            .iter()
            .flat_map(|m| m.statements())
            .collect::<Vec<_>>()
            .join(";\n");
        let upper = ddl.to_uppercase();
        let mut tables = Vec::new();
        for (i, _) in upper.match_indices("CREATE TABLE IF NOT EXISTS ") {
            let rest = &ddl[i + "CREATE TABLE IF NOT EXISTS ".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // Rebuilt tables (0004: calls_v4 renamed to calls) keep the
            // final name only.
            let renamed = upper.contains(&format!(", {} TO ", name.to_uppercase()));
            if !renamed {
                tables.push(name);
            }
        }
        assert!(tables.len() >= 10, "{tables:?}");
        for t in &tables {
            assert!(shard_key(t).is_some(), "table {t} has no sharding key");
        }
        for (t, _) in SHARD_KEYS {
            assert!(tables.contains(&t.to_string()), "{t} is not a table");
        }
    }
}
