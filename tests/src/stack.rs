//! A config for one test's own tracker and router, pointed at the Redis and
//! ClickHouse that ops/test started, with free ports and a fresh database.

use std::path::PathBuf;

use dialmark_schemas::config::ClickHouseConfig;

use crate::process::free_port;

/// Ports and database of one test's services.
pub struct StackConfig {
    pub clickhouse: ClickHouseConfig,
    pub redis_url: String,
    pub tracker_port: u16,
    pub router_sip_port: u16,
    pub router_http_port: u16,
    /// Extra TOML appended to the generated config (trunks, overrides).
    pub extra: String,
}

impl StackConfig {
    pub fn new(test: &str) -> Self {
        Self {
            clickhouse: crate::env::clickhouse(test),
            redis_url: crate::env::redis_url(),
            tracker_port: free_port(),
            router_sip_port: free_port(),
            router_http_port: free_port(),
            extra: String::new(),
        }
    }

    pub fn toml(&self) -> String {
        format!(
            r#"
[redis]
url = "{redis}"

[clickhouse]
url = "{ch}"
database = "{db}"

[sink]
flush_ms = 200
spool_dir = "{spool}"

[tracker]
listen = "127.0.0.1:{tp}"
admin_token = "test-token"
snippet_path = "{snippet}"

[router]
udp = "127.0.0.1:{sp}"
tcp = "127.0.0.1:{sp}"
http = "127.0.0.1:{hp}"
{extra}
"#,
            redis = self.redis_url,
            ch = self.clickhouse.url,
            db = self.clickhouse.database,
            tp = self.tracker_port,
            sp = self.router_sip_port,
            hp = self.router_http_port,
            snippet = crate::env::repo_root()
                .join("js-snippet/dist/snippet.js")
                .display(),
            extra = self.extra,
            spool = crate::env::scratch_dir("stack-spool").display(),
        )
    }

    /// Writes the config into `dir` and returns its path.
    pub fn write(&self, dir: &std::path::Path) -> PathBuf {
        let path = dir.join("dialmark.toml");
        std::fs::write(&path, self.toml()).expect("write config");
        path
    }
}
