-- google_ads_export: Google Ads offline click-conversion import (the
-- "Conversions from clicks" upload, and the fields of the API's
-- ClickConversion). Run with --format csv.
-- Columns: Google Click ID, GBRAID, WBRAID, Conversion Name, Conversion
-- Time, Conversion Value, Conversion Currency.
-- Rows: answered calls received in [{from}, {to}) that talked at least
-- {min_talk} seconds (the conversion action's threshold, --min-talk) and
-- carry a Google click: gclid, or on iOS a gbraid (app) or wbraid (web).
-- One identifier per row, as Google requires: the gclid when there is one
-- (GBRAID and WBRAID left empty), else the wbraid (a call from a web page
-- is a web conversion), else the gbraid. Clicks older than 90 days at the
-- call (Google's click window; `touch_ts`) are left out; calls from before
-- the click time was recorded (touch_ts = 0) are kept.
-- {site} = '' means every site.
-- {conversion}: the conversion action name in Google Ads, a quoted string
--   literal; the CLI default is 'dialmark call'.
-- Conversion Time: the call's arrival, 'YYYY-MM-DD hh:mm:ss+0000' (UTC).
-- Conversion Value / Currency: empty (the action's default value applies).
SELECT
    gclid AS `Google Click ID`,
    if(gclid = '' AND wbraid = '', gbraid, '') AS `GBRAID`,
    if(gclid = '', wbraid, '') AS `WBRAID`,
    {conversion} AS `Conversion Name`,
    concat(toString(r_received, 'UTC'), '+0000') AS `Conversion Time`,
    '' AS `Conversion Value`,
    '' AS `Conversion Currency`
FROM
(
    SELECT received AS r_received, call_id, gclid, gbraid, wbraid
    FROM calls FINAL
    WHERE received >= {from} AND received < {to}
      AND ({site} = '' OR site = {site})
      AND (gclid != '' OR gbraid != '' OR wbraid != '')
      AND toUInt32(answered) > 0
      AND talk_ms >= {min_talk} * 1000
      AND (toUInt32(touch_ts) = 0 OR toUInt32(received) - toUInt32(touch_ts) <= 7776000)
)
ORDER BY r_received, `Google Click ID`, call_id
