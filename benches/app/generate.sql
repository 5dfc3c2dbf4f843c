-- Synthetic history for benches/app/run: {calls} calls and {visits} visits
-- over the 90 days before {end} (Unix seconds), 20 sites (site0..site19,
-- 100 numbers each), sessions of 4 page views on one site (a call's
-- session is one of its site's), a fifth of the calls missed, five sources (Google
-- with a gclid), 30 campaigns, two trunks, one attempt per call (a second,
-- failed one before it for every 10th). Each attribute comes from its own
-- hash of the row number, so every site gets the same mix. Statements are
-- separated by lines holding only ';;'.
INSERT INTO visits (visit_id, ts, site, pool, session_id, visitor_id, number, number_kind, url, referrer,
    utm_source, utm_medium, utm_campaign, gclid, country, city, channel, touch_ts, first_touch_ts)
SELECT
    generateUUIDv4(),
    toDateTime({end} - 7776000 + intDiv(number * 7776000, {visits})) AS t,
    concat('site', toString(intDiv(number, 4) % 20)),
    concat('pool', toString(intDiv(number, 4) % 20)),
    concat('s', toString(intDiv(number, 4))),
    concat('v', toString(intDiv(number, 9))),
    concat('+7495', toString(1000000 + (intDiv(number, 4) % 20) * 100 + cityHash64(number, 6) % 100)),
    'pool',
    concat('https://shop', toString(intDiv(number, 4) % 20), '.test/page', toString(cityHash64(number, 8) % 37)),
    ['https://www.google.com/', 'https://yandex.ru/', '', 'https://vk.com/', 'https://www.facebook.com/'][1 + cityHash64(number, 2) % 5],
    ['google', 'yandex', '', 'vk', 'facebook'][1 + cityHash64(number, 2) % 5] AS src,
    ['cpc', 'cpc', '', 'social', 'cpc'][1 + cityHash64(number, 2) % 5],
    concat('campaign', toString(cityHash64(number, 3) % 30)),
    if(src = 'google', concat('G', toString(number)), ''),
    'RU', ['Moscow', 'Kazan', 'Saint Petersburg'][1 + cityHash64(number, 9) % 3],
    ['paid_search', 'paid_search', 'direct', 'social', 'paid_social'][1 + cityHash64(number, 2) % 5],
    t, t
FROM numbers({visits})
;;
INSERT INTO calls (call_id, sip_call_id, received, answered, ended, ring_ms, talk_ms, caller, number, number_status,
    site, pool, disposition, final_code, attempts, final_trunk, destination, attribution, session_id, visitor_id,
    utm_source, utm_medium, utm_campaign, gclid, country, city, version, channel, attribution_confidence, touch_ts)
SELECT
    toUUID(concat('00000000-0000-4000-8000-', substring(concat('000000000000', hex(number)), length(hex(number)) + 1, 12))),
    concat('sip-', toString(number)),
    toDateTime({end} - 7776000 + intDiv(number * 7776000, {calls})) AS r,
    if((cityHash64(number, 1) % 5 = 0) AS missed, toDateTime(0), r + 8),
    r + 8 + number % 400,
    8000,
    if(missed, 0, (number % 400) * 1000),
    concat('+7916', toString(1000000 + cityHash64(number, 5) % 600000)),
    concat('+7495', toString(1000000 + (number % 20) * 100 + cityHash64(number, 6) % 100)),
    'active',
    concat('site', toString(number % 20)),
    concat('pool', toString(number % 20)),
    if(missed, 'missed', 'answered'),
    if(missed, 480, 200),
    if(cityHash64(number, 7) % 10 = 3, 2, 1),
    ['a', 'b'][1 + cityHash64(number, 4) % 2],
    '+74951234567',
    'live_lease',
    concat('s', toString((cityHash64(number, 10) % 125000) * 20 + number % 20)),
    concat('v', toString(cityHash64(number, 11) % 1100000)),
    ['google', 'yandex', '', 'vk', 'facebook'][1 + cityHash64(number, 2) % 5] AS src,
    ['cpc', 'cpc', '', 'social', 'cpc'][1 + cityHash64(number, 2) % 5],
    concat('campaign', toString(cityHash64(number, 3) % 30)),
    if(src = 'google', concat('G', toString(number)), ''),
    'RU', ['Moscow', 'Kazan', 'Saint Petersburg'][1 + cityHash64(number, 9) % 3],
    toUInt64(r) * 1000,
    ['paid_search', 'paid_search', 'direct', 'social', 'paid_social'][1 + cityHash64(number, 2) % 5],
    'live',
    r - 600
FROM numbers({calls})
;;
INSERT INTO call_attempts (call_id, attempt, sip_call_id, trunk, destination, started, ended, pdd_ms, answer_ms,
    talk_ms, final_code, reason, outcome, failover, version, duration_ms, site)
SELECT
    toUUID(concat('00000000-0000-4000-8000-', substring(concat('000000000000', hex(number)), length(hex(number)) + 1, 12))),
    if(cityHash64(number, 7) % 10 = 3, 2, 1),
    concat('sip-', toString(number)),
    ['a', 'b'][1 + cityHash64(number, 4) % 2],
    '+74951234567',
    toDateTime({end} - 7776000 + intDiv(number * 7776000, {calls})) AS r,
    r + 8 + number % 400,
    900, 8000,
    if(cityHash64(number, 1) % 5 = 0, 0, (number % 400) * 1000),
    if(cityHash64(number, 1) % 5 = 0, 480, 200), '',
    if(cityHash64(number, 1) % 5 = 0, 'no_answer', 'answered'),
    0,
    toUInt64(r) * 1000,
    (8 + number % 400) * 1000,
    concat('site', toString(number % 20))
FROM numbers({calls})
;;
INSERT INTO call_attempts (call_id, attempt, sip_call_id, trunk, destination, started, ended, pdd_ms, answer_ms,
    talk_ms, final_code, reason, outcome, failover, version, duration_ms, site)
SELECT
    toUUID(concat('00000000-0000-4000-8000-', substring(concat('000000000000', hex(number)), length(hex(number)) + 1, 12))),
    1,
    concat('sip-', toString(number)),
    ['b', 'a'][1 + cityHash64(number, 4) % 2],
    '+74951234567',
    toDateTime({end} - 7776000 + intDiv(number * 7776000, {calls})) AS r,
    r + 1,
    0, 0, 0, 503, 'Service Unavailable', 'rejected', 1,
    toUInt64(r) * 1000,
    1000,
    concat('site', toString(number % 20))
FROM numbers({calls})
WHERE cityHash64(number, 7) % 10 = 3
