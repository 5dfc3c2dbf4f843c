//! Services a fault test owns and may stop and start: a private ClickHouse
//! started with the project's own `ops/lib.sh` helpers (never the shared
//! one the other tests use).

use std::process::Command;

use dialmark_schemas::config::ClickHouseConfig;

use crate::process::free_port;

fn lib(script: &str) {
    let root = crate::env::repo_root();
    let status = Command::new("bash")
        .arg("-c")
        .arg(format!("source {}/ops/lib.sh && {script}", root.display()))
        .status()
        .expect("bash");
    assert!(status.success(), "ops/lib.sh: {script} failed");
}

/// A private ClickHouse server, stopped on drop.
pub struct PrivateClickHouse {
    dir: tempfile::TempDir,
    http: u16,
    tcp: u16,
    inter: u16,
}

impl PrivateClickHouse {
    pub fn start() -> Self {
        let ch = Self {
            dir: tempfile::tempdir().expect("tempdir"),
            http: free_port(),
            tcp: free_port(),
            inter: free_port(),
        };
        ch.up();
        ch
    }

    /// (Re)starts the server on the same data directory and ports.
    pub fn up(&self) {
        lib(&format!(
            "dm_clickhouse_start {} {} {} {}",
            self.dir.path().display(),
            self.http,
            self.tcp,
            self.inter
        ));
    }

    /// Stops the server (TERM, then KILL after 10 s).
    pub fn down(&self) {
        lib(&format!("dm_clickhouse_stop {}", self.dir.path().display()));
    }

    pub fn config(&self, test: &str) -> ClickHouseConfig {
        ClickHouseConfig {
            url: format!("http://127.0.0.1:{}", self.http),
            database: format!("t_{test}"),
            ..ClickHouseConfig::default()
        }
    }
}

impl Drop for PrivateClickHouse {
    fn drop(&mut self) {
        self.down();
    }
}

/// A private Redis (append-only file on, so a restart keeps its data),
/// stopped on drop.
pub struct PrivateRedis {
    dir: tempfile::TempDir,
    pub port: u16,
}

impl PrivateRedis {
    pub fn start() -> Self {
        let r = Self {
            dir: tempfile::tempdir().expect("tempdir"),
            port: free_port(),
        };
        r.up();
        r
    }

    pub fn up(&self) {
        lib(&format!(
            "dm_redis_start {} {} --appendonly yes --appendfsync always",
            self.dir.path().display(),
            self.port
        ));
    }

    pub fn down(&self) {
        lib(&format!("dm_redis_stop {}", self.dir.path().display()));
    }

    pub fn config(&self) -> dialmark_schemas::config::RedisConfig {
        dialmark_schemas::config::RedisConfig {
            url: format!("redis://127.0.0.1:{}/", self.port),
            ..Default::default()
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.down();
    }
}
