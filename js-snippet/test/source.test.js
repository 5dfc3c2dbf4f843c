import test from 'node:test';
import assert from 'node:assert/strict';
import { KEYS, capture, touches, sendable, get, set, del, uid, visitorId, saveVid } from '../src/source.js';

const fakeStorage = () => {
  const m = new Map();
  return {
    m,
    getItem: k => (m.has(k) ? m.get(k) : null),
    setItem: (k, v) => m.set(k, String(v)),
    removeItem: k => m.delete(k),
  };
};

test('capture utm and click ids from a URL', () => {
  const href = 'https://shop.example/landing?utm_source=google&utm_medium=cpc&utm_campaign=spring&utm_term=buy%20phone' +
    '&utm_content=ad1&gclid=G1&yclid=Y1&fbclid=F1&msclkid=M1&other=x';
  assert.deepEqual(capture(href, 'https://www.google.com/'), {
    landing_url: href, referrer: 'https://www.google.com/',
    utm_source: 'google', utm_medium: 'cpc', utm_campaign: 'spring', utm_term: 'buy phone', utm_content: 'ad1',
    gclid: 'G1', yclid: 'Y1', fbclid: 'F1', msclkid: 'M1',
  });
  assert.deepEqual(capture('https://shop.example/', ''), { landing_url: 'https://shop.example/', referrer: '' });
  assert.equal(KEYS.length, 11);
  assert.equal(capture('https://shop.example/?gbraid=GB&wbraid=WB', '').gbraid, 'GB');
});

test('first touch is kept, current touch follows new attribution only', () => {
  const st = fakeStorage();
  // 1. arrives from an ad
  let t = touches(st, 'https://shop.example/?utm_source=yandex&yclid=1', 'https://yandex.ru/');
  assert.equal(t.f.utm_source, 'yandex');
  assert.equal(t.c.utm_source, 'yandex');
  // 2. internal navigation: nothing changes
  t = touches(st, 'https://shop.example/cart', 'https://shop.example/?utm_source=yandex&yclid=1');
  assert.equal(t.c.utm_source, 'yandex');
  assert.equal(t.c.landing_url, 'https://shop.example/?utm_source=yandex&yclid=1');
  // 3. direct visit later: current touch kept (last non-direct)
  t = touches(st, 'https://shop.example/', '');
  assert.equal(t.c.yclid, '1');
  // 4. organic visit from another site: current touch replaced, first kept
  t = touches(st, 'https://shop.example/blog', 'https://duckduckgo.com/');
  assert.equal(t.c.referrer, 'https://duckduckgo.com/');
  assert.equal(t.c.utm_source, undefined);
  assert.equal(t.f.utm_source, 'yandex');
  // 5. new campaign without referrer
  t = touches(st, 'https://shop.example/?gclid=abc', '');
  assert.equal(t.c.gclid, 'abc');
  assert.equal(t.f.yclid, '1');
  assert.deepEqual(get(st, '_dm_src'), t);
});

test('touches are stamped and sent with their age, a second click is newer', () => {
  const st = fakeStorage(), t0 = 1_700_000_000_000;
  touches(st, 'https://shop.example/?utm_source=yandex&yclid=1', 'https://yandex.ru/', t0);
  let j = touches(st, 'https://shop.example/cart', 'https://shop.example/', t0 + 5_000);
  assert.equal(j.c.ts, t0, 'internal navigation keeps the click and its time');
  let body = sendable(j, t0 + 60_000);
  assert.deepEqual([body.utm_source, body.touch_age, body.ts], ['yandex', 60, undefined]);
  assert.deepEqual([body.first_touch.yclid, body.first_touch.touch_age], ['1', 60]);
  // The second ad click, a minute later: newer than the first.
  j = touches(st, 'https://shop.example/?utm_source=google&gclid=G2', '', t0 + 60_000);
  body = sendable(j, t0 + 61_000);
  assert.deepEqual([body.gclid, body.touch_age, body.first_touch.utm_source, body.first_touch.touch_age], ['G2', 1, 'yandex', 61]);
  // Back from a payment page: a new current touch; the ad click is kept as
  // the previous one and sent along (the tracker decides which stands).
  j = touches(st, 'https://shop.example/paid', 'https://www.paypal.com/checkout', t0 + 120_000);
  body = sendable(j, t0 + 120_000);
  assert.deepEqual([body.referrer, body.previous_touch.gclid, body.previous_touch.touch_age], ['https://www.paypal.com/checkout', 'G2', 60]);
  // A touch stored by an older snippet has no time: sent without an age.
  assert.equal(sendable({ c: { utm_source: 'x' }, f: { utm_source: 'x' } }).touch_age, undefined);
});

test('first visit without attribution sets both touches', () => {
  const st = fakeStorage();
  const t = touches(st, 'https://shop.example/', '');
  assert.deepEqual(t.f, t.c);
  assert.equal(t.c.referrer, '');
});

test('storage helpers survive missing or throwing storage', () => {
  const bad = { getItem() { throw new Error('x'); }, setItem() { throw new Error('x'); }, removeItem() { throw new Error('x'); } };
  assert.equal(get(bad, 'k'), undefined);
  assert.equal(get(undefined, 'k'), undefined);
  set(bad, 'k', 1); set(undefined, 'k', 1); del(bad, 'k'); del(undefined, 'k');
  const t = touches(undefined, 'https://a.example/?utm_source=x', '');
  assert.equal(t.c.utm_source, 'x');
});

test('visitor id: cookie first, then localStorage, else new; always written to both', () => {
  const st = fakeStorage(), doc = { cookie: '' };
  const v = visitorId(doc, st);
  assert.match(v, /^[0-9a-f]{32}$/);
  assert.match(doc.cookie, /^_dm_vid=[0-9a-f]{32};path=\/;max-age=31536000;samesite=lax$/);
  assert.equal(get(st, '_dm_vid'), v);

  // cookie wins over storage
  const d2 = { cookie: 'a=1; _dm_vid=fromcookie; b=2' };
  set(st, '_dm_vid', 'fromstorage');
  assert.equal(visitorId(d2, st, true), 'fromcookie');
  assert.match(d2.cookie, /;secure$/);
  assert.equal(get(st, '_dm_vid'), 'fromcookie');

  // storage fallback when cookies are gone
  set(st, '_dm_vid', 'fromstorage');
  assert.equal(visitorId({ cookie: '' }, st), 'fromstorage');

  saveVid(doc, st, 'a b;c');
  assert.match(doc.cookie, /^_dm_vid=a%20b%3Bc;/);
  assert.notEqual(uid(), uid());
});
