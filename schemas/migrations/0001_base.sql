-- Base tables. Portable subset: runs on ClickHouse 18.16 and current releases.
-- Every table is a ReplacingMergeTree keyed by a row id, so a replayed batch
-- (disk spool, retried insert) collapses to one row on merge; reports use
-- FINAL or argMax where exact counts matter before merges.

CREATE TABLE IF NOT EXISTS visits (
    visit_id UUID,
    ts DateTime,
    site String,
    pool String,
    session_id String,
    visitor_id String,
    number String,
    number_kind Enum8('none' = 0, 'pool' = 1, 'overflow' = 2, 'static' = 3),
    url String,
    referrer String,
    utm_source String,
    utm_medium String,
    utm_campaign String,
    utm_term String,
    utm_content String,
    gclid String,
    yclid String,
    fbclid String,
    msclkid String,
    ip String,
    country String,
    region String,
    city String,
    user_agent String
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (site, ts, visit_id);

CREATE TABLE IF NOT EXISTS number_leases (
    event_id UUID,
    ts DateTime,
    site String,
    pool String,
    number String,
    session_id String,
    visitor_id String,
    event Enum8('lease' = 1, 'reclaim' = 2, 'overflow' = 3, 'release' = 4),
    expires_at DateTime
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (pool, ts, event_id);

CREATE TABLE IF NOT EXISTS calls (
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
    disposition Enum8('answered' = 1, 'missed' = 2, 'busy' = 3, 'abandoned' = 4, 'failed' = 5, 'rejected_quarantine' = 6, 'rejected_stock' = 7, 'rejected_unknown' = 8, 'rejected_untrusted' = 9, 'timeout' = 10),
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
    city String
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(received)
ORDER BY (site, received, call_id);

CREATE TABLE IF NOT EXISTS call_attempts (
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
    outcome Enum8('answered' = 1, 'busy' = 2, 'no_answer' = 3, 'rejected' = 4, 'timeout' = 5, 'transport_error' = 6, 'canceled' = 7),
    failover UInt8
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(started)
ORDER BY (trunk, started, call_id, attempt);

CREATE TABLE IF NOT EXISTS trunk_events (
    event_id UUID,
    ts DateTime,
    trunk String,
    trunk_group String,
    state Enum8('up' = 1, 'down' = 2),
    previous Enum8('up' = 1, 'down' = 2),
    cause Enum8('probe' = 1, 'passive' = 2, 'config' = 3),
    reason String
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (trunk, ts, event_id);

CREATE TABLE IF NOT EXISTS number_events (
    event_id UUID,
    ts DateTime,
    number String,
    site String,
    pool String,
    from_status Enum8('none' = 0, 'active' = 1, 'quarantine' = 2, 'stock' = 3),
    to_status Enum8('none' = 0, 'active' = 1, 'quarantine' = 2, 'stock' = 3),
    actor String,
    reason String
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (number, ts, event_id);
