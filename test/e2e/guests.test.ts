/**
 * One real guest program per WASI area (test/guests, unmodified C and Rust
 * built against wasi-libc and Rust std), run through `lockstep run` as a user
 * runs it. Self-checking guests print `ok NAME` / `FAIL NAME: …` and exit 0
 * only when every check passed.
 *
 * Every run records which host functions the guest called (--trace-calls);
 * the last test proves that every preview1 function is exercised by a real
 * guest, or is one of the functions that return ENOSYS on purpose.
 *
 * Budget: about 60 s on the 2-core CI machine.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { mkdirSync, readFileSync, readdirSync, writeFileSync, existsSync } from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { BIN, CACHE_DIR, repoPath, runLockstep, startLockstep, tempDir, type RunResult } from './harness.js';
import { connect, readExactly } from './clients.js';
import { WASI_COVERAGE } from '../../src/vm/wasi/coverage.js';
import { WASI_FUNCTIONS } from '../../src/wasi/abi.js';

const guest = (name: string): string => repoPath('test', 'guests', `${name}.wasm`);
let tmp: { dir: string; cleanup: () => void };
let traceSeq = 0;

function traceArg(): string[] {
  return ['--trace-calls', path.join(tmp.dir, `trace-${traceSeq++}.json`)];
}

function assertAllOk(r: RunResult, name: string): void {
  const fails = r.stdout.split('\n').filter((l) => l.startsWith('FAIL'));
  assert.deepEqual(fails, [], `${name} failed checks:\n${r.stdout}\n${r.stderr}`);
  assert.equal(r.code, 0, `${name} exit ${r.code}\n${r.stdout}\n${r.stderr}`);
  assert.ok(/^ok /m.test(r.stdout), `${name} printed no checks`);
}

function freshDisk(name: string): string {
  const d = path.join(tmp.dir, `disk-${name}-${traceSeq}`);
  mkdirSync(d, { recursive: true });
  return d;
}

before(() => {
  tmp = tempDir('guests');
});
after(() => tmp.cleanup());

test('args and environ, with non-ASCII and empty strings', { timeout: 30_000 }, async () => {
  const r = await runLockstep([
    'run',
    guest('args_env'),
    ...traceArg(),
    '--env',
    'A=1',
    '--env',
    'UNICODE=ñandú',
    '--env',
    'EMPTY=',
    '--',
    'héllo',
    '日本語',
    '',
    '🚀x',
  ]);
  assertAllOk(r, 'args_env');
});

test('clocks and random_get', { timeout: 30_000 }, async () => {
  assertAllOk(await runLockstep(['run', guest('clocks_random'), ...traceArg()]), 'clocks_random');
});

test('files and directories on the disk', { timeout: 30_000 }, async () => {
  assertAllOk(
    await runLockstep(['run', guest('files'), ...traceArg(), '--disk', freshDisk('files')]),
    'files',
  );
});

test('sandbox: no escape through .., absolute paths or symlinks', { timeout: 30_000 }, async () => {
  const extra = path.join(tmp.dir, 'extra');
  mkdirSync(extra, { recursive: true });
  writeFileSync(path.join(extra, 'hello.txt'), 'hello\n');
  // A file right next to the disk: an escape through ".." would find it.
  const outside = path.join(tmp.dir, 'outside-secret.txt');
  writeFileSync(outside, 'secret\n');
  const disk = freshDisk('sandbox');
  const r = await runLockstep([
    'run',
    guest('sandbox'),
    ...traceArg(),
    '--disk',
    disk,
    '--dir',
    `${extra}::/extra`,
  ]);
  assertAllOk(r, 'sandbox');
  assert.equal(readFileSync(outside, 'utf8'), 'secret\n');
  assert.deepEqual(readdirSync(extra).sort(), ['hello.txt']);
});

test('preopen scan skips listeners and finds /data (C, wasi-libc)', { timeout: 30_000 }, async () => {
  const r = await runLockstep([
    'run',
    guest('prestat'),
    ...traceArg(),
    '--listen',
    '127.0.0.1:0',
    '--listen',
    '127.0.0.1:0',
    '--disk',
    freshDisk('prestat'),
    '--',
    'LLD',
  ]);
  assertAllOk(r, 'prestat');
});

test('exit codes: exit(), proc_exit, and returning from main', { timeout: 30_000 }, async () => {
  for (const code of [0, 3, 42, 255]) {
    const r = await runLockstep(['run', guest('exit_code'), ...traceArg(), '--', String(code)]);
    assert.equal(r.code, code, r.stderr);
    assert.match(r.stdout, new RegExp(`exiting with ${code}`));
  }
  // A status holds 8 bits: 256 must not read as success.
  for (const [code, status] of [
    [256, 255],
    [300, 44],
  ] as const) {
    const r = await runLockstep(['run', guest('exit_code'), '--', String(code)]);
    assert.equal(r.code, status, r.stderr);
  }
  const r = await runLockstep(['run', guest('proc_exit_direct'), ...traceArg(), '--', '9']);
  assert.equal(r.code, 9);
  assert.equal(r.stdout, 'before proc_exit\n');
});

test('sched_yield', { timeout: 30_000 }, async () => {
  assertAllOk(await runLockstep(['run', guest('yield'), ...traceArg()]), 'yield');
});

test('stdio: byte-exact stdout and stderr, stdin to EOF', { timeout: 30_000 }, async () => {
  const input = Buffer.from('some input bytes\n\u00e9\u0000end');
  const r = await runLockstep(['run', guest('stdio'), ...traceArg()], { stdin: input });
  assert.equal(r.code, 0, r.stderr);
  let h = 0xcbf29ce484222325n;
  for (const b of input) h = BigInt.asUintN(64, (h ^ BigInt(b)) * 0x100000001b3n);
  const lines = r.stdout.split('\n');
  assert.equal(lines[0], 'hello stdout');
  assert.equal(lines[1], 'partial line');
  assert.ok(
    r.stdout.endsWith(`stdin bytes=${input.length} fnv1a=${h.toString(16).padStart(16, '0')}\n`),
    r.stdout.slice(-200),
  );
  assert.equal(Buffer.byteLength(r.stdout) > 131_072, true);
  // Lockstep's own progress line (a slow load on a busy machine) is not the guest's output.
  const guestStderr = r.stderr.replace(/^lockstep: instrumenting [^\n]*\n/, '');
  assert.equal(guestStderr, 'hello stderr\npartial-err\ndone\n');
});

test('poll_oneoff: timeouts, listener and connection readiness, hangup', { timeout: 30_000 }, async () => {
  const vm = await startLockstep(['run', guest('poll'), ...traceArg(), '--listen', '127.0.0.1:0']);
  try {
    const s = await connect(vm.addresses[0]!.port);
    await new Promise((r) => setTimeout(r, 100));
    s.write('ping\n');
    const got = await readExactly(s, 5, { buf: Buffer.alloc(0) });
    assert.equal(got.toString(), 'pong\n');
    s.end();
    const r = await vm.exited;
    assertAllOk(r, 'poll');
  } finally {
    await vm.stop();
  }
});

test('sockets: accept, peek, EAGAIN, 1 MiB send, echo, half-close', { timeout: 60_000 }, async () => {
  const vm = await startLockstep(['run', guest('sockets'), ...traceArg(), '--listen', '127.0.0.1:0']);
  try {
    const s = await connect(vm.addresses[0]!.port);
    const st = { buf: Buffer.alloc(0) };
    s.write('hello');
    assert.equal((await readExactly(s, 5, st)).toString(), 'world');
    const big = await readExactly(s, 1 << 20, st);
    for (let i = 0; i < big.length; i++) {
      if (big[i] !== ((i * 31 + 7) & 0xff)) assert.fail(`byte ${i} is ${big[i]}`);
    }
    // Echo 300 KiB (more than a ring) while reading concurrently.
    const payload = Buffer.alloc(300 * 1024);
    for (let i = 0; i < payload.length; i++) payload[i] = (i * 7) & 0xff;
    const echoed = readExactly(s, payload.length, st);
    s.write(payload);
    assert.ok((await echoed).equals(payload), 'echo differs');
    s.end();
    assert.equal((await readExactly(s, 4, st)).toString(), 'bye\n');
    const r = await vm.exited;
    assertAllOk(r, 'sockets');
  } finally {
    await vm.stop();
  }
});

test('Rust std guest: TcpListener::from_raw_fd(3) and std::fs on /data', { timeout: 30_000 }, async () => {
  const vm = await startLockstep([
    'run',
    guest('rust_fs_net'),
    ...traceArg(),
    '--listen',
    '127.0.0.1:0',
    '--disk',
    freshDisk('rust'),
  ]);
  try {
    // The guest checks its files first, then accepts; connect retries until it listens (it already does).
    const s = await connect(vm.addresses[0]!.port);
    s.write('lockstep é\n');
    const st = { buf: Buffer.alloc(0) };
    const reply = await readExactly(s, Buffer.byteLength('é petskcol\n'), st);
    assert.equal(reply.toString(), 'é petskcol\n');
    s.end();
    assertAllOk(await vm.exited, 'rust_fs_net');
  } finally {
    await vm.stop();
  }
});

test(
  'a guest that exits while its client keeps the connection open: bytes delivered, VM ends',
  {
    timeout: 30_000,
  },
  async () => {
    const vm = await startLockstep(['run', guest('send_and_exit'), ...traceArg(), '--listen', '127.0.0.1:0']);
    try {
      const s = net.connect({ port: vm.addresses[0]!.port, host: '127.0.0.1', allowHalfOpen: true });
      const got = await readExactly(s, 3, { buf: Buffer.alloc(0) });
      assert.equal(got.toString(), 'hi\n');
      const r = await vm.exited; // must not wait for this client, which never closes
      assert.equal(r.code, 0, r.stderr);
      s.destroy();
    } finally {
      await vm.stop();
    }
  },
);

test('stdout to a closed pipe: the guest sees EPIPE instead of spinning', { timeout: 30_000 }, async () => {
  const r = await new Promise<number | null>((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, 'run', guest('yes')], {
      env: { ...process.env, LOCKSTEP_CACHE_DIR: CACHE_DIR },
      stdio: ['ignore', 'pipe', 'ignore'],
    });
    child.stdout.once('data', () => child.stdout.destroy()); // like `| head -1`
    child.on('error', reject);
    child.on('close', (code) => resolve(code));
  });
  assert.equal(r, 3, 'yes.wasm exits 3 when a write fails');
});

test('direct calls: rarely used functions, ENOSYS ones, and error paths', { timeout: 30_000 }, async () => {
  const extra = path.join(tmp.dir, 'direct-extra');
  mkdirSync(extra, { recursive: true });
  const r = await runLockstep([
    'run',
    guest('wasi_direct'),
    ...traceArg(),
    '--listen',
    '127.0.0.1:0',
    '--disk',
    freshDisk('direct'),
    '--dir',
    `${extra}::/extra`,
  ]);
  assertAllOk(r, 'wasi_direct');
});

test('every preview1 function is exercised by a real guest, or is ENOSYS on purpose', () => {
  const called = new Map<string, Set<string>>();
  for (const f of readdirSync(tmp.dir).filter((n) => n.startsWith('trace-'))) {
    const file = path.join(tmp.dir, f);
    if (!existsSync(file)) continue;
    const t = JSON.parse(readFileSync(file, 'utf8')) as Record<string, Record<string, number>>;
    for (const [fn, counts] of Object.entries(t)) {
      const s = called.get(fn) ?? new Set<string>();
      for (const errno of Object.keys(counts)) s.add(errno);
      called.set(fn, s);
    }
  }
  const missing: string[] = [];
  for (const fn of WASI_FUNCTIONS) {
    const row = WASI_COVERAGE[fn];
    const seen = called.get(fn);
    if (row.status === 'enosys') {
      // It must have been called and answered ENOSYS (52).
      if (!seen?.has('52')) missing.push(`${fn} (expected an ENOSYS answer)`);
    } else if (!seen || seen.size === 0) {
      missing.push(fn);
    } else if (fn !== 'proc_exit' && !seen.has('0')) {
      missing.push(`${fn} (never succeeded)`);
    }
  }
  assert.deepEqual(missing, [], `not exercised by any guest: ${missing.join(', ')}`);
});
