#!/usr/bin/env node
// Installs what Lockstep needs on a fresh machine that has only Node.js:
// Debian packages through apt-get where a needed command is missing, then the
// npm packages (npm ci, which also compiles the TypeScript and builds the web
// console through `prepare`).
// It is idempotent and quick when everything is already there.
//
// Usage: node scripts/setup.mjs [--profile run|test]
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const profile = process.argv.includes('--profile')
  ? process.argv[process.argv.indexOf('--profile') + 1]
  : 'test';

// command or file that must exist -> Debian package that provides it
const runNeeds = [['redis-cli', 'redis-tools']];
const testNeeds = [
  ...runNeeds,
  ['redis-benchmark', 'redis-tools'],
  ['redis-server', 'redis-server'],
  ['gcc', 'gcc'],
  ['/usr/bin/clang', 'clang'],
  ['/usr/bin/wasm-ld', 'lld'],
  ['/usr/lib/wasm32-wasi/libc.a', 'wasi-libc'],
  ['/usr/lib/llvm-14/lib/clang/14.0.6/lib/wasi/libclang_rt.builtins-wasm32.a', 'libclang-rt-14-dev-wasm32'],
  ['/usr/bin/rustc', 'rustc'],
  ['/usr/lib/rustlib/wasm32-wasi', 'libstd-rust-dev-wasm32'],
  ['ip', 'iproute2'],
  ['/usr/bin/etcd', 'etcd-server'],
  ['nsenter', 'util-linux'],
  ['arping', 'iputils-arping'],
  ['/usr/sbin/iptables', 'iptables'],
  // The console's browser test drives Debian's Chromium through playwright-core (no browser download).
  ['/usr/bin/chromium', 'chromium'],
];
const needs = profile === 'run' ? runNeeds : testNeeds;

function have(what) {
  if (what.startsWith('/')) return existsSync(what);
  return spawnSync('sh', ['-c', `command -v ${what}`], { stdio: 'ignore' }).status === 0;
}

function log(msg) {
  process.stderr.write(`setup: ${msg}\n`);
}

const missing = [...new Set(needs.filter(([what]) => !have(what)).map(([, pkg]) => pkg))];
if (missing.length > 0) {
  if (process.getuid && process.getuid() !== 0) {
    log(
      `missing Debian packages: ${missing.join(' ')}; run as root or install them: apt-get install ${missing.join(' ')}`,
    );
    process.exit(1);
  }
  log(`installing Debian packages: ${missing.join(' ')}`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  execFileSync('apt-get', ['update', '-q'], { stdio: ['ignore', 'ignore', 'inherit'], env });
  execFileSync('apt-get', ['install', '-y', '-q', '--no-install-recommends', ...missing], {
    stdio: ['ignore', 'ignore', 'inherit'],
    env,
  });
}

// npm packages: reinstall when package-lock.json changed since the last install.
const lockHash = createHash('sha256')
  .update(readFileSync(path.join(root, 'package-lock.json')))
  .digest('hex');
const stamp = path.join(root, 'node_modules', '.lockstep-setup-stamp');
const installed = existsSync(stamp) && readFileSync(stamp, 'utf8') === lockHash;
if (!installed) {
  log('installing npm packages (npm ci)');
  execFileSync('npm', ['ci', '--no-audit', '--no-fund'], {
    cwd: root,
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  writeFileSync(stamp, lockHash);
} else {
  // Sources may have changed since the last build; tsc is incremental, so this is quick, and so
  // is the console's build (a few seconds).
  execFileSync(path.join(root, 'node_modules', '.bin', 'tsc'), ['-p', 'tsconfig.json'], {
    cwd: root,
    stdio: 'inherit',
  });
  execFileSync(
    path.join(root, 'node_modules', '.bin', 'vite'),
    ['build', '--config', 'console/vite.config.ts', '--logLevel', 'warn'],
    { cwd: root, stdio: 'inherit' },
  );
}
