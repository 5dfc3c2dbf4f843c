// swap.js on a tiny fake DOM, and the built dist/snippet.js run end to end in
// a vm context with a fake document, fetch, storage, history and timers.
import test from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import vm from 'node:vm';
import { execSync } from 'node:child_process';
import { swap } from '../src/swap.js';
import { replacer } from '../src/phone.js';

const root = new URL('..', import.meta.url);
const sleep = ms => new Promise(r => setTimeout(r, ms));

// ---- fake DOM -------------------------------------------------------------
let observers = new Set(), mutations = 0;
const notify = rec => {
  mutations++;
  for (const o of observers) {
    o.q.push(rec);
    if (!o.pending) {
      o.pending = true;
      queueMicrotask(() => { o.pending = false; const q = o.q.splice(0); if (q.length) o.cb(q, o); });
    }
  }
};
class MO {
  constructor(cb) { this.cb = cb; this.q = []; }
  observe() { observers.add(this); }
  disconnect() { observers.delete(this); }
  takeRecords() { return this.q.splice(0); }
}
class Text {
  constructor(v) { this.nodeType = 3; this.v = v; }
  get nodeValue() { return this.v; }
  set nodeValue(v) { this.v = v; notify({ type: 'characterData', target: this }); }
  get textContent() { return this.v; }
}
class El {
  constructor(tag, attrs) { this.nodeType = 1; this.tagName = tag.toUpperCase(); this.attrs = { ...attrs }; this.childNodes = []; this.style = {}; }
  getAttribute(k) { return k in this.attrs ? this.attrs[k] : null; }
  setAttribute(k, v) { this.attrs[k] = String(v); notify({ type: 'attributes', target: this, attributeName: k }); }
  hasAttribute(k) { return k in this.attrs; }
  get dataset() {
    const o = {};
    for (const [k, v] of Object.entries(this.attrs)) if (k.startsWith('data-')) o[k.slice(5).replace(/-(\w)/g, (_, c) => c.toUpperCase())] = v;
    return o;
  }
  get src() { return this.attrs.src || ''; }
  appendChild(c) { c.parentNode = this; this.childNodes.push(c); notify({ type: 'childList', target: this }); return c; }
  closest(sel) {
    const a = /^\[([\w-]+)\]$/.exec(sel)[1];
    for (let n = this; n && n.nodeType == 1; n = n.parentNode) if (n.hasAttribute(a)) return n;
    return null;
  }
  get textContent() { return this.childNodes.map(c => c.textContent).join(''); }
}
const h = (tag, attrs, ...kids) => {
  const e = new El(tag, attrs || {});
  for (const k of kids) { const c = typeof k == 'string' ? new Text(k) : k; c.parentNode = e; e.childNodes.push(c); }
  return e;
};
const emitter = o => {
  const ls = {};
  o.addEventListener = (t, f) => (ls[t] = ls[t] || []).push(f);
  o.dispatch = (t, e = {}) => (ls[t] || []).forEach(f => f({ type: t, ...e }));
  return o;
};
const storage = (init = {}) => {
  const m = new Map(Object.entries(init));
  return { m, getItem: k => (m.has(k) ? m.get(k) : null), setItem: (k, v) => m.set(k, String(v)), removeItem: k => m.delete(k) };
};

// ---- swap.js --------------------------------------------------------------
test('swap.js rewrites text and tel: links, skips script/style/textarea/input/noswap', () => {
  const page = h('body', {},
    h('p', {}, 'Call us: +7 (495) 000-00-00 or ', h('a', { href: 'tel:+74950000000' }, '8 495 000 00 00')),
    h('script', {}, 'var n = "+7 (495) 000-00-00";'),
    h('style', {}, '/* 84950000000 */'),
    h('textarea', {}, '84950000000'),
    h('input', { value: '84950000000' }),
    h('div', { 'data-dialmark-noswap': '' }, h('span', {}, '+7 (495) 000-00-00'), h('a', { href: 'tel:84950000000' }, 'x')),
    h('a', { href: 'tel:+74959999999' }, 'other'),
    h('a', { href: 'https://example.com/84950000000' }, 'y'),
  );
  const [fx, tel] = replacer(['+74950000000'], '+74951234567', '+7 (495) 123-45-67');
  swap(page, fx, tel);
  const [p, script, style, ta, , ns, other, web] = page.childNodes;
  assert.equal(p.textContent, 'Call us: +7 (495) 123-45-67 or 8 495 123 45 67');
  assert.equal(p.childNodes[1].getAttribute('href'), 'tel:+74951234567');
  assert.equal(script.textContent, 'var n = "+7 (495) 000-00-00";');
  assert.equal(style.textContent, '/* 84950000000 */');
  assert.equal(ta.textContent, '84950000000');
  assert.equal(ns.textContent, '+7 (495) 000-00-00x');
  assert.equal(ns.childNodes[1].getAttribute('href'), 'tel:84950000000');
  assert.equal(other.getAttribute('href'), 'tel:+74959999999');
  assert.equal(web.getAttribute('href'), 'https://example.com/84950000000');
  // a root inside a noswap subtree is left alone
  const inner = ns.childNodes[0];
  swap(inner, fx, tel);
  assert.equal(inner.textContent, '+7 (495) 000-00-00');
  swap(null, fx, tel);
});

// ---- the built bundle ----------------------------------------------------
const bundle = () => {
  const f = new URL('dist/snippet.js', root);
  if (!fs.existsSync(f)) execSync('npm run build', { cwd: root, stdio: 'ignore' });
  return fs.readFileSync(f, 'utf8');
};

const OK = {
  session_id: 'S1', visitor_id: 'V-server', number: '+74951234567', display: '+7 (495) 123-45-67',
  hold_seconds: 900, keepalive_seconds: 30, replace: ['+74950000000', '+14155550100'],
};
const json = (b, status = 200) => ({ ok: status >= 200 && status < 300, status, json: async () => b });

// handler(url, body, n) -> response object | 'hang' | 'fail'
const page = (opts = {}) => {
  observers = new Set();
  const calls = [], beacons = [], intervals = new Set(), timeouts = new Set();
  let closed = false; // after close() the page's timers are inert so the test process can exit
  const script = h('script', { src: 'https://trk.example/snippet.js', 'data-site': 'site1', ...opts.attrs });
  const body = h('body', {},
    h('p', { id: 'a' }, 'Moscow: +7 (495) 000-00-00'),
    h('a', { href: 'tel:84950000000' }, '8 495 000 00 00'),
    h('p', {}, 'SF: (415) 555-0100'),
    h('div', { 'data-dialmark-noswap': '' }, '84950000000'),
  );
  const html = h('html', {}, h('head', {}, script), body);
  const jar = new Map(Object.entries(opts.cookies || {}));
  const doc = emitter({
    documentElement: html, body, currentScript: script, referrer: opts.referrer ?? 'https://www.google.com/',
    visibilityState: 'visible', readyState: 'complete', prerendering: !!opts.prerendering,
    querySelector: () => script,
    get cookie() { return [...jar].map(([k, v]) => k + '=' + v).join('; '); },
    set cookie(s) {
      const [kv, ...at] = s.split(';'), i = kv.indexOf('=');
      if (at.some(a => /^max-age=0$/i.test(a.trim()))) jar.delete(kv.slice(0, i)); else jar.set(kv.slice(0, i), kv.slice(i + 1));
    },
  });
  const href = opts.href || 'https://shop.example/landing?utm_source=google&utm_medium=cpc&gclid=G1';
  const hist = { calls: 0, pushState() { this.calls++; }, replaceState() { this.calls++; } };
  let n = 0;
  const fetch = (url, init) => {
    const body = JSON.parse(init.body), call = { url, body, keepalive: init.keepalive, method: init.method };
    calls.push(call);
    const r = (opts.handler || (() => json(OK)))(url, body, n++);
    if (r === 'fail') return Promise.reject(new TypeError('network'));
    return new Promise((res, rej) => {
      init.signal.addEventListener('abort', () => rej(new Error('aborted')));
      if (r !== 'hang') setTimeout(() => res(r), 2);
    });
  };
  const ctx = emitter({
    document: doc, location: { href, protocol: 'https:' }, history: hist,
    navigator: { webdriver: !!opts.webdriver, sendBeacon: (u, b) => (beacons.push({ url: u, body: JSON.parse(b) }), true) },
    localStorage: opts.storage || storage(), fetch, MutationObserver: MO, URL, AbortController, crypto: globalThis.crypto,
    setTimeout: (f, t) => { if (closed) return 0; const id = setTimeout(() => { timeouts.delete(id); f(); }, t); timeouts.add(id); return id; },
    clearTimeout: id => { clearTimeout(id); timeouts.delete(id); },
    setInterval: (f, t) => { if (closed) return 0; const id = setInterval(f, t); intervals.add(id); return id; },
    clearInterval: id => { clearInterval(id); intervals.delete(id); },
    ...opts.globals,
  });
  ctx.window = ctx;
  vm.createContext(ctx);
  vm.runInContext(bundle(), ctx);
  const text = () => body.textContent;
  const close = () => { closed = true; intervals.forEach(clearInterval); timeouts.forEach(clearTimeout); };
  return { ctx, doc, body, html, calls, beacons, jar, hist, text, close, dm: ctx.dialmark, storage: ctx.localStorage, intervals };
};

test('bundle: a single-page app route change is a page view of the same session; a #fragment is not', async () => {
  const p = page();
  try {
    await sleep(20);
    assert.equal(p.calls.length, 1);
    p.ctx.location.href = 'https://shop.example/landing?utm_source=google&utm_medium=cpc&gclid=G1#reviews';
    p.ctx.history.replaceState({}, '', '#reviews');
    await sleep(20);
    assert.equal(p.calls.length, 1, 'only the fragment changed');
    p.ctx.location.href = 'https://shop.example/pricing';
    p.ctx.history.pushState({}, '', '/pricing');
    await sleep(20);
    const visits = p.calls.filter(c => /\/v1\/visits$/.test(c.url));
    assert.equal(visits.length, 2, JSON.stringify(p.calls));
    assert.equal(visits[1].body.url, 'https://shop.example/pricing');
    assert.equal(visits[1].body.session_id, 'S1', 'the same session');
    assert.equal(visits[1].body.utm_source, visits[0].body.utm_source, 'the same touch');
  } finally { p.close(); }
});

test('bundle: several lines swap only their own numbers; a line without a number keeps its own', async () => {
  const two = {
    ...OK, replace: ['+74950000000'],
    numbers: [
      { line: 'main', number: '+74951234567', display: '+7 (495) 123-45-67', replace: ['+74950000000'], kind: 'pool' },
      { line: 'us', number: '+14155550199', display: '(415) 555-0199', replace: ['+14155550100'], kind: 'pool' },
    ],
  };
  const p = page({ handler: () => json(two) });
  try {
    await sleep(20);
    assert.equal(p.text(), 'Moscow: +7 (495) 123-45-67' + '8 495 123 45 67' + 'SF: (415) 555-0199' + '84950000000');
    assert.deepEqual(p.dm.numbers.map(l => l.number), ['+74951234567', '+14155550199']);
  } finally { p.close(); }
  // Redis away (or a bot): every line static with nothing to swap: the page keeps its numbers.
  const stat = {
    ...OK, number: '+74950000000', display: '+7 (495) 000-00-00', replace: [], kind: 'static',
    numbers: [
      { line: 'main', number: '+74950000000', display: '+7 (495) 000-00-00', replace: [], kind: 'static' },
      { line: 'us', number: '+14155550100', display: '(415) 555-0100', replace: [], kind: 'static' },
    ],
  };
  const q = page({ handler: () => json(stat) });
  try {
    await sleep(20);
    assert.equal(q.text(), 'Moscow: +7 (495) 000-00-00' + '8 495 000 00 00' + 'SF: (415) 555-0100' + '84950000000');
  } finally { q.close(); }
});

test('bundle: automation is flagged; a prerendered page leases only once shown', async () => {
  const a = page({ webdriver: true });
  try {
    assert.equal(a.calls[0].body.webdriver, true);
  } finally { a.close(); }
  const p = page({ prerendering: true });
  try {
    assert.equal(p.calls.length, 0, 'no visit while prerendered');
    p.doc.prerendering = false;
    p.doc.dispatch('prerenderingchange');
    assert.equal(p.calls.length, 1);
    assert.equal(p.calls[0].body.webdriver, undefined);
    await sleep(20);
    assert.equal(p.dm.number, '+74951234567');
  } finally { p.close(); }
});

test('bundle: a touch the tracker ignores (back from a payment page) gives the previous one back', async () => {
  const storage2 = storage({ _dm_src: JSON.stringify({ f: { utm_source: 'google', gclid: 'G0', ts: Date.now() - 60000 }, c: { utm_source: 'google', gclid: 'G0', ts: Date.now() - 60000 } }) });
  const p = page({ storage: storage2, referrer: 'https://www.paypal.com/checkout', href: 'https://shop.example/paid', handler: () => json({ ...OK, touch_ignored: true }) });
  try {
    const b = p.calls[0].body;
    assert.deepEqual([b.referrer, b.previous_touch.gclid], ['https://www.paypal.com/checkout', 'G0']);
    await sleep(20);
    const src = JSON.parse(p.storage.getItem('_dm_src'));
    assert.equal(src.c.gclid, 'G0', 'the ad click is the current touch again');
    assert.equal(src.p, undefined);
  } finally { p.close(); }
});

test('bundle: Yandex Metrica ClientId is sent from its cookie', async () => {
  const p = page({ cookies: { _ym_uid: '1690000000123456789' } });
  try {
    assert.equal(p.calls[0].body.ym_uid, '1690000000123456789');
  } finally { p.close(); }
});

test('bundle: visit request, swap, storage', async () => {
  const p = page();
  try {
    assert.equal(p.calls.length, 1);
    const [c] = p.calls;
    assert.equal(c.url, 'https://trk.example/v1/visits');
    assert.equal(c.method, 'POST');
    assert.equal(c.keepalive, true);
    const vid = p.jar.get('_dm_vid');
    assert.match(vid, /^[0-9a-f]{32}$/);
    // Ages are seconds with milliseconds: the touch is a few ms old at most.
    assert.ok(c.body.touch_age < 0.05 && c.body.first_touch.touch_age < 0.05, JSON.stringify(c.body));
    c.body.touch_age = c.body.first_touch.touch_age = 0;
    assert.deepEqual(c.body, {
      site: 'site1', visitor_id: vid, url: 'https://shop.example/landing?utm_source=google&utm_medium=cpc&gclid=G1',
      landing_url: 'https://shop.example/landing?utm_source=google&utm_medium=cpc&gclid=G1', referrer: 'https://www.google.com/',
      utm_source: 'google', utm_medium: 'cpc', gclid: 'G1', touch_age: 0,
      first_touch: {
        landing_url: 'https://shop.example/landing?utm_source=google&utm_medium=cpc&gclid=G1', referrer: 'https://www.google.com/',
        utm_source: 'google', utm_medium: 'cpc', gclid: 'G1', touch_age: 0,
      },
    });
    assert.equal(p.text(), 'Moscow: +7 (495) 000-00-00' + '8 495 000 00 00' + 'SF: (415) 555-0100' + '84950000000'); // not yet
    await sleep(20);
    assert.equal(p.text(), 'Moscow: +7 (495) 123-45-67' + '8 495 123 45 67' + 'SF: +7 (495) 123-45-67' + '84950000000');
    assert.equal(p.body.childNodes[1].getAttribute('href'), 'tel:+74951234567');
    assert.equal(p.dm.number, '+74951234567');
    assert.equal(p.dm.session, 'S1');
    assert.equal(p.jar.get('_dm_vid'), 'V-server'); // server's visitor id adopted
    const s = JSON.parse(p.storage.getItem('_dm_s_site1'));
    assert.equal(s.session_id, 'S1');
    assert.equal(s.number, '+74951234567');
    assert.deepEqual(s.replace, OK.replace);
    assert.ok(Date.now() - s.ts < 1000);
    assert.ok(p.storage.getItem('_dm_src'));

    // DOM changes are swapped (debounced), own edits do not loop
    p.body.appendChild(h('p', {}, 'New: 1-415-555-0100'));
    p.body.appendChild(h('a', { href: 'tel:+1 415 555 0100' }, 'call'));
    await sleep(100);
    assert.match(p.text(), /New: \+7 \(495\) 123-45-67call$/);
    assert.equal(p.body.childNodes[5].getAttribute('href'), 'tel:+74951234567');
    const m = mutations;
    await sleep(100);
    assert.equal(mutations, m);

    // history wrapper calls through and triggers a re-swap
    p.body.childNodes[0].childNodes[0].v = 'Route: 8 (495) 000-00-00'; // silent change, no mutation record
    p.ctx.history.pushState({}, '', '/next');
    assert.equal(p.hist.calls, 1);
    await sleep(100);
    assert.equal(p.body.childNodes[0].textContent, 'Route: 8 (495) 123-45-67');

    // manual swap
    const extra = h('div', {}, '+7 495 000 00 00');
    p.dm.swap(extra);
    assert.equal(extra.textContent, '+7 495 123 45 67');
  } finally { p.close(); }
});

test('bundle: failure, non-2xx and timeout leave the page untouched and undo anti-flicker', async () => {
  for (const [handler, attrs] of [
    [() => json({}, 500), {}],
    [() => 'fail', {}],
    [() => 'hang', { 'data-timeout': '40' }],
    [() => json({ session_id: 'S', replace: ['+74950000000'] }), {}], // no number available
  ]) {
    const p = page({ handler, attrs: { 'data-antiflicker': '5000', ...attrs } });
    try {
      assert.equal(p.html.style.opacity, 0);
      await sleep(attrs['data-timeout'] ? 80 : 20);
      assert.equal(p.html.style.opacity, '');
      assert.equal(p.text(), 'Moscow: +7 (495) 000-00-00' + '8 495 000 00 00' + 'SF: (415) 555-0100' + '84950000000');
      assert.equal(p.body.childNodes[1].getAttribute('href'), 'tel:84950000000');
      assert.equal(p.dm.number, null);
      assert.equal(p.intervals.size, 0);
    } finally { p.close(); }
  }
});

test('bundle: anti-flicker hard timeout', async () => {
  const p = page({ handler: () => 'hang', attrs: { 'data-antiflicker': '20' } });
  try {
    assert.equal(p.html.style.opacity, 0);
    await sleep(50);
    assert.equal(p.html.style.opacity, '');
  } finally { p.close(); }
});

test('bundle: session resume sends the stored session_id while young', async () => {
  const st = storage({ '_dm_s_site1': JSON.stringify({ ...OK, ts: Date.now() - 60e3 }), '_dm_vid': '"V-old"' });
  const p = page({ storage: st, referrer: 'https://shop.example/landing', href: 'https://shop.example/page2' });
  assert.equal(p.calls[0].body.session_id, 'S1');
  assert.equal(p.calls[0].body.visitor_id, 'V-old');
  assert.equal(p.calls[0].body.url, 'https://shop.example/page2');
  p.close();
  st.m.set('_dm_s_site1', JSON.stringify({ ...OK, ts: Date.now() - 901e3 }));
  const p2 = page({ storage: st });
  assert.equal(p2.calls[0].body.session_id, undefined);
  p2.close();
  const p3 = page({ attrs: { 'data-tracker': 'https://other.example/' } });
  assert.equal(p3.calls[0].url, 'https://other.example/v1/visits');
  p3.close();
});

test('bundle: a keep-alive naming another number, or another tab of the session, re-swaps', async () => {
  let held = '+74951234567';
  const p = page({
    handler: url => url.endsWith('/keepalive')
      ? json({ expires_in: 900, number: held, display: held == '+74951234567' ? OK.display : '+7 (495) 765-43-21' })
      : json({ ...OK, keepalive_seconds: 0.03 }),
  });
  try {
    await sleep(60);
    assert.match(p.text(), /^Moscow: \+7 \(495\) 123-45-67/);
    held = '+74957654321';
    await sleep(80);
    assert.equal(p.dm.number, '+74957654321', 'the number the session holds');
    assert.match(p.text(), /^Moscow: \+7 \(495\) 765-43-21/, 'the shown number swapped');
    assert.equal(JSON.parse(p.storage.getItem('_dm_s_site1')).number, '+74957654321');
    // Another tab of the session stored a third number: this one follows.
    const other = { ...OK, number: '+74959998877', display: '+7 (495) 999-88-77' };
    held = other.number;
    p.ctx.dispatch('storage', { key: '_dm_s_site1', newValue: JSON.stringify(other) });
    assert.equal(p.dm.number, '+74959998877');
    assert.match(p.text(), /^Moscow: \+7 \(495\) 999-88-77/);
    // A different session's storage, or another key, changes nothing.
    p.ctx.dispatch('storage', { key: '_dm_s_site1', newValue: JSON.stringify({ ...other, session_id: 'S2', number: '+74950001111' }) });
    p.ctx.dispatch('storage', { key: 'other', newValue: '{' });
    assert.equal(p.dm.number, '+74959998877');
  } finally { p.close(); }
});

test('bundle: keepalive while visible, beacon on hide, re-visit on lost lease', async () => {
  let lost = false;
  const p = page({
    handler: (url, body) => {
      if (url.endsWith('/keepalive')) return json({}, lost ? 410 : 200);
      return lost ? json({ ...OK, number: '+74957654321', display: '+7 (495) 765-43-21' }) : json({ ...OK, keepalive_seconds: 0.03 });
    },
  });
  try {
    await sleep(110);
    const ka = p.calls.filter(c => c.url.endsWith('/keepalive'));
    assert.ok(ka.length >= 2, 'keepalives: ' + ka.length);
    assert.equal(ka[0].url, 'https://trk.example/v1/visits/S1/keepalive');
    assert.deepEqual(ka[0].body, { site: 'site1', number: '+74951234567' });

    p.doc.visibilityState = 'hidden';
    p.doc.dispatch('visibilitychange');
    assert.deepEqual(p.beacons, [{ url: 'https://trk.example/v1/visits/S1/keepalive', body: { site: 'site1', number: '+74951234567' } }]);
    const n = p.calls.length;
    await sleep(100);
    assert.equal(p.calls.length, n, 'no keepalive while hidden');
    p.ctx.dispatch('pagehide');
    assert.equal(p.beacons.length, 2);

    lost = true;
    p.doc.visibilityState = 'visible';
    p.doc.dispatch('visibilitychange');
    assert.equal(p.calls.length, n + 1, 'immediate keepalive when visible again');
    await sleep(30);
    const v = p.calls.filter(c => c.url.endsWith('/v1/visits'));
    assert.equal(v.length, 2);
    assert.equal(v[1].body.session_id, 'S1');
    assert.equal(v[1].body.visitor_id, 'V-server');
    await sleep(80);
    assert.equal(p.dm.number, '+74957654321');
    assert.equal(p.text(), 'Moscow: +7 (495) 765-43-21' + '8 495 765 43 21' + 'SF: +7 (495) 765-43-21' + '84950000000');
    assert.equal(p.body.childNodes[1].getAttribute('href'), 'tel:+74957654321');
  } finally { p.close(); }
});

test('bundle: consent mode does nothing until consent(true); consent(false) clears', async () => {
  const p = page({ attrs: { 'data-consent': 'required', 'data-antiflicker': '300' } });
  try {
    await sleep(20);
    assert.equal(p.calls.length, 0);
    assert.equal(p.jar.size, 0);
    assert.equal(p.storage.m.size, 0);
    assert.equal(p.html.style.opacity, undefined);
    assert.match(p.text(), /000-00-00/);

    p.dm.consent(true);
    assert.equal(p.calls.length, 1);
    await sleep(20);
    assert.equal(p.dm.number, '+74951234567');
    assert.ok(p.jar.has('_dm_vid'));
    assert.ok(p.storage.m.size >= 3);

    p.dm.consent(false);
    assert.equal(p.jar.size, 0);
    assert.equal(p.storage.m.size, 0);
    assert.equal(p.dm.number, null);
    assert.equal(p.intervals.size, 0);
  } finally { p.close(); }

  const q = page({ attrs: { 'data-consent': 'required' }, globals: { dialmarkConsent: true } });
  assert.equal(q.calls.length, 1, 'window.dialmarkConsent = true before load counts as consent');
  q.close();
});
