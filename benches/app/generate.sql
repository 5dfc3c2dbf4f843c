-- Synthetic history for benches/app/run: {calls} calls and {visits} visits
-- over the 90 days before {end} (Unix seconds), 20 sites (site0..site19),
-- 2,000 numbers, the sources and dispositions of a typical month, one
-- attempt per call (a second, failed one for every 10th). Statements are
-- separated by lines holding only ';;'.
INSERT INTO visits (visit_id, ts, site, pool, session_id, visitor_id, number, number_kind, url, referrer,
    utm_source, utm_medium, utm_campaign, gclid, country, city, channel, touch_ts, first_touch_ts)
SELECT
    generateUUIDv4(),
    toDateTime({end} - 7776000 + intDiv(number * 7776000, {visits})) AS t,
    concat('site', toString(number % 20)),
    concat('pool', toString(number % 20)),
    concat('s', toString(intDiv(number, 4))),
    concat('v', toString(intDiv(number, 9))),
    concat('+7495', toString(1000000 + number % 2000)),
    'pool',
    concat('https://shop', toString(number % 20), '.test/page', toString(number % 37), '?utm_source=x'),
    ['https://www.google.com/', 'https://yandex.ru/', '', 'https://vk.com/'][1 + number % 4],
    ['google', 'yandex', '', 'vk', 'facebook'][1 + number % 5],
    ['cpc', 'cpc', '', 'social', 'cpc'][1 + number % 5],
    concat('campaign', toString(number % 30)),
    if(number % 5 = 0, concat('G', toString(number)), ''),
    'RU', ['Moscow', 'Kazan', 'Saint Petersburg'][1 + number % 3],
    ['paid_search', 'paid_search', 'direct', 'social', 'paid_social'][1 + number % 5],
    t, t
FROM numbers({visits})
;;
INSERT INTO calls (call_id, sip_call_id, received, answered, ended, ring_ms, talk_ms, caller, number, number_status,
    site, pool, disposition, final_code, attempts, final_trunk, destination, attribution, session_id, visitor_id,
    utm_source, utm_medium, utm_campaign, gclid, country, city, version, channel, attribution_confidence, touch_ts)
SELECT
    toUUID(concat('00000000-0000-4000-8000-', substring(concat('000000000000', hex(number)), length(hex(number)) + 1, 12))) AS id,
    concat('sip-', toString(number)),
    toDateTime({end} - 7776000 + intDiv(number * 7776000, {calls})) AS r,
    if(number % 5 = 0, toDateTime(0), r + 8) AS a,
    r + 8 + number % 400,
    8000,
    if(number % 5 = 0, 0, (number % 400) * 1000),
    concat('+7916', toString(1000000 + number % 600000)),
    concat('+7495', toString(1000000 + number % 2000)),
    'active',
    concat('site', toString(number % 20)),
    concat('pool', toString(number % 20)),
    if(number % 5 = 0, 'missed', 'answered'),
    if(number % 5 = 0, 480, 200),
    if(number % 10 = 3, 2, 1),
    ['a', 'b'][1 + number % 2],
    '+74951234567',
    'live_lease',
    concat('s', toString(number * 10)),
    concat('v', toString(number * 4)),
    ['google', 'yandex', '', 'vk', 'facebook'][1 + number % 5],
    ['cpc', 'cpc', '', 'social', 'cpc'][1 + number % 5],
    concat('campaign', toString(number % 30)),
    if(number % 5 = 0, concat('G', toString(number)), ''),
    'RU', ['Moscow', 'Kazan', 'Saint Petersburg'][1 + number % 3],
    toUInt64(r) * 1000,
    ['paid_search', 'paid_search', 'direct', 'social', 'paid_social'][1 + number % 5],
    'live',
    r - 600
FROM numbers({calls})
;;
INSERT INTO call_attempts (call_id, attempt, sip_call_id, trunk, destination, started, ended, pdd_ms, answer_ms,
    talk_ms, final_code, reason, outcome, failover, version, duration_ms)
SELECT
    toUUID(concat('00000000-0000-4000-8000-', substring(concat('000000000000', hex(number)), length(hex(number)) + 1, 12))),
    1,
    concat('sip-', toString(number)),
    ['a', 'b'][1 + number % 2],
    '+74951234567',
    toDateTime({end} - 7776000 + intDiv(number * 7776000, {calls})) AS r,
    r + 8 + number % 400,
    900, 8000,
    if(number % 5 = 0, 0, (number % 400) * 1000),
    if(number % 5 = 0, 480, 200), '',
    if(number % 5 = 0, 'no_answer', 'answered'),
    0,
    toUInt64(r) * 1000,
    (8 + number % 400) * 1000
FROM numbers({calls})
