-- lost_call_audit: every call in the range and what happened to it, so no
-- call is unaccounted for.
-- record = 'call': each calls row with received in [{from}, {to}),
--   rejected calls (zero attempts) included; {site} = '' means every site.
-- record = 'attempts_only': attempts started in [{from}, {to}) whose call
--   has no calls row (call still in progress, or its row was lost);
--   received is then the first attempt's start. For one site: that site's
--   attempts (call_attempts.site, migration 0012; attempts written before
--   it have site = '' and show in the every-site report only).
-- attempt_path: the call's attempts in attempt order, 'trunk:code:outcome'
--   joined by ' > ' (e.g. 'trunk-a:503:rejected > trunk-b:200:answered').
-- attempt_rows: attempt rows recorded; a value below `attempts` means
--   attempt rows are missing.
SELECT
    toString(r_received, 'UTC') AS received,
    call_id,
    caller,
    number,
    site,
    number_status,
    disposition,
    attribution,
    attempts,
    attempt_rows,
    final_trunk,
    final_code,
    attempt_path,
    record
FROM
(
    SELECT
        r_received,
        cid AS call_id,
        caller,
        number,
        site,
        number_status,
        disposition,
        attribution,
        attempts,
        attempt_rows,
        final_trunk,
        final_code,
        attempt_path,
        'call' AS record
    FROM
    (
        SELECT
            received AS r_received,
            toString(call_id) AS cid,
            caller,
            number,
            site,
            toString(number_status) AS number_status,
            toString(disposition) AS disposition,
            toString(attribution) AS attribution,
            toUInt32(attempts) AS attempts,
            final_trunk,
            toUInt32(final_code) AS final_code
        FROM calls FINAL
        WHERE received >= {from} AND received < {to}
          AND ({site} = '' OR site = {site})
    ) AS l
    ANY LEFT JOIN
    (
        SELECT
            toString(call_id) AS cid,
            toUInt32(uniqExact(attempt)) AS attempt_rows,
            arrayStringConcat(arrayMap(a -> concat(a.2, ':', toString(a.3), ':', a.4),
                arraySort(groupUniqArray((attempt, trunk, final_code, toString(outcome))))), ' > ') AS attempt_path
        FROM call_attempts
        WHERE started >= {from} - 3600 AND started < {to} + 3600
          -- Only the attempts of the calls listed: a report for one site
          -- then aggregates that site's attempts, not the whole node's.
          AND call_id IN
          (
              SELECT call_id FROM calls
              WHERE received >= {from} AND received < {to}
                AND ({site} = '' OR site = {site})
          )
        GROUP BY cid
    ) AS r USING (cid)

    UNION ALL

    SELECT
        first_started AS r_received,
        toString(call_id) AS call_id,
        '' AS caller,
        '' AS number,
        '' AS site,
        '' AS number_status,
        '' AS disposition,
        '' AS attribution,
        toUInt32(0) AS attempts,
        attempt_rows,
        last_trunk AS final_trunk,
        toUInt32(last_code) AS final_code,
        attempt_path,
        'attempts_only' AS record
    FROM
    (
        SELECT
            call_id,
            min(started) AS first_started,
            toUInt32(uniqExact(attempt)) AS attempt_rows,
            argMax(trunk, attempt) AS last_trunk,
            argMax(final_code, attempt) AS last_code,
            arrayStringConcat(arrayMap(a -> concat(a.2, ':', toString(a.3), ':', a.4),
                arraySort(groupUniqArray((attempt, trunk, final_code, toString(outcome))))), ' > ') AS attempt_path
        FROM call_attempts
        WHERE started >= {from} AND started < {to}
          AND ({site} = '' OR site = {site})
          AND call_id NOT IN
          (
              SELECT call_id FROM calls
              WHERE received >= {from} - 86400 AND received < {to} + 86400
                AND ({site} = '' OR site = {site})
          )
        GROUP BY call_id
    )
)
ORDER BY r_received, record, call_id
