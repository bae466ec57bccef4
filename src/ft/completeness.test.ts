/**
 * Holds the completeness table (completeness.ts) to the host's real
 * behaviour: it lists exactly the preview1 functions, its rows are well
 * formed and name guests that exist, and every case it claims is fed or
 * performed is exactly that when the host records. The last part calls every
 * function through a WasiHost in record mode and watches whether the call put
 * input items on the tape and which outputs it entered in the ledger. The
 * record→replay suite (test/e2e/record-replay.test.ts) checks the guests.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MessageChannel } from 'node:worker_threads';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  EXAMPLE_GUESTS,
  RECORD_REPLAY_COMPLETENESS,
  ROUND_TRIP_GUESTS,
  type OutputKind,
} from './completeness.js';
import { WASI_COVERAGE } from '../vm/wasi/coverage.js';
import {
  Clockid,
  Errno,
  Eventtype,
  Fdflags,
  Layout,
  Oflags,
  RIGHTS_ALL,
  Sdflags,
  WASI_FUNCTIONS,
  type WasiFunctionName,
} from '../wasi/abi.js';
import { WasiHost } from '../vm/wasi/host.js';
import { ProcExit } from '../vm/wasi/signals.js';
import { Channel, Ctl, CtlSlot } from '../vm/channel.js';
import { FileSystem } from '../vm/fs/fs.js';
import { realClock } from '../io/clock.js';
import { realEntropy } from '../io/entropy.js';
import { RecordTape } from './tape.js';
import { OutputKind as LedgerKind, OutputLedger } from './outputs.js';

/** The repository root (this file runs as dist/src/ft/completeness.test.js). */
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

test('the completeness table lists exactly the preview1 functions', () => {
  assert.deepEqual(Object.keys(RECORD_REPLAY_COMPLETENESS).sort(), [...WASI_FUNCTIONS].sort());
  assert.equal(WASI_FUNCTIONS.length, 46);
});

test('every row is well formed and names guests that exist', () => {
  for (const g of ROUND_TRIP_GUESTS) {
    const file = EXAMPLE_GUESTS.includes(g)
      ? path.join(ROOT, 'examples', g, `${g}.wasm`)
      : path.join(ROOT, 'test', 'guests', `${g}.wasm`);
    assert.ok(existsSync(file), `${g}: ${file} is missing`);
  }
  for (const fn of WASI_FUNCTIONS) {
    const row = RECORD_REPLAY_COMPLETENESS[fn];
    assert.ok(row.recorded.length > 0, `${fn}: no recording case`);
    for (const c of row.recorded) {
      if (c.how === 'fed') assert.ok((c.items?.length ?? 0) > 0, `${fn} (${c.on}): fed, but no items`);
      else assert.equal(c.items, undefined, `${fn} (${c.on}): performed calls hold no items`);
    }
    assert.ok(row.replayed.length > 0, `${fn}: how it is replayed is not said`);
    assert.ok(row.guests.length > 0, `${fn}: no guest exercises it`);
    assert.equal(new Set(row.guests).size, row.guests.length, `${fn}: a guest is named twice`);
    assert.equal(new Set(row.outputs).size, row.outputs.length, `${fn}: an output is named twice`);
    // A function that answers ENOSYS on purpose consumes nothing from the world.
    if (WASI_COVERAGE[fn].status === 'enosys') {
      assert.deepEqual(
        row.recorded.map((c) => c.how),
        ['performed'],
        `${fn} is ENOSYS, so it can only be performed`,
      );
    }
  }
});

// ---------------------------------------------------------------- the host, recording

/** Guest memory layout for the probes. */
const P = {
  out: 1024, // 64 bytes of results (stat structs, sizes)
  fd: 1100,
  n: 1104,
  iov: 2048, // one iovec
  path: 3000, // strings (paths)
  path2: 3500,
  buf: 4096, // 4 KiB of data
  subs: 8192, // poll subscriptions
  events: 12288,
} as const;

const LEDGER_KINDS: Record<number, OutputKind> = {
  [LedgerKind.DATA]: 'data',
  [LedgerKind.SHUTDOWN]: 'shutdown',
  [LedgerKind.CLOSE]: 'close',
};

test('each recording case is fed or performed as the table says, with the outputs it says', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'lockstep-completeness-'));
  const io = new MessageChannel();
  try {
    const ctl = new Ctl();
    const stdin = Channel.create(1024, 1024);
    const tape = new RecordTape({ write: () => {} });
    const emitted: OutputKind[] = [];
    const ledger = new OutputLedger((kind) => emitted.push(LEDGER_KINDS[kind]!));
    const host = new WasiHost(
      { args: ['probe', 'héllo'], env: ['A=1'], listenerCount: 1, stdin },
      {
        clock: realClock,
        entropy: realEntropy,
        out: { stdout: () => true, stderr: () => true },
        ctl,
        ioPort: io.port2,
        postToIo: () => {},
        fs: new FileSystem([{ guestPath: '/data', hostPath: dir }]),
      },
      { log: { mode: 'record', tape, outputs: ledger } },
    );
    const memory = new WebAssembly.Memory({ initial: 1 });
    host.bindMemory(memory);
    const imp = host.imports() as unknown as Record<WasiFunctionName, (...a: unknown[]) => number>;
    const dv = (): DataView => new DataView(memory.buffer);
    const bytes = (): Uint8Array => new Uint8Array(memory.buffer);
    const str = (ptr: number, s: string): [number, number] => {
      const b = Buffer.from(s);
      bytes().set(b, ptr);
      return [ptr, b.byteLength];
    };
    const iov = (ptr: number, len: number): number => {
      dv().setUint32(P.iov, ptr, true);
      dv().setUint32(P.iov + 4, len, true);
      return P.iov;
    };
    const u32 = (ptr: number): number => dv().getUint32(ptr, true);

    const seen = new Map<WasiFunctionName, Set<'fed' | 'performed'>>();
    const outputs = new Map<WasiFunctionName, Set<OutputKind>>();
    /** Calls fn and notes whether it was fed (it put items on the tape) and what it output. */
    const probe = (
      fn: WasiFunctionName,
      args: unknown[],
      want: number | 'exit',
      how: 'fed' | 'performed',
    ) => {
      emitted.length = 0;
      let r: number | 'exit';
      try {
        r = imp[fn](...args);
      } catch (e) {
        if (!(e instanceof ProcExit)) throw e;
        r = 'exit';
      }
      assert.equal(r, want, `${fn}(${args.join(', ')}) answered ${r}, the probe expected ${want}`);
      const got = tape.itemsUsed ? 'fed' : 'performed';
      assert.equal(got, how, `${fn}(${args.join(', ')}) was ${got}`);
      const s = seen.get(fn) ?? new Set();
      s.add(got);
      seen.set(fn, s);
      const o = outputs.get(fn) ?? new Set();
      for (const k of emitted) o.add(k);
      outputs.set(fn, o);
      return r;
    };
    const OK = Errno.SUCCESS;
    const LISTENER = 3;
    const DATA = 4;

    // Arguments, environment, clocks, randomness, the process.
    probe('args_sizes_get', [P.out, P.out + 4], OK, 'performed');
    probe('args_get', [P.out, P.buf], OK, 'performed');
    probe('environ_sizes_get', [P.out, P.out + 4], OK, 'performed');
    probe('environ_get', [P.out, P.buf], OK, 'performed');
    probe('clock_res_get', [Clockid.MONOTONIC, P.out], OK, 'performed');
    probe('clock_time_get', [Clockid.MONOTONIC, 0n, P.out], OK, 'fed');
    probe('clock_time_get', [Clockid.REALTIME, 0n, P.out], OK, 'fed');
    probe('clock_time_get', [99, 0n, P.out], Errno.INVAL, 'performed');
    probe('clock_time_get', [Clockid.MONOTONIC, 0n, 70_000], Errno.FAULT, 'performed');
    probe('random_get', [P.buf, 32], OK, 'fed');
    probe('random_get', [P.buf, 17 * 1024 * 1024], Errno.INVAL, 'performed');
    probe('random_get', [70_000, 32], Errno.FAULT, 'performed');
    probe('sched_yield', [], OK, 'performed');
    probe('proc_raise', [2], Errno.NOSYS, 'performed');

    // Preopens and the disk.
    probe('fd_prestat_get', [LISTENER, P.out], OK, 'performed');
    probe('fd_prestat_get', [DATA, P.out], OK, 'performed');
    probe('fd_prestat_dir_name', [DATA, P.buf, 16], OK, 'performed');
    probe('path_create_directory', [DATA, ...str(P.path, 'sub')], OK, 'performed');
    probe(
      'path_open',
      [DATA, 0, ...str(P.path, 'f.txt'), Oflags.CREAT, RIGHTS_ALL, RIGHTS_ALL, 0, P.fd],
      OK,
      'performed',
    );
    const file = u32(P.fd);
    bytes().set(Buffer.from('hello file'), P.buf);
    probe('fd_write', [file, iov(P.buf, 10), 1, P.n], OK, 'performed');
    probe('fd_pwrite', [file, iov(P.buf, 5), 1, 20n, P.n], OK, 'performed');
    probe('fd_seek', [file, 0n, 0, P.out], OK, 'performed');
    probe('fd_tell', [file, P.out], OK, 'performed');
    probe('fd_read', [file, iov(P.buf, 64), 1, P.n], OK, 'performed');
    probe('fd_pread', [file, iov(P.buf, 64), 1, 0n, P.n], OK, 'performed');
    probe('fd_advise', [file, 0n, 10n, 0], OK, 'performed');
    probe('fd_allocate', [file, 0n, 100n], OK, 'performed');
    probe('fd_datasync', [file], OK, 'performed');
    probe('fd_sync', [file], OK, 'performed');
    probe('fd_filestat_get', [file, P.out], OK, 'performed');
    probe('fd_filestat_set_size', [file, 50n], OK, 'performed');
    probe('fd_filestat_set_times', [file, 1n, 1n, 1], Errno.NOTSUP, 'performed');
    probe('fd_fdstat_get', [file, P.out], OK, 'performed');
    probe('fd_fdstat_set_flags', [file, Fdflags.APPEND], OK, 'performed');
    probe('fd_fdstat_set_rights', [file, 0n, 0n], OK, 'performed');
    probe('path_filestat_get', [DATA, 0, ...str(P.path, 'f.txt'), P.out], OK, 'performed');
    probe(
      'path_filestat_set_times',
      [DATA, 0, ...str(P.path, 'f.txt'), 1n, 1n, 1],
      Errno.NOTSUP,
      'performed',
    );
    probe('path_link', [DATA, 0, ...str(P.path, 'f.txt'), DATA, ...str(P.path2, 'g.txt')], OK, 'performed');
    probe('path_symlink', [...str(P.path, 'f.txt'), DATA, ...str(P.path2, 'l.txt')], OK, 'performed');
    probe('path_readlink', [DATA, ...str(P.path, 'l.txt'), P.buf, 64, P.n], OK, 'performed');
    probe('path_rename', [DATA, ...str(P.path, 'g.txt'), DATA, ...str(P.path2, 'h.txt')], OK, 'performed');
    probe('path_unlink_file', [DATA, ...str(P.path, 'h.txt')], OK, 'performed');
    probe('path_remove_directory', [DATA, ...str(P.path, 'sub')], OK, 'performed');
    probe('fd_readdir', [DATA, P.buf, 1024, 0n, P.n], OK, 'performed');
    probe(
      'path_open',
      [DATA, 0, ...str(P.path, 'f2.txt'), Oflags.CREAT, RIGHTS_ALL, RIGHTS_ALL, 0, P.fd],
      OK,
      'performed',
    );
    probe('fd_renumber', [u32(P.fd), file], OK, 'performed');
    probe('fd_close', [file], OK, 'performed');

    // stdio: how much the host took is fed; the bytes are outputs.
    bytes().set(Buffer.from('out\n'), P.buf);
    probe('fd_write', [1, iov(P.buf, 4), 1, P.n], OK, 'fed');
    probe('fd_write', [2, iov(P.buf, 4), 1, P.n], OK, 'fed');
    probe('fd_write', [77, iov(P.buf, 4), 1, P.n], Errno.BADF, 'performed');
    stdin.rxPush(Buffer.from('typed'));
    probe('fd_read', [0, iov(P.buf, 64), 1, P.n], OK, 'fed');
    probe('fd_read', [LISTENER, iov(P.buf, 64), 1, P.n], Errno.NOTCONN, 'performed');
    probe('fd_fdstat_get', [0, P.out], OK, 'performed');

    // Sockets: a connection offered by the I/O side, as NetDevice offers one.
    probe('fd_fdstat_set_flags', [LISTENER, Fdflags.NONBLOCK], OK, 'performed');
    probe('sock_accept', [LISTENER, 0, P.fd], Errno.AGAIN, 'fed');
    probe('sock_accept', [DATA, 0, P.fd], Errno.NOTSOCK, 'performed');
    const offer = (connId: number): Channel => {
      const ch = Channel.create(1024, 1024);
      io.port1.postMessage({ type: 'conn', listener: 0, connId, sab: ch.sab });
      Atomics.add(ctl.i32, CtlSlot.MSG, 1);
      return ch;
    };
    const conn = offer(1);
    probe('sock_accept', [LISTENER, 0, P.fd], OK, 'fed');
    const sock = u32(P.fd);
    probe('fd_fdstat_set_flags', [sock, Fdflags.NONBLOCK], OK, 'performed');
    conn.rxPush(Buffer.from('ping ping'));
    probe('sock_recv', [sock, iov(P.buf, 4), 1, 0, P.n, P.out], OK, 'fed');
    probe('fd_read', [sock, iov(P.buf, 64), 1, P.n], OK, 'fed');
    probe('sock_recv', [sock, iov(P.buf, 4), 1, 0, P.n, P.out], Errno.AGAIN, 'fed');
    probe('sock_recv', [DATA, iov(P.buf, 4), 1, 0, P.n, P.out], Errno.NOTSOCK, 'performed');
    bytes().set(Buffer.from('pong'), P.buf);
    probe('sock_send', [sock, iov(P.buf, 4), 1, 0, P.n], OK, 'fed');
    probe('fd_write', [sock, iov(P.buf, 4), 1, P.n], OK, 'fed');
    probe('sock_send', [DATA, iov(P.buf, 4), 1, 0, P.n], Errno.NOTSOCK, 'performed');
    probe('sock_shutdown', [sock, Sdflags.WR], OK, 'performed');
    probe('fd_fdstat_get', [sock, P.out], OK, 'performed');

    // poll_oneoff: a clock that has expired and a socket with bytes to read.
    const S = Layout.subscription;
    bytes().fill(0, P.subs, P.subs + 2 * S.size);
    dv().setUint8(P.subs + S.tag, Eventtype.CLOCK);
    dv().setUint32(P.subs + S.clockId, Clockid.MONOTONIC, true);
    dv().setBigUint64(P.subs + S.clockTimeout, 0n, true);
    dv().setUint8(P.subs + S.size + S.tag, Eventtype.FD_READ);
    dv().setUint32(P.subs + S.size + S.fd, sock, true);
    conn.rxPush(Buffer.from('more'));
    probe('poll_oneoff', [P.subs, P.events, 2, P.n], OK, 'fed');
    assert.ok(u32(P.n) >= 1, 'poll_oneoff reported no event');
    probe('poll_oneoff', [P.subs, P.events, 0, P.n], Errno.INVAL, 'performed');

    // A second connection: renumbering the first onto it closes it, which is an output.
    offer(2);
    probe('sock_accept', [LISTENER, 0, P.fd], OK, 'fed');
    probe('fd_renumber', [sock, u32(P.fd)], OK, 'performed');
    probe('fd_close', [u32(P.fd)], OK, 'performed');
    probe('fd_close', [LISTENER], OK, 'performed');
    probe('proc_exit', [3], 'exit', 'performed');

    // Every function was probed, and each table row says exactly what the host did.
    const problems: string[] = [];
    for (const fn of WASI_FUNCTIONS) {
      const row = RECORD_REPLAY_COMPLETENESS[fn];
      const claimed = [...new Set(row.recorded.map((c) => c.how))].sort();
      const found = [...(seen.get(fn) ?? [])].sort();
      if (claimed.join() !== found.join())
        problems.push(
          `${fn}: the table says ${claimed.join('+')}, the host was ${found.join('+') || 'not probed'}`,
        );
      const claimedOut = [...row.outputs].sort();
      const foundOut = [...(outputs.get(fn) ?? [])].sort();
      if (claimedOut.join() !== foundOut.join())
        problems.push(
          `${fn}: the table says outputs [${claimedOut.join(', ')}], the host made [${foundOut.join(', ')}]`,
        );
    }
    assert.deepEqual(problems, [], problems.join('\n'));
  } finally {
    io.port1.close();
    io.port2.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
