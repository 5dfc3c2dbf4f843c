//! The quarantine release on the tracker's own timer
//! (`[tracker.quarantine] release_interval_seconds`): eligible numbers go
//! back to stock without anyone running `release-quarantine`. With several
//! trackers on one Redis, one of them runs it per interval (a Redis lock
//! that lives one interval); `dry_run` only logs and counts what it would
//! release.

use std::time::Duration;

use dialmark_schemas::layout;
use tracing::{info, warn};

use crate::inventory::Inventory;

/// Runs the release every `every` until the task is dropped; the first run
/// is at once.
pub async fn run(inv: Inventory, every: Duration, dry_run: bool) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let now = dialmark_schemas::unix_now();
        match take_turn(&inv, every).await {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                warn!(cause = %e, "quarantine release: Redis unavailable; next try in one interval");
                continue;
            }
        }
        match inv.release_quarantine("timer", now, dry_run).await {
            Ok(done) => {
                let numbers: Vec<&str> = done.iter().map(|e| e.number.as_str()).collect();
                metrics::gauge!("dialmark_quarantine_eligible").set(done.len() as f64);
                if dry_run {
                    info!(
                        eligible = done.len(),
                        ?numbers,
                        "quarantine release (dry run): would return these to stock"
                    );
                } else {
                    metrics::counter!("dialmark_quarantine_released_total")
                        .increment(done.len() as u64);
                    info!(
                        released = done.len(),
                        ?numbers,
                        "quarantine release: returned to stock"
                    );
                }
            }
            Err(e) => warn!(cause = %e, "quarantine release failed; next try in one interval"),
        }
    }
}

/// Whether this tracker runs the release this interval.
async fn take_turn(inv: &Inventory, every: Duration) -> redis::RedisResult<bool> {
    let mut r = inv.redis.clone();
    let got: Option<String> = redis::cmd("SET")
        .arg(layout::RELEASE_LOCK)
        .arg(std::process::id())
        .arg("NX")
        .arg("EX")
        .arg(every.as_secs().max(1))
        .query_async(&mut r)
        .await?;
    Ok(got.is_some())
}
