-- yandex_export: Yandex Metrica offline calls upload (CSV with a header
-- row; API upload_calls or Metrica UI). Run with --format csv.
-- Rows: calls received in [{from}, {to}) with a visitor id, a Metrica
-- ClientId or a yclid, except rejected ones; {site} = '' means every site.
-- Identifiers (upload with the client_id_type of the one you use):
-- ClientId: Metrica's own visitor id (the `_ym_uid` cookie the snippet
--   reads): client_id_type=CLIENT_ID, no Metrica-side setup.
-- UserId: dialmark's visitor id (_dm_vid). Metrica links it only when the
--   site also passes it to Metrica as the user id (ym(..., 'setUserID', id));
--   upload with client_id_type=USER_ID. Yclid: Yandex Direct click id.
-- DateTime: call arrival, Unix seconds (UTC).
-- StaticCall: 1 for static attribution, else 0 (dynamic).
-- PhoneNumber: the dialled tracking number (E.164).
-- TalkDuration / HoldDuration: talk time / ringing before answer, seconds.
-- CallMissed: 1 when not answered. FirstTimeCaller: 1 when this is the
--   caller's first call ever to the site. Tag: the call's disposition.
-- URL: landing page of the attributed visit. Price / Currency: empty.
-- CallTrackerURL: {call_url} (--call-url, a link prefix to the call in the
--   marketers' app) + the call id; empty when no prefix is given.
SELECT
    UserId,
    ClientId,
    Yclid,
    toUInt32(r_received) AS DateTime,
    toUInt8(attribution = 'static') AS StaticCall,
    '' AS Price,
    '' AS Currency,
    number AS PhoneNumber,
    intDiv(talk_ms, 1000) AS TalkDuration,
    intDiv(ring_ms, 1000) AS HoldDuration,
    toUInt8(toUInt32(answered_at) = 0) AS CallMissed,
    toUInt8(caller != '' AND first_call >= r_received) AS FirstTimeCaller,
    Tag,
    landing_url AS URL,
    if({call_url} = '', '', concat({call_url}, toString(call_id))) AS CallTrackerURL
FROM
(
    SELECT
        received AS r_received,
        call_id,
        site,
        caller,
        visitor_id AS UserId,
        ym_uid AS ClientId,
        yclid AS Yclid,
        attribution,
        number,
        talk_ms,
        ring_ms,
        answered AS answered_at,
        toString(disposition) AS Tag,
        landing_url
    FROM calls FINAL
    WHERE received >= {from} AND received < {to}
      AND ({site} = '' OR site = {site})
      AND (visitor_id != '' OR ym_uid != '' OR yclid != '')
      AND disposition NOT IN ('rejected_quarantine', 'rejected_stock', 'rejected_unknown', 'rejected_untrusted')
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
ORDER BY r_received, call_id
