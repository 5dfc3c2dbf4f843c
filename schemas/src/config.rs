//! The one config file of both services.
//!
//! A TOML file parsed into `Raw*` serde structs (every field has a default,
//! unknown fields are refused), then [`RawConfig::validate`] turns it into a
//! [`Config`] before any I/O: a bad value fails start-up with the field's
//! dotted path in the message. The doc comments on the fields are the config
//! reference (see README).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;

use crate::error::Error;
use crate::number::NumberingPlan;

/// Config as written in the file.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub redis: RedisConfig,
    #[serde(default)]
    pub clickhouse: ClickHouseConfig,
    #[serde(default)]
    pub sink: SinkConfig,
    #[serde(default)]
    pub numbering: NumberingPlan,
    #[serde(default)]
    pub tracker: TrackerConfig,
    #[serde(default)]
    pub router: RouterConfig,
}

/// Validated config. Same shape as [`RawConfig`]; only [`RawConfig::validate`]
/// makes one.
#[derive(Debug, Clone)]
pub struct Config {
    pub redis: RedisConfig,
    pub clickhouse: ClickHouseConfig,
    pub sink: SinkConfig,
    pub numbering: NumberingPlan,
    pub tracker: TrackerConfig,
    pub router: RouterConfig,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://host:port/db` of a single node. Ignored when `cluster` is set.
    pub url: String,
    /// Seed nodes (`redis://host:port`) of a Redis Cluster.
    pub cluster: Vec<String>,
    /// Replicas that must hold a lease before the visitor is given its
    /// number (Redis `WAIT`): Redis replicates asynchronously, and a
    /// replica promoted without an acknowledged lease would lease that
    /// number again. 0 (default): do not wait; 1 with a replica per master.
    pub wait_replicas: u32,
    /// The longest wait for them, ms: past it the lease is served anyway
    /// (a replica down must not stop leasing) and counted in
    /// `dialmark_redis_unreplicated_writes_total`.
    pub wait_timeout_ms: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379/".into(),
            cluster: Vec::new(),
            wait_replicas: 0,
            wait_timeout_ms: 100,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseConfig {
    /// HTTP endpoint of the ClickHouse server (on a cluster: any of its
    /// servers; the sink writes and the reports read through it).
    pub url: String,
    /// Database holding the dialmark tables; created by the migrations.
    pub database: String,
    pub user: String,
    pub password: String,
    /// Name of a cluster in the servers' `<remote_servers>`; empty: one
    /// server. Set, the migrations create the tables in
    /// `{database}_local` on every server of `servers` and `Distributed`
    /// tables of the same names in `{database}` over them.
    pub cluster: String,
    /// With `cluster`: the HTTP URL of every server of the cluster (each
    /// replica of each shard), for the migrations.
    pub servers: Vec<String>,
    /// With `cluster`: the local tables are `Replicated*MergeTree` (the
    /// servers need `<zookeeper>` and the `{shard}`/`{replica}` macros), so
    /// a shard may have several replicas. Off: plain `*MergeTree`, one
    /// server per shard, no ZooKeeper.
    pub replicated: bool,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8123".into(),
            database: "dialmark".into(),
            user: "default".into(),
            password: String::new(),
            cluster: String::new(),
            servers: Vec::new(),
            replicated: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkConfig {
    /// Rows per INSERT at most.
    pub batch_rows: usize,
    /// A partial batch is sent after this many milliseconds.
    pub flush_ms: u64,
    /// Directory of the write-ahead spools (one subdirectory per table).
    /// One process per directory.
    pub spool_dir: PathBuf,
    /// `never` (survives a killed process) or `always` (fsync per row,
    /// survives a power cut).
    pub fsync: crate::spool::Fsync,
    /// Unacknowledged spool bytes per table before rows are refused.
    pub spool_max_bytes: u64,
}

impl Default for SinkConfig {
    fn default() -> Self {
        Self {
            batch_rows: 10_000,
            flush_ms: 1_000,
            spool_dir: "var/spool".into(),
            fsync: crate::spool::Fsync::Never,
            spool_max_bytes: 1 << 30,
        }
    }
}

/// How much of a visitor's IP address is stored (privacy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum IpStorage {
    /// IPv4 /24, IPv6 /48: enough for network-level analysis, not a person.
    #[default]
    Truncated,
    /// A keyed hash of the full address: counts distinct visitors, cannot
    /// be reversed without the key.
    Hashed,
    /// The full address (only with a legal basis for it).
    Full,
    /// Nothing.
    None,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrackerConfig {
    /// HTTP listen address (snippet API, admin API, metrics).
    pub listen: SocketAddr,
    /// Bearer token of the admin API; the admin API is off when empty.
    pub admin_token: String,
    /// The built snippet served at `/snippet.js`.
    pub snippet_path: PathBuf,
    /// A demo page served at `/demo` (off when unset).
    pub demo_page: Option<PathBuf>,
    /// MaxMind City database for visitor geo; geo is empty when unset.
    pub geoip_db: Option<PathBuf>,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// How `visits.ip` keeps the visitor's address.
    pub ip_storage: IpStorage,
    /// HMAC key of `ip_storage = "hashed"` (at least 16 characters);
    /// `DIALMARK_IP_HASH_KEY` overrides it.
    pub ip_hash_key: String,
    /// A lease lives this long after the last keep-alive.
    pub hold_seconds: u32,
    /// A lease never lives longer than this in total.
    pub max_hold_seconds: u32,
    /// A released number rests this long before it is leased again.
    pub cooldown_seconds: u32,
    /// A call within this long after a lease ended is still attributed to it.
    pub attribution_window_seconds: u32,
    /// A touch (ad click, referral) older than this no longer counts as
    /// a visit's source, current or first (Google's click window).
    pub touch_max_age_days: u32,
    /// New leases a client network (IPv4 /24, IPv6 /48) may take from one
    /// pool per minute; past it the visit gets the site's own number
    /// (counted). 0 turns the cap off.
    pub leases_per_network_per_minute: u32,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Each pool's size and leased count go to `pool_samples` this often
    /// (one tracker of several does it: a Redis lock); 0 turns it off.
    pub pool_sample_seconds: u64,
    pub quarantine: QuarantineConfig,
}

/// When a retired number may go back to stock, and the tracker's own timer
/// that returns it (`[tracker.quarantine]`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct QuarantineConfig {
    /// A number rests in quarantine at least this long (the callers of its
    /// last owner forget it).
    pub min_days: u32,
    /// It is released only with fewer than this many calls received while
    /// in quarantine in the trailing `call_window_days` (from trusted
    /// carriers: `rejected_untrusted` INVITEs do not count).
    pub max_calls: u64,
    pub call_window_days: u32,
    /// The tracker releases eligible numbers by itself this often (one
    /// tracker of several does it: a Redis lock). 0 turns the timer off
    /// (`release-quarantine` by hand only).
    pub release_interval_seconds: u64,
    /// The timer only reports what it would release (log and metrics).
    pub dry_run: bool,
}

impl Default for QuarantineConfig {
    fn default() -> Self {
        Self {
            min_days: 90,
            max_calls: 3,
            call_window_days: 90,
            release_interval_seconds: 3600,
            dry_run: false,
        }
    }
}

impl Default for TrackerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".parse().expect("literal"),
            admin_token: String::new(),
            snippet_path: "js-snippet/dist/snippet.js".into(),
            demo_page: None,
            geoip_db: None,
            trusted_proxies: Vec::new(),
            ip_storage: IpStorage::default(),
            ip_hash_key: String::new(),
            hold_seconds: 900,
            max_hold_seconds: 4 * 3600,
            cooldown_seconds: 60,
            attribution_window_seconds: 1800,
            touch_max_age_days: 90,
            leases_per_network_per_minute: 30,
            quarantine: QuarantineConfig::default(),
            max_body_bytes: 16 * 1024,
            pool_sample_seconds: 60,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterConfig {
    /// UDP listen address.
    pub udp: SocketAddr,
    /// TCP listen address; TCP is off when unset.
    pub tcp: Option<SocketAddr>,
    /// A TCP message must arrive whole this long after its first byte
    /// (slow senders, Content-Length lies), else 400 and the connection
    /// is closed.
    pub tcp_message_timeout_ms: u64,
    /// Address put in Via and Record-Route; defaults to `udp`.
    pub advertise: Option<SocketAddr>,
    /// Carrier addresses allowed to start calls. Everyone else gets 403.
    pub trusted_sources: Vec<IpNet>,
    /// Reply to calls for quarantine and stock numbers (404, 410 or 480).
    pub reject_code: u16,
    /// Fail over when a trunk sent no provisional reply within this time.
    pub provisional_timeout_ms: u64,
    /// Fail over when a trunk sent no 180/183/2xx within this time of the
    /// INVITE (100 Trying, then silence); longer than the provisional
    /// timeout. 0 turns it off.
    pub ringing_timeout_ms: u64,
    /// The carrier's reply when every trunk of the client failed: 480
    /// (default), 500 or 503. Carrier SBCs read a 503 as "this node is
    /// down" and may stop sending calls.
    pub all_trunks_failed_code: u16,
    /// Final replies from a trunk that make us try the next trunk.
    pub failover_codes: Vec<u16>,
    /// Hunt to the next destination after ringing this long.
    pub ring_timeout_seconds: u64,
    /// The caller never waits longer than this for an answer.
    pub overall_timeout_seconds: u64,
    /// An answered call is hung up (BYE both ways) and closed as
    /// `timeout` after this long.
    pub max_call_seconds: u64,
    /// On SIGTERM, calls in progress get this long to end; those still up
    /// then are hung up (BYE both ways) and recorded.
    pub drain_seconds: u64,
    /// Routing shards (Call-ID hash → shard), each on its own task; 0 =
    /// one per CPU core.
    pub shards: usize,
    /// Memory budget of call state (ringing calls, dialogs, tombstones) in
    /// MiB: new calls over it are refused with 503 and recorded as
    /// `overload`.
    pub max_memory_mb: usize,
    /// A shard whose messages wait longer than this before it handles them
    /// (counted from the kernel's arrival stamp, so time in the UDP
    /// socket's buffer counts) is behind: new calls are refused (503 + Retry-After, recorded as
    /// `overload`) until it catches up; replies and in-dialog requests
    /// are still served first.
    pub overload_delay_ms: u64,
    /// Retry-After of the 503 to calls refused in overload.
    pub retry_after_seconds: u32,
    /// Receive buffer of the UDP socket (SO_RCVBUF), bytes; raised past
    /// `net.core.rmem_max` when the process may (CAP_NET_ADMIN).
    pub udp_recv_buffer_bytes: usize,
    /// Local route cache lifetime for DID records read from Redis.
    pub route_cache_ms: u64,
    /// HTTP listen address of `/metrics` and `/status`.
    pub http: SocketAddr,
    /// Alertmanager-compatible webhook for trunk state changes.
    pub alert_webhook: Option<String>,
    /// A recovery is notified only after the trunk stayed up this long.
    pub alert_hold_down_seconds: u64,
    pub call_webhook: CallWebhookConfig,
    /// SIP header carrying the visit's source to the client's PBX.
    pub source_header: String,
    /// SIP header carrying the visit's session id to the client's PBX.
    pub session_header: String,
    pub probe: ProbeConfig,
    pub quality: QualityConfig,
    pub rate_limit: RateLimitConfig,
    pub ha: HaConfig,
    pub trunks: Vec<TrunkConfig>,
}

/// The active/standby pair (`ops/README.md`, "High availability"): nodes
/// of one `group` share the SIP address; the one holding the group's
/// leader lease in Redis serves it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HaConfig {
    /// Off (default): the node serves its address at once, alone.
    pub enabled: bool,
    /// The pair's name (letters, digits, `-`, `_`): its lease key.
    pub group: String,
    /// This node's id in the lease; default `hostname:pid`.
    pub node: String,
    /// How long the lease outlives the active's last renewal: the
    /// takeover time when the active dies (default 3000).
    pub lease_ms: u64,
}

impl Default for HaConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            group: "default".into(),
            node: String::new(),
            lease_ms: 3_000,
        }
    }
}

/// The completed-call webhook: each call's record is POSTed as signed JSON
/// once ClickHouse holds it, retried with backoff until the receiver takes
/// it (at least once; the `X-Dialmark-Delivery` header is the call id).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallWebhookConfig {
    /// Receiver URL; the webhook is off when unset.
    pub url: Option<String>,
    /// HMAC-SHA256 key of the `X-Dialmark-Signature` header (at least 16
    /// characters); `DIALMARK_CALL_WEBHOOK_SECRET` overrides it.
    pub secret: String,
    /// Per-request timeout (default 5000).
    pub timeout_ms: u64,
    /// Longest wait between retries (default 300).
    pub max_backoff_seconds: u64,
}

impl Default for CallWebhookConfig {
    fn default() -> Self {
        Self {
            url: None,
            secret: String::new(),
            timeout_ms: 5_000,
            max_backoff_seconds: 300,
        }
    }
}

/// Flood protection per source IP (messages, not calls); a source over its
/// limit is banned and dropped unread for `ban_seconds`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Messages per second from a source that is not a trusted carrier; 0 = off.
    pub per_second: u32,
    /// Burst allowed from such a source.
    pub burst: u32,
    pub ban_seconds: u64,
    /// Messages per second from a trusted carrier; 0 = unlimited.
    pub trusted_per_second: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            per_second: 20,
            burst: 50,
            ban_seconds: 60,
            trusted_per_second: 0,
        }
    }
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            udp: "127.0.0.1:5060".parse().expect("literal"),
            tcp: None,
            tcp_message_timeout_ms: 10_000,
            advertise: None,
            trusted_sources: vec!["127.0.0.1/32".parse().expect("literal")],
            reject_code: 404,
            provisional_timeout_ms: 2_000,
            ringing_timeout_ms: 5_000,
            all_trunks_failed_code: 480,
            failover_codes: vec![408, 500, 502, 503, 504],
            ring_timeout_seconds: 20,
            overall_timeout_seconds: 60,
            max_call_seconds: 4 * 3600,
            drain_seconds: 30,
            shards: 0,
            max_memory_mb: 1024,
            overload_delay_ms: 500,
            retry_after_seconds: 5,
            udp_recv_buffer_bytes: 16 << 20,
            route_cache_ms: 5_000,
            http: "127.0.0.1:9060".parse().expect("literal"),
            alert_webhook: None,
            alert_hold_down_seconds: 30,
            call_webhook: CallWebhookConfig::default(),
            source_header: "X-Dialmark-Source".into(),
            session_header: "X-Dialmark-Session".into(),
            probe: ProbeConfig::default(),
            quality: QualityConfig::default(),
            rate_limit: RateLimitConfig::default(),
            ha: HaConfig::default(),
            trunks: Vec::new(),
        }
    }
}

impl RouterConfig {
    /// The address we put in Via and Record-Route.
    pub fn advertised(&self) -> SocketAddr {
        self.advertise.unwrap_or(self.udp)
    }

    /// The address we put in Via and Record-Route for TCP: the advertised
    /// host with `router.tcp`'s port (the UDP one when TCP is off).
    pub fn advertised_tcp(&self) -> SocketAddr {
        let mut a = self.advertised();
        if let Some(t) = self.tcp {
            a.set_port(t.port());
        }
        a
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbeConfig {
    /// Seconds between OPTIONS probes of a trunk; 0 turns probing off.
    pub interval_seconds: u64,
    /// A probe without a reply after this long has failed.
    pub timeout_ms: u64,
    /// Consecutive failures that mark a trunk down.
    pub down_after: u32,
    /// Consecutive successes that mark a down trunk up again.
    pub up_after: u32,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            interval_seconds: 10,
            timeout_ms: 1_000,
            down_after: 3,
            up_after: 2,
        }
    }
}

/// Quality-based rerouting (`[router.quality]`): a trunk whose NER falls
/// (under a floor, or well under its own 15-minute baseline) or whose PDD
/// p95 grows past a ceiling, over a window with enough attempts, gets only
/// a probing share of new calls (the next trunk goes first) while its
/// OPTIONS may still answer, until that share has looked good for the
/// recovery window. `[router.quality.groups.NAME]` gives one trunk group
/// a rule of its own (every field, defaults as here).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QualityConfig {
    /// Off: trunks are rerouted only when their probes fail.
    pub enabled: bool,
    /// The window judged, seconds.
    pub window_seconds: u64,
    /// Attempts in the window before a trunk is judged.
    pub min_attempts: u32,
    /// NER under this (0..1) degrades the trunk.
    pub ner_floor: f64,
    /// NER this much (0..1) under the trunk's own baseline degrades it.
    pub ner_drop: f64,
    /// PDD p95 over this degrades the trunk (ms).
    pub pdd_p95_ceiling_ms: u32,
    /// The share (0..1) of answered calls over within 3 s this far above
    /// the trunk's own 15-minute share degrades it (it answers and hangs up).
    pub short_share_rise: f64,
    /// A degraded trunk's share must look good this long to come back (s).
    pub recovery_seconds: u64,
    /// Share of new calls a degraded trunk keeps getting first, percent.
    pub probe_percent: u32,
    pub groups: std::collections::BTreeMap<String, QualityConfig>,
}

impl Default for QualityConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            window_seconds: 20,
            min_attempts: 20,
            ner_floor: 0.7,
            ner_drop: 0.25,
            pdd_p95_ceiling_ms: 5_000,
            short_share_rise: 0.4,
            recovery_seconds: 300,
            probe_percent: 5,
            groups: std::collections::BTreeMap::new(),
        }
    }
}

impl QualityConfig {
    /// The rule of trunk group `group`.
    pub fn for_group(&self, group: &str) -> &QualityConfig {
        self.groups.get(group).unwrap_or(self)
    }

    fn validate(&self, at: &str) -> Result<(), Error> {
        let field = |f: &str| format!("{at}.{f}");
        if !(0.0..=1.0).contains(&self.ner_floor) {
            return Err(Error::config(field("ner_floor"), "must be within 0..1"));
        }
        if !(0.0..=1.0).contains(&self.ner_drop) {
            return Err(Error::config(field("ner_drop"), "must be within 0..1"));
        }
        if !(0.0..=1.0).contains(&self.short_share_rise) {
            return Err(Error::config(
                field("short_share_rise"),
                "must be within 0..1",
            ));
        }
        if self.window_seconds < 10 || self.window_seconds > 900 {
            return Err(Error::config(field("window_seconds"), "must be 10..900"));
        }
        if self.recovery_seconds < 10 || self.recovery_seconds > 900 {
            return Err(Error::config(field("recovery_seconds"), "must be 10..900"));
        }
        if self.probe_percent == 0 || self.probe_percent > 50 {
            return Err(Error::config(field("probe_percent"), "must be 1..50"));
        }
        for (name, g) in &self.groups {
            if !g.groups.is_empty() {
                return Err(Error::config(
                    format!("{at}.groups.{name}.groups"),
                    "groups do not nest",
                ));
            }
            g.validate(&format!("{at}.groups.{name}"))?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrunkConfig {
    pub name: String,
    /// `host:port` of the trunk's SIP endpoint.
    pub address: SocketAddr,
    /// Trunk group; numbers route to a group.
    #[serde(default = "default_group")]
    pub group: String,
    /// Lower is tried first.
    #[serde(default)]
    pub priority: u32,
    /// Share among trunks of equal priority.
    #[serde(default = "one")]
    pub weight: u32,
    /// Concurrent calls at most; 0 = unlimited.
    #[serde(default)]
    pub max_calls: u32,
    /// New calls per second at most; 0 = unlimited.
    #[serde(default)]
    pub max_cps: u32,
    /// How requests reach the trunk: `udp` (default), `tcp` (one
    /// connection, reused while calls use it, reopened when it is gone),
    /// or `auto` (UDP, but a request over 1,300 bytes goes over TCP,
    /// RFC 3261 §18.1.1: the trunk must listen on both).
    #[serde(default)]
    pub transport: TrunkTransport,
}

/// A trunk's transport (see [`TrunkConfig::transport`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TrunkTransport {
    #[default]
    Udp,
    Tcp,
    Auto,
}

impl TrunkTransport {
    /// Whether a request of `len` bytes goes over TCP.
    pub fn tcp_for(self, len: usize) -> bool {
        match self {
            TrunkTransport::Udp => false,
            TrunkTransport::Tcp => true,
            TrunkTransport::Auto => len > 1_300,
        }
    }
}

fn default_group() -> String {
    "default".into()
}

fn one() -> u32 {
    1
}

impl RawConfig {
    /// Parses TOML text; `origin` names the file in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, Error> {
        toml::from_str(text).map_err(|e| Error::ConfigParse {
            path: origin.into(),
            message: e.to_string(),
        })
    }

    /// Secrets may come from the environment instead of the file (systemd
    /// `LoadCredential`/`EnvironmentFile`); a set variable wins.
    pub fn with_secrets_from(mut self, env: impl Fn(&str) -> Option<String>) -> Self {
        if let Some(v) = env("DIALMARK_ADMIN_TOKEN") {
            self.tracker.admin_token = v;
        }
        if let Some(v) = env("DIALMARK_IP_HASH_KEY") {
            self.tracker.ip_hash_key = v;
        }
        if let Some(v) = env("DIALMARK_CALL_WEBHOOK_SECRET") {
            self.router.call_webhook.secret = v;
        }
        if let Some(v) = env("DIALMARK_CLICKHOUSE_PASSWORD") {
            self.clickhouse.password = v;
        }
        self
    }

    /// Checks every field that a type alone cannot.
    pub fn validate(self) -> Result<Config, Error> {
        if self.redis.url.is_empty() && self.redis.cluster.is_empty() {
            return Err(Error::config("redis.url", "set url or cluster"));
        }
        if self.redis.wait_replicas > 0 && !(1..=5000).contains(&self.redis.wait_timeout_ms) {
            return Err(Error::config(
                "redis.wait_timeout_ms",
                "must be 1..5000 when wait_replicas is set",
            ));
        }
        for (i, u) in self.redis.cluster.iter().enumerate() {
            if !u.starts_with("redis://") {
                return Err(Error::config(
                    format!("redis.cluster[{i}]"),
                    "must start with redis://",
                ));
            }
        }
        if !self.clickhouse.url.starts_with("http://")
            && !self.clickhouse.url.starts_with("https://")
        {
            return Err(Error::config(
                "clickhouse.url",
                "must be an http:// or https:// URL",
            ));
        }
        if !is_identifier(&self.clickhouse.database) {
            return Err(Error::config(
                "clickhouse.database",
                "must be letters, digits and _ and not start with a digit",
            ));
        }
        self.clickhouse.validate_cluster()?;
        if self.sink.batch_rows == 0 {
            return Err(Error::config("sink.batch_rows", "must be at least 1"));
        }
        if self.sink.spool_max_bytes < 1 << 20 {
            return Err(Error::config(
                "sink.spool_max_bytes",
                "must be at least 1 MiB",
            ));
        }
        if self.sink.spool_dir.as_os_str().is_empty() {
            return Err(Error::config("sink.spool_dir", "must be set"));
        }
        self.numbering.validate()?;
        let t = &self.tracker;
        if t.hold_seconds == 0 {
            return Err(Error::config("tracker.hold_seconds", "must be at least 1"));
        }
        if t.max_hold_seconds < t.hold_seconds {
            return Err(Error::config(
                "tracker.max_hold_seconds",
                "must be at least tracker.hold_seconds",
            ));
        }
        if t.ip_storage == IpStorage::Hashed && t.ip_hash_key.len() < 16 {
            return Err(Error::config(
                "tracker.ip_hash_key",
                "must be at least 16 characters when tracker.ip_storage = \"hashed\"",
            ));
        }
        if t.quarantine.call_window_days == 0 {
            return Err(Error::config(
                "tracker.quarantine.call_window_days",
                "must be at least 1",
            ));
        }
        if t.quarantine.max_calls == 0 {
            return Err(Error::config(
                "tracker.quarantine.max_calls",
                "must be at least 1 (no number has fewer than 0 calls)",
            ));
        }
        if t.max_body_bytes < 256 {
            return Err(Error::config(
                "tracker.max_body_bytes",
                "must be at least 256",
            ));
        }
        if t.pool_sample_seconds > 3600 {
            return Err(Error::config(
                "tracker.pool_sample_seconds",
                "must be at most 3600 (0 turns sampling off)",
            ));
        }
        let r = &self.router;
        if ![404, 410, 480].contains(&r.reject_code) {
            return Err(Error::config(
                "router.reject_code",
                "must be 404, 410 or 480",
            ));
        }
        for (i, c) in r.failover_codes.iter().enumerate() {
            if !(300..=699).contains(c) {
                return Err(Error::config(
                    format!("router.failover_codes[{i}]"),
                    "must be a final SIP status (300-699)",
                ));
            }
            if [404, 486, 600, 603].contains(c) {
                return Err(Error::config(
                    format!("router.failover_codes[{i}]"),
                    "404/486/600/603 mean the callee said no; never fail over on them",
                ));
            }
        }
        if r.tcp_message_timeout_ms < 100 {
            return Err(Error::config(
                "router.tcp_message_timeout_ms",
                "must be at least 100",
            ));
        }
        if r.provisional_timeout_ms == 0 {
            return Err(Error::config(
                "router.provisional_timeout_ms",
                "must be at least 1",
            ));
        }
        if r.ringing_timeout_ms != 0 && r.ringing_timeout_ms <= r.provisional_timeout_ms {
            return Err(Error::config(
                "router.ringing_timeout_ms",
                "must be longer than router.provisional_timeout_ms (or 0: off)",
            ));
        }
        if ![480, 500, 503].contains(&r.all_trunks_failed_code) {
            return Err(Error::config(
                "router.all_trunks_failed_code",
                "must be 480, 500 or 503",
            ));
        }
        if r.max_memory_mb == 0 {
            return Err(Error::config("router.max_memory_mb", "must be at least 1"));
        }
        if r.shards > 256 {
            return Err(Error::config("router.shards", "must be at most 256"));
        }
        if r.overload_delay_ms < 10 {
            return Err(Error::config(
                "router.overload_delay_ms",
                "must be at least 10",
            ));
        }
        if r.overall_timeout_seconds == 0 {
            return Err(Error::config(
                "router.overall_timeout_seconds",
                "must be at least 1",
            ));
        }
        r.quality.validate("router.quality")?;
        if !(300..=60_000).contains(&r.ha.lease_ms) {
            return Err(Error::config("router.ha.lease_ms", "must be 300..60000"));
        }
        if r.ha.group.is_empty()
            || !r
                .ha
                .group
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(Error::config(
                "router.ha.group",
                "letters, digits, '-' and '_' only",
            ));
        }
        if r.probe.down_after == 0 {
            return Err(Error::config(
                "router.probe.down_after",
                "must be at least 1",
            ));
        }
        if r.probe.up_after == 0 {
            return Err(Error::config("router.probe.up_after", "must be at least 1"));
        }
        if let Some(w) = &r.alert_webhook {
            if !w.starts_with("http://") && !w.starts_with("https://") {
                return Err(Error::config(
                    "router.alert_webhook",
                    "must be an http(s) URL",
                ));
            }
        }
        let w = &r.call_webhook;
        if let Some(url) = &w.url {
            if let Err((field, why)) = check_webhook(url, &w.secret) {
                return Err(Error::config(format!("router.call_webhook.{field}"), why));
            }
            if w.timeout_ms == 0 || w.max_backoff_seconds == 0 {
                return Err(Error::config(
                    "router.call_webhook",
                    "timeout_ms and max_backoff_seconds must be at least 1",
                ));
            }
        }
        let mut names = HashSet::new();
        for (i, tr) in r.trunks.iter().enumerate() {
            if tr.name.is_empty()
                || !tr
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(Error::config(
                    format!("router.trunks[{i}].name"),
                    "must be non-empty letters, digits, '-', '_' or '.'",
                ));
            }
            if !names.insert(tr.name.clone()) {
                return Err(Error::config(
                    format!("router.trunks[{i}].name"),
                    format!("duplicate trunk name {:?}", tr.name),
                ));
            }
            if tr.weight == 0 {
                return Err(Error::config(
                    format!("router.trunks[{i}].weight"),
                    "must be at least 1",
                ));
            }
        }
        Ok(Config {
            redis: self.redis,
            clickhouse: self.clickhouse,
            sink: self.sink,
            numbering: self.numbering,
            tracker: self.tracker,
            router: self.router,
        })
    }
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ConfigRead {
            path: path.display().to_string(),
            source,
        })?;
        RawConfig::parse(&text, &path.display().to_string())?
            .with_secrets_from(|k| std::env::var(k).ok())
            .validate()
    }

    /// Parses and validates config text (tests, embedded defaults).
    pub fn from_toml(text: &str) -> Result<Config, Error> {
        RawConfig::parse(text, "<inline>")?.validate()
    }
}

/// A ClickHouse/SQL identifier we are willing to splice into DDL.
/// What is wrong with a call webhook's receiver, as (field, reason): the
/// node's `router.call_webhook` and each site's `webhook` obey one rule.
pub fn check_webhook(url: &str, secret: &str) -> Result<(), (&'static str, &'static str)> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    if rest.is_none_or(|r| r.is_empty() || r.starts_with('/') || r.contains(char::is_whitespace)) {
        return Err(("url", "must be an http(s) URL with a host"));
    }
    if secret.len() < 16 {
        return Err((
            "secret",
            "must be at least 16 characters when the webhook is on",
        ));
    }
    Ok(())
}

impl ClickHouseConfig {
    fn validate_cluster(&self) -> Result<(), Error> {
        if self.cluster.is_empty() {
            if !self.servers.is_empty() {
                return Err(Error::config(
                    "clickhouse.servers",
                    "only with clickhouse.cluster",
                ));
            }
            if self.replicated {
                return Err(Error::config(
                    "clickhouse.replicated",
                    "only with clickhouse.cluster",
                ));
            }
            return Ok(());
        }
        if !is_identifier(&self.cluster) {
            return Err(Error::config(
                "clickhouse.cluster",
                "must be letters, digits and _ and not start with a digit",
            ));
        }
        if self.servers.is_empty() {
            return Err(Error::config(
                "clickhouse.servers",
                "list the HTTP URL of every server of the cluster",
            ));
        }
        for (i, u) in self.servers.iter().enumerate() {
            if !u.starts_with("http://") && !u.starts_with("https://") {
                return Err(Error::config(
                    format!("clickhouse.servers[{i}]"),
                    "must be an http:// or https:// URL",
                ));
            }
            if self.servers[..i].contains(u) {
                return Err(Error::config(
                    format!("clickhouse.servers[{i}]"),
                    "listed twice",
                ));
            }
        }
        Ok(())
    }
}

pub fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.len() <= 64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhooks_need_an_http_url_with_a_host_and_a_long_secret() {
        let secret = "0123456789abcdef";
        assert_eq!(check_webhook("https://crm.example/hook", secret), Ok(()));
        assert_eq!(check_webhook("http://127.0.0.1:9/x", secret), Ok(()));
        for bad in [
            "ftp://crm.example",
            "https://",
            "http:///path",
            "crm.example",
            "https://a b",
        ] {
            assert_eq!(check_webhook(bad, secret).unwrap_err().0, "url", "{bad}");
        }
        assert_eq!(
            check_webhook("https://crm.example", "short").unwrap_err().0,
            "secret"
        );
    }

    #[test]
    fn secrets_from_the_environment_win() {
        let raw = RawConfig::parse(
            "[tracker]\nadmin_token = \"file\"\n[router.call_webhook]\nurl = \"http://127.0.0.1:1/\"\n",
            "t",
        )
        .unwrap();
        let env = |k: &str| (k == "DIALMARK_CALL_WEBHOOK_SECRET").then(|| "s".repeat(16));
        let c = raw.clone().with_secrets_from(env).validate().unwrap();
        assert_eq!(c.router.call_webhook.secret, "s".repeat(16));
        assert_eq!(c.tracker.admin_token, "file");
        let err = raw.with_secrets_from(|_| None).validate().unwrap_err();
        assert!(
            err.to_string().contains("router.call_webhook.secret"),
            "{err}"
        );
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.tracker.hold_seconds, 900);
        assert_eq!(c.router.provisional_timeout_ms, 2_000);
        assert_eq!(c.router.ringing_timeout_ms, 5_000);
        assert_eq!(c.router.all_trunks_failed_code, 480);
        assert_eq!((c.router.shards, c.router.max_memory_mb), (0, 1024));
        assert_eq!(c.router.failover_codes, vec![408, 500, 502, 503, 504]);
        assert_eq!(c.clickhouse.database, "dialmark");
        assert_eq!(c.router.advertised(), c.router.udp);
    }

    #[test]
    fn example_config_is_valid() {
        let text = include_str!("../../ops/dialmark.example.toml");
        let c = Config::from_toml(text).unwrap();
        assert_eq!(c.router.trunks.len(), 2);
    }

    #[test]
    fn unknown_field_is_refused_with_its_name() {
        let err = Config::from_toml("[tracker]\nhold_secs = 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("hold_secs"), "{err}");
    }

    #[test]
    fn bad_values_name_the_field() {
        let cases = [
            ("[clickhouse]\ndatabase = \"x; DROP\"\n", "clickhouse.database"),
            ("[clickhouse]\nurl = \"tcp://x\"\n", "clickhouse.url"),
            ("[clickhouse]\ncluster = \"c\"\n", "clickhouse.servers"),
            ("[clickhouse]\ncluster = \"a-b\"\n", "clickhouse.cluster"),
            ("[clickhouse]\nreplicated = true\n", "clickhouse.replicated"),
            (
                "[clickhouse]\ncluster = \"c\"\nservers = [\"http://a:8123\", \"b:8123\"]\n",
                "clickhouse.servers[1]",
            ),
            (
                "[clickhouse]\nservers = [\"http://a:8123\"]\n",
                "clickhouse.servers",
            ),
            (
                "[redis]\nwait_replicas = 1\nwait_timeout_ms = 0\n",
                "redis.wait_timeout_ms",
            ),
            ("[tracker]\nhold_seconds = 0\n", "tracker.hold_seconds"),
            ("[tracker]\npool_sample_seconds = 7200\n", "tracker.pool_sample_seconds"),
            ("[tracker]\nhold_seconds = 100\nmax_hold_seconds = 10\n", "tracker.max_hold_seconds"),
            ("[router]\nreject_code = 500\n", "router.reject_code"),
            ("[router]\nfailover_codes = [486]\n", "router.failover_codes[0]"),
            ("[router]\nringing_timeout_ms = 1000\n", "router.ringing_timeout_ms"),
            ("[router]\nall_trunks_failed_code = 404\n", "router.all_trunks_failed_code"),
            ("[router]\nmax_memory_mb = 0\n", "router.max_memory_mb"),
            ("[router.ha]\nlease_ms = 100\n", "router.ha.lease_ms"),
            ("[router.ha]\ngroup = \"a{b}\"\n", "router.ha.group"),
            ("[router.quality]\nner_floor = 2.0\n", "router.quality.ner_floor"),
            (
                "[router.quality.groups.premium]\nprobe_percent = 0\n",
                "router.quality.groups.premium.probe_percent",
            ),
            ("[router.probe]\ndown_after = 0\n", "router.probe.down_after"),
            ("[numbering]\ncountry_code = \"x\"\n", "numbering.country_code"),
            (
                "[[router.trunks]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n[[router.trunks]]\nname = \"a\"\naddress = \"127.0.0.1:2\"\n",
                "router.trunks[1].name",
            ),
        ];
        for (text, field) in cases {
            let err = Config::from_toml(text).unwrap_err().to_string();
            assert!(err.contains(field), "{text:?} gave {err}");
        }
    }

    #[test]
    fn type_errors_are_reported_with_the_key() {
        let err = Config::from_toml("[router]\nudp = \"not an address\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("udp"), "{err}");
    }
}
