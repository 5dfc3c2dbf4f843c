-- quarantine: numbers in quarantine as of {to}, and whether
-- `release-quarantine` may return them to stock.
-- A number is listed when its latest number_events row (by ts, then the
-- microsecond ts_us, then event_id) with ts <= {to} has
-- to_status = quarantine; {site} = '' means every site (site of that event).
-- {from} is not used: this is a snapshot at {to}.
-- calls_90d counts calls FINAL with received in [{to} - 90 days, {to}]
-- (every disposition), like the tracker's own check (inventory.rs).
-- eligible: in quarantine for at least 45 days and fewer than 3 calls_90d.
SELECT
    number,
    site,
    pool,
    toString(since, 'UTC') AS quarantined_since,
    days_in_quarantine,
    calls_90d,
    toUInt8(days_in_quarantine >= 45 AND calls_90d < 3) AS eligible,
    reason
FROM
(
    SELECT
        number,
        site,
        pool,
        since,
        intDiv(toUInt32({to}) - toUInt32(since), 86400) AS days_in_quarantine,
        reason
    FROM
    (
        SELECT
            number,
            argMax(to_status, (ts, ts_us, event_id)) AS status,
            argMax(ts, (ts, ts_us, event_id)) AS since,
            argMax(site, (ts, ts_us, event_id)) AS site,
            argMax(pool, (ts, ts_us, event_id)) AS pool,
            argMax(reason, (ts, ts_us, event_id)) AS reason
        FROM number_events
        WHERE ts <= {to}
        GROUP BY number
    )
    WHERE status = 'quarantine' AND ({site} = '' OR site = {site})
) AS l
ANY LEFT JOIN
(
    SELECT number, count() AS calls_90d
    FROM calls FINAL
    WHERE received >= {to} - 7776000 AND received <= {to}
      AND number IN (SELECT number FROM number_events WHERE to_status = 'quarantine')
    GROUP BY number
) AS r USING (number)
ORDER BY eligible DESC, quarantined_since, number
