//! An in-process tracker for tests: the real library on a port-0 listener,
//! over the real Redis and ClickHouse that ops/test started.

use std::net::SocketAddr;

use dialmark_schemas::config::{Config, RedisConfig};
use dialmark_schemas::sink::SchemaGate;
use dialmark_tracker::app::{AppState, SinkTasks};

/// A running in-process tracker.
pub struct TestTracker {
    pub state: AppState,
    pub addr: SocketAddr,
    pub config: Config,
    _sinks: SinkTasks,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for TestTracker {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// The config of a test tracker: fresh migrated database, given Redis.
pub async fn config(test: &str, redis: RedisConfig, extra: &str) -> Config {
    config_on(crate::env::clickhouse(test), redis, extra).await
}

/// Like [`config`], on a given ClickHouse (a test's private server).
pub async fn config_on(
    ch: dialmark_schemas::config::ClickHouseConfig,
    redis: RedisConfig,
    extra: &str,
) -> Config {
    let text = format!(
        "[clickhouse]\nurl = \"{}\"\ndatabase = \"{}\"\n[sink]\nflush_ms = 100\nspool_dir = \"{}\"\n[tracker]\nadmin_token = \"test-token\"\ntrusted_proxies = [\"127.0.0.1/32\"]\nmax_body_bytes = 4096\n{extra}",
        ch.url,
        ch.database,
        crate::env::scratch_dir("tracker-spool").display()
    );
    let mut config = Config::from_toml(&text).expect("test config");
    config.redis = redis;
    dialmark_schemas::migrate::run(&config.clickhouse)
        .await
        .expect("migrate");
    config
}

pub fn single_redis() -> RedisConfig {
    RedisConfig {
        url: crate::env::redis_url(),
        ..RedisConfig::default()
    }
}

pub fn cluster_redis() -> RedisConfig {
    RedisConfig {
        url: String::new(),
        cluster: crate::env::redis_cluster(),
        ..RedisConfig::default()
    }
}

impl TestTracker {
    pub async fn start(config: Config) -> TestTracker {
        let (state, sinks) = AppState::new(config.clone(), None, "tracker", SchemaGate::open())
            .await
            .expect("tracker state");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = dialmark_tracker::app::router(state.clone())
            .into_make_service_with_connect_info::<SocketAddr>();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        TestTracker {
            state,
            addr,
            config,
            _sinks: sinks,
            server,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `POST /v1/visits` with `body` from a page of [`ORIGIN`]; the
    /// tracker's answer (an error's JSON too).
    pub async fn visit(&self, body: serde_json::Value) -> serde_json::Value {
        self.visit_from(body, None).await
    }

    /// [`TestTracker::visit`] from the client address `ip` (as a trusted
    /// proxy's `X-Forwarded-For` gives it) when set.
    pub async fn visit_from(
        &self,
        body: serde_json::Value,
        ip: Option<String>,
    ) -> serde_json::Value {
        let url = self.url("/v1/visits");
        tokio::task::spawn_blocking(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .into();
            let mut req = agent.post(&url).header("origin", ORIGIN);
            if let Some(ip) = &ip {
                req = req.header("x-forwarded-for", ip);
            }
            req.send(body.to_string())
                .unwrap()
                .body_mut()
                .read_json()
                .unwrap()
        })
        .await
        .unwrap()
    }
}

/// The origin of the test sites' pages: the snippet API leases numbers
/// only to requests that carry a site's origin.
pub const ORIGIN: &str = "https://shop.test";

/// A site whose default pool holds `n` fresh numbers ringing +74951234567:
/// (site, pool, numbers). The site's own number is +74950000000; its page
/// origin is [`ORIGIN`].
pub async fn provision(t: &TestTracker, n: usize) -> (String, String, Vec<String>) {
    use dialmark_tracker::inventory::{AddNumbers, PoolDef, Site};
    let inv = &t.state.inventory;
    let (site, pool) = (crate::env::unique("site"), crate::env::unique("pool"));
    inv.put_site(Site {
        id: site.clone(),
        origins: vec![ORIGIN.into()],
        replace: vec!["+74950000000".into()],
        display_mask: String::new(),
        default_pool: pool.clone(),
        geo_pools: vec![],
        ignore_referrers: vec![],
        lines: vec![],
        webhook: None,
    })
    .await
    .expect("site");
    inv.put_pool(
        PoolDef {
            id: pool.clone(),
            site: site.clone(),
            overflow_number: None,
            destinations: vec!["+74951234567".into()],
            trunk_group: "default".into(),
        },
        "test",
    )
    .await
    .expect("pool");
    let numbers: Vec<String> = (0..n).map(|_| crate::env::unique_number()).collect();
    inv.add_numbers(
        AddNumbers {
            numbers: numbers.clone(),
            pool: Some(pool.clone()),
            ..Default::default()
        },
        "test",
        dialmark_schemas::unix_now(),
    )
    .await
    .expect("numbers");
    (site, pool, numbers)
}
