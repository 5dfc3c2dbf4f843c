-- campaigns: calls by source, medium, campaign and keyword (utm_term).
-- Calls received in [{from}, {to}); {site} = '' means every site.
-- Every call counts except rejected_untrusted (not from a trusted carrier).
-- answered: the call was answered (answered time set; this includes
--   disposition `timeout`, an answered call cut at router.max_call_seconds).
-- missed: calls - answered (rejected calls to quarantine/stock numbers included).
-- first_time_callers: callers whose first call ever to the same site
--   (over all time, from the caller_first_seen rollup) falls in the range.
-- median_talk_seconds: exact median talk time of the answered calls.
-- source_label: label of a static number (static attribution), else ''.
SELECT
    utm_source,
    utm_medium,
    utm_campaign,
    utm_term,
    source_label,
    count() AS calls,
    toUInt64(sum(is_answered)) AS answered,
    calls - answered AS missed,
    uniqExactIf(caller, caller != '' AND first_call >= {from}) AS first_time_callers,
    uniqExactIf(caller, caller != '') AS unique_callers,
    if(answered = 0, 0., round(medianExactIf(talk_ms, is_answered = 1) / 1000, 1)) AS median_talk_seconds
FROM
(
    SELECT
        site,
        caller,
        utm_source,
        utm_medium,
        utm_campaign,
        utm_term,
        source_label,
        talk_ms,
        toUInt8(toUInt32(answered) > 0) AS is_answered
    FROM calls FINAL
    WHERE received >= {from} AND received < {to}
      AND ({site} = '' OR site = {site})
      AND disposition != 'rejected_untrusted'
) AS l
ANY LEFT JOIN
(
    SELECT site, caller, minMerge(first_call) AS first_call
    FROM caller_first_seen
    WHERE caller IN
    (
        SELECT caller FROM calls
        WHERE received >= {from} AND received < {to} AND ({site} = '' OR site = {site})
    )
    GROUP BY site, caller
) AS r USING (site, caller)
GROUP BY utm_source, utm_medium, utm_campaign, utm_term, source_label
ORDER BY calls DESC, utm_source, utm_medium, utm_campaign, utm_term, source_label
