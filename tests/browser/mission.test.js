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
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startTracker, launch, openPage, waitNumber, formats, chRows, env, freePort, poll, sleep, udpBound, ROOT, STATIC } from './lib/harness.js';

const BREAK = process.env.DIALMARK_MISSION_BREAK || '';
const FIXTURES = path.join(ROOT, 'tests/fixtures/sipp');

// Everything started here is stopped by after(), in reverse order, even when
// the test fails half-way.
const cleanups = [];
const onCleanup = fn => cleanups.push(fn);
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

const tmpDir = prefix => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  onCleanup(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
};

/** A SIPp scenario file from tests/fixtures/sipp with placeholders filled in. */
const scenario = (dir, file, subst) => {
  let text = fs.readFileSync(path.join(FIXTURES, file), 'utf8');
  for (const [k, v] of Object.entries(subst)) text = text.replaceAll(k, v);
  const out = path.join(dir, `${Object.values(subst).join('-')}-${file}`);
  fs.writeFileSync(out, text);
  return out;
};

/** A long-running process (trunk or router) with its output in `log`; stopped at clean-up. */
const daemon = (name, cmd, args, { cwd, log, env: extra } = {}) => {
  const fd = fs.openSync(log, 'a');
  const child = spawn(cmd, args, { cwd, stdio: ['ignore', fd, fd], env: { ...process.env, NO_COLOR: '1', ...extra } });
  fs.closeSync(fd);
  let exited = null;
  const exit = new Promise(r => {
    child.on('exit', (code, sig) => r((exited = { code, sig })));
    child.on('error', err => r((exited = { error: err.message })));
  });
  const orphan = () => exited || child.kill('SIGKILL');
  process.on('exit', orphan);
  child.on('exit', () => process.off('exit', orphan));
  const d = {
    name,
    get exited() {
      return exited;
    },
    tail: (n = 40) => (fs.existsSync(log) ? fs.readFileSync(log, 'utf8').split('\n').slice(-n).join('\n') : ''),
    stop: async () => {
      if (exited) return;
      child.kill('SIGTERM');
      const late = setTimeout(() => child.kill('SIGKILL'), 10000);
      await exit;
      clearTimeout(late);
    },
  };
  onCleanup(d.stop);
  return d;
};

/** Runs a process to its end (killed after `ms`); {code, signal, output}. */
const runToEnd = (cmd, args, { cwd, ms }) =>
  new Promise(resolve => {
    const child = spawn(cmd, args, { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', d => (output += d));
    child.stderr.on('data', d => (output += d));
    const kill = setTimeout(() => child.kill('SIGKILL'), ms);
    child.on('error', err => {
      clearTimeout(kill);
      resolve({ code: null, signal: null, output: output + String(err) });
    });
    child.on('close', (code, signal) => {
      clearTimeout(kill);
      resolve({ code, signal, output });
    });
  });

/** A SIPp trunk answering on 127.0.0.1:port (-aa: OPTIONS answered like a live trunk). */
const trunk = (dir, name, port, scenarioArgs) =>
  daemon(`sipp-trunk-${name}`, 'sipp', [...scenarioArgs, '-i', '127.0.0.1', '-p', String(port), '-nostdin', '-bind_local', '-aa'], {
    cwd: dir,
    log: path.join(dir, `trunk-${name}.log`),
  });

/** SIPp as the carrier: one call to `number` (no '+') through the router. */
const carrierCall = async (dir, routerPort, number, scenarioArgs, extra = []) => {
  const port = await freePort();
  const args = [`127.0.0.1:${routerPort}`, ...scenarioArgs, '-s', number, '-i', '127.0.0.1', '-p', String(port)];
  args.push('-m', '1', '-nostdin', '-timeout', '30s', '-timeout_error', '-bind_local', ...extra);
  const r = await runToEnd('sipp', args, { cwd: dir, ms: 40000 });
  return { ...r, args };
};

/** The real dialmark-router over the tracker's Redis and ClickHouse database. */
const startRouter = async ({ dir, database, trunks }) => {
  const e = env();
  const [sip, http] = [await freePort(), await freePort()];
  const cfg = path.join(dir, 'router.toml');
  const lines = [
    '[redis]',
    `url = ${JSON.stringify(e.redis)}`,
    '[clickhouse]',
    `url = ${JSON.stringify(e.clickhouse)}`,
    `database = ${JSON.stringify(database)}`,
    '[sink]',
    'flush_ms = 200',
    `spool_dir = ${JSON.stringify(path.join(dir, 'spool'))}`,
    '[router]',
    `udp = "127.0.0.1:${sip}"`,
    `tcp = "127.0.0.1:${sip}"`,
    `http = "127.0.0.1:${http}"`,
    'trusted_sources = ["127.0.0.1/32"]',
    'provisional_timeout_ms = 1000',
    'overall_timeout_seconds = 20',
    '[router.probe]',
    'interval_seconds = 0',
  ];
  trunks.forEach(([name, port], i) =>
    lines.push('[[router.trunks]]', `name = "${name}"`, `address = "127.0.0.1:${port}"`, `priority = ${i}`),
  );
  fs.writeFileSync(cfg, lines.join('\n') + '\n');
  const bin = path.join(process.env.DIALMARK_BIN_DIR, 'dialmark-router');
  const r = daemon('router', bin, ['--config', cfg], {
    cwd: dir,
    log: path.join(dir, 'router.log'),
    env: { RUST_LOG: process.env.RUST_LOG || 'info' },
  });
  const deadline = Date.now() + 20000;
  for (;;) {
    if (r.exited) throw new Error(`dialmark-router exited (${JSON.stringify(r.exited)}) before /healthz:\n${r.tail()}`);
    if (await fetch(`http://127.0.0.1:${http}/healthz`).then(x => x.status == 200, () => false)) break;
    if (Date.now() > deadline) throw new Error(`dialmark-router not healthy after 20 s:\n${r.tail()}`);
    await sleep(100);
  }
  return { ...r, sip, http };
};

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

/** Fails early and clearly when SIPp or the router binary is missing. */
const preflight = () => {
  const router = path.join(process.env.DIALMARK_BIN_DIR || '', 'dialmark-router');
  assert.ok(fs.existsSync(router), `${router} not found (cargo build --workspace --bins)`);
  const sipp = (process.env.PATH || '').split(':').some(d => d && fs.existsSync(path.join(d, 'sipp')));
  assert.ok(sipp, 'sipp not found on PATH (apt-get install sip-tester)');
};

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
