// The whole mission end to end: a visitor lands from a Google ad, the
// snippet in headless Chromium shows a leased tracking number, a carrier
// (SIPp) calls that number through the real dialmark-router, trunk A
// refuses with 503 and the router fails over to trunk B, which answers;
// a second carrier call to a retired (quarantine) number gets 404. The
// reports (the tracker CLI over ClickHouse) then show the call under
// google / spring with its talk time, both attempts, the gclid for the
// Google Ads upload, both calls in the lost-call audit and the quarantine
// number's call.
//
// DIALMARK_MISSION_BREAK (to check that this test can fail):
//   trunk-b-dead  trunk B points at a port nobody listens on: the call fails
//   no-visit      no browser visit: the number is called unleased, no source
//   no-retire     the quarantine number is never retired: the call is put through

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { startTracker, launch, openPage, waitNumber, formats, chRows, freePort, poll, udpBound, STATIC } from './lib/harness.js';
import { sipKit } from './lib/sip.js';

const BREAK = process.env.DIALMARK_MISSION_BREAK || '';

// Everything started here is stopped by after(), in reverse order, even when
// the test fails half-way.
const cleanups = [];
const onCleanup = fn => cleanups.push(fn);
const { tmpDir, scenario, trunk, carrierCall, startRouter, preflight } = sipKit(onCleanup);
after(async () => {
  while (cleanups.length) {
    const fn = cleanups.pop();
    try {
      await fn();
    } catch (err) {
      console.error('clean-up:', err.message);
    }
  }
});

const day = offset => new Date(Date.now() + offset * 86400000).toISOString().slice(0, 10);
const jsonLines = text =>
  text
    .split('\n')
    .filter(l => l.trim())
    .map(l => JSON.parse(l));

const page = site => `<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>dialmark mission</title>
  <script async src="/snippet.js" data-site="${site}" data-timeout="5000"></script>
</head>
<body>
  <h1>Shop</h1>
  <p>Call us: <a id="tel" href="tel:${STATIC}">+7 (495) 000-00-00</a></p>
</body>
</html>
`;

test('visit from an ad -> tracking number -> carrier call with trunk failover -> attributed in the reports', { timeout: 90000 }, async () => {
  preflight();
  const started = Date.now();
  const step = msg => console.log(`${((Date.now() - started) / 1000).toFixed(1)} s: ${msg}`);
  const dir = tmpDir('dialmark-mission-');

  // 1. Tracker, a site with a pool; one more number retired to quarantine.
  const tracker = await startTracker();
  onCleanup(() => tracker.stop());
  const inv = await tracker.provision({ size: 2 });
  const [poolNumber, quarantine] = inv.numbers;
  if (BREAK != 'no-retire') {
    const retired = JSON.parse((await tracker.cli('admin', 'retire', quarantine)).trim().split('\n').pop());
    assert.equal(retired.status, 'quarantine', `admin retire: ${JSON.stringify(retired)}`);
  }
  step(`tracker ${tracker.origin}, db ${tracker.database}, site ${inv.site}, pool number ${poolNumber}, quarantine ${quarantine}`);

  // 2. Trunks: A refuses every call with 503, B answers.
  const [pa, pb, dead] = [await freePort(), await freePort(), await freePort()];
  const trunkA = trunk(dir, 'a', pa, ['-sf', scenario(dir, 'uas_reject.xml', { CODE: '503', REASON: 'Service Unavailable' })]);
  const trunkB = trunk(dir, 'b', pb, ['-sn', 'uas']);
  assert.ok(await poll(() => udpBound(pa) && udpBound(pb), Boolean, 5000), 'both trunks listening');

  // 3. The routing node, on the tracker's Redis and ClickHouse database.
  const router = await startRouter({
    dir,
    database: tracker.database,
    trunks: [
      ['a', pa],
      ['b', BREAK == 'trunk-b-dead' ? dead : pb],
    ],
  });
  step(`router sip ${router.sip}, http ${router.http}; trunk a :${pa} (503), trunk b :${pb} (answers)`);
  for (const t of [trunkA, trunkB]) assert.equal(t.exited, null, `${t.name} exited:\n${t.tail()}`);

  // 4. The visitor: /demo from a Google ad; the snippet shows a leased number.
  let number = poolNumber;
  let session = '';
  if (BREAK != 'no-visit') {
    const browser = await launch();
    onCleanup(() => browser.close());
    const { page: tab, errors } = await openPage(browser);
    tracker.setPage(page(inv.site));
    await tab.goto(tracker.url('/demo?utm_source=google&utm_campaign=spring&gclid=TEST'));
    const st = await waitNumber(tab);
    const href = await poll(
      () => tab.evaluate(() => document.getElementById('tel').getAttribute('href')),
      h => h != `tel:${STATIC}`,
      3000,
    );
    assert.equal(href, `tel:${st.number}`, 'the tel: link dials the leased number');
    const text = await tab.evaluate(() => document.getElementById('tel').textContent);
    assert.equal(text, formats(st.number).intlParens, 'the page shows the leased number in the site format');
    assert.equal(st.number, poolNumber, 'the pool number (not the quarantined one) is leased');
    assert.deepEqual(errors, [], 'no uncaught page errors');
    number = st.number;
    session = st.session;
    step(`page shows ${number} (session ${session})`);
  }

  // 5. The carrier calls the shown number: A 503 -> B answers, 2 s of talk.
  const call = await carrierCall(dir, router.sip, number.replace(/^\+/, ''), ['-sn', 'uac'], ['-d', '2000']);
  assert.equal(call.code, 0, `carrier call to ${number} failed (sipp ${call.args.join(' ')}):\n${call.output}\nrouter:\n${router.tail()}`);
  step('carrier call answered');

  // 6. A carrier call to the quarantine number is refused with 404.
  const q = await carrierCall(dir, router.sip, quarantine.replace(/^\+/, ''), ['-sf', scenario(dir, 'uac_expect.xml', { CODE: '404' })]);
  assert.equal(q.code, 0, `call to quarantine ${quarantine} did not get 404 (sipp ${q.args.join(' ')}):\n${q.output}\nrouter:\n${router.tail()}`);
  step('quarantine call refused with 404');

  // 7. Rows in ClickHouse (the router's sink flushes every 200 ms).
  const db = tracker.database;
  const calls = await poll(
    () =>
      chRows(
        `SELECT number, toString(disposition) AS disposition, toString(attribution) AS attribution, session_id, ` +
          `utm_source, utm_campaign, gclid, site, attempts, final_trunk, talk_ms FROM calls FINAL ` +
          `WHERE number IN ('${number}', '${quarantine}') ORDER BY received`,
        db,
      ),
    rows => rows.length >= 2,
    15000,
    200,
  );
  const attempts = await poll(
    () =>
      chRows(
        `SELECT attempt, trunk, final_code, toString(outcome) AS outcome, failover, talk_ms FROM call_attempts FINAL ` +
          `WHERE call_id IN (SELECT call_id FROM calls WHERE number = '${number}') ORDER BY attempt`,
        db,
      ),
    rows => rows.length >= 2,
    15000,
    200,
  );
  const ctx = `calls: ${JSON.stringify(calls)}\nattempts: ${JSON.stringify(attempts)}\nrouter:\n${router.tail(20)}`;
  const answeredCall = calls.find(c => c.number == number);
  const quarantineCall = calls.find(c => c.number == quarantine);
  assert.ok(answeredCall && quarantineCall, `a calls row for each call; ${ctx}`);
  assert.deepEqual(
    attempts.map(a => [Number(a.attempt), a.trunk, Number(a.final_code), a.outcome, Number(a.failover)]),
    [
      [1, 'a', 503, 'rejected', 1],
      [2, 'b', 200, 'answered', 0],
    ],
    `exactly two attempts: trunk a 503, trunk b answered; ${ctx}`,
  );
  assert.ok(Number(attempts[1].talk_ms) >= 1500, `talk time of the answered attempt; ${ctx}`);
  assert.deepEqual(
    {
      disposition: answeredCall.disposition,
      attempts: Number(answeredCall.attempts),
      final_trunk: answeredCall.final_trunk,
      site: answeredCall.site,
      attribution: answeredCall.attribution,
      session_id: answeredCall.session_id,
      utm: [answeredCall.utm_source, answeredCall.utm_campaign, answeredCall.gclid],
    },
    {
      disposition: 'answered',
      attempts: 2,
      final_trunk: 'b',
      site: inv.site,
      attribution: 'live_lease',
      session_id: session,
      utm: ['google', 'spring', 'TEST'],
    },
    `the answered call is attributed to the visit; ${ctx}`,
  );
  assert.equal(quarantineCall.disposition, 'rejected_quarantine', ctx);
  if (BREAK != 'no-visit') {
    // The visit the call is attributed to, as the tracker recorded it.
    const visits = await tracker.visits(`session_id = '${session}'`);
    assert.deepEqual(
      visits.map(v => [v.site, v.number, v.utm_source, v.utm_campaign, v.gclid]),
      [[inv.site, number, 'google', 'spring', 'TEST']],
      `the visit row of session ${session}: ${JSON.stringify(visits)}`,
    );
  }
  step('calls, call_attempts and visits rows are in ClickHouse');

  // 8. The reports, through the CLI.
  const range = ['--from', day(-1), '--to', day(1)];
  const report = (name, format, site = inv.site) => tracker.cli('report', name, ...range, '--site', site, '--format', format);

  const campaigns = jsonLines(await report('campaigns', 'json'));
  const google = campaigns.find(r => r.utm_source == 'google' && r.utm_campaign == 'spring');
  assert.ok(google, `campaigns has a google / spring row: ${JSON.stringify(campaigns)}`);
  assert.equal(Number(google.calls), 1, JSON.stringify(google));
  assert.equal(Number(google.answered), 1, JSON.stringify(google));
  assert.ok(Number(google.median_talk_seconds) >= 1.5, `median talk ~2 s: ${JSON.stringify(google)}`);

  const gads = await report('google_ads_export', 'csv');
  const gadsRows = gads.trim().split('\n');
  assert.match(gadsRows[0], /^"Google Click ID","GBRAID","WBRAID","Conversion Name","Conversion Time"/, gads);
  assert.ok(
    gadsRows.some(l => /^"?TEST"?,"?"?,"?"?,"?dialmark call"?,/.test(l)),
    `google_ads_export has the gclid TEST as a conversion:\n${gads}`,
  );

  const audit = jsonLines(await report('lost_call_audit', 'json'));
  const auditOf = n => audit.filter(r => r.number == n && r.record == 'call');
  const auditCtx = `lost_call_audit: ${JSON.stringify(audit)}`;
  assert.equal(auditOf(number).length, 1, auditCtx);
  assert.deepEqual(
    [auditOf(number)[0].disposition, auditOf(number)[0].attempt_path, Number(auditOf(number)[0].attempt_rows)],
    ['answered', 'a:503:rejected > b:200:answered', 2],
    auditCtx,
  );
  assert.equal(auditOf(quarantine).length, 1, `the quarantine call is audited; ${auditCtx}`);
  assert.equal(auditOf(quarantine)[0].disposition, 'rejected_quarantine', auditCtx);

  const quarantined = jsonLines(await report('quarantine', 'json'));
  const qrow = quarantined.find(r => r.number == quarantine);
  assert.ok(qrow, `quarantine report lists ${quarantine}: ${JSON.stringify(quarantined)}`);
  assert.ok(Number(qrow.calls_90d) >= 1, `the refused call counts: ${JSON.stringify(qrow)}`);
  assert.equal(Number(qrow.eligible), 0, `retired today: not eligible for release: ${JSON.stringify(qrow)}`);

  // Visits -> calls: the landing page and source converted.
  const conversion = jsonLines(await report('conversion', 'json'));
  const landing = conversion.find(r => r.utm_source == 'google' && r.landing_page == '/demo');
  assert.ok(landing, `conversion has a google /demo row: ${JSON.stringify(conversion)}`);
  assert.deepEqual(
    [Number(landing.sessions), Number(landing.calls), Number(landing.calling_sessions)],
    [1, 1, 1],
    `one session, its call: ${JSON.stringify(landing)}`,
  );
  step('reports: campaigns, google_ads_export, lost_call_audit, quarantine, conversion ok');

  // 8. The NOC view: the router's status page, in the browser, shows the
  // failover on trunk a and the answered call on trunk b.
  {
    const browser = await launch();
    onCleanup(() => browser.close());
    const { page: tab, errors } = await openPage(browser);
    await tab.goto(`http://127.0.0.1:${router.http}/status`);
    // Cells by column header: the page redraws itself from /status.json.
    const cells = () => tab.evaluate(() => {
      const heads = [...document.querySelectorAll('thead th')].map(th => th.textContent.trim());
      return Object.fromEntries([...document.querySelectorAll('tr[data-trunk]')].map(tr =>
        [tr.dataset.trunk, Object.fromEntries([...tr.cells].map((c, i) => [heads[i], c.textContent.trim()]))]));
    });
    const pick = (rows, t) => [rows[t]?.state, rows[t]?.['attempts 15m'], rows[t]?.['failovers 15m'], rows[t]?.['ASR 15m']];
    let rows = await cells();
    assert.deepEqual(pick(rows, 'a'), ['UP', '1', '1', '0%'], `trunk a: ${JSON.stringify(rows)}`);
    assert.deepEqual(pick(rows, 'b'), ['UP', '1', '0', '100%'], `trunk b: ${JSON.stringify(rows)}`);
    // The script's redraw (no reload) shows the same numbers.
    await tab.waitForFunction(() => document.getElementById('updated').textContent.startsWith('updated'), null, { timeout: 8000 });
    rows = await cells();
    assert.deepEqual(pick(rows, 'a'), ['UP', '1', '1', '0%'], `trunk a after a redraw: ${JSON.stringify(rows)}`);
    assert.deepEqual(pick(rows, 'b'), ['UP', '1', '0', '100%'], `trunk b after a redraw: ${JSON.stringify(rows)}`);
    assert.ok((await tab.textContent('#failovers')).includes('failover from a'), 'recent failovers list trunk a');
    // The last hour, drawn: b's one answered call is a mark at 100 %, a's
    // failed attempt one at 0 %.
    const spark = t => tab.evaluate(name => {
      const s = document.querySelector(`tr[data-trunk="${name}"] .spark[data-metric="asr"]`);
      return s && { text: s.textContent.trim(), marks: s.querySelectorAll('circle, polyline').length };
    }, t);
    assert.deepEqual(await spark('b'), { text: 'ASR 100%', marks: 1 }, 'trunk b ASR sparkline');
    assert.deepEqual(await spark('a'), { text: 'ASR 0%', marks: 1 }, 'trunk a ASR sparkline');
    assert.deepEqual(errors, [], 'no page errors');
    step('status page shows the failover');
  }
});

// Regression: a number retired in the same second it was added must be in the
// quarantine report (events are ordered by ts, then the microsecond ts_us).
test('quarantine report lists a number retired in the same second it was added', { timeout: 60000 }, async () => {
  const tracker = await startTracker();
  onCleanup(() => tracker.stop());
  const retired = [];
  for (let i = 0; i < 8; i++) {
    const inv = await tracker.provision({ size: 1 });
    await tracker.cli('admin', 'retire', inv.numbers[0]);
    retired.push(inv.numbers[0]);
  }
  const listed = jsonLines(await tracker.cli('report', 'quarantine', '--from', day(-1), '--to', day(1), '--format', 'json')).map(r => r.number);
  const inRedis = JSON.parse(await tracker.cli('admin', 'quarantine')).map(r => r.number);
  assert.deepEqual(retired.filter(n => !inRedis.includes(n)), [], 'admin quarantine (Redis) lists every retired number');
  const missing = retired.filter(n => !listed.includes(n));
  assert.deepEqual(missing, [], `${missing.length} of ${retired.length} retired numbers missing from the quarantine report`);
});
