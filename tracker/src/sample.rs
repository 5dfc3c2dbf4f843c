//! Pool use over time: every `tracker.pool_sample_seconds` one tracker (a
//! Redis lock that lives one interval) writes each pool's size and its
//! numbers leased and free now to `pool_samples`, the history behind the
//! web app's chart of concurrent leases against the pool size.

use std::time::Duration;

use dialmark_schemas::layout;
use dialmark_schemas::rows::PoolSample;
use tracing::warn;

use crate::app::AppState;
use crate::error::TrackerError;
use crate::pool;

/// Samples every `every` until the task is dropped; the first at once.
pub async fn run(state: AppState, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let turn = take_turn(&state, every).await;
        let result = match turn {
            Ok(true) => once(&state, dialmark_schemas::unix_now()).await.map(drop),
            Ok(false) => Ok(()),
            Err(e) => Err(e.into()),
        };
        if let Err(e) = result {
            warn!(cause = %e, "pool sampling failed; next try in one interval");
        }
    }
}

/// Whether this tracker samples this interval.
async fn take_turn(state: &AppState, every: Duration) -> redis::RedisResult<bool> {
    let mut r = state.inventory.redis.clone();
    let got: Option<String> = redis::cmd("SET")
        .arg(layout::SAMPLE_LOCK)
        .arg(std::process::id())
        .arg("NX")
        .arg("EX")
        .arg(every.as_secs().saturating_sub(1).max(1))
        .query_async(&mut r)
        .await?;
    Ok(got.is_some())
}

/// Samples every pool now (`now` Unix seconds); how many.
pub async fn once(state: &AppState, now: u32) -> Result<usize, TrackerError> {
    let inv = &state.inventory;
    let mut r = inv.redis.clone();
    let mut n = 0;
    for id in inv.pool_ids().await? {
        let (def, st) = (inv.pool(&id).await?, pool::stats(&mut r, &id).await?);
        let row = PoolSample {
            ts: now,
            pool: id,
            site: def.site,
            size: st.size as u32,
            leased: st.leased as u32,
            free: st.free as u32,
        };
        if state.samples.push(row).is_err() {
            warn!("pool sample refused by the sink");
        }
        n += 1;
    }
    Ok(n)
}
