-- quarantine: numbers in quarantine as of {to}, and whether
-- `release-quarantine` (or the tracker's release timer) may return them to
-- stock under the default `[tracker.quarantine]` rule.
-- A number is listed when its latest number_events row (by ts, then the
-- microsecond ts_us, then event_id) with ts <= {to} has
-- to_status = quarantine; {site} = '' means every site (site of that event).
-- {from} is not used: this is a snapshot at {to}.
-- calls_90d counts calls (each call_id once) received in [{to} - 90 days, {to}] while the
-- number was in this quarantine (number_status = quarantine, received at or
-- after quarantined_since) from trusted carriers (not rejected_untrusted),
-- like the tracker's own check (inventory.rs).
-- eligible: in quarantine for at least 90 days and fewer than 3 calls_90d;
-- release_after: the earliest date the age allows.
SELECT
    number,
    site,
    pool,
    toString(since, 'UTC') AS quarantined_since,
    days_in_quarantine,
    calls_90d,
    toUInt8(days_in_quarantine >= 90 AND calls_90d < 3) AS eligible,
    toString(since + 7776000, 'UTC') AS release_after,
    reason
FROM
(
    SELECT
        number,
        site,
        pool,
        since,
        days_in_quarantine,
        arrayCount(t -> t >= toUInt32(since), times) AS calls_90d,
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
        -- Without FINAL: a call to a number in quarantine is refused and
        -- written once; a row written twice (a replayed batch) counts once
        -- by its call_id. FINAL over 90 days of every call was most of
        -- this report's time.
        SELECT number, arrayMap(c -> c.2, groupUniqArray((call_id, toUInt32(received)))) AS times
        FROM calls
        WHERE received >= {to} - 7776000 AND received <= {to}
          AND number_status = 'quarantine' AND disposition != 'rejected_untrusted'
          AND number IN (SELECT number FROM number_events WHERE to_status = 'quarantine')
        GROUP BY number
    ) AS r USING (number)
)
ORDER BY eligible DESC, quarantined_since, number
