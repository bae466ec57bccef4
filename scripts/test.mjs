#!/usr/bin/env node
// Runs the whole test suite: compiles, then runs every compiled *.test.js with
// Node's test runner. Run through `npm test`, which first runs scripts/setup.mjs.
//
// Usage: npm test [-- PATTERN...]   (patterns filter test files by substring)
import { execFileSync, spawnSync } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
execFileSync(path.join(root, 'node_modules', '.bin', 'tsc'), ['-p', 'tsconfig.json'], {
  cwd: root,
  stdio: 'inherit',
});
// The console too: the browser tests drive the console built from these sources.
execFileSync(
  path.join(root, 'node_modules', '.bin', 'vite'),
  ['build', '--config', 'console/vite.config.ts', '--logLevel', 'warn'],
  { cwd: root, stdio: 'inherit' },
);

function find(dir, out) {
  let names;
  try {
    names = readdirSync(dir);
  } catch {
    return out;
  }
  for (const name of names.sort()) {
    const p = path.join(dir, name);
    if (statSync(p).isDirectory()) find(p, out);
    else if (name.endsWith('.test.js')) out.push(p);
  }
  return out;
}

const patterns = process.argv.slice(2);
const files = [
  ...find(path.join(root, 'dist', 'src'), []),
  ...find(path.join(root, 'dist', 'test'), []),
].filter((f) => patterns.length === 0 || patterns.some((p) => f.includes(p)));
if (files.length === 0) {
  process.stderr.write('test: no test files found\n');
  process.exit(1);
}
// Two files at a time on this 2-core machine; every slow test states its own budget (timeout).
const r = spawnSync(process.execPath, ['--test', '--test-concurrency=2', '--test-reporter=spec', ...files], {
  cwd: root,
  stdio: 'inherit',
});
process.exit(r.status ?? 1);
