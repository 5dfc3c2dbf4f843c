// The usual install: the shop's page on its own origin, snippet.js and the
// API on the tracker's. Real Chromium enforces CORS: the tracker must echo
// the site's listed origins, and refuse (no number) any other origin.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { startTracker, launch, openPage, texts, waitNumber, formats, poll, sleep, STATIC } from './lib/harness.js';

let tracker, browser, server, shop, allowed, refused;

const page = (trackerOrigin, site) => `<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>shop on its own origin</title>
  <script async src="${trackerOrigin}/snippet.js" data-site="${site}" data-antiflicker="4000" data-timeout="5000"></script>
</head>
<body>
  <p>Call us: <span id="num">+7 (495) 000-00-00</span> <a id="tel" href="tel:${STATIC}">call</a></p>
</body>
</html>
`;

before(async () => {
  tracker = await startTracker();
  server = http.createServer((req, res) => {
    const site = req.url.startsWith('/refused') ? refused.site : allowed.site;
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end(page(tracker.origin, site));
  });
  await new Promise(r => server.listen(0, '127.0.0.1', r));
  shop = `http://127.0.0.1:${server.address().port}`;
  allowed = await tracker.provision({ size: 2, origins: [shop] });
  refused = await tracker.provision({ size: 2 }); // lists only the tracker's own origin
  browser = await launch();
});

after(async () => {
  await browser?.close();
  await new Promise(r => (server ? server.close(r) : r()));
  await tracker?.stop();
});

test('listed origin: swapped, CORS answers read by the snippet, keep-alives work, no cookies', { timeout: 30000 }, async () => {
  const { page, context, errors, api } = await openPage(browser);
  try {
    const resp = page.waitForResponse(r => r.url() == tracker.url('/v1/visits'), { timeout: 10000 });
    await page.goto(shop + '/landing?utm_source=xo');
    const r = await resp;
    assert.equal(r.status(), 200);
    assert.equal((await r.allHeaders())['access-control-allow-origin'], shop, 'origin echoed');
    const reqHeaders = await r.request().allHeaders();
    assert.equal(reqHeaders.origin, shop);
    assert.equal(reqHeaders.cookie, undefined, 'no cookies to the tracker');
    assert.match(reqHeaders['content-type'], /^text\/plain/, 'a simple request (no preflight)');
    assert.ok(!api.some(a => a.method == 'OPTIONS'), 'no preflight');

    const st = await waitNumber(page);
    const want = { num: formats(st.number).intlParens };
    assert.deepEqual(await poll(() => texts(page, ['num']), g => g.num == want.num, 3000), want);
    assert.equal(await page.getAttribute('#tel', 'href'), 'tel:' + st.number);
    assert.equal(await page.evaluate(() => document.documentElement.style.opacity), '');

    // The snippet reads keep-alive answers (it stores the session time on a
    // 200): cross-origin, that needs the CORS header on keep-alives too.
    const key = '_dm_s_' + allowed.site;
    const ts = () => page.evaluate(k => JSON.parse(localStorage.getItem(k)).ts, key);
    const t0 = await ts();
    await sleep(2300);
    const kas = api.filter(a => a.url.endsWith('/keepalive'));
    assert.ok(kas.length >= 1, 'keep-alives sent');
    assert.ok(kas.every(k => k.status === undefined || k.status == 200), JSON.stringify(kas));
    assert.ok((await ts()) > t0 + 900, 'keep-alive answers reached the snippet');

    const rows = await tracker.visits(`session_id = '${st.session}'`);
    assert.deepEqual([rows[0].site, rows[0].number, rows[0].utm_source], [allowed.site, st.number, 'xo']);
    assert.deepEqual(errors, [], 'no uncaught page errors');
  } finally {
    await context.close();
  }
});

test('origin not listed for the site: refused, page keeps its numbers, no page error', { timeout: 30000 }, async () => {
  const { page, context, errors, api } = await openPage(browser);
  try {
    await page.goto(shop + '/refused');
    const done = await poll(() => api.find(a => a.failed || a.status !== undefined), Boolean, 4000);
    assert.ok(done, 'the visit request ended');
    assert.ok(done.failed, 'blocked by CORS (tracker answered 403 without allowing the origin): ' + JSON.stringify(done));
    await poll(() => page.evaluate(() => document.documentElement.style.opacity), o => o === '', 2000);
    await sleep(200);
    assert.deepEqual(await texts(page, ['num']), { num: '+7 (495) 000-00-00' });
    assert.equal(await page.getAttribute('#tel', 'href'), 'tel:' + STATIC);
    assert.equal(await page.evaluate(() => window.dialmark.number), null);
    assert.equal(await page.evaluate(() => document.documentElement.style.opacity), '', 'anti-flicker lifted');
    const stats = await tracker.poolStats(refused.pool);
    assert.equal(stats.leased, 0, 'no number leased for a refused origin');
    assert.deepEqual(errors, [], 'no uncaught page errors');
  } finally {
    await context.close();
  }
});
