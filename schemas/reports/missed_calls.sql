-- missed_calls: unanswered calls to call back, oldest first.
-- Calls received in [{from}, {to}); {site} = '' means every site.
-- Dispositions missed, busy, abandoned, failed and timeout, never answered
-- (`timeout` with an answer time is an answered call cut at
-- router.max_call_seconds: not listed).
-- answered_later: 1 when the same caller's later call to the same site
--   (any time after this one, also after {to}) was answered.
SELECT
    toString(r_received, 'UTC') AS received,
    site,
    caller,
    number,
    disposition,
    attempts,
    final_code,
    round(ring_ms / 1000, 1) AS ring_seconds,
    utm_source,
    utm_campaign,
    gclid,
    toUInt8(last_answered > r_received) AS answered_later
FROM
(
    SELECT
        received AS r_received,
        call_id,
        site,
        caller,
        number,
        toString(disposition) AS disposition,
        attempts,
        final_code,
        ring_ms,
        utm_source,
        utm_campaign,
        gclid
    FROM calls FINAL
    WHERE received >= {from} AND received < {to}
      AND ({site} = '' OR site = {site})
      AND disposition IN ('missed', 'busy', 'abandoned', 'failed', 'timeout')
      AND toUInt32(answered) = 0
) AS l
ANY LEFT JOIN
(
    SELECT site, caller, max(received) AS last_answered
    FROM calls
    WHERE received >= {from} AND toUInt32(answered) > 0 AND caller != ''
      AND ({site} = '' OR site = {site})
    GROUP BY site, caller
) AS r USING (site, caller)
ORDER BY r_received, call_id
