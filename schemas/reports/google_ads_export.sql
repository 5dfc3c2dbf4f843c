-- google_ads_export: Google Ads offline conversion import, click-conversion
-- template (Google Click ID, Conversion Name, Conversion Time,
-- Conversion Value, Conversion Currency). Run with --format csv.
-- Rows: answered calls with a gclid, received in [{from}, {to});
-- {site} = '' means every site.
-- {conversion}: the conversion action name in Google Ads, a quoted string
--   literal; the CLI default is 'dialmark call'.
-- Conversion Time: the call's arrival, 'YYYY-MM-DD hh:mm:ss+0000' (UTC).
-- Conversion Value / Currency: empty (the action's default value applies).
SELECT
    gclid AS `Google Click ID`,
    {conversion} AS `Conversion Name`,
    concat(toString(r_received, 'UTC'), '+0000') AS `Conversion Time`,
    '' AS `Conversion Value`,
    '' AS `Conversion Currency`
FROM
(
    SELECT received AS r_received, call_id, gclid
    FROM calls FINAL
    WHERE received >= {from} AND received < {to}
      AND ({site} = '' OR site = {site})
      AND gclid != ''
      AND toUInt32(answered) > 0
)
ORDER BY r_received, gclid, call_id
