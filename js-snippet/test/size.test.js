// Size budget: dist/snippet.js must stay <= 3 KB minified + gzipped.
// `npm test` builds first; if the file is missing (plain `node --test`), build it here.
import test from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import zlib from 'node:zlib';
import { execSync } from 'node:child_process';

const BUDGET = 3072;

test('dist/snippet.js is within the 3 KB gzip budget', () => {
  const f = new URL('../dist/snippet.js', import.meta.url);
  if (!fs.existsSync(f)) execSync('npm run build', { cwd: new URL('..', import.meta.url), stdio: 'ignore' });
  const src = fs.readFileSync(f), gz = zlib.gzipSync(src).length;
  console.log(`snippet.js: ${src.length} bytes minified, ${gz} bytes gzipped (budget ${BUDGET})`);
  assert.ok(gz <= BUDGET, `gzipped size ${gz} > ${BUDGET}`);
  assert.ok(!/\bimport\b|\bexport\b/.test(src.toString()), 'bundle is a plain IIFE');
});
