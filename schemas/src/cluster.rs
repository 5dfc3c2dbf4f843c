//! ClickHouse on a cluster (`clickhouse.cluster`): on every server of the
//! cluster the migrations run unchanged in `{database}_local` (the
//! MergeTree tables, the rollups' materialized views and their history),
//! and `{database}` holds a `Distributed` table of the same name over each
//! of them, so the sink and the report SQL use the same names as on one
//! server. This module owns that layout: which server is which shard, each
//! table's sharding key and keeping the Distributed tables' columns equal
//! to the local ones after a migration adds one.
//!
//! The DDL runs on each server in turn instead of `ON CLUSTER` (which
//! needs ZooKeeper on 18.16). Without `clickhouse.replicated` no ZooKeeper
//! is needed: each server is one shard. With it the tables are
//! `Replicated*MergeTree`, a shard may have several replicas and the
//! replicas of a shard are migrated in step ([`migrate::Replica`]).

use clickhouse::{Client, Row};
use serde::Deserialize;
use tracing::info;

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

/// One server of the cluster, where `system.clusters` places it.
struct Server<'a> {
    url: &'a str,
    client: Client,
    shard: u32,
    /// Its `{replica}` macro; empty without `clickhouse.replicated`.
    replica: String,
    /// Its `{shard}` macro (the ZooKeeper path of its tables); empty
    /// without `clickhouse.replicated`.
    shard_macro: String,
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
    let mut servers: Vec<Server> = Vec::new();
    for url in &cfg.servers {
        let client = crate::ch::member_client(cfg, url);
        let shard = shard_of(&client, cfg, url).await?;
        let (shard_macro, replica) = if cfg.replicated {
            replica_macros(&client, url).await?
        } else {
            Default::default()
        };
        for other in &servers {
            if other.shard == shard && other.replica == replica {
                let what = if replica.is_empty() {
                    String::new()
                } else {
                    format!(" replica '{replica}'")
                };
                return Err(cluster(
                    url,
                    format!(
                        "is shard {shard}{what} of '{}', like {}",
                        cfg.cluster, other.url
                    ),
                ));
            }
            // Two shards under one ZooKeeper path would be one table.
            if cfg.replicated && (other.shard == shard) != (other.shard_macro == shard_macro) {
                return Err(cluster(
                    url,
                    format!(
                        "its {{shard}} macro is '{shard_macro}' and {}'s is '{}', but they are shards {shard} and {}: \
                         the replicas of a shard need the same {{shard}}, different shards different ones",
                        other.url, other.shard_macro, other.shard
                    ),
                ));
            }
        }
        servers.push(Server {
            url,
            client,
            shard,
            replica,
            shard_macro,
        });
    }
    let mut report = Report::default();
    if cfg.replicated {
        let zk_root = format!("/clickhouse/dialmark/{}/{local}/{{shard}}", cfg.cluster);
        let mut shards: Vec<u32> = servers.iter().map(|s| s.shard).collect();
        shards.sort_unstable();
        shards.dedup();
        for shard in shards {
            let replicas: Vec<&Server> = servers.iter().filter(|s| s.shard == shard).collect();
            migrate_shard(&replicas, &local, &zk_root, migrations, &mut report).await?;
        }
    } else {
        for server in &servers {
            let r = migrate::apply_list(&server.client, &local, migrations).await?;
            merge(&mut report, r);
        }
    }
    for server in &servers {
        distribute(&server.client, cfg, &local)
            .await
            .map_err(|e| match e {
                // Named by server, unless a retry may fix it.
                Error::ClickHouse(e) if !crate::ch::retryable(&e) => {
                    cluster(server.url, e.to_string())
                }
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

fn merge(report: &mut Report, r: Report) {
    for v in r.applied {
        if !report.applied.contains(&v) {
            report.applied.push(v);
        }
    }
}

/// The migrations on the replicas of one shard. The replica furthest ahead
/// leads: it runs each migration whole; the others follow one migration
/// at a time (CREATE, DROP and RENAME are local on 18.16), once the
/// leader's ALTERs have reached them through ZooKeeper. A replica with no
/// schema at all (new, or its disk replaced) first copies the leader's
/// tables as they are now: a table created from an old migration would not
/// match its ZooKeeper metadata, which has every later ALTER.
async fn migrate_shard(
    replicas: &[&Server<'_>],
    local: &str,
    zk_root: &str,
    migrations: &[migrate::Migration],
    report: &mut Report,
) -> Result<(), Error> {
    let mut applied = Vec::new();
    for r in replicas {
        applied.push(migrate::applied(&r.client, local).await?.len());
    }
    let lead = (0..replicas.len())
        .max_by_key(|&i| (applied[i], std::cmp::Reverse(i)))
        .expect("a shard has a replica");
    let leader = replicas[lead];
    // A database made before `replicated` was set: its tables would be
    // copied to new replicas as unreplicated, empty tables.
    let plain: Vec<Object> = leader
        .client
        .query(
            "SELECT name FROM system.tables WHERE database = ? AND engine LIKE '%MergeTree' \
             AND engine NOT LIKE 'Replicated%' AND name != 'schema_migrations' ORDER BY name",
        )
        .bind(local)
        .fetch_all()
        .await?;
    if !plain.is_empty() {
        let names: Vec<&str> = plain.iter().map(|o| o.name.as_str()).collect();
        return Err(cluster(
            leader.url,
            format!(
                "{local} holds tables made without clickhouse.replicated ({}): \
                 convert them first (ops/README.md, Replicated shards) or keep replicated = false",
                names.join(", ")
            ),
        ));
    }
    let mut followers: Vec<&Server> = Vec::new();
    for (i, r) in replicas.iter().enumerate().filter(|&(i, _)| i != lead) {
        if applied[i] == 0 && applied[lead] > 0 {
            copy_schema(leader, r, local).await?;
        }
        followers.push(r);
    }
    let as_leader = migrate::Replica {
        zk_root,
        follower: false,
    };
    let as_follower = migrate::Replica {
        zk_root,
        follower: true,
    };
    for i in 0..migrations.len() {
        let upto = &migrations[..=i];
        let r = migrate::apply_as(&leader.client, local, upto, Some(as_leader)).await?;
        merge(report, r);
        for f in &followers {
            wait_for_alters(leader, f, local).await?;
            migrate::apply_as(&f.client, local, upto, Some(as_follower)).await?;
        }
    }
    for f in &followers {
        wait_for_alters(leader, f, local).await?;
    }
    Ok(())
}

#[derive(Debug, Row, Deserialize)]
struct Object {
    name: String,
}

/// Creates on `to` every table and view `from` has in `local`, as `from`
/// has them now (same ZooKeeper paths: `to` joins as a replica and fetches
/// the data), and records the migrations `from` has applied.
async fn copy_schema(from: &Server<'_>, to: &Server<'_>, local: &str) -> Result<(), Error> {
    info!(
        from = from.url,
        to = to.url,
        "new replica: copying the shard's schema"
    );
    migrate::apply_as(&to.client, local, &[], None).await?;
    // Tables before the views that write into them.
    let objects: Vec<Object> = from
        .client
        .query(
            "SELECT name FROM system.tables WHERE database = ? AND name != 'schema_migrations' \
             ORDER BY engine = 'MaterializedView', name",
        )
        .bind(local)
        .fetch_all()
        .await?;
    for o in objects {
        let ddl: String = from
            .client
            .query(&format!("SHOW CREATE TABLE {local}.{}", o.name))
            .fetch_one()
            .await?;
        to.client.query(&ddl).execute().await?;
    }
    let done = migrate::applied(&from.client, local).await?;
    migrate::record(&to.client.clone().with_database(local), &done).await
}

/// How long a follower may take to receive the leader's ALTERs.
const REPLICATION_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Debug, Row, Deserialize)]
struct ReplicaOf {
    table: String,
    zookeeper_path: String,
}

/// Waits until every replicated table `follower` shares with `leader`
/// (the same ZooKeeper path: during a migration that rebuilds a table the
/// same name can be two different tables) has the leader's columns.
async fn wait_for_alters(
    leader: &Server<'_>,
    follower: &Server<'_>,
    local: &str,
) -> Result<(), Error> {
    let replicas = |server: &Server<'_>| {
        server
            .client
            .query("SELECT table, zookeeper_path FROM system.replicas WHERE database = ?")
            .bind(local)
            .fetch_all::<ReplicaOf>()
    };
    let theirs = replicas(follower).await?;
    let deadline = tokio::time::Instant::now() + REPLICATION_WAIT;
    for lead in replicas(leader).await? {
        let Some(mine) = theirs
            .iter()
            .find(|f| f.zookeeper_path == lead.zookeeper_path)
        else {
            continue;
        };
        loop {
            let want = columns(&leader.client, local, &lead.table).await?;
            let have = columns(&follower.client, local, &mine.table).await?;
            if column_changes(&want, &have).is_empty() {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(cluster(
                    follower.url,
                    format!(
                        "table {local}.{} still lacks the columns ALTERed on {} after {} s: is its replication queue (system.replication_queue) stuck?",
                        mine.table,
                        leader.url,
                        REPLICATION_WAIT.as_secs()
                    ),
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

fn cluster(url: &str, reason: impl Into<String>) -> Error {
    Error::Cluster {
        url: url.into(),
        reason: reason.into(),
    }
}

#[derive(Debug, Row, Deserialize)]
struct Macro {
    #[serde(rename = "macro")]
    name: String,
    substitution: String,
}

/// Which shard of `cfg.cluster` the server at `url` is, checking that the
/// cluster is the one configured: every server of it listed, one replica
/// per shard unless `clickhouse.replicated`. (18.16 marks every replica of
/// the server's own shard as local: the replica is told by its macro.)
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
    if !cfg.replicated && members.iter().any(|m| m.replica_num > 1) {
        return Err(cluster(
            url,
            format!(
                "cluster '{}' has replicas: set clickhouse.replicated = true (replicated tables, needs ZooKeeper) or list one server per shard",
                cfg.cluster
            ),
        ));
    }
    if members.len() != cfg.servers.len() {
        let shards = members.iter().filter(|m| m.replica_num == 1).count();
        return Err(cluster(
            url,
            format!(
                "cluster '{}' has {shards} shards ({} servers) here but clickhouse.servers lists {}",
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

/// The server's `{shard}` and `{replica}` macros, checking that it has
/// them and a ZooKeeper: replicated tables need all three.
async fn replica_macros(server: &Client, url: &str) -> Result<(String, String), Error> {
    let macros: Vec<Macro> = server
        .query("SELECT macro, substitution FROM system.macros")
        .fetch_all()
        .await?;
    let get = |want: &str| {
        macros
            .iter()
            .find(|m| m.name == want)
            .map(|m| m.substitution.clone())
            .ok_or_else(|| {
                cluster(
                    url,
                    format!("has no {{{want}}} macro (<macros> in its config): replicated tables need {{shard}} and {{replica}}"),
                )
            })
    };
    let (shard, replica) = (get("shard")?, get("replica")?);
    let zk: Result<u64, _> = server
        .query("SELECT count() FROM system.zookeeper WHERE path = '/'")
        .fetch_one()
        .await;
    match zk {
        Ok(_) => Ok((shard, replica)),
        Err(clickhouse::error::Error::BadResponse(text))
            if text.to_ascii_lowercase().contains("no zookeeper") =>
        {
            Err(cluster(
                url,
                "has no <zookeeper> in its config: replicated tables need one",
            ))
        }
        Err(e) => Err(e.into()),
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
