-- Calls and attempts get a version: a row may be written again with what
-- happened later (an answered call's row at the answer, `ended` = 0, then
-- at its end or as `node_lost` after a crash; an abandoned attempt's row
-- rewritten when its trunk replied late), and the newest must win even
-- when both land in one INSERT (ReplacingMergeTree without a version keeps
-- an arbitrary one of equal keys within a block). `version` is the writer's
-- clock in ms. New values: dispositions 'overload' (refused in overload:
-- memory budget or queue delay) and 'node_lost'; outcomes 'cancelled_late'
-- and 'answered_late_released'.
--
-- An engine cannot change in place on 18.16: the tables are rebuilt under
-- new names, filled, swapped in, and the rollup views (bound to the old
-- tables) re-created on the new ones. Existing rows get version = ended.
DROP TABLE IF EXISTS caller_first_seen_mv;
DROP TABLE IF EXISTS trunk_hourly_mv;

CREATE TABLE IF NOT EXISTS calls_v4 (
    call_id UUID,
    sip_call_id String,
    received DateTime,
    answered DateTime,
    ended DateTime,
    ring_ms UInt32,
    talk_ms UInt32,
    caller String,
    number String,
    number_status Enum8('unknown' = 0, 'active' = 1, 'quarantine' = 2, 'stock' = 3),
    site String,
    pool String,
    disposition Enum8('answered' = 1, 'missed' = 2, 'busy' = 3, 'abandoned' = 4, 'failed' = 5, 'rejected_quarantine' = 6, 'rejected_stock' = 7, 'rejected_unknown' = 8, 'rejected_untrusted' = 9, 'timeout' = 10, 'overload' = 11, 'node_lost' = 12),
    final_code UInt16,
    attempts UInt8,
    final_trunk String,
    destination String,
    attribution Enum8('none' = 0, 'live_lease' = 1, 'recent_lease' = 2, 'static' = 3, 'overflow' = 4),
    session_id String,
    visitor_id String,
    source_label String,
    utm_source String,
    utm_medium String,
    utm_campaign String,
    utm_term String,
    utm_content String,
    gclid String,
    yclid String,
    referrer String,
    landing_url String,
    country String,
    region String,
    city String,
    version UInt64
) ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(received)
ORDER BY (site, received, call_id);

INSERT INTO calls_v4 (call_id, sip_call_id, received, answered, ended, ring_ms, talk_ms, caller, number, number_status, site, pool, disposition, final_code, attempts, final_trunk, destination, attribution, session_id, visitor_id, source_label, utm_source, utm_medium, utm_campaign, utm_term, utm_content, gclid, yclid, referrer, landing_url, country, region, city, version)
SELECT call_id, sip_call_id, received, answered, ended, ring_ms, talk_ms, caller, number, number_status, site, pool, disposition, final_code, attempts, final_trunk, destination, attribution, session_id, visitor_id, source_label, utm_source, utm_medium, utm_campaign, utm_term, utm_content, gclid, yclid, referrer, landing_url, country, region, city, toUInt64(ended) * 1000 FROM calls;

RENAME TABLE calls TO calls_v3, calls_v4 TO calls;
DROP TABLE calls_v3;

CREATE TABLE IF NOT EXISTS call_attempts_v4 (
    call_id UUID,
    attempt UInt8,
    sip_call_id String,
    trunk String,
    destination String,
    started DateTime,
    ended DateTime,
    pdd_ms UInt32,
    answer_ms UInt32,
    talk_ms UInt32,
    final_code UInt16,
    reason String,
    outcome Enum8('answered' = 1, 'busy' = 2, 'no_answer' = 3, 'rejected' = 4, 'timeout' = 5, 'transport_error' = 6, 'canceled' = 7, 'cancelled_late' = 8, 'answered_late_released' = 9),
    failover UInt8,
    version UInt64
) ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(started)
ORDER BY (trunk, started, call_id, attempt);

INSERT INTO call_attempts_v4 (call_id, attempt, sip_call_id, trunk, destination, started, ended, pdd_ms, answer_ms, talk_ms, final_code, reason, outcome, failover, version)
SELECT call_id, attempt, sip_call_id, trunk, destination, started, ended, pdd_ms, answer_ms, talk_ms, final_code, reason, outcome, failover, toUInt64(ended) * 1000 FROM call_attempts;

RENAME TABLE call_attempts TO call_attempts_v3, call_attempts_v4 TO call_attempts;
DROP TABLE call_attempts_v3;

CREATE MATERIALIZED VIEW IF NOT EXISTS caller_first_seen_mv TO caller_first_seen AS
SELECT
    site,
    caller,
    minState(received) AS first_call,
    maxState(received) AS last_call
FROM calls
WHERE caller != '' AND disposition != 'rejected_untrusted'
GROUP BY site, caller;

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
