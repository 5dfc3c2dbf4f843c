// The snippet in headless Chromium against the real tracker: number swapping
// in text and tel: links, attribution recorded in ClickHouse, content added
// after load (pop-ups, SPA routes), session resume across pages, consent mode.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startTracker, launch, openPage, texts, waitNumber, dialmarkState, formats, poll, STATIC, HUMAN_UA } from './lib/harness.js';

let tracker, browser, inv;

// Every spelling of the site's own number (STATIC = +74950000000) that the
// snippet must swap, plus the places it must leave alone.
const shopPage = site => `<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>dialmark browser test</title>
  <script async src="/snippet.js" data-site="${site}" data-antiflicker="4000" data-timeout="5000"></script>
</head>
<body>
  <h1>Test shop</h1>
  <p>Call us: <span id="f-intl">+7 (495) 000-00-00</span></p>
  <p>Or: <span id="f-trunk">8 495 000 00 00</span></p>
  <p>Fax: <span id="f-dashes">+7-495-000-00-00</span></p>
  <p><a id="tel" href="tel:${STATIC}">8 (495) 000-00-00</a></p>
  <p><a id="later-link" href="/contacts">contacts</a></p>
  <p data-dialmark-noswap>Head office: <span id="noswap">+7 (495) 000-00-00</span>
     <a id="noswap-tel" href="tel:${STATIC}">call the office</a></p>
  <p>Order no. <span id="order">5584950000000</span></p>
  <textarea id="textarea">+7 (495) 000-00-00</textarea>
  <div id="app"></div>
</body>
</html>
`;

before(async () => {
  tracker = await startTracker();
  inv = await tracker.provision({ size: 6 });
  tracker.setPage(shopPage(inv.site));
  browser = await launch();
});

after(async () => {
  await browser?.close();
  await tracker?.stop();
});

/** Opens /demo + query in a fresh context; returns the page and the visits response. */
const open = async query => {
  const p = await openPage(browser);
  const resp = p.page.waitForResponse(r => r.url() == tracker.url('/v1/visits') && r.request().method() == 'POST', { timeout: 10000 });
  await p.page.goto(tracker.url('/demo' + query));
  const r = await resp;
  assert.equal(r.status(), 200, `POST /v1/visits: ${await r.text()}`);
  p.visit = await r.json();
  return p;
};

test('swaps every format of the site number, tel: links, keeps noswap; visit row has the attribution', { timeout: 30000 }, async () => {
  const { page, context, errors, visit } = await open('?utm_source=google&utm_campaign=spring&gclid=TEST');
  try {
    assert.equal(visit.kind, 'pool', 'a pool number was leased');
    assert.ok(inv.numbers.includes(visit.number), `${visit.number} is one of the pool's numbers ${inv.numbers}`);
    assert.deepEqual(visit.replace, [STATIC]);

    const st = await waitNumber(page);
    assert.equal(st.number, visit.number, 'window.dialmark.number is the leased number');
    assert.equal(st.session, visit.session_id);

    const f = formats(visit.number);
    const want = {
      'f-intl': f.intlParens,
      'f-trunk': f.trunkSpaces,
      'f-dashes': f.intlDashes,
      tel: f.trunkParens,
      noswap: '+7 (495) 000-00-00',
      order: '5584950000000',
    };
    const ids = Object.keys(want);
    const got = await poll(() => texts(page, ids), g => JSON.stringify(g) == JSON.stringify(want), 3000);
    assert.deepEqual(got, want);

    const attrs = await page.evaluate(() => ({
      tel: document.getElementById('tel').getAttribute('href'),
      noswapTel: document.getElementById('noswap-tel').getAttribute('href'),
      laterLink: document.getElementById('later-link').getAttribute('href'),
      textarea: document.getElementById('textarea').value,
    }));
    // data-antiflicker="4000": the page is shown as soon as the number is swapped.
    attrs.opacity = await page.evaluate(() => document.documentElement.style.opacity);
    assert.deepEqual(attrs, {
      opacity: '',
      tel: 'tel:' + visit.number,
      noswapTel: 'tel:' + STATIC,
      laterLink: '/contacts',
      textarea: '+7 (495) 000-00-00',
    });

    // The visit, as ClickHouse has it.
    const rows = await tracker.visits(`session_id = '${visit.session_id}'`);
    assert.equal(rows.length, 1, JSON.stringify(rows));
    const row = rows[0];
    assert.deepEqual(
      { site: row.site, pool: row.pool, number: row.number, kind: row.kind, visitor_id: row.visitor_id },
      { site: inv.site, pool: inv.pool, number: visit.number, kind: 'pool', visitor_id: visit.visitor_id },
    );
    assert.deepEqual(
      { utm_source: row.utm_source, utm_campaign: row.utm_campaign, gclid: row.gclid, channel: row.channel, no_lease: row.no_lease },
      { utm_source: 'google', utm_campaign: 'spring', gclid: 'TEST', channel: 'paid_search', no_lease: '' },
    );
    assert.equal(row.url, tracker.url('/demo?utm_source=google&utm_campaign=spring&gclid=TEST'));
    assert.equal(row.user_agent, HUMAN_UA, 'recorded from the browser');
    assert.deepEqual(errors, [], 'no uncaught page errors');
  } finally {
    await context.close();
  }
});

test('swaps content added after load: pop-up, edited text, new tel: href, SPA route', { timeout: 30000 }, async () => {
  const { page, context, errors, visit } = await open('?utm_source=spa');
  try {
    const f = formats(visit.number);
    await poll(() => texts(page, ['f-intl']), g => g['f-intl'] == f.intlParens, 3000);

    // A pop-up inserted after the swap (MutationObserver, childList).
    await page.evaluate(() => {
      const d = document.createElement('div');
      d.id = 'popup';
      d.innerHTML = 'Call now: <b id="popup-num">8 (495) 000-00-00</b> <a id="popup-tel" href="tel:84950000000">call</a>';
      document.body.appendChild(d);
    });
    // Text edited in place (characterData) and an href turned into tel: (attributes).
    await page.evaluate(() => {
      document.getElementById('order').firstChild.nodeValue = 'call +74950000000 now';
      document.getElementById('later-link').setAttribute('href', 'tel:+7 495 000-00-00');
    });
    const late = () =>
      page.evaluate(() => ({
        popup: document.getElementById('popup-num').textContent,
        popupTel: document.getElementById('popup-tel').getAttribute('href'),
        edited: document.getElementById('order').textContent,
        laterLink: document.getElementById('later-link').getAttribute('href'),
      }));
    const wantLate = {
      popup: f.trunkParens,
      popupTel: 'tel:' + visit.number,
      edited: `call ${f.plain} now`,
      laterLink: 'tel:' + visit.number,
    };
    assert.deepEqual(await poll(late, g => JSON.stringify(g) == JSON.stringify(wantLate), 3000), wantLate);

    // SPA route change: pushState, then the whole body is replaced.
    await page.evaluate(() => {
      history.pushState({ r: 2 }, '', '/demo/route-2');
      document.body.innerHTML =
        '<main id="route2"><h1>Route 2</h1><p id="r2-num">+7 (495) 000-00-00</p>' +
        '<p id="r2-trunk">8 495 000 00 00</p><a id="r2-tel" href="tel:+74950000000">call</a>' +
        '<p data-dialmark-noswap id="r2-noswap">+7 (495) 000-00-00</p></main>';
    });
    const spa = () =>
      page.evaluate(() => ({
        path: location.pathname,
        num: document.getElementById('r2-num').textContent,
        trunk: document.getElementById('r2-trunk').textContent,
        tel: document.getElementById('r2-tel').getAttribute('href'),
        noswap: document.getElementById('r2-noswap').textContent,
      }));
    const wantSpa = {
      path: '/demo/route-2',
      num: f.intlParens,
      trunk: f.trunkSpaces,
      tel: 'tel:' + visit.number,
      noswap: '+7 (495) 000-00-00',
    };
    assert.deepEqual(await poll(spa, g => JSON.stringify(g) == JSON.stringify(wantSpa), 3000), wantSpa);
    assert.equal((await dialmarkState(page)).number, visit.number, 'still the same number after the route change');
    assert.deepEqual(errors, [], 'no uncaught page errors');
  } finally {
    await context.close();
  }
});

test('a second page of the site resumes the session: same number, same session_id, same source', { timeout: 30000 }, async () => {
  const { page, context, errors, api, visit } = await open('?utm_source=yandex&utm_campaign=resume');
  try {
    const first = await waitNumber(page);
    assert.equal(first.number, visit.number);

    const resp = page.waitForResponse(r => r.url() == tracker.url('/v1/visits') && r.request().method() == 'POST', { timeout: 10000 });
    await page.goto(tracker.url('/demo?x=2'));
    const r2 = await resp;
    assert.equal(r2.status(), 200);
    const second = await r2.json();
    const sent = JSON.parse(r2.request().postData());
    assert.equal(sent.session_id, visit.session_id, 'the stored session id is sent again');
    assert.equal(sent.visitor_id, visit.visitor_id, 'the visitor id is kept');
    assert.equal(second.session_id, visit.session_id, 'same session_id');
    assert.equal(second.number, visit.number, 'same number');

    const st = await waitNumber(page);
    assert.deepEqual({ number: st.number, session: st.session }, { number: visit.number, session: visit.session_id });
    const want = formats(visit.number).intlParens;
    assert.equal((await poll(() => texts(page, ['f-intl']), g => g['f-intl'] == want, 3000))['f-intl'], want);

    // Both visits are recorded under the one session; internal navigation
    // keeps the current touch (utm from the landing page).
    const rows = await tracker.visits(`session_id = '${visit.session_id}'`, rows => rows.length >= 2);
    assert.equal(rows.length, 2, JSON.stringify(rows));
    assert.deepEqual(rows.map(r => r.number), [visit.number, visit.number]);
    const page2 = rows.find(r => r.url.endsWith('/demo?x=2'));
    assert.ok(page2, 'a visit row for /demo?x=2: ' + JSON.stringify(rows));
    assert.deepEqual([page2.utm_source, page2.utm_campaign], ['yandex', 'resume']);
    assert.equal(api.filter(a => a.url.endsWith('/v1/visits')).length, 2, 'one visit request per page');
    assert.deepEqual(errors, [], 'no uncaught page errors');
  } finally {
    await context.close();
  }
});

test('consent mode: nothing before consent(true); consent(false) stops and forgets', { timeout: 30000 }, async () => {
  const { page, context, errors, api } = await openPage(browser);
  try {
    // This test's page (same origin, path /demo) comes from the route, not from the file.
    await context.route(tracker.url('/demo') + '*', route =>
      route.fulfill({
        status: 200,
        contentType: 'text/html; charset=utf-8',
        body: shopPage(inv.site).replace('data-antiflicker="4000"', 'data-consent="required"'),
      }),
    );
    await page.goto(tracker.url('/demo?utm_source=consent'));
    await page.waitForFunction(() => window.dialmark && window.dialmark.consent);
    await new Promise(r => setTimeout(r, 1200));
    const stored = () =>
      page.evaluate(() => ({
        keys: Object.keys(localStorage).filter(k => k.startsWith('_dm_')).sort(),
        cookie: document.cookie.includes('_dm_vid'),
        number: window.dialmark.number,
      }));
    assert.equal(api.length, 0, 'no request before consent: ' + JSON.stringify(api));
    assert.deepEqual(await stored(), { keys: [], cookie: false, number: null });
    assert.equal((await texts(page, ['f-intl']))['f-intl'], '+7 (495) 000-00-00');

    await page.evaluate(() => window.dialmark.consent(true));
    const st = await waitNumber(page);
    const want = formats(st.number).intlParens;
    assert.equal((await poll(() => texts(page, ['f-intl']), g => g['f-intl'] == want, 3000))['f-intl'], want);
    assert.deepEqual(await stored(), { keys: ['_dm_s_' + inv.site, '_dm_src', '_dm_vid'], cookie: true, number: st.number });

    await page.evaluate(() => window.dialmark.consent(false));
    assert.deepEqual(await stored(), { keys: [], cookie: false, number: null });
    const sent = api.length;
    await new Promise(r => setTimeout(r, 1500)); // > keepalive_seconds
    assert.deepEqual(api.slice(sent).map(a => a.url), [], 'no request after consent(false)');
    assert.deepEqual(errors, [], 'no uncaught page errors');
  } finally {
    await context.close();
  }
});

// js-snippet/README.md: "Requests to the tracker carry no cookies" — also on a
// page of the tracker's own origin (like /demo), where fetch would send them by default.
test('requests to the tracker carry no cookies (same-origin page)', { timeout: 30000 }, async () => {
  const { page, context } = await openPage(browser);
  try {
    const resp = page.waitForResponse(r => r.url() == tracker.url('/v1/visits'), { timeout: 10000 });
    await page.goto(tracker.url('/demo'));
    const headers = await (await resp).request().allHeaders();
    await waitNumber(page);
    assert.equal(headers.cookie, undefined, 'no Cookie header on POST /v1/visits');
  } finally {
    await context.close();
  }
});
