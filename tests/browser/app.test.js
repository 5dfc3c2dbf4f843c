// The marketers' web app (/app) in headless Chromium against the real
// tracker, router, Redis and ClickHouse: a visitor from a Google ad calls
// the number the snippet showed; the call log, open before the call, shows
// the call within 2 s of its ring (no reload) with its source, then
// talking, then answered with its talk time; its details (opened from the
// keyboard) list both forwarding attempts (trunk a's 503 too) and the page
// the caller came from; the reports' charts count it and download as CSV;
// the Numbers page charts the pool's use against its size; the Install page
// gives the tag and sees the visit from the site's origin.
// A wrong token gets the sign-in form with the reason. Every state
// screenshotted (to var/test/artifacts/) also passes axe-core's WCAG 2 A/AA
// audit.
//
// DIALMARK_APP_BREAK=no-feed starts the app with the live feed blocked
// (to check that this test fails without it).

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { startTracker, launch, openPage, waitNumber, freePort, poll, udpBound, ROOT, STATIC } from './lib/harness.js';
import { sipKit } from './lib/sip.js';

const BREAK = process.env.DIALMARK_APP_BREAK || '';
const ARTIFACTS = path.join(ROOT, 'var/test/artifacts');

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
const { tmpDir, scenario, trunk, carrierCall, startRouter, preflight } = sipKit(onCleanup);

// Evaluated through the DevTools protocol: the app's CSP (rightly) refuses
// an injected <script>.
const AXE = fs.readFileSync(createRequire(import.meta.url).resolve('axe-core/axe.min.js'), 'utf8');

/** axe-core's WCAG 2 A/AA rules on the page as it is now: each violation
 * as `rule: element, element`; [] when it passes. */
const audit = async tab => {
  if (!(await tab.evaluate(() => 'axe' in window))) await tab.evaluate(AXE);
  return tab.evaluate(async () => {
    const r = await window.axe.run(document, { runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'] } });
    return r.violations.map(v => `${v.id}: ${v.nodes.map(n => n.target.join(' ')).join(', ')}`);
  });
};

/** A screenshot of each state the test reaches, and the accessibility
 * audit of that state (labels, names, contrast, keyboard-reachable). */
const shot = async (tab, name) => {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  await tab.screenshot({ path: path.join(ARTIFACTS, `app-${name}.png`), fullPage: true });
  assert.deepEqual(await audit(tab), [], `accessibility of ${name}`);
};

const shop = site => `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Shop</title>
<script async src="/snippet.js" data-site="${site}" data-timeout="5000"></script></head>
<body><p>Call us: <a id="tel" href="tel:${STATIC}">+7 (495) 000-00-00</a></p></body></html>
`;

/** The call log's rows: {call, status, cells by column header}. */
const logRows = tab =>
  tab.evaluate(() => {
    const heads = [...document.querySelectorAll('#calls thead th')].map(th => th.textContent.trim());
    return [...document.querySelectorAll('#calls tbody tr[data-call]')].map(tr => ({
      call: tr.dataset.call,
      status: tr.dataset.status,
      cells: Object.fromEntries([...tr.cells].map((c, i) => [heads[i], c.textContent.trim()])),
    }));
  });

test('a call shows up live in the call log with its source, then its attempts', { timeout: 90000 }, async () => {
  preflight();
  const dir = tmpDir('dialmark-app-');
  const tracker = await startTracker();
  onCleanup(() => tracker.stop());
  const inv = await tracker.provision({ size: 2 });

  // The marketer's read token, issued by the admin.
  const issued = await fetch(tracker.url(`/v1/admin/sites/${inv.site}/tokens`), {
    method: 'POST',
    headers: { Authorization: 'Bearer t' },
    body: JSON.stringify({ name: 'marketing' }),
  }).then(r => r.json());
  assert.match(issued.token || '', /^dmr_/, JSON.stringify(issued));

  // Trunk a refuses with 503; trunk b rings 3 s, then answers.
  const [pa, pb] = [await freePort(), await freePort()];
  trunk(dir, 'a', pa, ['-sf', scenario(dir, 'uas_reject.xml', { CODE: '503', REASON: 'Service Unavailable' })]);
  trunk(dir, 'b', pb, ['-sf', scenario(dir, 'uas_ring_answer.xml', { PAUSE: '3000' })]);
  assert.ok(await poll(() => udpBound(pa) && udpBound(pb), Boolean, 5000), 'both trunks listening');
  const router = await startRouter({ dir, database: tracker.database, trunks: [['a', pa], ['b', pb]] });

  // The visitor, from a Google ad.
  const browser = await launch();
  onCleanup(() => browser.close());
  const visitor = await openPage(browser);
  tracker.setPage(shop(inv.site));
  await visitor.page.goto(tracker.url('/demo?utm_source=google&utm_campaign=spring&gclid=TEST'));
  const { number } = await waitNumber(visitor.page);

  // The marketer's call log, open before the call.
  const { page: app, errors } = await openPage(browser);
  if (BREAK == 'no-feed') await app.route('**/v1/calls/live', r => r.abort());
  await app.goto(tracker.url(`/app#token=${issued.token}`));
  assert.ok(!app.url().includes('token'), `the token leaves the address bar: ${app.url()}`);
  if (BREAK != 'no-feed') {
    await poll(() => app.textContent('#feed'), t => t == 'live', 5000);
  }
  assert.deepEqual(await logRows(app), [], 'no calls yet');

  // The call: a 503, then 3 s of ringing on trunk b, 2 s of talk.
  const t0 = Date.now();
  const call = carrierCall(dir, router.sip, number.replace(/^\+/, ''), ['-sf', scenario(dir, 'uac_or_503.xml', { HOLD: '2000' })]);
  const ringing = await poll(() => logRows(app), r => r.length == 1, 4000, 50).catch(() => []);
  const shownAfter = Date.now() - t0;
  await shot(app, 'ringing');
  assert.equal(ringing.length, 1, `the ringing call appears without a reload\nrouter:\n${router.tail(15)}`);
  assert.ok(shownAfter < 2000, `shown ${shownAfter} ms after the call started`);
  assert.equal(ringing[0].status, 'ringing');
  assert.equal(ringing[0].cells.Source, 'google / spring');
  assert.equal(ringing[0].cells.Number, number);
  assert.equal(ringing[0].cells.Caller, '+79161234567');

  const talking = await poll(() => logRows(app), r => r[0]?.status == 'talking', 6000, 50);
  assert.deepEqual([talking.length, talking[0]?.status], [1, 'talking'], 'the same row, updated in place');
  const done = await poll(() => logRows(app), r => r[0]?.status == 'answered', 10000, 100);
  await shot(app, 'answered');
  assert.deepEqual(
    [done.length, done[0].cells.Talk, done[0].cells.Attempts, done[0].cells.Source],
    [1, '2 s', '2', 'google / spring'],
    JSON.stringify(done),
  );
  const sipp = await call;
  assert.equal(sipp.code, 0, sipp.output);

  // Details from the keyboard: both attempts, the landing page.
  await app.focus('#calls tbody tr[data-call] button');
  await app.keyboard.press('Enter');
  const attempts = await poll(
    () => app.$$eval('.detail table:first-of-type tbody tr', trs => trs.map(tr => [...tr.cells].map(c => c.textContent))),
    r => r.length == 2,
    5000,
  );
  assert.deepEqual(
    attempts.map(r => r.slice(1, 4)),
    [
      ['a', '503', 'rejected'],
      ['b', '200', 'answered'],
    ],
    'the failed attempt is shown too',
  );
  const detail = await app.textContent('.detail');
  assert.match(detail, /\/demo\?utm_source=google/, 'the landing page in the journey');
  assert.match(detail, /Last touch: google \/ spring/);
  assert.equal(await app.getAttribute('#calls tbody tr[data-call] button', 'aria-expanded'), 'true');
  await shot(app, 'details');

  // Reports: the charts count the call; CSV of a chart and of a report.
  await app.click('nav a[data-view=reports]');
  const label = sel => app.getAttribute(`${sel} svg`, 'aria-label');
  await poll(() => app.$(`#chart-answered-by-trunk svg`), Boolean, 5000);
  assert.equal(await app.getAttribute('nav a[data-view=reports]', 'aria-current'), 'page');
  assert.equal(await label('#chart-calls-by-source'), 'google: 1');
  assert.equal(await label('#chart-calls-by-campaign'), 'spring: 1');
  assert.equal(await label('#chart-answered-by-trunk'), 'b: 100%');
  assert.equal(await label('#chart-first-time-callers'), 'google: 1', 'the caller called for the first time');
  assert.match(await label('#chart-calls-per-day'), /^Calls: (0, )*1(, 0)*; Answered: (0, )*1(, 0)*$/);
  const saved = async click => {
    const [dl] = await Promise.all([app.waitForEvent('download'), click()]);
    return fs.readFileSync(await dl.path(), 'utf8');
  };
  const bySource = await saved(() => app.click('#chart-calls-by-source button'));
  assert.equal(bySource, '"key","calls","answered","missed"\n"google","1","1","0"\n');
  const campaigns = await saved(() => app.click('#downloads button[data-report=campaigns]'));
  assert.match(campaigns, /^"utm_source","utm_medium","utm_campaign"/);
  assert.match(campaigns, /"google","","spring"/);
  await shot(app, 'reports');

  // Numbers: the pool's size and its use over time (sampled every second).
  await app.click('nav a[data-view=numbers]');
  const pool = `#chart-pool-${inv.pool}`;
  await poll(() => app.$(`${pool} svg`), Boolean, 5000);
  const facts = await app.$$eval(`${pool} dl.facts dt`, dts => Object.fromEntries(dts.map(dt => [dt.textContent, dt.nextElementSibling.textContent])));
  assert.equal(facts.Numbers, '2', JSON.stringify(facts));
  assert.equal(facts['Overflow number'], inv.overflow, JSON.stringify(facts));
  assert.match(facts['Recommended size'], /^\d+ \(predicted loss [\d.]+%\)$/, JSON.stringify(facts));
  assert.match(await app.getAttribute(`${pool} svg`, 'aria-label'), /^Pool size: 2(, 2)*; Leased: [01](, [01])*$/);
  assert.ok(await app.isVisible('#quarantine table'), 'the quarantine table');
  const cycle = await app.$$eval('#lifecycle dl.facts dt', dts => dts.map(dt => `${dt.textContent}=${dt.nextElementSibling.textContent}`));
  assert.deepEqual(cycle.slice(1), ['Active in these pools=2', 'In quarantine=0'], 'the lifecycle counts');
  assert.match(cycle[0], /^In stock \(the node's spare numbers\)=\d+$/);
  await shot(app, 'numbers');

  // Install: the tag for this site and the visit seen from its origin.
  await app.click('nav a[data-view=install]');
  const installed = await poll(() => app.textContent('#install-status'), t => t.startsWith('Installed'), 5000);
  assert.equal(installed, `Installed: visits seen from ${tracker.origin}.`);
  assert.equal(await app.textContent('#tag'), `<script async src="${tracker.origin}/snippet.js" data-site="${inv.site}"></script>`);
  await app.focus('#check');
  await app.keyboard.press('Enter');
  await poll(() => app.textContent('#install-status'), t => t.startsWith('Installed'), 5000);
  await shot(app, 'install');
  assert.deepEqual(errors, [], 'no page errors');
});

test('a wrong token gets the sign-in form and the reason', { timeout: 30000 }, async () => {
  const tracker = await startTracker();
  onCleanup(() => tracker.stop());
  const browser = await launch();
  onCleanup(() => browser.close());
  const { page, errors } = await openPage(browser);
  await page.goto(tracker.url('/app'));
  assert.ok(await page.isVisible('#signin'), 'sign-in first');
  assert.equal(await page.textContent('label[for=token]'), 'Token', 'the field is labelled');
  await page.fill('#token', 'dmr_wrong');
  await page.keyboard.press('Enter');
  const reason = await poll(() => page.textContent('#signin-error'), t => t.length > 0, 5000);
  assert.match(reason, /unknown or revoked token/);
  assert.ok(await page.isVisible('#signin'));
  await shot(page, 'signin');
  assert.deepEqual(errors, []);
});

test('the admin token picks a site in the header', { timeout: 30000 }, async () => {
  const tracker = await startTracker();
  onCleanup(() => tracker.stop());
  const inv = await tracker.provision({ size: 1 });
  const browser = await launch();
  onCleanup(() => browser.close());
  const { page, errors } = await openPage(browser);
  await page.goto(tracker.url('/app#token=t'));
  await page.click('nav a[data-view=install]');
  const err = await poll(() => page.textContent('#install-error'), t => t.length > 0, 5000);
  assert.match(err, /site: which site/, 'the admin reads every site: the install check needs one');
  await page.fill('#site', inv.site);
  await page.keyboard.press('Enter');
  const tag = await poll(() => page.textContent('#tag'), t => t.includes('data-site'), 5000);
  assert.equal(tag, `<script async src="${tracker.origin}/snippet.js" data-site="${inv.site}"></script>`);
  assert.equal(await page.textContent('#install-error'), '');
  await poll(() => page.textContent('#feed'), t => t == 'live', 5000);
  assert.equal(await page.textContent('#feed'), 'live', 'the live feed follows the picked site');
  assert.deepEqual(errors, []);
});
