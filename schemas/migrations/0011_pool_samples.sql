-- Pool use over time: every `tracker.pool_sample_seconds` (60 by default)
-- one tracker writes each pool's size and the numbers leased and free at
-- that moment, read from Redis. The marketers' app charts `leased` against
-- `size` per pool; the peak within a sample interval is in pool_health
-- (peak_concurrent_leases, from the lease events). One row per pool and
-- sample time: a replayed batch collapses on merge.
CREATE TABLE IF NOT EXISTS pool_samples (
    ts DateTime,
    pool String,
    site String,
    size UInt32,
    leased UInt32,
    free UInt32
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (pool, ts);
