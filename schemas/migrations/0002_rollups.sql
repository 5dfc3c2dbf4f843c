-- Rollups for the reports in schemas/reports/, each fed by a materialized
-- view on inserts into a base table. Portable subset (ClickHouse 18.16 and
-- current releases).
--
-- Replays: base tables collapse replayed batches on merge, but a view sees
-- every insert. So every count here is uniqExact over row ids and min/max
-- are idempotent: a replayed batch changes none of them. Only the
-- pdd quantiles and the mean talk time of trunk_hourly weigh a replayed
-- attempt twice (replays are rare: the sink's fault path).
--
-- Backfill: a view only sees inserts made after it exists, so each view is
-- followed by an INSERT ... SELECT over the rows already stored. Rows
-- inserted between the two statements are seen by both, which changes no
-- idempotent aggregate.

-- First and last call of each caller to each site (all time): first-time
-- caller flags of the campaigns and yandex_export reports.
CREATE TABLE IF NOT EXISTS caller_first_seen (
    site String,
    caller String,
    first_call AggregateFunction(min, DateTime),
    last_call AggregateFunction(max, DateTime)
) ENGINE = AggregatingMergeTree
ORDER BY (site, caller);

CREATE MATERIALIZED VIEW IF NOT EXISTS caller_first_seen_mv TO caller_first_seen AS
SELECT
    site,
    caller,
    minState(received) AS first_call,
    maxState(received) AS last_call
FROM calls
WHERE caller != '' AND disposition != 'rejected_untrusted'
GROUP BY site, caller;

INSERT INTO caller_first_seen
SELECT
    site,
    caller,
    minState(received) AS first_call,
    maxState(received) AS last_call
FROM calls
WHERE caller != '' AND disposition != 'rejected_untrusted'
GROUP BY site, caller;

-- Forwarding attempts per trunk and UTC hour of `started`: the
-- trunk_quality report (ASR, NER, ISA, PDD, ACD). Counts are uniqExact of
-- (call_id, attempt). KPI definitions: schemas/README.md, Analyst guide.
--   effective (NER numerator): answered, busy, no_answer, or a canceled or
--     timed-out attempt that had a provisional reply (pdd_ms > 0), or a
--     final code 480, 486, 600 or 603.
--   ineffective (ISA numerator): transport_error, or final code 500, 503
--     or 504, or 408 without a provisional reply.
CREATE TABLE IF NOT EXISTS trunk_hourly (
    trunk String,
    hour DateTime,
    attempts AggregateFunction(uniqExact, UUID, UInt8),
    answered AggregateFunction(uniqExactIf, UUID, UInt8, UInt8),
    effective AggregateFunction(uniqExactIf, UUID, UInt8, UInt8),
    ineffective AggregateFunction(uniqExactIf, UUID, UInt8, UInt8),
    with_provisional AggregateFunction(uniqExactIf, UUID, UInt8, UInt8),
    pdd_quantiles AggregateFunction(quantilesExactIf(0.5, 0.95), UInt32, UInt8),
    talk_avg AggregateFunction(avgIf, UInt32, UInt8)
) ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (trunk, hour);

CREATE MATERIALIZED VIEW IF NOT EXISTS trunk_hourly_mv TO trunk_hourly AS
SELECT
    trunk,
    toStartOfHour(started, 'UTC') AS hour,
    uniqExactState(call_id, attempt) AS attempts,
    uniqExactIfState(call_id, attempt, toUInt8(outcome = 'answered')) AS answered,
    uniqExactIfState(call_id, attempt, toUInt8(
        outcome IN ('answered', 'busy', 'no_answer')
        OR (outcome IN ('canceled', 'timeout') AND pdd_ms > 0)
        OR final_code IN (480, 486, 600, 603))) AS effective,
    uniqExactIfState(call_id, attempt, toUInt8(
        outcome = 'transport_error'
        OR final_code IN (500, 503, 504)
        OR (final_code = 408 AND pdd_ms = 0))) AS ineffective,
    uniqExactIfState(call_id, attempt, toUInt8(pdd_ms > 0)) AS with_provisional,
    quantilesExactIfState(0.5, 0.95)(pdd_ms, toUInt8(pdd_ms > 0)) AS pdd_quantiles,
    avgIfState(talk_ms, toUInt8(outcome = 'answered')) AS talk_avg
FROM call_attempts
GROUP BY trunk, hour;

INSERT INTO trunk_hourly
SELECT
    trunk,
    toStartOfHour(started, 'UTC') AS hour,
    uniqExactState(call_id, attempt) AS attempts,
    uniqExactIfState(call_id, attempt, toUInt8(outcome = 'answered')) AS answered,
    uniqExactIfState(call_id, attempt, toUInt8(
        outcome IN ('answered', 'busy', 'no_answer')
        OR (outcome IN ('canceled', 'timeout') AND pdd_ms > 0)
        OR final_code IN (480, 486, 600, 603))) AS effective,
    uniqExactIfState(call_id, attempt, toUInt8(
        outcome = 'transport_error'
        OR final_code IN (500, 503, 504)
        OR (final_code = 408 AND pdd_ms = 0))) AS ineffective,
    uniqExactIfState(call_id, attempt, toUInt8(pdd_ms > 0)) AS with_provisional,
    quantilesExactIfState(0.5, 0.95)(pdd_ms, toUInt8(pdd_ms > 0)) AS pdd_quantiles,
    avgIfState(talk_ms, toUInt8(outcome = 'answered')) AS talk_avg
FROM call_attempts FINAL
GROUP BY trunk, hour;
