// The marketers' web app. Calls (#calls): the call log from the calls API,
// new calls live from /v1/calls/live (server-sent events read with fetch,
// so the token stays in a header), each row expandable to its forwarding
// attempts, source and journey. Reports (#reports): charts (SVG) of calls
// per day, channel, source, campaign, first-time callers, missed calls by hour and the
// answered share by trunk from /v1/stats, each with its data table and a
// CSV download, and the report exports. Numbers (#numbers): each pool's use
// now and over time against its size, the advisor's size, quarantine.
// Install (#install): the snippet tag and the last visit seen per origin. The token lives in sessionStorage
// only; `#token=…` in the URL (what ops/up prints) signs in and is removed
// from the address bar.

const $ = sel => document.querySelector(sel);
const KEY = 'dialmark.token';
const rows = new Map(); // call_id -> <tr>
let cursor = null;
let feedAbort = null;

const token = () => sessionStorage.getItem(KEY) || '';

// The site picked in the header (the admin token reads every site; a
// site's token its own whatever is picked): added to the calls that take it.
const SITED = /^\/v1\/(calls(\?|$)|calls\/live|stats|reports\/|pools(\?|$)|install)/;
const withSite = path => {
  const s = $('#site').value.trim();
  if (!s || !SITED.test(path)) return path;
  return `${path}${path.includes('?') ? '&' : '?'}site=${encodeURIComponent(s)}`;
};

async function api(path) {
  const r = await fetch(withSite(path), { headers: { Authorization: `Bearer ${token()}` } });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) {
    const err = new Error(body.error || `${r.status} ${r.statusText}`);
    err.status = r.status;
    throw err;
  }
  return body;
}

const el = (tag, props = {}, ...kids) => {
  const e = Object.assign(document.createElement(tag), props);
  for (const k of kids) e.append(k instanceof Node ? k : document.createTextNode(k ?? ''));
  return e;
};

const time = iso => (iso ? new Date(iso).toLocaleString() : '');
const secs = ms => (ms ? `${Math.round(ms / 1000)} s` : '');

/** What brought the caller: campaign when there is one, else the channel. */
const source = c => {
  const s = [c.utm_source || c.source?.utm_source, c.utm_campaign || c.source?.utm_campaign].filter(Boolean).join(' / ');
  return s || c.channel || c.source?.channel || c.source_label || c.source?.label || '—';
};

/** Status text and row class of a call (a row from the API or a live event). */
const status = c => {
  if (c.event === 'call.started') return ['ringing', 'ringing'];
  if (c.event === 'call.answered' || (c.answered && !c.ended)) return ['talking', 'talking'];
  return [c.disposition || '', ''];
};

function render(c) {
  const id = c.call_id;
  let tr = rows.get(id);
  const fresh = !tr;
  if (fresh) {
    tr = el('tr');
    tr.dataset.call = id;
    rows.set(id, tr);
  }
  const [text, cls] = status(c);
  tr.className = cls;
  tr.dataset.status = text;
  const expanded = tr.querySelector('button')?.getAttribute('aria-expanded') === 'true';
  const btn = el('button', { type: 'button', textContent: 'Details' });
  btn.setAttribute('aria-expanded', String(expanded));
  btn.setAttribute('aria-label', `Details of the call from ${c.caller || 'unknown'}`);
  btn.addEventListener('click', () => toggle(tr, btn));
  tr.replaceChildren(
    el('td', {}, time(c.received)),
    el('td', {}, c.caller || 'unknown'),
    el('td', {}, c.number || ''),
    el('td', { className: 'source' }, source(c)),
    el('td', { className: 'status' }, text),
    el('td', {}, secs(c.talk_ms)),
    el('td', {}, String(c.attempts ?? '')),
    el('td', {}, btn),
  );
  return { tr, fresh };
}

async function toggle(tr, btn) {
  const open = btn.getAttribute('aria-expanded') === 'true';
  const next = tr.nextElementSibling;
  if (next?.classList.contains('details')) next.remove();
  btn.setAttribute('aria-expanded', String(!open));
  if (open) return;
  const cell = el('td', { colSpan: 8, className: 'detail' }, 'Loading…');
  const row = el('tr', { className: 'details' }, cell);
  tr.after(row);
  try {
    cell.replaceChildren(...detail(await api(`/v1/calls/${tr.dataset.call}`)));
  } catch (e) {
    cell.textContent = e.status === 404 ? 'Not recorded yet: details appear once the call has a row.' : `Could not load: ${e.message}`;
  }
}

const table = (caption, heads, data) =>
  el(
    'table',
    {},
    el('caption', {}, caption),
    el('thead', {}, el('tr', {}, ...heads.map(h => el('th', { scope: 'col' }, h)))),
    el('tbody', {}, ...data.map(r => el('tr', {}, ...r.map(v => el('td', {}, String(v ?? '')))))),
  );

function detail(c) {
  const touch = (label, src, med, camp, ts, ch) =>
    el('p', {}, `${label}: ${[src, med, camp].filter(Boolean).join(' / ') || ch || 'direct'}${ts ? ` (${time(ts)})` : ''}`);
  return [
    el('h3', {}, 'Forwarding'),
    table(
      'Every forwarding attempt, failed ones too',
      ['#', 'Trunk', 'Code', 'Outcome', 'PDD', 'Talk', 'Reason'],
      (c.forwarding || []).map(a => [a.attempt, a.trunk, a.final_code, a.outcome, `${a.pdd_ms} ms`, secs(a.talk_ms), a.reason]),
    ),
    el('h3', {}, 'Source'),
    touch('Last touch', c.utm_source, c.utm_medium, c.utm_campaign, c.touch_ts, c.channel),
    touch('First touch', c.first_utm_source, c.first_utm_medium, c.first_utm_campaign, c.first_touch_ts, c.first_channel),
    el('p', {}, `Geo: ${[c.country, c.region, c.city].filter(Boolean).join(', ') || 'unknown'}; attribution ${c.attribution} (${c.attribution_confidence})`),
    el('h3', {}, 'Journey'),
    table(
      'Pages viewed before the call',
      ['Time', 'Page', 'Referrer', 'Source'],
      (c.journey || []).map(v => [time(v.ts), v.url, v.referrer, source(v)]),
    ),
    el('h3', {}, 'Earlier calls from this caller'),
    table(
      'Earlier calls',
      ['Time', 'Status', 'Talk', 'Source'],
      (c.earlier_calls || []).map(e => [time(e.received), e.disposition, secs(e.talk_ms), source(e)]),
    ),
  ];
}

function filters() {
  const q = new URLSearchParams();
  for (const [k, v] of new FormData($('#filters'))) if (v) q.set(k, v);
  return q;
}

async function load(more = false) {
  const q = filters();
  q.set('limit', '50');
  if (more && cursor) q.set('cursor', cursor);
  try {
    const page = await api(`/v1/calls?${q}`);
    const body = $('#calls tbody');
    if (!more) {
      rows.clear();
      body.replaceChildren();
    }
    for (const c of page.calls) body.append(render(c).tr);
    cursor = page.next_cursor;
    $('#more').hidden = !cursor;
    $('#log-error').textContent = '';
  } catch (e) {
    if (e.status === 401) return signOut(e.message);
    $('#log-error').textContent = `Could not load calls: ${e.message}`;
  }
}

/** Does a live event pass the filters on screen? */
const passes = c => {
  const q = filters();
  if (q.get('utm_source') && q.get('utm_source') !== c.source?.utm_source) return false;
  if (q.get('utm_campaign') && q.get('utm_campaign') !== c.source?.utm_campaign) return false;
  const d = q.get('disposition');
  return !d || (c.event === 'call.completed' && c.disposition === d);
};

function onEvent(type, data) {
  if (type === 'ready') return setFeed(true);
  if (type === 'resync') return load();
  if (type !== 'call') return;
  const c = JSON.parse(data);
  if (!rows.has(c.call_id) && !passes(c)) return;
  const { tr, fresh } = render(c);
  if (fresh) $('#calls tbody').prepend(tr);
}

function setFeed(live) {
  $('#feed').textContent = live ? 'live' : 'reconnecting…';
  $('#feed').classList.toggle('live', live);
}

/** Reads /v1/calls/live for as long as the page is open, reconnecting. */
async function feed() {
  for (;;) {
    // This loop's own controller: a site change aborts it and starts another.
    const ctl = new AbortController();
    feedAbort = ctl;
    try {
      const r = await fetch(withSite('/v1/calls/live'), {
        headers: { Authorization: `Bearer ${token()}` },
        signal: ctl.signal,
      });
      if (r.status === 401) return signOut('token refused');
      if (!r.ok) {
        // Another site than the token's: the log says why (its own 403).
        $('#feed').textContent = 'not live';
        $('#feed').classList.remove('live');
        return;
      }
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let end;
        while ((end = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, end);
          buf = buf.slice(end + 2);
          let type = 'message';
          const data = [];
          for (const line of block.split('\n')) {
            if (line.startsWith('event:')) type = line.slice(6).trim();
            else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
          }
          if (data.length) onEvent(type, data.join('\n'));
        }
      }
    } catch (e) {
      // a network error: reconnect below
    }
    if (ctl.signal.aborted) return;
    setFeed(false);
    await new Promise(r => setTimeout(r, 2000));
    load();
  }
}

// ------------------------------------------------------------------ reports

const SVG = 'http://www.w3.org/2000/svg';
const svgEl = (tag, attrs = {}, ...kids) => {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  for (const k of kids) e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  return e;
};
const isoDay = d => d.toISOString().slice(0, 10);

/** Horizontal bars: one per row, labelled, the value after the bar. */
function bars(rows, label, value, { cls = '', unit = '' } = {}) {
  const h = 18, w = 420, left = 130, max = Math.max(1, ...rows.map(value));
  const svg = svgEl('svg', { viewBox: `0 0 ${w} ${Math.max(1, rows.length) * h + 4}`, width: w, role: 'img' });
  rows.forEach((r, i) => {
    const v = value(r), len = Math.round(((w - left - 50) * v) / max);
    svg.append(
      svgEl('text', { x: left - 6, y: i * h + 13, 'text-anchor': 'end' }, label(r).slice(0, 20)),
      svgEl('rect', { class: `bar ${cls}`, x: left, y: i * h + 3, width: Math.max(len, v ? 1 : 0), height: h - 5 }),
      svgEl('text', { x: left + len + 4, y: i * h + 13 }, `${v}${unit}`),
    );
  });
  svg.setAttribute('aria-label', rows.map(r => `${label(r)}: ${value(r)}${unit}`).join('; ') || 'no calls');
  return svg;
}

/** Lines over days: one polyline per [field, name]. */
function lines(rows, series) {
  const w = 420, h = 160, pad = 28, max = Math.max(1, ...rows.flatMap(r => series.map(([f]) => r[f])));
  const x = i => pad + (rows.length < 2 ? 0 : ((w - 2 * pad) * i) / (rows.length - 1));
  const y = v => h - pad - ((h - 2 * pad) * v) / max;
  const svg = svgEl('svg', { viewBox: `0 0 ${w} ${h}`, width: w, role: 'img' });
  svg.append(
    svgEl('text', { x: 2, y: pad }, max),
    svgEl('text', { x: 2, y: h - pad }, 0),
    svgEl('text', { x: pad, y: h - 6 }, rows[0]?.key ?? ''),
    svgEl('text', { x: w - pad, y: h - 6, 'text-anchor': 'end' }, rows.at(-1)?.key ?? ''),
  );
  for (const [f, name] of series) {
    svg.append(svgEl('polyline', { class: `line ${f}`, points: rows.map((r, i) => `${x(i)},${y(r[f])}`).join(' ') }, svgEl('title', {}, name)));
    // Few points: mark each (one point alone draws no line).
    if (rows.length <= 60) rows.forEach((r, i) => svg.append(svgEl('circle', { class: `dot ${f}`, cx: x(i), cy: y(r[f]), r: 3 })));
  }
  svg.setAttribute('aria-label', series.map(([f, name]) => `${name}: ${rows.map(r => r[f]).join(', ')}`).join('; '));
  return svg;
}

const csv = (cols, rows) =>
  [cols, ...rows.map(r => cols.map(c => r[c]))].map(r => r.map(v => `"${String(v ?? '').replaceAll('"', '""')}"`).join(',')).join('\n') + '\n';

function download(name, text) {
  const a = el('a', { href: URL.createObjectURL(new Blob([text], { type: 'text/csv' })), download: name });
  document.body.append(a);
  a.click();
  a.remove();
}

/** A chart (after `extra`) with its data table and a CSV download of it. */
function figure(title, chart, rows, cols, file, ...extra) {
  const btn = el('button', { type: 'button', textContent: 'Download CSV' });
  // The name starts with the visible text (WCAG 2.5.3): "click Download CSV" works by voice.
  btn.setAttribute('aria-label', `Download CSV: ${title}`);
  btn.addEventListener('click', () => download(`${file}.csv`, csv(cols, rows)));
  return el(
    'figure',
    { id: `chart-${file}` },
    el('figcaption', {}, title),
    ...extra,
    chart,
    el('details', {}, el('summary', {}, 'Data'), table(title, cols, rows.map(r => cols.map(c => r[c])))),
    btn,
  );
}

/** Every day of the range, days without calls as zeros. */
function allDays(rows, from, to) {
  const by = new Map(rows.map(r => [r.key, r]));
  const out = [];
  for (let d = new Date(`${from}T00:00:00Z`); isoDay(d) < to; d.setUTCDate(d.getUTCDate() + 1)) {
    out.push(by.get(isoDay(d)) || { key: isoDay(d), calls: 0, answered: 0, missed: 0, talk_ms: 0 });
  }
  return out;
}

function range() {
  if (!$('#r-from').value) {
    const now = new Date();
    $('#r-to').value = isoDay(now);
    $('#r-from').value = isoDay(new Date(now - 29 * 864e5));
  }
  const to = new Date(`${$('#r-to').value}T00:00:00Z`);
  to.setUTCDate(to.getUTCDate() + 1);
  return { from: $('#r-from').value, to: isoDay(to) };
}

async function reports() {
  const { from, to } = range();
  const q = `from=${from}&to=${to}`;
  const stat = by => api(`/v1/stats?by=${by}&${q}`).then(r => r.rows);
  try {
    const [[day, channel, source, campaign, hour, trunk], sources] = await Promise.all([
      Promise.all(['day', 'channel', 'source', 'campaign', 'hour', 'trunk'].map(stat)),
      api(`/v1/reports/campaigns?${q}`).then(r => r.rows),
    ]);
    // First-time callers (first call ever to the site in the range) per source.
    const firsts = [...sources.reduce((m, r) => m.set(r.utm_source || '(none)', (m.get(r.utm_source || '(none)') || 0) + r.first_time_callers), new Map())]
      .map(([key, first_time_callers]) => ({ key, first_time_callers }));
    const cols = ['key', 'calls', 'answered', 'missed'];
    const named = rows => rows.map(r => ({ ...r, key: r.key || '(none)' }));
    const hours = Array.from({ length: 24 }, (_, h) => hour.find(r => r.key == h) || { key: h, calls: 0, answered: 0, missed: 0 });
    const share = trunk.filter(r => r.key).map(r => ({ ...r, share: Math.round((100 * r.answered) / r.calls) }));
    const days = allDays(day, from, to);
    $('#charts').replaceChildren(
      figure('Calls per day', lines(days, [['calls', 'Calls'], ['answered', 'Answered']]), days, cols, 'calls-per-day'),
      figure('Calls by channel', bars(named(channel), r => r.key, r => r.calls), named(channel), cols, 'calls-by-channel'),
      figure('Calls by source', bars(named(source), r => r.key, r => r.calls), named(source), cols, 'calls-by-source'),
      figure('Calls by campaign', bars(named(campaign), r => r.key, r => r.calls), named(campaign), cols, 'calls-by-campaign'),
      figure('First-time callers by source', bars(firsts, r => r.key, r => r.first_time_callers), firsts, ['key', 'first_time_callers'], 'first-time-callers'),
      figure('Missed calls by hour (UTC)', bars(hours, r => `${String(r.key).padStart(2, '0')}:00`, r => r.missed, { cls: 'missed' }), hours, cols, 'missed-by-hour'),
      figure('Answered share by trunk', bars(share, r => r.key, r => r.share, { unit: '%' }), share, ['key', 'calls', 'answered', 'share'], 'answered-by-trunk'),
    );
    $('#reports-error').textContent = '';
  } catch (e) {
    if (e.status === 401) return signOut(e.message);
    $('#reports-error').textContent = `Could not load the reports: ${e.message}`;
  }
}

async function exportReport(name) {
  const { from, to } = range();
  const r = await fetch(withSite(`/v1/reports/${name}?format=csv&from=${from}&to=${to}`), { headers: { Authorization: `Bearer ${token()}` } });
  if (!r.ok) {
    $('#reports-error').textContent = `Could not download ${name}: ${(await r.json().catch(() => ({}))).error || r.status}`;
    return;
  }
  download(`${name}-${from}.csv`, await r.text());
}

// ------------------------------------------------------------------ numbers

const facts = pairs => el('dl', { className: 'facts' }, ...pairs.flatMap(([k, v]) => [el('dt', {}, k), el('dd', {}, String(v ?? '—'))]));

async function numbers() {
  // The last 24 hours: use by the minute-ish, today's advisor.
  const at = ms => new Date(ms).toISOString().slice(0, 19) + 'Z';
  const q = `from=${at(Date.now() - 864e5)}&to=${at(Date.now() + 6e4)}`;
  try {
    const [{ pools, lifecycle }, health, quarantined] = await Promise.all([
      api('/v1/pools'),
      api(`/v1/reports/pool_health?${q}`),
      api(`/v1/reports/quarantine?${q}`),
    ]);
    const figs = [];
    for (const p of pools) {
      if (p.missing) {
        figs.push(el('p', {}, `Pool ${p.id}: not set up yet.`));
        continue;
      }
      const use = (await api(`/v1/pools/${encodeURIComponent(p.id)}/samples?${q}`)).rows.map(r => ({ ...r, key: time(r.at) }));
      const h = health.rows.find(r => r.pool === p.id) || {};
      figs.push(
        figure(
          `Pool ${p.id}`,
          lines(use, [['size', 'Pool size'], ['leased', 'Leased']]),
          use,
          ['at', 'leased', 'size'],
          `pool-${p.id}`,
          facts([
            ['Numbers', p.size],
            ['Leased now', p.leased],
            ['Free now', p.free],
            ['Pool ran out (overflow number shown)', p.exhausted],
            ['Overflow number', p.overflow_number || 'none'],
            ['Peak leased at once', h.peak_concurrent_leases],
            ['Recommended size', h.recommended_pool_size === undefined ? '' : `${h.recommended_pool_size} (predicted loss ${h.predicted_loss_percent}%)`],
          ]),
        ),
      );
    }
    $('#lifecycle').replaceChildren(
      facts([
        ['In stock (the node\'s spare numbers)', lifecycle.stock],
        ['Active in these pools', lifecycle.active],
        ['In quarantine', lifecycle.quarantine],
      ]),
    );
    $('#pools').replaceChildren(...figs);
    $('#quarantine').replaceChildren(
      table(
        'Numbers in quarantine',
        ['Number', 'Since', 'Calls in quarantine (90 days)', 'Earliest release', 'Releasable now'],
        quarantined.rows.map(r => [r.number, r.quarantined_since, r.calls_90d, r.release_after, r.eligible ? 'yes' : 'no']),
      ),
    );
    $('#numbers-error').textContent = '';
  } catch (e) {
    if (e.status === 401) return signOut(e.message);
    $('#numbers-error').textContent = `Could not load the numbers: ${e.message}`;
  }
}

// ------------------------------------------------------------------ install

async function install() {
  $('#install-status').textContent = 'Checking…';
  try {
    const r = await api('/v1/install');
    $('#tag').textContent = `<script async src="${location.origin}/snippet.js" data-site="${r.site}"></script>`;
    $('#origins').replaceChildren(
      table(
        `Pages allowed to run the snippet, and the last visit seen from each (${r.seen_days} days)`,
        ['Origin', 'Last visit', 'Page', 'Visits'],
        r.origins.map(o => [o.origin, o.last_visit ? time(o.last_visit.last_visit) : 'none yet', o.last_visit?.page ?? '', o.last_visit?.visits ?? 0]),
      ),
    );
    const seen = r.origins.filter(o => o.last_visit).map(o => o.origin);
    $('#install-status').textContent = seen.length
      ? `Installed: visits seen from ${seen.join(', ')}.`
      : `No visit seen in the last ${r.seen_days} days: check that the tag is on your pages and that their origin is listed above (ask your administrator to add it).`;
    $('#install-error').textContent = '';
  } catch (e) {
    if (e.status === 401) return signOut(e.message);
    $('#install-status').textContent = '';
    $('#install-error').textContent = `Could not check: ${e.message}`;
  }
}

async function copyTag() {
  try {
    await navigator.clipboard.writeText($('#tag').textContent);
    $('#install-status').textContent = 'The tag is copied.';
  } catch (e) {
    // No clipboard (a plain-http page): select it for Ctrl+C.
    getSelection().selectAllChildren($('#tag'));
    $('#install-status').textContent = 'The tag is selected: press Ctrl+C (or Cmd+C) to copy it.';
  }
}

// ------------------------------------------------------------------ views

const VIEWS = ['log', 'reports', 'numbers', 'install'];

function show() {
  const view = { '#reports': 'reports', '#numbers': 'numbers', '#install': 'install' }[location.hash] || 'log';
  for (const v of VIEWS) $(`#${v}`).hidden = view !== v;
  for (const a of document.querySelectorAll('nav a')) {
    if (a.dataset.view === view) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  if (view === 'reports') reports();
  if (view === 'numbers') numbers();
  if (view === 'install') install();
}

function signOut(reason = '') {
  feedAbort?.abort();
  sessionStorage.removeItem(KEY);
  for (const v of VIEWS) $(`#${v}`).hidden = true;
  $('#signin').hidden = false;
  $('#signin-error').textContent = reason;
  $('#feed').textContent = 'offline';
  $('#feed').classList.remove('live');
  $('#token').focus();
}

async function open() {
  $('#signin').hidden = true;
  show();
  await load();
  if (token()) feed();
}

function start() {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) {
    sessionStorage.setItem(KEY, decodeURIComponent(m[1]));
    history.replaceState(null, '', location.pathname + '#calls');
  }
  $('#signin').addEventListener('submit', ev => {
    ev.preventDefault();
    sessionStorage.setItem(KEY, $('#token').value.trim());
    open();
  });
  $('#filters').addEventListener('submit', ev => {
    ev.preventDefault();
    load();
  });
  $('#more').addEventListener('click', () => load(true));
  $('#range').addEventListener('submit', ev => {
    ev.preventDefault();
    reports();
  });
  for (const b of document.querySelectorAll('#downloads button')) b.addEventListener('click', () => exportReport(b.dataset.report));
  addEventListener('hashchange', () => token() && show());
  $('#check').addEventListener('click', install);
  $('#site').value = sessionStorage.getItem('dialmark.site') || '';
  $('#sitepick').addEventListener('submit', ev => {
    ev.preventDefault();
    sessionStorage.setItem('dialmark.site', $('#site').value.trim());
    if (!token()) return;
    feedAbort?.abort();
    show();
    load();
    feed();
  });
  $('#copy').addEventListener('click', copyTag);
  $('#signout').addEventListener('click', () => signOut());
  if (token()) open();
  else signOut();
}

start();
