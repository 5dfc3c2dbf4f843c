//! The active/standby pair (`[router.ha]`): of the nodes that share one
//! SIP address, the one holding the leader lease serves it. The lease is a
//! Redis key, `dm:ha:{group}:leader`, holding the node's id and expiring
//! after `router.ha.lease_ms`; the active renews it every third of that.
//! A standby polls for it, serves only `/healthz` and `/metrics` meanwhile,
//! and takes the address over (binds it) once the lease lapses (the active
//! died) or is released (the active stopped). An active that finds the
//! lease held by another node stops at once: two nodes never serve one
//! address. While Redis is unreachable nothing changes hands: the active
//! keeps serving, the standby keeps waiting.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use axum::routing::get;
use dialmark_schemas::config::HaConfig;
use dialmark_schemas::store::Redis;
use metrics_exporter_prometheus::PrometheusHandle;
use redis::Script;
use tracing::{error, info, warn};

use crate::directory::Directory;

/// Renews the lease if this node holds it; answers the holder otherwise.
const RENEW: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return ARGV[1]
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ARGV[1]
end
return holder
";

/// Deletes the lease if this node holds it.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// This node's claim on the pair's address.
#[derive(Debug, Clone)]
pub struct Lease {
    key: String,
    node: String,
    ttl_ms: u64,
}

/// What a renewal found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewal {
    /// Still ours (or taken back after it lapsed with nobody waiting).
    Held,
    /// Another node holds it: this one must stop serving.
    Lost(String),
    /// Redis did not answer: nothing changes.
    Unreachable(String),
}

impl Lease {
    pub fn new(cfg: &HaConfig) -> Lease {
        Lease {
            key: format!("dm:ha:{}:leader", cfg.group),
            node: node_id(cfg),
            ttl_ms: cfg.lease_ms,
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// How often the active renews: a third of the lease, so two renewals
    /// can fail before it lapses.
    pub fn renew_every(&self) -> Duration {
        Duration::from_millis(self.ttl_ms / 3)
    }

    /// How often a standby asks for the lease.
    pub fn poll_every(&self) -> Duration {
        Duration::from_millis((self.ttl_ms / 6).clamp(50, 500))
    }

    /// Takes the lease if nobody holds it.
    pub async fn acquire(&self, redis: &mut Redis) -> redis::RedisResult<bool> {
        let set: Option<String> = redis::cmd("SET")
            .arg(&self.key)
            .arg(&self.node)
            .arg("NX")
            .arg("PX")
            .arg(self.ttl_ms)
            .query_async(redis)
            .await?;
        Ok(set.is_some())
    }

    pub async fn renew(&self, redis: &mut Redis) -> Renewal {
        let script = Script::new(RENEW);
        let mut call = script.key(&self.key);
        call.arg(&self.node).arg(self.ttl_ms);
        match tokio::time::timeout(self.renew_every(), call.invoke_async::<String>(redis)).await {
            Ok(Ok(holder)) if holder == self.node => Renewal::Held,
            Ok(Ok(holder)) => Renewal::Lost(holder),
            Ok(Err(e)) => Renewal::Unreachable(e.to_string()),
            Err(_) => Renewal::Unreachable("timed out".into()),
        }
    }

    /// Gives the lease up (a stopping active): the standby takes over at
    /// its next poll instead of after the lease's expiry.
    pub async fn release(&self, redis: &mut Redis) -> redis::RedisResult<()> {
        let script = Script::new(RELEASE);
        let mut call = script.key(&self.key);
        call.arg(&self.node);
        call.invoke_async::<i64>(redis).await.map(drop)
    }
}

/// `router.ha.node`, or this host's name and process id.
fn node_id(cfg: &HaConfig) -> String {
    if !cfg.node.is_empty() {
        return cfg.node.clone();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "node".into());
    format!("{host}:{}", std::process::id())
}

/// The node this one took over from, and the last time (Unix ms) it was
/// seen holding the lease: about when it died.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Predecessor {
    pub node: String,
    pub seen_ms: u64,
}

/// Waits until this node holds the lease (polling; Redis errors are
/// logged and waited out). Returns the node it saw serving before, if
/// any.
pub async fn wait_for_lead(redis: &mut Redis, lease: &Lease) -> Option<Predecessor> {
    let mut before: Option<Predecessor> = None;
    loop {
        match lease.acquire(redis).await {
            Ok(true) => return before,
            Ok(false) => {
                let holder: Option<String> = redis::cmd("GET")
                    .arg(&lease.key)
                    .query_async(redis)
                    .await
                    .unwrap_or(None);
                if let Some(node) = holder.filter(|h| h != lease.node()) {
                    if before.as_ref().is_none_or(|b| b.node != node) {
                        info!(node = lease.node(), serving = %node, "standby: another node serves the address; waiting for its lease to lapse");
                    }
                    before = Some(Predecessor {
                        node,
                        seen_ms: crate::now_ms(),
                    });
                }
            }
            Err(e) => warn!(cause = %e, "standby: Redis unreachable; waiting"),
        }
        tokio::time::sleep(lease.poll_every()).await;
    }
}

/// Keeps the lease while the node serves; returns when another node holds
/// it (the caller stops serving).
pub async fn keep(mut redis: Redis, lease: Lease) -> String {
    let mut failing = false;
    loop {
        tokio::time::sleep(lease.renew_every()).await;
        match lease.renew(&mut redis).await {
            Renewal::Held => {
                if failing {
                    info!(node = lease.node(), "leader lease renewed again");
                }
                failing = false;
                metrics::gauge!("dialmark_router_ha_leader").set(1.0);
            }
            Renewal::Unreachable(cause) => {
                if !failing {
                    warn!(cause, "cannot renew the leader lease (Redis): serving on");
                }
                failing = true;
                metrics::counter!("dialmark_router_ha_renew_failures_total").increment(1);
            }
            Renewal::Lost(holder) => {
                error!(
                    holder,
                    node = lease.node(),
                    "the leader lease is held by another node: this one stops serving"
                );
                metrics::gauge!("dialmark_router_ha_leader").set(0.0);
                return holder;
            }
        }
    }
}

/// Retries `bind` until it succeeds: the address may still be held by the
/// previous active for a moment (its process exiting).
pub async fn bind_when_free<T, E: std::fmt::Display, F: Future<Output = Result<T, E>>>(
    what: &str,
    mut bind: impl FnMut() -> F,
) -> T {
    let mut said = false;
    loop {
        match bind().await {
            Ok(t) => return t,
            Err(e) => {
                if !said {
                    warn!(what, cause = %e, "taking over: the address is still in use; retrying");
                    said = true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Until this node holds the lease: a standby that answers `/healthz`
/// ("standby") and `/metrics` on `http` and binds nothing else. Returns
/// the Redis connection and the lease the node then keeps, and the node it
/// takes over from.
pub async fn standby(
    cfg: &HaConfig,
    directory: &Directory,
    http: SocketAddr,
    metrics: PrometheusHandle,
) -> anyhow::Result<(Redis, Lease, Option<Predecessor>)> {
    let lease = Lease::new(cfg);
    let listener = tokio::net::TcpListener::bind(http)
        .await
        .with_context(|| format!("binding router.http {http}"))?;
    metrics::gauge!("dialmark_router_ha_leader").set(0.0);
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "standby\n" }))
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move { m.render() }
            }),
        );
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    // The router's one connection (it logs why it cannot connect).
    let mut conn = loop {
        if let Some(c) = directory.conn().await {
            break c;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let before = wait_for_lead(&mut conn, &lease).await;
    // The full HTTP service takes the port over.
    server.abort();
    let _ = server.await;
    metrics::gauge!("dialmark_router_ha_leader").set(1.0);
    info!(
        node = lease.node(),
        group = %cfg.group,
        "holding the leader lease: serving the address"
    );
    Ok((conn, lease, before))
}
