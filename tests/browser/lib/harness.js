// Shared helpers of the browser tests: the real dialmark-tracker binary on a
// free loopback port over the Redis and ClickHouse that ops/test started,
// inventory with unique ids and numbers, headless Debian Chromium, ClickHouse
// queries, and clean-up (the test database and the Redis keys we made).

import { spawn, execFile } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';
import fs from 'node:fs';
import dgram from 'node:dgram';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { chromium } from 'playwright-core';

const run = promisify(execFile);
const HERE = path.dirname(fileURLToPath(import.meta.url));
export const ROOT = path.resolve(HERE, '../../..');
// DIALMARK_BROWSER_SNIPPET: test another build (e.g. a deliberately broken
// one, to check that the tests catch it); default: the repo's built snippet.
export const SNIPPET = path.resolve(process.env.DIALMARK_BROWSER_SNIPPET || path.join(ROOT, 'js-snippet/dist/snippet.js'));

// The site's own number that every test page shows, and where calls ring.
export const STATIC = '+74950000000';
const DESTINATION = '+74951234567';

const need = name => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set (tests/browser/run is started by ops/test, which exports it)`);
  return v;
};

export const env = () => ({
  redis: need('DIALMARK_TEST_REDIS'),
  clickhouse: need('DIALMARK_TEST_CLICKHOUSE').replace(/\/$/, ''),
  bin: path.join(need('DIALMARK_BIN_DIR'), 'dialmark-tracker'),
});

export const sleep = ms => new Promise(r => setTimeout(r, ms));
export const hex = n => randomBytes(n).toString('hex');

/** Whether `port` can be bound on loopback for TCP and UDP right now. */
const bindable = port =>
  new Promise(resolve => {
    const s = net.createServer();
    s.once('error', () => resolve(false));
    s.listen(port, '127.0.0.1', () => {
      const u = dgram.createSocket('udp4');
      u.once('error', () => s.close(() => resolve(false)));
      u.bind(port, '127.0.0.1', () => u.close(() => s.close(() => resolve(true))));
    });
  });

let nextPort = 0;
/**
 * A loopback port free for TCP and UDP, for a child to bind. Taken from
 * 20000-31999, below the kernel's ephemeral range (32768 and up), so no
 * outgoing connection can be given it between this check and the child's
 * bind (as `free_port` in tests/src/process.rs); each run walks its own
 * stretch of the range.
 */
export const freePort = async () => {
  const LOW = 20000, SPAN = 12000, start = (process.pid % 60) * 200;
  for (let i = 0; i < SPAN; i++) {
    const port = LOW + ((start + nextPort++) % SPAN);
    if (await bindable(port)) return port;
  }
  throw new Error('no free port in 20000-31999');
};

/** Whether something is bound to UDP `port` (/proc/net/udp): a child is ready. */
export const udpBound = port => {
  const hex = ':' + port.toString(16).toUpperCase().padStart(4, '0');
  return fs
    .readFileSync('/proc/net/udp', 'utf8')
    .split('\n')
    .slice(1)
    .some(l => (l.trim().split(/\s+/)[1] || '').endsWith(hex));
};

/** Polls `fn` until `ok(value)` or `ms` pass; returns the last value. */
export const poll = async (fn, ok, ms = 5000, every = 50) => {
  const end = Date.now() + ms;
  let v;
  for (;;) {
    v = await fn();
    if (ok(v) || Date.now() > end) return v;
    await sleep(every);
  }
};

// ---------------------------------------------------------------- ClickHouse

export const chQuery = async (sql, database) => {
  const { clickhouse } = env();
  const url = clickhouse + '/' + (database ? '?database=' + encodeURIComponent(database) : '');
  const r = await fetch(url, { method: 'POST', body: sql });
  const text = await r.text();
  if (!r.ok) throw new Error(`ClickHouse ${r.status} for ${sql}: ${text}`);
  return text;
};

export const chRows = async (sql, database) => JSON.parse(await chQuery(sql + ' FORMAT JSON', database)).data;

// ------------------------------------------------------- Redis (clean-up only)

// A minimal RESP client: enough for SCAN, DEL and SREM on the shared test Redis.
const redisCommands = (url, commands) =>
  new Promise((resolve, reject) => {
    const u = new URL(url);
    const sock = net.connect(+(u.port || 6379), u.hostname || '127.0.0.1');
    const db = u.pathname.replace(/^\//, '');
    if (db) commands = [['SELECT', db], ...commands];
    const replies = [];
    let buf = Buffer.alloc(0);
    const parse = (b, i) => {
      const nl = b.indexOf('\r\n', i);
      if (nl < 0) return null;
      const t = String.fromCharCode(b[i]), line = b.toString('utf8', i + 1, nl);
      if (t == '+' || t == ':') return [line, nl + 2];
      if (t == '-') return [new Error(line), nl + 2];
      if (t == '$') {
        const n = +line;
        if (n < 0) return [null, nl + 2];
        if (b.length < nl + 2 + n + 2) return null;
        return [b.toString('utf8', nl + 2, nl + 2 + n), nl + 2 + n + 2];
      }
      if (t == '*') {
        const n = +line, out = [];
        let j = nl + 2;
        for (let k = 0; k < n; k++) {
          const r = parse(b, j);
          if (!r) return null;
          out.push(r[0]);
          j = r[1];
        }
        return [out, j];
      }
      throw new Error('bad RESP reply');
    };
    sock.on('data', d => {
      buf = Buffer.concat([buf, d]);
      for (;;) {
        const r = parse(buf, 0);
        if (!r) break;
        replies.push(r[0]);
        buf = buf.subarray(r[1]);
      }
      if (replies.length == commands.length) {
        sock.end();
        resolve(db ? replies.slice(1) : replies);
      }
    });
    sock.on('error', reject);
    sock.setTimeout(5000, () => sock.destroy(new Error('redis timeout')));
    sock.write(
      commands
        .map(c => `*${c.length}\r\n` + c.map(a => `$${Buffer.byteLength(String(a))}\r\n${a}\r\n`).join(''))
        .join(''),
    );
  });

const redisForget = async (url, { sites, pools, numbers }) => {
  const keys = [];
  for (const p of pools) {
    let cursor = '0';
    do {
      const [[next, found]] = await redisCommands(url, [['SCAN', cursor, 'MATCH', `dm:{pool:${p}}:*`, 'COUNT', 1000]]);
      keys.push(...found);
      cursor = next;
    } while (cursor != '0');
    keys.push(`dm:pool:${p}`);
  }
  for (const s of sites) keys.push(`dm:site:${s}`);
  for (const n of numbers) keys.push(`dm:route:${n}`);
  const cmds = [];
  if (keys.length) cmds.push(['DEL', ...keys]);
  if (sites.length) cmds.push(['SREM', 'dm:sites', ...sites]);
  if (pools.length) cmds.push(['SREM', 'dm:pools', ...pools]);
  if (numbers.length) cmds.push(['SREM', 'dm:stock', ...numbers], ['ZREM', 'dm:quarantine', ...numbers]);
  if (cmds.length) await redisCommands(url, cmds);
};

// ------------------------------------------------------------------ tracker

/** A fresh random tracking-number range: +7495 and 7 digits, clear of 000xxxx. */
const numberRange = count => {
  const start = randomInt(1_000_000, 9_999_999 - count);
  return Array.from({ length: count }, (_, i) => '+7495' + String(start + i).padStart(7, '0'));
};

/**
 * Starts `dialmark-tracker serve` with its own ClickHouse database.
 * `page(site)` returns the HTML served at /demo (written to a temp file).
 */
export const startTracker = async () => {
  const e = env();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dialmark-browser-'));
  const port = await freePort();
  const origin = `http://127.0.0.1:${port}`;
  const database = 't_browser_' + hex(4);
  const cfg = path.join(dir, 'tracker.toml');
  const demo = path.join(dir, 'demo.html');
  const logFile = path.join(dir, 'tracker.log');
  fs.writeFileSync(demo, '<!doctype html><title>not yet</title>');
  fs.writeFileSync(
    cfg,
    [
      '[redis]',
      `url = ${JSON.stringify(e.redis)}`,
      '[clickhouse]',
      `url = ${JSON.stringify(e.clickhouse)}`,
      `database = ${JSON.stringify(database)}`,
      '[sink]',
      'flush_ms = 100',
      '[tracker]',
      `listen = "127.0.0.1:${port}"`,
      'admin_token = "t"',
      `snippet_path = ${JSON.stringify(SNIPPET)}`,
      `demo_page = ${JSON.stringify(demo)}`,
      'hold_seconds = 3',
      'cooldown_seconds = 1',
      'pool_sample_seconds = 1',
      '',
    ].join('\n'),
  );
  const log = fs.openSync(logFile, 'a');
  const child = spawn(e.bin, ['--config', cfg, 'serve'], {
    cwd: dir,
    stdio: ['ignore', log, log],
    env: { ...process.env, NO_COLOR: '1', RUST_LOG: process.env.RUST_LOG || 'info' },
  });
  fs.closeSync(log);
  let exited = null;
  const exit = new Promise(r => child.on('exit', (code, sig) => r((exited = { code, sig }))));
  // If this test process dies before after() runs, do not leave the tracker behind.
  const orphan = () => exited || child.kill('SIGKILL');
  process.on('exit', orphan);
  child.on('exit', () => process.off('exit', orphan));
  const made = { sites: [], pools: [], numbers: [] };
  const tail = () => fs.readFileSync(logFile, 'utf8').split('\n').slice(-30).join('\n');

  const t = {
    port,
    origin,
    database,
    dir,
    logFile,
    url: p => origin + p,
    tail,

    /** `dialmark-tracker --config CFG ARGS...`, stdout. */
    cli: async (...args) => {
      try {
        const { stdout } = await run(e.bin, ['--config', cfg, ...args], {
          cwd: dir,
          env: { ...process.env, NO_COLOR: '1', RUST_LOG: 'warn' },
          timeout: 20000,
        });
        return stdout;
      } catch (err) {
        throw new Error(`dialmark-tracker ${args.join(' ')} failed: ${err.stderr || err.message}`);
      }
    },

    /** A new site (allowed origins: this tracker, or `origins`) with a pool of `size` fresh numbers. */
    provision: async ({ size = 5, origins = [origin] } = {}) => {
      const id = 'bt_' + hex(4);
      const numbers = numberRange(size + 1);
      const overflow = numbers.pop();
      const inv = path.join(dir, `inventory-${id}.toml`);
      fs.writeFileSync(
        inv,
        [
          '[[sites]]',
          `id = "${id}"`,
          `origins = ${JSON.stringify(origins)}`,
          `replace = ["${STATIC}"]`,
          'display_mask = "+7 (###) ###-##-##"',
          `default_pool = "${id}"`,
          '',
          '[[pools]]',
          `id = "${id}"`,
          `site = "${id}"`,
          `overflow_number = "${overflow}"`,
          `destinations = ["${DESTINATION}"]`,
          `range_start = "${numbers[0]}"`,
          `count = ${size}`,
          '',
        ].join('\n'),
      );
      made.sites.push(id);
      made.pools.push(id);
      made.numbers.push(...numbers, overflow);
      await t.cli('admin', 'apply', inv);
      return { site: id, pool: id, numbers, overflow };
    },

    poolStats: async pool => JSON.parse((await t.cli('admin', 'pool-stats', pool)).trim().split('\n').pop()),

    /** Writes the HTML that GET /demo serves (read from disk on each request). */
    setPage: html => fs.writeFileSync(demo, html),

    /** Visit rows matching `where`, polled until `ok(rows)` (10 s at most). */
    visits: (where, ok = rows => rows.length > 0) =>
      poll(
        () =>
          chRows(
            `SELECT site, pool, number, toString(number_kind) AS kind, session_id, visitor_id, url, ` +
              `utm_source, utm_campaign, gclid, user_agent, no_lease, channel FROM visits WHERE ${where} ORDER BY ts`,
            database,
          ),
        ok,
        10000,
        200,
      ),

    stop: async () => {
      if (!exited) {
        child.kill('SIGTERM');
        const late = setTimeout(() => child.kill('SIGKILL'), 12000);
        await exit;
        clearTimeout(late);
      }
      try {
        await chQuery(`DROP DATABASE IF EXISTS ${database}`);
      } finally {
        await redisForget(e.redis, made).catch(err => console.error('redis clean-up:', err.message));
        fs.rmSync(dir, { recursive: true, force: true });
      }
    },
  };

  // Ready when /healthz answers 200 (the tracker migrates its database first).
  const deadline = Date.now() + 20000;
  for (;;) {
    if (exited) {
      const msg = `dialmark-tracker exited (${JSON.stringify(exited)}) before /healthz:\n${tail()}`;
      await t.stop().catch(() => {});
      throw new Error(msg);
    }
    const ok = await fetch(origin + '/healthz').then(r => r.status == 200, () => false);
    if (ok) break;
    if (Date.now() > deadline) {
      const msg = `dialmark-tracker not healthy after 20 s:\n${tail()}`;
      await t.stop().catch(() => {});
      throw new Error(msg);
    }
    await sleep(100);
  }
  return t;
};

// ------------------------------------------------------------------ browser

export const CHROMIUM = '/usr/bin/chromium';

export const launch = () =>
  chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--headless=new',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });

const apiOf = new WeakMap(); // page -> its tracker API requests, for error messages

/** A visitor's Chrome, as a site sees it (not HeadlessChrome). */
export const HUMAN_UA = 'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36';

/**
 * A fresh context (own cookies and localStorage) and page, with uncaught page
 * errors and every request to the tracker API recorded. It looks like a
 * visitor's browser (the tracker gives automation the site's own number, no
 * lease) unless `automated`: then it keeps HeadlessChrome and
 * `navigator.webdriver`.
 */
export const openPage = async (browser, { automated = false } = {}) => {
  const context = await browser.newContext(automated ? {} : { userAgent: HUMAN_UA });
  if (!automated) {
    await context.addInitScript(() => Object.defineProperty(Navigator.prototype, 'webdriver', { get: () => false }));
  }
  const page = await context.newPage();
  const errors = [];
  const api = []; // {url, method, body, at, status?, failed?}
  apiOf.set(page, api);
  page.on('pageerror', e => errors.push(String(e && e.stack ? e.stack : e)));
  page.on('request', r => {
    if (/\/v1\/visits/.test(r.url())) {
      const rec = { url: r.url(), method: r.method(), body: r.postData(), at: Date.now() };
      api.push(rec);
      r.response().then(
        res => (rec.status = res ? res.status() : null),
        () => {},
      );
    }
  });
  page.on('requestfailed', r => {
    const rec = api.find(a => a.url == r.url() && !a.failed && a.status === undefined);
    if (rec) rec.failed = r.failure() ? r.failure().errorText : 'failed';
  });
  return { context, page, errors, api };
};

/** Text of each `#id` in `ids`, keyed by id (null when missing). */
export const texts = (page, ids) =>
  page.evaluate(
    ids => Object.fromEntries(ids.map(i => [i, document.getElementById(i) ? document.getElementById(i).textContent : null])),
    ids,
  );

/** Waits for the snippet to report a number; returns {number, session, display}. */
export const dialmarkState = page =>
  page.evaluate(() => (window.dialmark ? { number: window.dialmark.number, session: window.dialmark.session, display: window.dialmark.display } : null));

export const waitNumber = async (page, ms = 8000) => {
  try {
    await page.waitForFunction(() => window.dialmark && window.dialmark.number, null, { timeout: ms, polling: 50 });
  } catch (e) {
    throw new Error(`no tracking number after ${ms} ms; tracker API requests: ${JSON.stringify(apiOf.get(page) || [])}`, { cause: e });
  }
  return dialmarkState(page);
};

/**
 * The leased number written like the site's own number in each format the
 * tests use (national number = the 10 digits after +7).
 */
export const formats = e164 => {
  const n = e164.replace(/^\+7/, '');
  const [a, b, c, d] = [n.slice(0, 3), n.slice(3, 6), n.slice(6, 8), n.slice(8)];
  return {
    intlParens: `+7 (${a}) ${b}-${c}-${d}`, // +7 (495) 000-00-00
    trunkSpaces: `8 ${a} ${b} ${c} ${d}`, // 8 495 000 00 00
    intlDashes: `+7-${a}-${b}-${c}-${d}`, // +7-495-000-00-00
    trunkParens: `8 (${a}) ${b}-${c}-${d}`, // 8 (495) 000-00-00
    plain: `+7${n}`, // +74950000000
  };
};
