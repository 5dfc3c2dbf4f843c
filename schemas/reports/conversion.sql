-- conversion: visits -> calls by site, source and landing page.
-- Sessions with a visit in [{from}, {to}); {site} = '' means every site.
-- A session belongs to one row: utm_source and landing_page of its first
-- visit in the range (landing_page = path of visits.url, without query
-- string, fragment, scheme or host; '/' when empty). The regex writes the
-- query-string mark as \x3F: report files contain no question mark, so a
-- client that treats it as a bind placeholder cannot break them.
-- visits: page views (visit rows) of those sessions in the range.
-- calls: calls received in [{from}, {to}) attributed to those sessions
--   (joined on site + session_id).
-- calling_sessions: sessions with at least one call.
-- conversion_rate: calling_sessions / sessions.
SELECT
    site,
    utm_source,
    landing_page,
    sum(views) AS visits,
    count() AS sessions,
    sum(session_calls) AS calls,
    countIf(session_calls > 0) AS calling_sessions,
    round(calling_sessions / sessions, 4) AS conversion_rate
FROM
(
    SELECT
        site,
        session_id,
        first_visit.1 AS utm_source,
        replaceRegexpOne(replaceRegexpOne(first_visit.2, '[\\x3F#].*$', ''), '^[A-Za-z][A-Za-z0-9+.-]*://[^/]*', '') AS bare,
        if(empty(bare), '/', bare) AS landing_page,
        views
    FROM
    (
        SELECT
            site,
            session_id,
            argMin((utm_source, url), (ts, visit_id)) AS first_visit,
            uniqExact(visit_id) AS views
        FROM visits
        WHERE ts >= {from} AND ts < {to}
          AND ({site} = '' OR site = {site})
          AND session_id != ''
        GROUP BY site, session_id
    )
) AS l
ANY LEFT JOIN
(
    SELECT site, session_id, uniqExact(call_id) AS session_calls
    FROM calls
    WHERE received >= {from} AND received < {to}
      AND ({site} = '' OR site = {site})
      AND session_id != ''
    GROUP BY site, session_id
) AS r USING (site, session_id)
GROUP BY site, utm_source, landing_page
ORDER BY sessions DESC, site, utm_source, landing_page
