// The tracker is unreachable, hangs, or fails: the page keeps its own
// numbers, nothing throws, and anti-flicker is lifted at once. The page and
// the real built snippet are served by a small node server; data-tracker
// points the API elsewhere. No tracker process is needed here.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import fs from 'node:fs';
import { launch, openPage, texts, freePort, poll, SNIPPET, STATIC } from './lib/harness.js';

let browser, server, origin, closedPort;
const hung = new Set(); // responses of the hanging tracker, ended in after()

const IDS = ['f-intl', 'f-trunk', 'f-dashes', 'tel-text'];
const ORIGINAL = {
  'f-intl': '+7 (495) 000-00-00',
  'f-trunk': '8 495 000 00 00',
  'f-dashes': '+7-495-000-00-00',
  'tel-text': '8 (495) 000-00-00',
};

// data-antiflicker="5000": if the failure path forgot to show the page, it
// would stay at opacity 0 for 5 s; the tests want it visible within 2 s.
const page = tracker => `<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>tracker down</title>
  <script async src="/snippet.js" data-site="down_site" data-tracker="${tracker}" data-timeout="800" data-antiflicker="5000"></script>
</head>
<body>
  <p>Call us: <span id="f-intl">${ORIGINAL['f-intl']}</span></p>
  <p>Or: <span id="f-trunk">${ORIGINAL['f-trunk']}</span></p>
  <p>Fax: <span id="f-dashes">${ORIGINAL['f-dashes']}</span></p>
  <p><a id="tel" href="tel:${STATIC}"><span id="tel-text">${ORIGINAL['tel-text']}</span></a></p>
  <button id="btn" onclick="this.textContent = 'clicked'">click me</button>
</body>
</html>
`;

before(async () => {
  closedPort = await freePort(); // bound and closed again: nobody listens there
  const snippet = fs.readFileSync(SNIPPET);
  server = http.createServer((req, res) => {
    const u = new URL(req.url, 'http://x');
    const cors = { 'access-control-allow-origin': origin };
    if (u.pathname == '/snippet.js') {
      res.writeHead(200, { 'content-type': 'application/javascript; charset=utf-8' });
      return res.end(snippet);
    }
    if (u.pathname == '/closed') {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
      return res.end(page(`http://127.0.0.1:${closedPort}`));
    }
    if (u.pathname == '/hangs' || u.pathname == '/fails') {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
      return res.end(page(`${origin}/api${u.pathname}`));
    }
    // The "tracker" API of /hangs and /fails, on this server.
    if (u.pathname.startsWith('/api/hangs/')) return void hung.add(res);
    if (u.pathname.startsWith('/api/fails/')) {
      res.writeHead(503, { ...cors, 'content-type': 'application/json' });
      return res.end('{"error":"down for maintenance"}');
    }
    res.writeHead(404).end();
  });
  await new Promise(r => server.listen(0, '127.0.0.1', r));
  origin = `http://127.0.0.1:${server.address().port}`;
  browser = await launch();
});

after(async () => {
  await browser?.close();
  for (const res of hung) res.destroy();
  await new Promise(r => (server ? server.close(r) : r()));
});

/** Loads `path`, waits until the page has settled, and checks it kept its numbers. */
const keepsNumbers = async (t, path, expectFailure) => {
  const { page, context, errors, api } = await openPage(browser);
  try {
    const t0 = Date.now();
    await page.goto(origin + path);
    // Settled: the visit request ended (failed or answered) and the page is visible.
    const settled = await poll(
      () =>
        page.evaluate(() => ({
          loaded: !!(window.dialmark && window.dialmark.consent),
          opacity: document.documentElement.style.opacity,
        })),
      s => s.loaded && s.opacity === '' && api.some(a => a.failed || a.status !== undefined),
      4000,
      25,
    );
    const ms = Date.now() - t0;
    assert.ok(settled.loaded, 'the snippet ran (window.dialmark exists)');
    const visit = api.find(a => a.url.endsWith('/v1/visits'));
    assert.ok(visit, 'the snippet asked the tracker for a number: ' + JSON.stringify(api));
    expectFailure(visit);
    assert.equal(settled.opacity, '', 'anti-flicker lifted');
    assert.ok(ms < 2000, `settled in ${ms} ms (want < 2000)`);
    t.diagnostic(`settled ${ms} ms after navigation`);

    // A little longer: nothing arrives late and nothing is swapped.
    await new Promise(r => setTimeout(r, 300));
    assert.deepEqual(await texts(page, IDS), ORIGINAL, 'the page keeps its own numbers');
    assert.equal(await page.getAttribute('#tel', 'href'), 'tel:' + STATIC);
    assert.equal(await page.evaluate(() => window.dialmark.number), null, 'dialmark.number is null');
    // The page still works.
    await page.click('#btn');
    assert.equal(await page.textContent('#btn'), 'clicked');
    assert.deepEqual(errors, [], 'no uncaught page errors');
    return ms;
  } finally {
    await context.close();
  }
};

test('tracker on a closed port: original numbers stay, no page error, settles fast', { timeout: 20000 }, async t => {
  await keepsNumbers(t, '/closed', v => {
    assert.equal(v.url, `http://127.0.0.1:${closedPort}/v1/visits`);
    assert.ok(v.failed, 'the visit request failed: ' + JSON.stringify(v));
  });
});

test('tracker that never answers: data-timeout (800 ms) gives up, numbers stay', { timeout: 20000 }, async t => {
  const ms = await keepsNumbers(t, '/hangs', v => {
    assert.equal(v.url, `${origin}/api/hangs/v1/visits`);
    assert.ok(v.failed, 'the visit request was aborted: ' + JSON.stringify(v));
  });
  assert.ok(ms >= 700, `gave up after the timeout, not before (${ms} ms)`);
});

test('tracker answering 503: numbers stay', { timeout: 20000 }, async t => {
  await keepsNumbers(t, '/fails', v => assert.equal(v.status, 503));
});
