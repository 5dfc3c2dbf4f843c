//! The lease engine: leasing a number from a pool for a browser session,
//! keeping it alive, and taking numbers in and out of pools. Every step is
//! one atomic Lua script on the pool's Redis slot (see `schemas/lua/`);
//! time is passed in, so tests control the clock. A lease, its renewal and
//! a withdrawal are answered once `redis.wait_replicas` replicas hold them.

use dialmark_schemas::layout::{pool_prefix, Scripts};
use dialmark_schemas::store::Redis;

use crate::error::TrackerError;

/// Lease timing, from `[tracker]` config.
#[derive(Debug, Clone, Copy)]
pub struct LeaseTiming {
    pub hold: u32,
    pub max_hold: u32,
    pub cooldown: u32,
    pub attribution_window: u32,
}

impl From<&dialmark_schemas::config::TrackerConfig> for LeaseTiming {
    fn from(t: &dialmark_schemas::config::TrackerConfig) -> Self {
        Self {
            hold: t.hold_seconds,
            max_hold: t.max_hold_seconds,
            cooldown: t.cooldown_seconds,
            attribution_window: t.attribution_window_seconds,
        }
    }
}

/// What [`allocate`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allocation {
    /// A new lease of `number` until `expires_at`.
    Leased { number: String, expires_at: u32 },
    /// The session already held `number`; extended to `expires_at`.
    /// `retouched`: the visit's newer touch replaced the lease's source.
    Renewed {
        number: String,
        expires_at: u32,
        retouched: bool,
    },
    /// No number was free: the caller hands out the overflow number.
    Exhausted,
    /// The client's network took its share of new leases this minute.
    NetworkCapped,
}

/// Result of one allocation, with the leases reclaimed on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocateOutcome {
    pub allocation: Allocation,
    pub reclaimed: Vec<String>,
}

/// Who asks for a lease and what it stores.
#[derive(Debug, Clone, Copy, Default)]
pub struct LeaseRequest<'a> {
    pub session: &'a str,
    /// When the visit's own touch happened, Unix ms (`None`: it brings
    /// none); the fields replace a renewed lease's only when it is newer
    /// than the lease's `touch_ms`: the latest click wins.
    pub touch: Option<u64>,
    /// The client's network (`bot::network_key`) and how many new leases
    /// of the pool it may take per minute (0: no cap).
    pub network: &'a str,
    pub network_cap: u32,
    /// Stored on a new lease for attribution.
    pub fields: &'a [(&'a str, &'a str)],
}

impl<'a> LeaseRequest<'a> {
    /// A session's request without touch, network cap or fields.
    pub fn session(session: &'a str) -> Self {
        Self {
            session,
            ..Self::default()
        }
    }
}

/// Leases a number of `pool` to the request's session (or renews the one
/// it holds).
pub async fn allocate(
    redis: &mut Redis,
    scripts: &Scripts,
    pool: &str,
    now: u32,
    timing: LeaseTiming,
    req: &LeaseRequest<'_>,
) -> Result<AllocateOutcome, TrackerError> {
    let mut inv = scripts.allocate.key(pool_prefix(pool));
    inv.arg(now)
        .arg(timing.hold)
        .arg(timing.max_hold)
        .arg(timing.cooldown)
        .arg(timing.attribution_window)
        .arg(req.session)
        .arg(req.touch.unwrap_or(0))
        .arg(req.network)
        .arg(req.network_cap);
    for (k, v) in req.fields {
        inv.arg(*k).arg(*v);
    }
    let (status, number, expires_at, reclaimed): (String, String, u32, Vec<String>) =
        inv.invoke_async(redis).await?;
    let allocation = match status.as_str() {
        "leased" => Allocation::Leased { number, expires_at },
        "renewed" | "retouched" => Allocation::Renewed {
            number,
            expires_at,
            retouched: status == "retouched",
        },
        "exhausted" => Allocation::Exhausted,
        "capped" => Allocation::NetworkCapped,
        other => {
            return Err(TrackerError::Internal(format!(
                "allocate script answered {other:?}"
            )))
        }
    };
    if matches!(
        allocation,
        Allocation::Leased { .. } | Allocation::Renewed { .. }
    ) {
        // The visitor is shown this number only once a replica has the
        // lease: a failover then cannot hand it to a second visitor.
        redis.replicated(&pool_prefix(pool)).await?;
    }
    Ok(AllocateOutcome {
        allocation,
        reclaimed,
    })
}

/// Extends `session`'s lease in `pool`: its new expiry and number; `None`
/// when it holds none.
pub async fn keepalive(
    redis: &mut Redis,
    scripts: &Scripts,
    pool: &str,
    now: u32,
    hold: u32,
    session: &str,
) -> Result<Option<(u32, String)>, TrackerError> {
    let (exp, number): (u32, String) = scripts
        .keepalive
        .key(pool_prefix(pool))
        .arg(now)
        .arg(hold)
        .arg(session)
        .invoke_async(redis)
        .await?;
    if exp > 0 {
        redis.replicated(&pool_prefix(pool)).await?;
    }
    Ok((exp > 0).then_some((exp, number)))
}

/// Puts `number` into `pool`, free at once. Returns whether it was new there.
pub async fn enroll(
    redis: &mut Redis,
    scripts: &Scripts,
    pool: &str,
    now: u32,
    number: &str,
) -> Result<bool, TrackerError> {
    let added: i64 = scripts
        .enroll
        .key(pool_prefix(pool))
        .arg(now)
        .arg(number)
        .invoke_async(redis)
        .await?;
    Ok(added == 1)
}

/// Takes `number` out of `pool` at once; a live lease ends now and is kept
/// for attribution. Returns whether it was leased.
pub async fn withdraw(
    redis: &mut Redis,
    scripts: &Scripts,
    pool: &str,
    now: u32,
    window: u32,
    number: &str,
) -> Result<bool, TrackerError> {
    let was: i64 = scripts
        .withdraw
        .key(pool_prefix(pool))
        .arg(now)
        .arg(window)
        .arg(number)
        .invoke_async(redis)
        .await?;
    // A withdrawal a failover lost would put a retired number back in use.
    redis.replicated(&pool_prefix(pool)).await?;
    Ok(was == 1)
}

/// Sizes of one pool, for metrics and the admin API.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PoolStats {
    pub size: u64,
    pub free: u64,
    pub leased: u64,
    pub exhausted: u64,
    pub network_capped: u64,
}

pub async fn stats(redis: &mut Redis, pool: &str) -> Result<PoolStats, TrackerError> {
    let p = pool_prefix(pool);
    let (size, free, leased, exhausted, network_capped): (u64, u64, u64, Option<u64>, Option<u64>) =
        redis::pipe()
            .cmd("SCARD")
            .arg(format!("{p}numbers"))
            .cmd("ZCARD")
            .arg(format!("{p}free"))
            .cmd("ZCARD")
            .arg(format!("{p}leased"))
            .cmd("HGET")
            .arg(format!("{p}stats"))
            .arg("exhausted")
            .cmd("HGET")
            .arg(format!("{p}stats"))
            .arg("network_capped")
            .query_async(redis)
            .await?;
    Ok(PoolStats {
        size,
        free,
        leased,
        exhausted: exhausted.unwrap_or(0),
        network_capped: network_capped.unwrap_or(0),
    })
}
