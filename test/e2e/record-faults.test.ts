/**
 * Record and replay when things fail for real: the recorder killed with
 * SIGKILL mid-load (its log is a truncated prefix that still replays), and
 * the replaying host's own disk filling up (that side's failure, exit 1, not
 * a divergence).
 *
 * The disk-full test mounts a small tmpfs (this suite runs as root); it is
 * unmounted in `finally` even when the test fails.
 *
 * Budget: about 20 s on the 2-core CI machine.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import { cpSync, mkdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { repoPath, runLockstep, startLockstep, tempDir } from './harness.js';

const execFileP = promisify(execFile);
const KV = repoPath('examples', 'kv', 'kv.wasm');

function lastJson(stdout: string): Record<string, unknown> {
  const lines = stdout.trimEnd().split('\n');
  return JSON.parse(lines[lines.length - 1]!) as Record<string, unknown>;
}

async function benchmark(port: number, args: string[]): Promise<void> {
  await execFileP('redis-benchmark', ['-h', '127.0.0.1', '-p', String(port), '-q', ...args], {
    timeout: 30_000,
  });
}

test(
  'a recorder killed with SIGKILL under load leaves a prefix that replays',
  { timeout: 60_000 },
  async () => {
    const t = tempDir('rec-kill');
    try {
      const disk = path.join(t.dir, 'disk');
      const before = path.join(t.dir, 'disk.before');
      const log = path.join(t.dir, 'kv.log');
      mkdirSync(disk);
      cpSync(disk, before, { recursive: true });
      const vm = await startLockstep(['record', KV, '--listen', '127.0.0.1:0', '--disk', disk, '--log', log]);
      try {
        await benchmark(vm.addresses[0]!.port, ['-t', 'set,get', '-n', '3000', '-c', '4']);
      } finally {
        await vm.stop('SIGKILL');
      }
      assert.ok(statSync(log).size > 1000, 'the log holds the frames written before the kill');
      const r = await runLockstep(['replay', KV, '--log', log, '--disk', before], { timeoutMs: 60_000 });
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stderr, /truncated prefix/);
      const s = lastJson(r.stdout);
      assert.equal(s['stop'], 'end-of-log');
      // 3000 SETs and 3000 GETs made many more host calls than this.
      assert.ok((s['events'] as number) > 6000, `events: ${String(s['events'])}`);
    } finally {
      t.cleanup();
    }
  },
);

test(
  "the replaying host's disk filling up is that host's failure (exit 1), not a divergence",
  { timeout: 60_000 },
  async () => {
    const t = tempDir('rec-enospc');
    const small = path.join(t.dir, 'small');
    mkdirSync(small);
    let mounted = false;
    try {
      const disk = path.join(t.dir, 'disk');
      const log = path.join(t.dir, 'kv.log');
      mkdirSync(disk);
      const vm = await startLockstep(['record', KV, '--listen', '127.0.0.1:0', '--disk', disk, '--log', log]);
      try {
        // About 2 MB of append-only file: 2000 SETs of 1000-byte values, each on its own key.
        await benchmark(vm.addresses[0]!.port, [
          '-t',
          'set',
          '-n',
          '2000',
          '-c',
          '4',
          '-d',
          '1000',
          '-r',
          '100000',
        ]);
      } finally {
        const r = await vm.stop('SIGTERM');
        assert.equal(r.code, 0, r.stderr);
      }
      // The replay's copy of the (empty) disk lives on a 256 KiB tmpfs: the AOF cannot fit.
      execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=256k', 'tmpfs', small]);
      mounted = true;
      const r = await runLockstep(['replay', KV, '--log', log, '--disk', small], { timeoutMs: 60_000 });
      assert.equal(r.code, 1, `exit ${r.code}\n${r.stderr}`);
      assert.match(r.stderr, /replaying host's disk failed/);
      assert.doesNotMatch(r.stderr, /divergence/);
    } finally {
      if (mounted) execFileSync('umount', [small]);
      t.cleanup();
    }
  },
);

test(
  'record refuses a log inside a folder the VM can see, and creates nothing',
  { timeout: 30_000 },
  async () => {
    const t = tempDir('rec-inside');
    try {
      const log = path.join(t.dir, 'x.log');
      const r = await runLockstep([
        'record',
        repoPath('test', 'guests', 'files.wasm'),
        '--disk',
        t.dir,
        '--log',
        log,
      ]);
      assert.equal(r.code, 125, r.stderr);
      assert.match(r.stderr, /is inside .* which the VM sees as \/data/);
      assert.throws(() => statSync(log), /ENOENT/);
    } finally {
      t.cleanup();
    }
  },
);
