//! The live call feed for the marketers' call log: one subscription to
//! the router's Redis channel ([`dialmark_schemas::layout::LIVE_CALLS`])
//! per tracker, started on the first listener, fanned out to every
//! `/v1/calls/live` stream (each filtered to its token's site). The
//! subscription reconnects by itself; listeners are told to reload
//! (`resync`) after a gap, since events published meanwhile are gone.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use dialmark_schemas::config::RedisConfig;
use dialmark_schemas::layout;
use futures_util::StreamExt;
use tokio::sync::broadcast;
use tracing::{info, warn};

/// Events a slow listener may fall behind by before it must resync.
const BUFFER: usize = 1_024;

/// What listeners receive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Feed {
    /// A call event document of `site`.
    Call { site: String, json: Arc<str> },
    /// Events may have been missed: reload the log.
    Resync,
}

/// The feed of one tracker.
#[derive(Clone)]
pub struct Live {
    redis: RedisConfig,
    tx: Arc<OnceLock<broadcast::Sender<Feed>>>,
}

impl Live {
    pub fn new(redis: RedisConfig) -> Self {
        Self {
            redis,
            tx: Arc::default(),
        }
    }

    /// A new listener; the first one starts the subscription.
    pub fn subscribe(&self) -> broadcast::Receiver<Feed> {
        self.tx
            .get_or_init(|| {
                let (tx, _) = broadcast::channel(BUFFER);
                tokio::spawn(relay(self.redis.clone(), tx.clone()));
                tx
            })
            .subscribe()
    }
}

/// The node to subscribe on: a Cluster delivers a message published on
/// any node to subscribers on every node.
fn node_url(cfg: &RedisConfig) -> String {
    cfg.cluster
        .first()
        .cloned()
        .unwrap_or_else(|| cfg.url.clone())
}

/// The site of an event document, read once for every listener.
pub fn parse(json: &str) -> Option<Feed> {
    let doc: serde_json::Value = serde_json::from_str(json).ok()?;
    Some(Feed::Call {
        site: doc.get("site")?.as_str()?.to_string(),
        json: Arc::from(json),
    })
}

async fn relay(cfg: RedisConfig, tx: broadcast::Sender<Feed>) {
    let url = node_url(&cfg);
    let mut connected_before = false;
    loop {
        match subscribe(&url).await {
            Ok(mut pubsub) => {
                info!(channel = layout::LIVE_CALLS, "live call feed subscribed");
                if connected_before {
                    let _ = tx.send(Feed::Resync);
                }
                connected_before = true;
                let mut messages = pubsub.on_message();
                while let Some(msg) = messages.next().await {
                    let Ok(json) = msg.get_payload::<String>() else {
                        continue;
                    };
                    if let Some(feed) = parse(&json) {
                        // No listener now is fine: nothing to keep.
                        let _ = tx.send(feed);
                    }
                }
                warn!("live call feed: Redis subscription lost; reconnecting");
            }
            Err(e) => warn!(cause = %e, "live call feed: cannot subscribe; retrying"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn subscribe(url: &str) -> redis::RedisResult<redis::aio::PubSub> {
    let client = redis::Client::open(url)?;
    let mut pubsub = tokio::time::timeout(Duration::from_secs(2), client.get_async_pubsub())
        .await
        .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "connect timeout")))??;
    pubsub.subscribe(layout::LIVE_CALLS).await?;
    Ok(pubsub)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_keyed_by_their_site() {
        let json = r#"{"event":"call.started","site":"shop","call_id":"x"}"#;
        assert_eq!(
            parse(json),
            Some(Feed::Call {
                site: "shop".into(),
                json: Arc::from(json)
            })
        );
        assert_eq!(parse(r#"{"event":"call.started"}"#), None);
        assert_eq!(parse("nope"), None);
    }

    #[test]
    fn a_cluster_is_subscribed_on_its_first_seed() {
        let mut cfg = RedisConfig::default();
        assert_eq!(node_url(&cfg), cfg.url);
        cfg.cluster = vec![
            "redis://127.0.0.1:7101".into(),
            "redis://127.0.0.1:7102".into(),
        ];
        assert_eq!(node_url(&cfg), "redis://127.0.0.1:7101");
    }
}
