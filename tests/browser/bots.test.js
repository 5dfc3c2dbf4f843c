// Automated browsers do not burn numbers: a page driven by automation
// (HeadlessChrome, navigator.webdriver: what a crawler that runs scripts
// looks like) gets the site's own number and no lease, on record with the
// reason; a visitor's browser on the same site still gets a pool number.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startTracker, launch, openPage, texts, waitNumber, poll, STATIC } from './lib/harness.js';

let tracker, browser, inv;

const shopPage = site => `<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>bots</title>
  <script async src="/snippet.js" data-site="${site}" data-timeout="5000"></script>
</head>
<body><p>Call us: <span id="num">+7 (495) 000-00-00</span></p></body>
</html>
`;

before(async () => {
  tracker = await startTracker();
  inv = await tracker.provision({ size: 2 });
  tracker.setPage(shopPage(inv.site));
  browser = await launch();
});

after(async () => {
  await browser?.close();
  await tracker?.stop();
});

const visitFrom = async automated => {
  const p = await openPage(browser, { automated });
  const resp = p.page.waitForResponse(r => r.url() == tracker.url('/v1/visits') && r.request().method() == 'POST', { timeout: 10000 });
  await p.page.goto(tracker.url('/demo?utm_source=google&gclid=BOT'));
  const r = await resp;
  assert.equal(r.status(), 200, await r.text());
  p.visit = await r.json();
  return p;
};

test('an automated browser gets the site number without a lease; a visitor gets a pool number', { timeout: 30000 }, async () => {
  for (let i = 0; i < 3; i++) {
    const { context, visit, errors } = await visitFrom(true);
    try {
      assert.deepEqual([visit.kind, visit.number], ['static', STATIC], JSON.stringify(visit));
      assert.deepEqual(errors, []);
    } finally {
      await context.close();
    }
  }
  const stats = await tracker.poolStats(inv.pool);
  assert.equal(stats.leased, 0, 'no number leased to automation: ' + JSON.stringify(stats));
  const rows = await tracker.visits(`site = '${inv.site}'`, rows => rows.length == 3);
  assert.deepEqual(rows.map(r => [r.kind, r.no_lease]), Array(3).fill(['static', 'webdriver']));

  const { page, context, visit } = await visitFrom(false);
  try {
    assert.equal(visit.kind, 'pool');
    assert.ok(inv.numbers.includes(visit.number));
    const st = await waitNumber(page);
    assert.equal(st.number, visit.number);
    const shown = await poll(() => texts(page, ['num']), t => t.num != '+7 (495) 000-00-00', 3000);
    assert.notEqual(shown.num, '+7 (495) 000-00-00', 'the visitor sees the tracking number');
  } finally {
    await context.close();
  }
});
