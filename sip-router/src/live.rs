//! The live call feed: every call's `call.started`, `call.answered` and
//! `call.completed` published on the Redis channel
//! [`dialmark_schemas::layout::LIVE_CALLS`], where the tracker's
//! `/v1/calls/live` relays them to the marketers' call log. Best effort by
//! design: the feed is for screens, the call log itself is read back from
//! ClickHouse, so an event Redis cannot take now is dropped and counted,
//! and nothing upstream ever waits for it.

use std::time::Duration;

use dialmark_schemas::layout;
use tokio::sync::mpsc;
use tracing::warn;

use crate::directory::Directory;

/// Events waiting for Redis before new ones are dropped.
const QUEUE: usize = 4_096;
/// Events sent to Redis in one pipeline: under load a round trip per
/// event cost the router more than routing the call.
const BATCH: usize = 256;

/// The publishing side, cheap to clone.
#[derive(Clone)]
pub struct Live {
    tx: mpsc::Sender<String>,
}

impl Live {
    /// Starts the publisher task over the router's Redis connection; it
    /// ends when every handle is dropped.
    pub fn start(directory: Directory) -> Live {
        let (tx, mut rx) = mpsc::channel::<String>(QUEUE);
        tokio::spawn(async move {
            let mut warned = false;
            let mut batch = Vec::with_capacity(BATCH);
            while rx.recv_many(&mut batch, BATCH).await > 0 {
                let sent = tokio::time::timeout(
                    Duration::from_secs(1),
                    directory.publish(layout::LIVE_CALLS, &batch),
                )
                .await;
                let result = match sent {
                    Ok(Ok(())) => {
                        warned = false;
                        "published"
                    }
                    Ok(Err(e)) => {
                        if !warned {
                            warn!(cause = %e, "live call feed: Redis refused an event; dropping until it recovers");
                            warned = true;
                        }
                        "dropped"
                    }
                    Err(_) => "dropped",
                };
                metrics::counter!("dialmark_live_events_total", "result" => result)
                    .increment(batch.len() as u64);
                batch.clear();
            }
        });
        Live { tx }
    }

    /// Queues `doc` (a call event document) without waiting.
    pub fn publish(&self, doc: &serde_json::Value) {
        if self.tx.try_send(doc.to_string()).is_err() {
            metrics::counter!("dialmark_live_events_total", "result" => "dropped").increment(1);
        }
    }
}
