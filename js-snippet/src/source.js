// Attribution capture and visitor id. Storage is passed in (tests use a fake).

export const KEYS = 'utm_source utm_medium utm_campaign utm_term utm_content gclid gbraid wbraid yclid fbclid msclkid'.split(' ');

// JSON helpers that never throw (storage may be missing, full or blocked).
export const get = (st, k) => {
  try { return JSON.parse(st.getItem(k)); } catch (e) {}
};
export const set = (st, k, v) => {
  try { st.setItem(k, JSON.stringify(v)); } catch (e) {}
};
export const del = (st, k) => {
  try { st.removeItem(k); } catch (e) {}
};

const host = u => {
  try { return new URL(u).hostname; } catch (e) {}
};

// One touch: the page URL it landed on, the referrer and any utm/click ids.
export const capture = (href, ref) => {
  const q = new URL(href).searchParams, o = { landing_url: href, referrer: ref || '' };
  KEYS.forEach(k => q.get(k) && (o[k] = q.get(k)));
  return o;
};

// First touch is written once. Current touch is replaced when this page brings
// new attribution (any utm/click id, or a referrer from another host); internal
// navigation and direct reloads keep it. Stored in localStorage `_dm_src`,
// each touch with its time (`ts`, ms) so the tracker can tell a newer click
// and forget ones past their age.
export const touches = (st, href, ref, now = Date.now()) => {
  const t = capture(href, ref), j = get(st, '_dm_src') || {}, r = host(ref);
  t.ts = now;
  if (!j.f) j.f = t;
  if (!j.c || KEYS.some(k => t[k]) || (r && r != host(href))) { if (j.c) j.p = j.c; j.c = t; }
  set(st, '_dm_src', j);
  return j;
};

// A touch as sent: its age in seconds (milliseconds as decimals: two clicks
// in one second stay in order) instead of our clock's time (the tracker's
// clock may differ from the visitor's).
const aged = (t, now) => {
  const o = Object.assign({}, t);
  delete o.ts;
  if (t.ts) o.touch_age = Math.max(0, now - t.ts) / 1000; // seconds, ms as decimals
  return o;
};
// The touch fields of a visit: the current touch flat, the first one and the
// one before the current (`p`: it stands when the tracker answers that the
// current one came back from a payment or sign-in page) nested.
export const sendable = (j, now = Date.now()) =>
  Object.assign(aged(j.c, now), { first_touch: aged(j.f, now), previous_touch: j.p && aged(j.p, now) });

export const uid = () => [...crypto.getRandomValues(new Uint8Array(16))].map(b => (b + 256).toString(16).slice(1)).join('');

// Visitor id: first-party cookie `_dm_vid` (1 year), localStorage `_dm_vid` as fallback.
export const saveVid = (doc, st, v, secure) => {
  doc.cookie = '_dm_vid=' + encodeURIComponent(v) + ';path=/;max-age=31536000;samesite=lax' + (secure ? ';secure' : '');
  set(st, '_dm_vid', v);
  return v;
};
export const visitorId = (doc, st, secure) => {
  const m = /(?:^|;\s*)_dm_vid=([^;]+)/.exec(doc.cookie);
  return saveVid(doc, st, (m && decodeURIComponent(m[1])) || get(st, '_dm_vid') || uid(), secure);
};
