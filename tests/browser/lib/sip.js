// SIP pieces of the browser tests: SIPp trunks and carrier calls, the real
// dialmark-router over a test tracker's Redis and ClickHouse, and the
// processes' clean-up. `sipKit(onCleanup)` binds them to a test file's
// clean-up list (each started process and temp dir is registered there).

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { env, freePort, sleep, ROOT } from './harness.js';

const FIXTURES = path.join(ROOT, 'tests/fixtures/sipp');

export const sipKit = onCleanup => {
  const tmpDir = prefix => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
    onCleanup(() => fs.rmSync(dir, { recursive: true, force: true }));
    return dir;
  };

  /** A SIPp scenario file from tests/fixtures/sipp with placeholders filled in. */
  const scenario = (dir, file, subst) => {
    let text = fs.readFileSync(path.join(FIXTURES, file), 'utf8');
    for (const [k, v] of Object.entries(subst)) text = text.replaceAll(k, v);
    const out = path.join(dir, `${Object.values(subst).join('-')}-${file}`);
    fs.writeFileSync(out, text);
    return out;
  };

  /** A long-running process (trunk or router) with its output in `log`; stopped at clean-up. */
  const daemon = (name, cmd, args, { cwd, log, env: extra } = {}) => {
    const fd = fs.openSync(log, 'a');
    const child = spawn(cmd, args, { cwd, stdio: ['ignore', fd, fd], env: { ...process.env, NO_COLOR: '1', ...extra } });
    fs.closeSync(fd);
    let exited = null;
    const exit = new Promise(r => {
      child.on('exit', (code, sig) => r((exited = { code, sig })));
      child.on('error', err => r((exited = { error: err.message })));
    });
    const orphan = () => exited || child.kill('SIGKILL');
    process.on('exit', orphan);
    child.on('exit', () => process.off('exit', orphan));
    const d = {
      name,
      get exited() {
        return exited;
      },
      tail: (n = 40) => (fs.existsSync(log) ? fs.readFileSync(log, 'utf8').split('\n').slice(-n).join('\n') : ''),
      stop: async () => {
        if (exited) return;
        child.kill('SIGTERM');
        const late = setTimeout(() => child.kill('SIGKILL'), 10000);
        await exit;
        clearTimeout(late);
      },
    };
    onCleanup(d.stop);
    return d;
  };

  /** Runs a process to its end (killed after `ms`); {code, signal, output}. */
  const runToEnd = (cmd, args, { cwd, ms }) =>
    new Promise(resolve => {
      const child = spawn(cmd, args, { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
      let output = '';
      child.stdout.on('data', d => (output += d));
      child.stderr.on('data', d => (output += d));
      const kill = setTimeout(() => child.kill('SIGKILL'), ms);
      child.on('error', err => {
        clearTimeout(kill);
        resolve({ code: null, signal: null, output: output + String(err) });
      });
      child.on('close', (code, signal) => {
        clearTimeout(kill);
        resolve({ code, signal, output });
      });
    });

  /** A SIPp trunk answering on 127.0.0.1:port (-aa: OPTIONS answered like a live trunk). */
  const trunk = (dir, name, port, scenarioArgs) =>
    daemon(`sipp-trunk-${name}`, 'sipp', [...scenarioArgs, '-i', '127.0.0.1', '-p', String(port), '-nostdin', '-bind_local', '-aa'], {
      cwd: dir,
      log: path.join(dir, `trunk-${name}.log`),
    });

  /** SIPp as the carrier: one call to `number` (no '+') through the router. */
  const carrierCall = async (dir, routerPort, number, scenarioArgs, extra = []) => {
    const port = await freePort();
    const args = [`127.0.0.1:${routerPort}`, ...scenarioArgs, '-s', number, '-i', '127.0.0.1', '-p', String(port)];
    args.push('-m', '1', '-nostdin', '-timeout', '30s', '-timeout_error', '-bind_local', ...extra);
    const r = await runToEnd('sipp', args, { cwd: dir, ms: 40000 });
    return { ...r, args };
  };

  /** The real dialmark-router over the tracker's Redis and ClickHouse database. */
  const startRouter = async ({ dir, database, trunks }) => {
    const e = env();
    const [sip, http] = [await freePort(), await freePort()];
    const cfg = path.join(dir, 'router.toml');
    const lines = [
      '[redis]',
      `url = ${JSON.stringify(e.redis)}`,
      '[clickhouse]',
      `url = ${JSON.stringify(e.clickhouse)}`,
      `database = ${JSON.stringify(database)}`,
      '[sink]',
      'flush_ms = 200',
      `spool_dir = ${JSON.stringify(path.join(dir, 'spool'))}`,
      '[router]',
      `udp = "127.0.0.1:${sip}"`,
      `tcp = "127.0.0.1:${sip}"`,
      `http = "127.0.0.1:${http}"`,
      'trusted_sources = ["127.0.0.1/32"]',
      'provisional_timeout_ms = 1000',
      'overall_timeout_seconds = 20',
      '[router.probe]',
      'interval_seconds = 0',
    ];
    trunks.forEach(([name, port], i) =>
      lines.push('[[router.trunks]]', `name = "${name}"`, `address = "127.0.0.1:${port}"`, `priority = ${i}`),
    );
    fs.writeFileSync(cfg, lines.join('\n') + '\n');
    const bin = path.join(process.env.DIALMARK_BIN_DIR, 'dialmark-router');
    const r = daemon('router', bin, ['--config', cfg], {
      cwd: dir,
      log: path.join(dir, 'router.log'),
      env: { RUST_LOG: process.env.RUST_LOG || 'info' },
    });
    const deadline = Date.now() + 20000;
    for (;;) {
      if (r.exited) throw new Error(`dialmark-router exited (${JSON.stringify(r.exited)}) before /healthz:\n${r.tail()}`);
      if (await fetch(`http://127.0.0.1:${http}/healthz`).then(x => x.status == 200, () => false)) break;
      if (Date.now() > deadline) throw new Error(`dialmark-router not healthy after 20 s:\n${r.tail()}`);
      await sleep(100);
    }
    return { ...r, sip, http };
  };

  /** Fails early and clearly when SIPp or the router binary is missing. */
  const preflight = () => {
    const router = path.join(process.env.DIALMARK_BIN_DIR || '', 'dialmark-router');
    assert.ok(fs.existsSync(router), `${router} not found (cargo build --workspace --bins)`);
    const sipp = (process.env.PATH || '').split(':').some(d => d && fs.existsSync(path.join(d, 'sipp')));
    assert.ok(sipp, 'sipp not found on PATH (apt-get install sip-tester)');
  };

  return { tmpDir, scenario, daemon, runToEnd, trunk, carrierCall, startRouter, preflight };
};
