// Keep-alive in a real browser: with hold_seconds = 3 the snippet pings
// every second, and the lease outlives the hold for as long as the page is
// open. Each case uses a pool of ONE number so that a probe visit (which
// reclaims expired leases; reclaiming is lazy) shows whether the lease is
// still live: a live lease leaves the probe with the overflow number; a
// lapsed one is reclaimed, and (its cool-down of 1 s counted from its end
// is over) the probe gets the number for a session of its own. The control
// case blocks the keep-alives to prove that the probe sees a lapse. A lost
// lease (number retired mid-visit: keep-alive answers 410) makes the snippet
// ask again with the same session and swap the old number for the new one.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startTracker, launch, openPage, waitNumber, dialmarkState, texts, formats, sleep, poll, STATIC, HUMAN_UA } from './lib/harness.js';

const HOLD = 3; // tracker.hold_seconds in the harness config
const OPEN_MS = 7000; // > 2 x hold

let tracker, browser;

const page = site => `<!doctype html>
<html><head><meta charset="utf-8"><title>keep-alive</title>
<script async src="/snippet.js" data-site="${site}" data-timeout="5000"></script></head>
<body><p>Call: <span id="num">+7 (495) 000-00-00</span></p>
<a id="tel" href="tel:${STATIC}">call</a></body></html>
`;

before(async () => {
  tracker = await startTracker();
  browser = await launch();
});

after(async () => {
  await browser?.close();
  await tracker?.stop();
});

/** A visit from outside the browser with a new session: reclaims expired leases of the pool. */
const probe = async site => {
  const r = await fetch(tracker.url('/v1/visits'), {
    method: 'POST',
    // From a page of the site, as a visitor's browser (no lease otherwise).
    headers: { 'content-type': 'text/plain', origin: tracker.origin, 'user-agent': HUMAN_UA },
    body: JSON.stringify({ site, url: 'http://probe.invalid/' }),
  });
  assert.equal(r.status, 200, 'probe visit');
  return r.json();
};

/** Opens the site's page in a fresh context (the page's site comes from the query). */
const open = async (inv, { blockKeepalive = false } = {}) => {
  const p = await openPage(browser);
  if (blockKeepalive) await p.context.route('**/keepalive', route => route.abort('connectionrefused'));
  // One tracker, two sites: /demo serves the same file, so each case gets its page by route.
  await p.context.route(tracker.url('/demo') + '*', route =>
    route.fulfill({ status: 200, contentType: 'text/html; charset=utf-8', body: page(inv.site) }),
  );
  const resp = p.page.waitForResponse(r => r.url() == tracker.url('/v1/visits'), { timeout: 10000 });
  await p.page.goto(tracker.url('/demo?utm_source=keepalive'));
  p.visit = await (await resp).json();
  return p;
};

describe('keep-alive', { concurrency: 3 }, () => {
  test(`the lease outlives ${OPEN_MS / 1000} s (hold ${HOLD} s) while the page is open`, { timeout: 30000 }, async () => {
    const inv = await tracker.provision({ size: 1 });
    const { page, context, errors, api, visit } = await open(inv);
    try {
      assert.equal(visit.kind, 'pool');
      assert.equal(visit.number, inv.numbers[0]);
      assert.equal(visit.hold_seconds, HOLD);
      assert.equal(visit.keepalive_seconds, 1);
      const st = await waitNumber(page);
      assert.deepEqual(st, { number: visit.number, session: visit.session_id, display: visit.display });

      const opened = Date.now();
      await sleep(OPEN_MS);

      const kas = api.filter(a => a.url.endsWith('/keepalive'));
      // One per keepalive_seconds (1 s): 7 s open gives ~7; allow timer slack.
      assert.ok(kas.length >= OPEN_MS / 1000 - 2, `keep-alives sent in ${OPEN_MS} ms: ${kas.length}`);
      for (const k of kas) {
        assert.equal(k.url, tracker.url(`/v1/visits/${visit.session_id}/keepalive`));
        assert.equal(k.method, 'POST');
        assert.deepEqual(JSON.parse(k.body), { site: inv.site, number: visit.number });
      }
      const answered = kas.filter(k => k.status !== undefined);
      assert.ok(answered.length >= kas.length - 1, 'keep-alives answered');
      assert.deepEqual([...new Set(answered.map(k => k.status))], [200], 'every keep-alive got 200');
      // Spread over the whole time the page was open, not a burst at the start.
      assert.ok(kas.at(-1).at - opened > OPEN_MS - 2500, 'keep-alives continue until the end');
      assert.equal(api.filter(a => a.url.endsWith('/v1/visits')).length, 1, 'no second visit (the lease was never lost)');

      // Same session, same number, still shown.
      assert.deepEqual(await dialmarkState(page), st);
      assert.equal((await texts(page, ['num'])).num, formats(visit.number).intlParens);

      // The lease is live: a probe visit reclaims nothing and finds the pool exhausted.
      const p = await probe(inv.site);
      assert.equal(p.kind, 'overflow', `probe got ${p.number} (${p.kind}); the browser's lease had lapsed`);
      assert.equal(p.number, inv.overflow);
      const stats = await tracker.poolStats(inv.pool);
      assert.deepEqual({ size: stats.size, free: stats.free, leased: stats.leased }, { size: 1, free: 0, leased: 1 }, JSON.stringify(stats));
      assert.deepEqual(errors, [], 'no uncaught page errors');
    } finally {
      await context.close();
    }
  });

  test('lease lost (number retired): 410, new number for the same session, re-swapped', { timeout: 30000 }, async () => {
    const inv = await tracker.provision({ size: 2 });
    const { page, context, errors, api, visit } = await open(inv);
    try {
      const first = await waitNumber(page);
      const f1 = formats(first.number);
      const shown = () => page.evaluate(() => ({ num: document.getElementById('num').textContent, tel: document.getElementById('tel').getAttribute('href') }));
      const w1 = { num: f1.intlParens, tel: 'tel:' + first.number };
      assert.deepEqual(await poll(shown, g => JSON.stringify(g) == JSON.stringify(w1), 3000), w1);

      await tracker.cli('admin', 'retire', first.number, '--reason', 'browser-test');
      const second = await poll(() => dialmarkState(page), s => s.number && s.number != first.number, 5000);
      assert.notEqual(second.number, first.number, 'a new number after the lease was lost');
      assert.ok(inv.numbers.includes(second.number), second.number);
      assert.equal(second.session, visit.session_id, 'the same session');
      const f2 = formats(second.number);
      const w2 = { num: f2.intlParens, tel: 'tel:' + second.number };
      assert.deepEqual(await poll(shown, g => JSON.stringify(g) == JSON.stringify(w2), 3000), w2, 'the old tracking number is swapped too');

      const calls = api.map(a => [a.url.replace(tracker.origin, '').replace(visit.session_id, 'S'), a.status]);
      const lost = calls.findIndex(([u, s]) => u == '/v1/visits/S/keepalive' && s == 410);
      assert.ok(lost > 0, 'a keep-alive got 410: ' + JSON.stringify(calls));
      assert.deepEqual(calls[lost + 1], ['/v1/visits', 200], 'then a new visit: ' + JSON.stringify(calls));
      assert.equal(JSON.parse(api[lost + 1].body).session_id, visit.session_id, 'asked with the same session');
      assert.deepEqual(errors, [], 'no uncaught page errors');
    } finally {
      await context.close();
    }
  });

  test('tabs of one visitor show one number: a tab given a new number tells the others', { timeout: 30000 }, async () => {
    const inv = await tracker.provision({ size: 2 });
    const { page, context, errors } = await open(inv);
    try {
      const first = await waitNumber(page);
      const tab2 = await context.newPage();
      // Tab 2 sends no keep-alives: it can learn a new number only from tab 1.
      await tab2.route('**/keepalive', r => r.abort());
      await tab2.goto(page.url());
      const t2 = await waitNumber(tab2);
      assert.deepEqual([t2.number, t2.session], [first.number, first.session], 'the second tab resumes the session');
      await tracker.cli('admin', 'retire', first.number, '--reason', 'browser-test');
      const a = await poll(() => dialmarkState(page), s => s.number && s.number != first.number, 5000);
      assert.notEqual(a.number, first.number, 'tab 1 lost its lease and got a new number');
      const b = await poll(() => dialmarkState(tab2), s => s.number == a.number, 5000);
      assert.equal(b.number, a.number, 'tab 2 shows it too');
      const want = formats(a.number).intlParens;
      assert.equal((await poll(() => texts(tab2, ['num']), t => t.num == want, 3000)).num, want);
      assert.deepEqual(errors, [], 'no uncaught page errors');
    } finally {
      await context.close();
    }
  });

  test('control: with keep-alives blocked the lease lapses after the hold', { timeout: 30000 }, async () => {
    const inv = await tracker.provision({ size: 1 });
    const { page, context, errors, api, visit } = await open(inv, { blockKeepalive: true });
    try {
      assert.equal(visit.number, inv.numbers[0]);
      await waitNumber(page);
      await sleep((HOLD + 1.5) * 1000);
      assert.ok(api.filter(a => a.url.endsWith('/keepalive')).length >= 2, 'the snippet tried to send keep-alives');
      const p = await probe(inv.site);
      assert.deepEqual([p.kind, p.number], ['pool', inv.numbers[0]], `lapsed lease reclaimed by the probe: ${JSON.stringify(p)}`);
      assert.notEqual(p.session_id, visit.session_id);
      assert.deepEqual(errors, [], 'no uncaught page errors');
    } finally {
      await context.close();
    }
  });
});
