//! Service endpoints started by `ops/test`, passed in the environment.
//! Missing variables fail the test with a message naming `ops/test`: these
//! tests run against real servers, never mocks.

use dialmark_schemas::config::ClickHouseConfig;

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the end-to-end tests through ops/test, which starts the real services")
    })
}

/// `redis://127.0.0.1:PORT/` of the test Redis.
pub fn redis_url() -> String {
    var("DIALMARK_TEST_REDIS")
}

/// ClickHouse config for a fresh database named after the test.
pub fn clickhouse(test: &str) -> ClickHouseConfig {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    ClickHouseConfig {
        url: var("DIALMARK_TEST_CLICKHOUSE"),
        database: format!("t_{test}_{}", &suffix[..8]),
        ..ClickHouseConfig::default()
    }
}

/// Config for a fresh database on the test ClickHouse cluster:
/// `DIALMARK_TEST_CLICKHOUSE_CLUSTER` is `NAME=URL,URL` (the cluster's name
/// in `<remote_servers>` and the HTTP URL of each server, one per shard).
pub fn clickhouse_cluster(test: &str) -> ClickHouseConfig {
    cluster_from("DIALMARK_TEST_CLICKHOUSE_CLUSTER", test)
}

/// Config for a fresh database on the test cluster with replicas
/// (`clickhouse.replicated`): `DIALMARK_TEST_CLICKHOUSE_REPLICATED` is
/// `NAME=URL,...`, two shards of two replicas through ZooKeeper, listed
/// shard by shard.
pub fn clickhouse_replicated(test: &str) -> ClickHouseConfig {
    ClickHouseConfig {
        replicated: true,
        ..cluster_from("DIALMARK_TEST_CLICKHOUSE_REPLICATED", test)
    }
}

/// The data dirs of the servers of `DIALMARK_TEST_CLICKHOUSE_REPLICATED`,
/// in the same order (`DIALMARK_TEST_CLICKHOUSE_REPLICATED_DIRS`): tests
/// that stop a server or give it a cluster file find them there.
pub fn clickhouse_replicated_dirs() -> Vec<std::path::PathBuf> {
    var("DIALMARK_TEST_CLICKHOUSE_REPLICATED_DIRS")
        .split(',')
        .map(std::path::PathBuf::from)
        .collect()
}

fn cluster_from(name: &str, test: &str) -> ClickHouseConfig {
    let spec = var(name);
    let (cluster, urls) = spec
        .split_once('=')
        .unwrap_or_else(|| panic!("{name} is NAME=URL,URL"));
    let servers: Vec<String> = urls.split(',').map(str::to_string).collect();
    ClickHouseConfig {
        url: servers[0].clone(),
        cluster: cluster.into(),
        servers,
        ..clickhouse(test)
    }
}

/// The repository root (where `target/` and `ops/` are).
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Seed nodes of the test Redis Cluster (3 masters on loopback).
pub fn redis_cluster() -> Vec<String> {
    var("DIALMARK_TEST_REDIS_CLUSTER")
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// The GeoIP2-City test database written by `tests/fixtures/make_mmdb.py`.
pub fn mmdb() -> std::path::PathBuf {
    var("DIALMARK_TEST_MMDB").into()
}

/// A short unique id for pools and sites of one test.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// A phone number no other test run uses: `+7` and 10 random digits.
pub fn unique_number() -> String {
    let n = uuid::Uuid::new_v4().as_u128() % 10_000_000_000;
    format!("+7{n:010}")
}

/// A fresh directory for one test's files (spools), kept under the system
/// temp dir and left for inspection after a failure.
pub fn scratch_dir(what: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("dialmark-{what}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&d).expect("create scratch dir");
    d
}
