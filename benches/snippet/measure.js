// Snippet bench, driven by benches/snippet/run: the built snippet's size
// (minified, gzipped) and, in headless Chromium (Playwright as in
// tests/browser), the time from the snippet's start to the site's number
// swapped on the page, against the real tracker on loopback.
//
// A shop page on its own origin (the usual install) loads snippet.js from
// the tracker with `async`; an inline observer notes when the number's text
// changes, and a getter on window.dialmark notes the snippet's first
// statement. Per load (performance.now() and the page's timeline):
//   arrived       = snippet.js responseEnd;
//   script start  = the snippet's first read of window.dialmark;
//   request sent  = the POST /v1/visits entry's startTime;
//   answer        = its responseEnd;
//   swapped       = the observer's time.
// Each round opens a fresh browser context (new visitor, empty cache) on a
// landing page, then a second page of the same shop in that context (the
// snippet from the HTTP cache, the stored session renewed).
//
//   node benches/snippet/measure.js --tracker URL --shop-port P --site ID --loads N --markdown FILE

import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import zlib from 'node:zlib';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
// playwright-core as installed for the browser tests (tests/browser/run).
const { chromium } = createRequire(path.join(ROOT, 'tests/browser/package.json'))('playwright-core');

const { values: a } = parseArgs({
  options: {
    tracker: { type: 'string' },
    'shop-port': { type: 'string' },
    site: { type: 'string' },
    loads: { type: 'string', default: '30' },
    warmup: { type: 'string', default: '3' },
    markdown: { type: 'string' },
  },
});
const SNIPPET = path.join(ROOT, 'js-snippet/dist/snippet.js');
const ORIGINAL = '+7 (495) 000-00-00';

const page = () => `<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>shop</title>
  <script>
    // The snippet's first statement reads window.dialmark: that read is
    // when it starts running; the setter keeps what it then assigns.
    let dm;
    Object.defineProperty(window, 'dialmark', {
      configurable: true,
      get() { if (!window.__started) window.__started = performance.now(); return dm; },
      set(v) { dm = v; },
    });
    window.__swapped = 0;
    new MutationObserver(() => {
      const n = document.getElementById('num');
      if (!__swapped && n && n.textContent !== ${JSON.stringify(ORIGINAL)}) __swapped = performance.now();
    }).observe(document.documentElement, { subtree: true, childList: true, characterData: true });
  </script>
  <script async src="${a.tracker}/snippet.js" data-site="${a.site}"></script>
</head>
<body>
  <h1>Shop</h1>
  <p>Call us: <span id="num">${ORIGINAL}</span> <a id="tel" href="tel:+74950000000">8 (495) 000-00-00</a></p>
</body>
</html>
`;

const shop = http.createServer((req, res) => {
  res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
  res.end(page());
});
await new Promise(r => shop.listen(+a['shop-port'], '127.0.0.1', r));
const shopUrl = `http://127.0.0.1:${a['shop-port']}`;

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});

/** Loads `url` in `p` and reads the timeline once the number is swapped. */
const measure = async (p, url) => {
  await p.goto(url);
  await p.waitForFunction(() => window.__swapped > 0, null, { timeout: 10000, polling: 20 });
  return p.evaluate(() => {
    const e = n => performance.getEntriesByType('resource').find(r => r.name.includes(n));
    const s = e('/snippet.js'), v = e('/v1/visits');
    return {
      nav_to_swap: window.__swapped,
      start_to_swap: window.__swapped - window.__started,
      arrived_to_start: window.__started - s.responseEnd,
      start_to_request: v.startTime - window.__started,
      request: v.responseEnd - v.startTime,
      answer_to_swap: window.__swapped - v.responseEnd,
      snippet_fetch: s.responseEnd - s.startTime,
      number: window.dialmark && window.dialmark.number,
    };
  });
};

const HUMAN_UA = 'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36';
const first = [], second = [];
const loads = +a.loads, warmup = +a.warmup;
const numbers = new Set();
for (let i = 0; i < warmup + loads; i++) {
  // A visitor's browser, not an automated one: the tracker gives automation
  // (HeadlessChrome, navigator.webdriver) the site's own number, no lease.
  const context = await browser.newContext({ userAgent: HUMAN_UA });
  await context.addInitScript(() => Object.defineProperty(Navigator.prototype, 'webdriver', { get: () => false }));
  const p = await context.newPage();
  const errors = [];
  p.on('pageerror', e => errors.push(String(e)));
  const m1 = await measure(p, `${shopUrl}/landing?utm_source=google&utm_campaign=spring&gclid=B${i}`);
  const m2 = await measure(p, `${shopUrl}/catalog`);
  await context.close();
  if (errors.length) throw new Error('page errors: ' + errors.join('; '));
  if (!m1.number || m1.number !== m2.number) throw new Error(`number not kept across pages: ${JSON.stringify([m1, m2])}`);
  if (i >= warmup) {
    first.push(m1);
    second.push(m2);
    numbers.add(m1.number);
  }
}
const version = browser.version();
await browser.close();
shop.close();
if (numbers.size !== loads) throw new Error(`expected ${loads} distinct leased numbers, got ${numbers.size}`);

const q = (xs, p) => {
  const s = [...xs].sort((x, y) => x - y);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(p * s.length) - 1))];
};
const ms = x => x.toFixed(1);
const row = (label, series, key) => {
  const xs = series.map(m => m[key]);
  return `| ${label} | ${ms(q(xs, 0.5))} | ${ms(q(xs, 0.9))} | ${ms(Math.max(...xs))} |`;
};

const src = fs.readFileSync(SNIPPET);
const gz6 = zlib.gzipSync(src).length, gz9 = zlib.gzipSync(src, { level: 9 }).length;
const br = zlib.brotliCompressSync(src).length;
const md = [
  `Size of \`js-snippet/dist/snippet.js\` (esbuild \`--minify\`, built by \`dm_snippet_build\`): **${src.length} bytes minified, ` +
    `${gz6} bytes gzipped** (level 6; ${gz9} at level 9; ${br} with brotli). Budget (js-snippet/test/size.test.js): 3,072 bytes gzipped.`,
  '',
  `Time to swap in headless Chromium ${version} (\`/usr/bin/chromium\`, Playwright) with the release tracker, Redis and ClickHouse on ` +
    `loopback; ${loads} rounds after ${warmup} warm-up rounds, each a fresh context (new visitor, empty cache) on a landing page ` +
    `of a shop on its own origin, then a second page of the shop in the same context. Milliseconds:`,
  '',
  '| landing page (new visitor, snippet downloaded, new lease) | p50 | p90 | max |',
  '| --- | ---: | ---: | ---: |',
  row('**script start → numbers swapped**', first, 'start_to_swap'),
  row('snippet.js arrived → script start', first, 'arrived_to_start'),
  row('script start → POST /v1/visits sent', first, 'start_to_request'),
  row('POST /v1/visits round trip', first, 'request'),
  row('answer → numbers swapped', first, 'answer_to_swap'),
  row('snippet.js download', first, 'snippet_fetch'),
  row('navigation start → numbers swapped', first, 'nav_to_swap'),
  '',
  '| second page (snippet from cache, session renewed) | p50 | p90 | max |',
  '| --- | ---: | ---: | ---: |',
  row('**script start → numbers swapped**', second, 'start_to_swap'),
  row('POST /v1/visits round trip', second, 'request'),
  row('navigation start → numbers swapped', second, 'nav_to_swap'),
  '',
  '"Script start" is the snippet\'s first statement (its read of `window.dialmark`, seen by a getter the page ' +
    'defines); "arrived" is snippet.js\'s `responseEnd` in Resource Timing; "sent" and "round trip" are the ' +
    '`POST /v1/visits` entry\'s `startTime` and `responseEnd`; "swapped" is when an inline MutationObserver first ' +
    'sees the number\'s text changed (before paint).',
].join('\n');
fs.writeFileSync(a.markdown, md + '\n');
console.log(md);
