//! One Redis connection type for a single node or a Redis Cluster, chosen
//! by config; both services hold a [`Redis`] and never care which it is.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

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
    /// Until when (Unix ms) writes are not waited for: after a shortfall.
    skip_until: Arc<AtomicU64>,
}

/// How long writes go unwaited after one reached too few replicas: `WAIT`
/// blocks the connection every request to that master shares, and a
/// master without its replica (just promoted, say) would make every lease
/// wait the whole timeout, in a queue.
const WAIT_BACKOFF_MS: u64 = 5_000;

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
            skip_until: Arc::new(AtomicU64::new(0)),
        })
    }

    /// After a write to `key` a failover must not lose (a lease): waits
    /// until `redis.wait_replicas` replicas of its master acknowledged this
    /// connection's writes (`WAIT`), at most `redis.wait_timeout_ms`. Fewer
    /// in time is logged and counted, not an error: a replica down must not
    /// stop the service; nor is any write waited for during the
    /// [`WAIT_BACKOFF_MS`] that follow. No-op at 0.
    pub async fn replicated(&mut self, key: &str) -> redis::RedisResult<()> {
        if self.wait_replicas == 0 || crate::unix_now_ms() < self.skip_until.load(Ordering::Relaxed)
        {
            return Ok(());
        }
        let mut wait = redis::cmd("WAIT");
        wait.arg(self.wait_replicas).arg(self.wait_timeout_ms);
        let acked: u32 = match &mut self.conn {
            Conn::Single(c) => wait.query_async(c).await?,
            Conn::Cluster(c) => {
                // To the master of `key` only: by default WAIT goes to every
                // master, a dead one the client still lists too.
                let to = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
                    Route::with_key(key, SlotAddr::Master),
                ));
                redis::from_redis_value(c.route_command(wait, to).await?)?
            }
        };
        if acked < self.wait_replicas {
            self.skip_until
                .store(crate::unix_now_ms() + WAIT_BACKOFF_MS, Ordering::Relaxed);
            metrics::counter!("dialmark_redis_unreplicated_writes_total").increment(1);
            tracing::warn!(
                acked,
                wanted = self.wait_replicas,
                key,
                "a write reached fewer replicas than redis.wait_replicas in time; not waiting for {WAIT_BACKOFF_MS} ms"
            );
        }
        Ok(())
    }
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
