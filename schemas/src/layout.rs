//! The Redis key layout and Lua scripts: live state shared by the tracker
//! (writer) and the router (reader). `schemas/README.md` documents it for
//! people; this module is the one place code builds key names.
//!
//! Keys of one pool share the hash tag `{pool:ID}` so the pool scripts touch
//! one Redis Cluster slot. Global keys (routes, sites, pools, indexes) are
//! plain and read with single-key commands.

use std::collections::HashMap;

use redis::aio::ConnectionLike;
use redis::Script;

use crate::rows::NumberStatus;

/// Routing record of a number: `HASH dm:route:{E164}`.
pub fn route_key(number: &str) -> String {
    format!("dm:route:{number}")
}

/// Site config: `STRING dm:site:{ID}` holding JSON.
pub fn site_key(site: &str) -> String {
    format!("dm:site:{site}")
}

/// A site's own call webhook (the `webhook` field of its config JSON):
/// the router sends that site's `call.started` and `call.completed`
/// events there, signed with `secret`, besides the node's global webhook.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteWebhook {
    pub url: String,
    pub secret: String,
}

/// Pool config: `STRING dm:pool:{ID}` holding JSON.
pub fn pool_key(pool: &str) -> String {
    format!("dm:pool:{pool}")
}

/// A site's read token, by its keyed hash: `STRING dm:token:{HASH}`
/// holding JSON (`site`, `name`, `created`).
pub fn token_key(hash: &str) -> String {
    format!("dm:token:{hash}")
}

/// A site's read tokens: `HASH dm:site_tokens:{ID}`, name → token hash.
pub fn site_tokens_key(site: &str) -> String {
    format!("dm:site_tokens:{site}")
}

/// Pub/sub channel of the live call feed (router → tracker): one JSON
/// call event document per message (`call.started`, `call.answered`,
/// `call.completed`), as the call webhooks send them.
pub const LIVE_CALLS: &str = "dm:live:calls";

/// `SET` of site ids.
pub const SITES: &str = "dm:sites";
/// `SET` of pool ids.
pub const POOLS: &str = "dm:pools";
/// `ZSET` number → time it entered quarantine.
pub const QUARANTINE: &str = "dm:quarantine";
/// Held by the tracker that runs the quarantine release this interval.
pub const RELEASE_LOCK: &str = "dm:lock:quarantine_release";
/// Held by the tracker that samples the pools this interval.
pub const SAMPLE_LOCK: &str = "dm:lock:pool_sample";
/// `SET` of numbers in stock.
pub const STOCK: &str = "dm:stock";

/// Prefix of every key of one pool: `dm:{pool:ID}:`. Under it:
/// `numbers` (SET, members), `free` (ZSET number → leasable-from time),
/// `leased` (ZSET number → expiry), `lease:N` (HASH live lease),
/// `last:N` (HASH ended lease, kept for the attribution window),
/// `session:S` (STRING number held by session S), `stats` (HASH counters).
pub fn pool_prefix(pool: &str) -> String {
    format!("dm:{{pool:{pool}}}:")
}

/// A pool or site id we accept: short, URL- and key-safe.
pub fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The pool scripts, loaded once per connection and run with EVALSHA.
pub struct Scripts {
    pub allocate: Script,
    pub keepalive: Script,
    pub withdraw: Script,
    pub enroll: Script,
}

impl Default for Scripts {
    fn default() -> Self {
        Self {
            allocate: Script::new(include_str!("../lua/allocate.lua")),
            keepalive: Script::new(include_str!("../lua/keepalive.lua")),
            withdraw: Script::new(include_str!("../lua/withdraw.lua")),
            enroll: Script::new(include_str!("../lua/enroll.lua")),
        }
    }
}

/// How calls to a number are attributed when it is not leased from a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumberKind {
    /// Leased to visitors from its pool.
    Pool,
    /// The pool's overflow number: handed out when the pool is exhausted.
    Overflow,
    /// Bound to one source label (offline ads).
    Static,
}

impl NumberKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NumberKind::Pool => "pool",
            NumberKind::Overflow => "overflow",
            NumberKind::Static => "static",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pool" => NumberKind::Pool,
            "overflow" => NumberKind::Overflow,
            "static" => NumberKind::Static,
            _ => return None,
        })
    }
}

/// The router's view of a number, written by the tracker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRecord {
    pub number: String,
    pub status: NumberStatus,
    pub kind: NumberKind,
    pub site: String,
    pub pool: String,
    /// Where calls go, tried in order (destination hunting): E.164 numbers.
    pub destinations: Vec<String>,
    /// Trunk group carrying the calls.
    pub trunk_group: String,
    /// Source label of a static number.
    pub source_label: String,
    /// Unix seconds of the last status change.
    pub status_since: u32,
}

impl RouteRecord {
    pub fn to_fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("status", self.status.as_str().to_string()),
            ("kind", self.kind.as_str().to_string()),
            ("site", self.site.clone()),
            ("pool", self.pool.clone()),
            ("destinations", self.destinations.join(",")),
            ("trunk_group", self.trunk_group.clone()),
            ("source_label", self.source_label.clone()),
            ("status_since", self.status_since.to_string()),
        ]
    }

    /// From `HGETALL`; `None` when the hash is empty (unknown number).
    pub fn from_fields(number: &str, f: &HashMap<String, String>) -> Option<Self> {
        if f.is_empty() {
            return None;
        }
        let get = |k: &str| f.get(k).cloned().unwrap_or_default();
        Some(Self {
            number: number.to_string(),
            status: NumberStatus::parse(&get("status")).unwrap_or(NumberStatus::Unknown),
            kind: NumberKind::parse(&get("kind")).unwrap_or(NumberKind::Pool),
            site: get("site"),
            pool: get("pool"),
            destinations: get("destinations")
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
            trunk_group: f
                .get("trunk_group")
                .filter(|s| !s.is_empty())
                .cloned()
                .unwrap_or_else(|| "default".into()),
            source_label: get("source_label"),
            status_since: get("status_since").parse().unwrap_or(0),
        })
    }
}

/// Reads a routing record.
pub async fn read_route<C: ConnectionLike + Send>(
    conn: &mut C,
    number: &str,
) -> redis::RedisResult<Option<RouteRecord>> {
    let fields: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(route_key(number))
        .query_async(conn)
        .await?;
    Ok(RouteRecord::from_fields(number, &fields))
}

/// The lease fields a visit stores and a call reads back for attribution.
pub const LEASE_FIELDS: &[&str] = &[
    "visitor",
    "site",
    "visit_ts",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_term",
    "utm_content",
    "gclid",
    "yclid",
    "referrer",
    "landing_url",
    "country",
    "region",
    "city",
    "gbraid",
    "wbraid",
    "fbclid",
    "msclkid",
    "ym_uid",
    "channel",
    "touch_ts",
    "touch_ms",
    "first_touch_ts",
    "first_channel",
    "first_utm_source",
    "first_utm_medium",
    "first_utm_campaign",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_keys_share_one_hash_tag() {
        let p = pool_prefix("p1");
        assert_eq!(p, "dm:{pool:p1}:");
        assert!(format!("{p}lease:+7495").contains("{pool:p1}"));
    }

    #[test]
    fn route_record_round_trips() {
        let r = RouteRecord {
            number: "+74950000001".into(),
            status: NumberStatus::Active,
            kind: NumberKind::Static,
            site: "s".into(),
            pool: String::new(),
            destinations: vec!["+74951112233".into(), "+74951112234".into()],
            trunk_group: "g".into(),
            source_label: "billboard".into(),
            status_since: 5,
        };
        let map: HashMap<String, String> = r
            .to_fields()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert_eq!(RouteRecord::from_fields(&r.number, &map), Some(r));
        assert_eq!(RouteRecord::from_fields("x", &HashMap::new()), None);
    }

    #[test]
    fn ids() {
        assert!(is_id("site-1_a"));
        assert!(!is_id(""));
        assert!(!is_id("a b"));
        assert!(!is_id("a}b"));
    }
}
