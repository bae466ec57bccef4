#!/usr/bin/env node
// The README's main job: runs the example KV server under Lockstep on a local
// port, with its disk in .demo/disk, and says how to talk to it. `npm start`
// runs scripts/setup.mjs first, which installs what is missing.
import { spawn } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const port = process.env.LOCKSTEP_DEMO_PORT ?? '6380';
const disk = path.join(root, '.demo', 'disk');
mkdirSync(disk, { recursive: true });

const child = spawn(
  process.execPath,
  [
    path.join(root, 'bin', 'lockstep.js'),
    'run',
    path.join(root, 'examples', 'kv', 'kv.wasm'),
    '--listen',
    `127.0.0.1:${port}`,
    '--disk',
    disk,
  ],
  { stdio: ['ignore', 'inherit', 'pipe'] },
);
child.stderr.on('data', (b) => {
  process.stderr.write(b);
  const m = /listening on 127\.0\.0\.1:(\d+)/.exec(b.toString());
  if (m) process.stderr.write(`talk to it with:  redis-cli -p ${m[1]}     (Ctrl-C stops the VM)\n`);
});
// Ctrl-C reaches the whole process group; the child stops itself and we exit with it.
process.on('SIGINT', () => {});
process.on('SIGTERM', () => child.kill('SIGTERM'));
child.on('exit', (code, signal) => process.exit(code ?? (signal ? 1 : 0)));
