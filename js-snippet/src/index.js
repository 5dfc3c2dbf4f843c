// dialmark snippet entry: <script async src="https://TRACKER/snippet.js" data-site="SITE_ID"></script>
import { replacer } from './phone.js';
import { touches, sendable, visitorId, saveVid, get, set, del } from './source.js';
import { swap } from './swap.js';
import { post } from './api.js';

const w = window, d = document, de = d.documentElement, L = location, H = history, N = navigator;

const init = () => {
  const s = d.currentScript || d.querySelector('script[data-site]'), o = s.dataset, site = o.site,
    base = (o.tracker || new URL(s.src).origin).replace(/\/$/, ''),
    ms = +o.timeout || 1000, af = +o.antiflicker, https = L.protocol == 'https:',
    SK = '_dm_s_' + site, vis = () => d.visibilityState == 'visible',
    kaUrl = () => base + '/v1/visits/' + cur.session_id + '/keepalive';
  let ls, on, cur, fx, tel, timer, mo, busy, deb, vid, src, from = {}, shown = {}, page = L.href.split('#')[0];
  try { ls = localStorage; } catch (e) {}

  const show = () => { if (af) de.style.opacity = ''; };

  const run = () => {
    if (fx) swap(de, fx, tel);
    if (mo) mo.takeRecords(); // drop the records of our own edits
  };
  const later = () => { clearTimeout(deb); deb = setTimeout(run, 50); };

  const save = () => { cur.ts = Date.now(); set(ls, SK, cur); };

  const beacon = () => { if (on && cur && N.sendBeacon) N.sendBeacon(kaUrl(), JSON.stringify({ site, number: cur.number })); };

  // Each line of the site: its number and the site's numbers it swaps.
  const lines = r => r.numbers || [{ line: 'main', number: r.number, display: r.display, replace: r.replace }];
  const sig = r => lines(r).map(l => l.number).join();

  // Another tab of the session (or the tracker) holds different numbers: show them.
  const adopt = r => {
    if (!(on && cur && r.number)) return;
    const n = Object.assign({}, cur, { number: r.number, display: r.display || r.number });
    if (cur.numbers && r.numbers) n.numbers = cur.numbers.map(l => Object.assign({}, l, r.numbers.find(x => x.line == l.line)));
    if (sig(n) != sig(cur)) { cur = n; apply(cur); }
  };

  const tick = () => {
    if (on && cur) post(kaUrl(), { site, number: cur.number }, ms).then(r => {
      if (r.status == 404 || r.status == 410) visit(); // lease lost: ask again, re-swap
      else if (r.ok) return r.json().then(k => { adopt(k); save(); });
    }).catch(() => {});
  };
  const sched = () => {
    clearInterval(timer);
    if (on && cur && vis()) timer = setInterval(tick, (cur.keepalive_seconds || 30) * 1000);
  };

  // A single-page app's route change is a page view too (the caller's
  // journey); a change of the #fragment alone is not.
  const nav = () => {
    later();
    const p = L.href.split('#')[0];
    if (p != page) { page = p; visit(); }
  };

  const watch = () => {
    if (mo) return;
    mo = new MutationObserver(later);
    mo.observe(de, { childList: true, subtree: true, characterData: true, attributes: true, attributeFilter: ['href'] });
    addEventListener('popstate', nav);
    ['pushState', 'replaceState'].forEach(k => {
      const f = H[k];
      H[k] = function () { const r = f.apply(this, arguments); nav(); return r; };
    });
    d.addEventListener('visibilitychange', () => { vis() ? tick() : beacon(); sched(); });
    addEventListener('pagehide', beacon);
    // Tabs share one session through localStorage: a tab that got a new
    // number (its lease was lost) tells the others.
    addEventListener('storage', e => {
      if (e.key == SK && e.newValue) try { const s = JSON.parse(e.newValue); if (s.session_id == cur.session_id) adopt(s); } catch (x) {}
    });
  };

  // One replacer per line, each swapping only its own numbers (and a
  // number it showed before); a line without a tracking number swaps none.
  const apply = r => {
    const fs = [], ts = [];
    lines(r).forEach(l => {
      const k = l.line, f = from[k] = from[k] || [];
      if (shown[k] && shown[k] != l.number) f.push(shown[k]);
      shown[k] = l.number;
      const list = (l.replace || []).concat(f);
      if (l.number && list.length) { const x = replacer(list, l.number, l.display); fs.push(x[0]); ts.push(x[1]); }
    });
    fx = s => fs.reduce((a, f) => f(a), s);
    tel = h => ts.reduce((a, t) => a || t(h), false);
    api.number = r.number; api.display = r.display; api.session = r.session_id; api.numbers = lines(r);
    run();
  };

  const visit = () => {
    if (busy) return;
    busy = 1;
    const st = get(ls, SK), young = st && Date.now() - st.ts < (st.hold_seconds || 900) * 1000;
    post(base + '/v1/visits', Object.assign({ site, visitor_id: vid, session_id: young ? st.session_id : void 0, url: L.href, webdriver: N.webdriver || void 0, ym_uid: (/(?:^|;\s*)_ym_uid=(\d+)/.exec(d.cookie) || [])[1] }, sendable(src)), ms)
      .then(r => { if (!r.ok) throw 0; return r.json(); })
      .then(r => {
        if (!on || !r.number) return;
        if (r.touch_ignored && src.p) { src.c = src.p; delete src.p; set(ls, '_dm_src', src); }
        cur = r; save();
        if (r.visitor_id) vid = saveVid(d, ls, r.visitor_id, https);
        apply(r); watch(); sched();
      })
      .catch(() => {})
      .then(() => { busy = 0; show(); });
  };

  const start = () => {
    if (on) return;
    on = 1;
    if (af) { de.style.opacity = 0; setTimeout(show, af); }
    vid = visitorId(d, ls, https);
    src = touches(ls, L.href, d.referrer);
    // A prerendered page may never be shown: lease only once it is.
    if (d.prerendering) d.addEventListener('prerenderingchange', visit, { once: true });
    else visit();
  };

  const stop = () => {
    on = fx = cur = 0;
    clearInterval(timer);
    api.number = api.display = api.session = api.numbers = null;
    ['_dm_vid', '_dm_src', SK].forEach(k => del(ls, k));
    d.cookie = '_dm_vid=;path=/;max-age=0';
    show();
  };

  const api = w.dialmark = {
    swap: r => { if (fx) swap(r || de, fx, tel); },
    consent: c => (c ? start() : stop()),
    session: null, number: null, display: null,
  };

  if (o.consent != 'required' || w.dialmarkConsent === true) start();
};

if (!(w.dialmark && w.dialmark.consent)) init();
