/**
 * Snapshot files from the command line (issue 6): `lockstep run … --snapshot-file
 * FILE` writes one on SIGUSR2, `lockstep run … --from FILE` starts from it,
 * and a truncated, bit-flipped, wrong-version or mismatched snapshot is
 * refused with exit 125 and a message naming the problem, before anything
 * runs.
 *
 * Budget: about 10 s.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Redis } from 'ioredis';
import { repoPath, runLockstep, startLockstep, tempDir } from './harness.js';
import { waitFor } from './ft-harness.js';

const KV = repoPath('examples', 'kv', 'kv.wasm');
const SESSIONS = repoPath('examples', 'sessions', 'sessions.wasm');

async function client(port: number): Promise<Redis> {
  const r = new Redis({ port, lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
  await r.connect();
  return r;
}

test(
  'run --snapshot-file writes a snapshot on SIGUSR2; run --from continues from it; damage is refused',
  { timeout: 90_000 },
  async (t) => {
    const tmp = tempDir('snap-cli');
    try {
      const file = path.join(tmp.dir, 'kv.snap');
      const disk = path.join(tmp.dir, 'disk');
      const { mkdirSync } = await import('node:fs');
      mkdirSync(disk);
      const a = await startLockstep([
        'run',
        KV,
        '--listen',
        '127.0.0.1:0',
        '--disk',
        disk,
        '--snapshot-file',
        file,
      ]);
      try {
        const r = await client(a.addresses[0]!.port);
        for (let i = 0; i < 20; i++) await r.set(`k${i}`, `v${i}`);
        assert.equal(await r.incr('n'), 1);
        r.disconnect();
        a.child.kill('SIGUSR2');
        await waitFor(() => /snapshot written/.test(a.stderr()), 20_000, 'the snapshot');
        assert.ok(existsSync(file));
      } finally {
        await a.stop('SIGINT');
      }
      const bytes = readFileSync(file);
      t.diagnostic(`snapshot: ${bytes.byteLength} bytes`);

      const b = await startLockstep(['run', KV, '--listen', '127.0.0.1:0', '--disk', disk, '--from', file]);
      try {
        const r = await client(b.addresses[0]!.port);
        assert.equal(await r.get('k13'), 'v13');
        assert.equal(await r.incr('n'), 2);
        r.disconnect();
      } finally {
        await b.stop('SIGINT');
      }

      const cases: { name: string; bytes: Buffer; args?: string[]; message: RegExp }[] = [
        {
          name: 'truncated',
          bytes: bytes.subarray(0, bytes.byteLength - 7),
          message: /refused \(truncated\)/,
        },
        {
          name: 'bit-flipped',
          bytes: (() => {
            const b2 = Buffer.from(bytes);
            b2[Math.floor(b2.byteLength / 2)]! ^= 0x10;
            return b2;
          })(),
          message: /refused \(corrupt\)/,
        },
        {
          name: 'wrong version',
          bytes: (() => {
            const b2 = Buffer.from(bytes);
            b2.writeUInt16LE(99, 8);
            return b2;
          })(),
          message: /refused \(version\)/,
        },
        {
          name: 'not a snapshot',
          bytes: Buffer.from('hello'),
          message: /refused \((not-a-snapshot|truncated)\)/,
        },
        {
          name: 'another module',
          bytes,
          args: [SESSIONS],
          message: /does not fit this VM: .*another module/,
        },
        {
          name: 'other arguments',
          bytes,
          args: [KV, '--', 'extra'],
          message: /does not fit this VM: its arguments/,
        },
      ];
      for (const c of cases) {
        const f = path.join(tmp.dir, `${c.name.replace(/\W/g, '-')}.snap`);
        writeFileSync(f, c.bytes);
        const [wasm, ...rest] = c.args ?? [KV];
        const r = await runLockstep(
          ['run', wasm!, '--listen', '127.0.0.1:0', '--disk', disk, '--from', f, ...rest],
          {
            timeoutMs: 30_000,
          },
        );
        t.diagnostic(`${c.name}: exit ${r.code}: ${r.stderr.trim().split('\n').pop()}`);
        assert.equal(r.code, 125, `${c.name}: ${r.stderr}`);
        assert.match(r.stderr, c.message, c.name);
      }
    } finally {
      tmp.cleanup();
    }
  },
);
