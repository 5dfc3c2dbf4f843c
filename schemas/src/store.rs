//! One Redis connection type for a single node or a Redis Cluster, chosen
//! by config; both services hold a [`Redis`] and never care which it is.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::config::RedisConfig;

/// A cheap-to-clone, reconnecting Redis connection, and how many replicas
/// must hold a write that has to survive a failover.
#[derive(Clone)]
pub struct Redis {
    conn: Conn,
    wait_replicas: u32,
    wait_timeout_ms: u64,
    /// Masters whose writes are not waited for, after a shortfall there.
    unwaited: Arc<Mutex<Unwaited>>,
}

/// How long a master's writes go unwaited after one reached too few
/// replicas: `WAIT` blocks the connection every request to that master
/// shares, and a master without its replica (just promoted, say) would
/// make every lease there wait the whole timeout, in a queue.
const WAIT_BACKOFF_MS: u64 = 5_000;

/// Which masters' writes go unwaited, and until when (Unix ms): only the
/// one that fell short, so the other masters' leases stay protected.
#[derive(Default)]
struct Unwaited {
    /// Slot ranges of each master (`CLUSTER SLOTS`), read at a shortfall.
    /// Empty on a single node, or when they could not be read: then every
    /// slot is the one master "".
    slots: Vec<(u16, u16, String)>,
    until: HashMap<String, u64>,
}

impl Unwaited {
    fn master(&self, slot: u16) -> &str {
        self.slots
            .iter()
            .find(|(a, b, _)| (*a..=*b).contains(&slot))
            .map_or("", |(_, _, m)| m.as_str())
    }

    fn skipped(&self, slot: u16, now: u64) -> bool {
        self.until.get(self.master(slot)).is_some_and(|&t| now < t)
    }
}

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Redis {
    /// Connects to the node or cluster named in config.
    pub async fn connect(cfg: &RedisConfig) -> redis::RedisResult<Redis> {
        let conn = if cfg.cluster.is_empty() {
            let client = redis::Client::open(cfg.url.as_str())?;
            let mgr_cfg = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(std::time::Duration::from_secs(2)))
                .set_response_timeout(Some(std::time::Duration::from_secs(2)))
                .set_number_of_retries(1);
            Conn::Single(ConnectionManager::new_with_config(client, mgr_cfg).await?)
        } else {
            let client = redis::cluster::ClusterClientBuilder::new(cfg.cluster.clone())
                .connection_timeout(std::time::Duration::from_secs(2))
                .response_timeout(std::time::Duration::from_secs(2))
                .build()?;
            Conn::Cluster(client.get_async_connection().await?)
        };
        Ok(Redis {
            conn,
            wait_replicas: cfg.wait_replicas,
            wait_timeout_ms: cfg.wait_timeout_ms,
            unwaited: Arc::default(),
        })
    }

    /// After a write to `key` a failover must not lose (a lease): waits
    /// until `redis.wait_replicas` replicas of its master acknowledged this
    /// connection's writes (`WAIT`), at most `redis.wait_timeout_ms`. Fewer
    /// in time is logged and counted, not an error: a replica down must not
    /// stop the service; nor is any write to that master waited for during
    /// the [`WAIT_BACKOFF_MS`] that follow. No-op at 0.
    pub async fn replicated(&mut self, key: &str) -> redis::RedisResult<()> {
        let slot = match self.conn {
            Conn::Single(_) => 0,
            Conn::Cluster(_) => key_slot(key),
        };
        let now = crate::unix_now_ms();
        if self.wait_replicas == 0 || self.lock_unwaited().skipped(slot, now) {
            return Ok(());
        }
        // To the master of `key` only: by default WAIT goes to every
        // master, a dead one the client still lists too.
        let its_master = || {
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::with_key(
                key,
                SlotAddr::Master,
            )))
        };
        let mut wait = redis::cmd("WAIT");
        wait.arg(self.wait_replicas).arg(self.wait_timeout_ms);
        let acked: u32 = match &mut self.conn {
            Conn::Single(c) => wait.query_async(c).await?,
            Conn::Cluster(c) => {
                redis::from_redis_value(c.route_command(wait, its_master()).await?)?
            }
        };
        if acked < self.wait_replicas {
            // Which master that is: the slot map may have changed (a
            // failover is the usual reason for a shortfall), so read it now.
            let fresh = match &mut self.conn {
                Conn::Cluster(c) => {
                    // Asked of the master that just answered the WAIT:
                    // alive, unlike a node picked at random might be.
                    let slots = redis::cmd("CLUSTER").arg("SLOTS").to_owned();
                    match c.route_command(slots, its_master()).await {
                        Ok(v) => Some(parse_slots(&v)),
                        Err(e) => {
                            tracing::warn!(error = %e, "CLUSTER SLOTS failed");
                            None
                        }
                    }
                }
                Conn::Single(_) => None,
            };
            let mut u = self.lock_unwaited();
            if let Some(slots) = fresh {
                u.slots = slots;
            }
            let master = u.master(slot).to_string();
            u.until
                .insert(master.clone(), crate::unix_now_ms() + WAIT_BACKOFF_MS);
            drop(u);
            metrics::counter!("dialmark_redis_unreplicated_writes_total").increment(1);
            tracing::warn!(
                acked,
                wanted = self.wait_replicas,
                key,
                master,
                "a write reached fewer replicas than redis.wait_replicas in time; not waiting for that master for {WAIT_BACKOFF_MS} ms"
            );
        }
        Ok(())
    }

    fn lock_unwaited(&self) -> std::sync::MutexGuard<'_, Unwaited> {
        // Plain data: a panic elsewhere cannot leave it inconsistent.
        self.unwaited.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The cluster slot of `key`: CRC16 (XMODEM) of its hash tag (the part
/// between the first `{` and the next `}`, if not empty) or of the whole
/// key, mod 16384.
fn key_slot(key: &str) -> u16 {
    let k = key.as_bytes();
    let tag = k.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &k[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16::State::<crc16::XMODEM>::calculate(tag.unwrap_or(k)) % 16384
}

/// `CLUSTER SLOTS` as (first slot, last slot, "host:port" of the master).
fn parse_slots(v: &Value) -> Vec<(u16, u16, String)> {
    let Value::Array(ranges) = v else {
        return Vec::new();
    };
    ranges
        .iter()
        .filter_map(|r| {
            let Value::Array(f) = r else { return None };
            let (Some(Value::Int(a)), Some(Value::Int(b)), Some(Value::Array(m))) =
                (f.first(), f.get(1), f.get(2))
            else {
                return None;
            };
            let host = match m.first()? {
                Value::BulkString(h) => String::from_utf8_lossy(h).into_owned(),
                Value::SimpleString(h) => h.clone(),
                _ => return None,
            };
            let Some(Value::Int(port)) = m.get(1) else {
                return None;
            };
            Some((
                u16::try_from(*a).ok()?,
                u16::try_from(*b).ok()?,
                format!("{host}:{port}"),
            ))
        })
        .collect()
}

impl ConnectionLike for Redis {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &mut self.conn {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match &mut self.conn {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match &self.conn {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_of_keys_match_redis() {
        // CLUSTER KEYSLOT examples of the Redis documentation.
        assert_eq!(key_slot("somekey"), 11058);
        assert_eq!(key_slot("foo{hash_tag}"), 2515);
        assert_eq!(key_slot("{user1000}.following"), key_slot("user1000"));
        // The first tag only; an empty one hashes the whole key; the tag
        // ends at the first `}` after the first `{`.
        assert_eq!(key_slot("foo{bar}{zap}"), key_slot("bar"));
        assert_ne!(key_slot("foo{}{bar}"), key_slot("bar"));
        assert_eq!(key_slot("foo{{bar}}zap"), key_slot("{bar"));
    }

    #[test]
    fn a_shortfall_unprotects_its_master_only() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let range = |a, b, port| {
            Value::Array(vec![
                Value::Int(a),
                Value::Int(b),
                Value::Array(vec![bulk("127.0.0.1"), Value::Int(port), bulk("id")]),
            ])
        };
        let mut u = Unwaited {
            slots: parse_slots(&Value::Array(vec![
                range(0, 5460, 7001),
                range(5461, 10922, 7002),
                range(10923, 16383, 7003),
            ])),
            ..Unwaited::default()
        };
        assert_eq!(u.master(5461), "127.0.0.1:7002");
        u.until.insert(u.master(6000).to_string(), 1_000);
        assert!(u.skipped(10_922, 999));
        assert!(!u.skipped(10_922, 1_000), "the backoff ends");
        assert!(
            !u.skipped(0, 999) && !u.skipped(16_383, 999),
            "other masters still waited for"
        );
        // Without a slot map (a single node): one master, all slots.
        let mut one = Unwaited::default();
        one.until.insert(one.master(0).to_string(), 1_000);
        assert!(one.skipped(123, 999));
    }
}
