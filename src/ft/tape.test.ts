// Tests of the tapes (tape.ts): the exact bytes of a record, RecordTape's
// frames read back through the scanner and replayed by a ReplayTape (with a
// fake sink and source), divergence on a different function, arguments,
// errno or effect, the end of the log, and flushing with a record in progress.
//
// The random round trip prints its seed; set LOCKSTEP_TEST_SEED to replay one.
import { test } from 'node:test';
import { crc32 } from 'node:zlib';
import assert from 'node:assert/strict';
import { WASI_FUNCTIONS } from '../wasi/abi.js';
import {
  Divergence,
  EndOfLog,
  RecordTape,
  ReplayHostFailure,
  ReplayTape,
  type FrameSink,
  type RecordsFrame,
} from './tape.js';
import {
  FRAME_BODY_BYTES_TARGET,
  FrameKind,
  encodeFrame,
  encodeHeader,
  preamble,
  type Trailer,
} from './log/format.js';
import { LogScanner, type ScanFrame } from './log/scanner.js';
import { seededRandom, testSeed } from '../core/prng.js';

const SEED = testSeed();

const prng = seededRandom;

const FN = (name: (typeof WASI_FUNCTIONS)[number]): number => WASI_FUNCTIONS.indexOf(name);
const CLOCK = FN('clock_time_get');
const RANDOM = FN('random_get');
const WRITE = FN('fd_write');
const EXIT = FN('proc_exit');
const NO_HOST_ERRNOS: ReadonlySet<number> = new Set();

/** A sink that keeps every frame as one buffer (pieces joined), in order. */
class MemorySink implements FrameSink {
  frames: Buffer[] = [];
  write(pieces: readonly Uint8Array[]): void {
    // The pieces are views into the tape's buffer; copy them, as a ring would.
    this.frames.push(Buffer.concat(pieces.map((p) => Buffer.from(p))));
  }
}

const TRAILER: Trailer = {
  events: 0,
  memorySha256: '00'.repeat(32),
  outputSha256: '00'.repeat(32),
  exitCode: 0,
  stop: 'exit',
  outputs: 0,
  outputBytes: 0,
};

/** Runs the sink's frames through a LogScanner, behind a preamble and a header, as a log file would be. */
function scanFrames(frames: Buffer[]): ScanFrame[] {
  const s = new LogScanner();
  const header = encodeFrame(
    FrameKind.HEADER,
    encodeHeader({
      moduleSha256: new Uint8Array(32),
      sourceSha256: new Uint8Array(32),
      memoryMaxPages: 1,
      callDepthMax: 1,
      fuelBudget: null,
      args: [],
      env: [],
      listeners: [],
      preopens: [],
      stdin: false,
      nodeVersion: '',
      arch: '',
      createdAtMs: 0,
    }),
  );
  const out = s.push(Buffer.concat([preamble(), header, ...frames]));
  s.end();
  return out.slice(1);
}

/** A FrameSource over the RECORDS frames of a scan. */
function sourceOf(frames: ScanFrame[]): { next(): RecordsFrame | null; taken: number } {
  const records = frames.filter((f) => f.type === 'records');
  const src = {
    taken: 0,
    next(): RecordsFrame | null {
      const f = records[src.taken];
      if (f === undefined) return null;
      src.taken++;
      return { firstSeq: f.firstSeq, count: f.count, records: f.records };
    },
  };
  return src;
}

/** Reads a varint of a frame at `at`; returns the value and the offset after it. */
function varintAt(b: Buffer, at: number): [number, number] {
  let v = 0;
  let mul = 1;
  for (;;) {
    const x = b[at++]!;
    v += (x & 0x7f) * mul;
    mul *= 128;
    if ((x & 0x80) === 0) return [v, at];
  }
}

/**
 * Takes one RECORDS frame apart by hand (the scanner wants a log that starts
 * at event 0): checks its kind, length and CRC, and returns its fields.
 */
function recordsOf(frame: Buffer): { firstSeq: number; count: number; records: number[] } {
  assert.equal(frame[0], FrameKind.RECORDS);
  const [len, bodyAt] = varintAt(frame, 1);
  assert.equal(frame.byteLength, bodyAt + len + 4, 'frame length');
  assert.equal(frame.readUInt32LE(bodyAt + len), crc32(frame.subarray(0, bodyAt + len)) >>> 0, 'frame CRC');
  const [firstSeq, at1] = varintAt(frame, bodyAt);
  const [count, at2] = varintAt(frame, at1);
  return { firstSeq, count, records: [...frame.subarray(at2, bodyAt + len)] };
}

test('record bytes: b0 (function, effect bit, ret bit), argHash LE, items, ret varint, effect u16', () => {
  const sink = new MemorySink();
  const tape = new RecordTape(sink);
  // A fed call: clock_time_get with a clock delta of -3 (zigzag 5), errno 0, no effect hash.
  tape.begin(CLOCK, 0xbeef);
  tape.putZ(-3n);
  tape.end(0, null);
  // A performed call that wrote memory: fd_write to a file, errno 0, effect 0x1234.
  tape.begin(WRITE, 0x0102);
  tape.end(0, 0x1234);
  // A failed performed call: errno 300 (a two-byte varint), effect absent.
  tape.begin(WRITE, 0xffff);
  tape.end(300, null);
  // proc_exit: no return value at all.
  tape.begin(EXIT, 0x0001);
  tape.end(undefined, null);
  assert.equal(tape.events, 4);
  assert.equal(sink.frames.length, 0, 'nothing leaves the tape before a flush');
  tape.flush();
  assert.equal(sink.frames.length, 1);
  const { firstSeq, count, records } = recordsOf(sink.frames[0]!);
  assert.equal(firstSeq, 0);
  assert.equal(count, 4);
  assert.deepEqual(records, [
    ...[CLOCK, 0xef, 0xbe, 5],
    ...[WRITE | 0x40, 0x02, 0x01, 0x34, 0x12],
    ...[WRITE | 0x80, 0xff, 0xff, 0xac, 0x02],
    ...[EXIT, 0x01, 0x00],
  ]);
});

test('every function id fits the six bits of b0', () => {
  assert.ok(WASI_FUNCTIONS.length <= 64, `${WASI_FUNCTIONS.length} functions`);
});

test('record → scan → replay: inputs come back, and the tape counts calls', () => {
  const sink = new MemorySink();
  const rec = new RecordTape(sink);
  const entropy = Uint8Array.of(9, 8, 7, 6, 5);
  rec.begin(CLOCK, 0x1111);
  rec.putZ(1_700_000_000_000_000_000n);
  rec.end(0, null);
  rec.begin(RANDOM, 0x2222);
  rec.putViews([entropy.subarray(0, 2), entropy.subarray(2)], 4);
  rec.end(0, null);
  rec.begin(WRITE, 0x3333);
  rec.putU(26);
  rec.end(0, null);
  rec.begin(WRITE, 0x4444);
  rec.end(8, 0x5555);
  rec.begin(EXIT, 0x6666);
  rec.end(undefined, null);
  rec.finish({ ...TRAILER, events: 5 });

  const scanned = scanFrames(sink.frames);
  assert.equal(scanned.at(-1)!.type, 'trailer');
  const rep = new ReplayTape(sourceOf(scanned), WASI_FUNCTIONS);
  rep.begin(CLOCK, 0x1111, []);
  assert.equal(rep.takeZ(), 1_700_000_000_000_000_000n);
  rep.end(0, () => assert.fail('a fed call is not checked for effects'), NO_HOST_ERRNOS);
  rep.begin(RANDOM, 0x2222, []);
  assert.deepEqual([...rep.takeRaw(4)], [9, 8, 7, 6]);
  rep.end(0, () => null, NO_HOST_ERRNOS);
  rep.begin(WRITE, 0x3333, []);
  assert.equal(rep.takeU(), 26);
  rep.end(0, () => null, NO_HOST_ERRNOS);
  rep.begin(WRITE, 0x4444, []);
  assert.equal(rep.itemsUsed, false);
  rep.end(8, () => 0x5555, NO_HOST_ERRNOS);
  rep.begin(EXIT, 0x6666, []);
  rep.endNoReturn();
  assert.equal(rep.events, 5);
  assert.throws(() => rep.begin(CLOCK, 0x1111, []), EndOfLog);
});

/** Records `n` calls of clock_time_get with delta i and argHash i, flushed as one frame. */
function simpleLog(n: number): ReturnType<typeof sourceOf> {
  const sink = new MemorySink();
  const rec = new RecordTape(sink);
  for (let i = 0; i < n; i++) {
    rec.begin(CLOCK, i);
    rec.putZ(BigInt(i));
    rec.end(0, null);
  }
  rec.flush();
  return sourceOf(scanFrames(sink.frames));
}

function divergence(fn: () => void): Divergence {
  try {
    fn();
  } catch (e) {
    if (e instanceof Divergence) return e;
    throw e;
  }
  assert.fail('expected a divergence');
}

test('divergence: another function at the same call names the call, the expected and the found', () => {
  const rep = new ReplayTape(simpleLog(3), WASI_FUNCTIONS);
  rep.begin(CLOCK, 0, []);
  rep.takeZ();
  rep.end(0, () => null, NO_HOST_ERRNOS);
  const d = divergence(() => rep.begin(RANDOM, 1, [100, 8]));
  assert.equal(d.seq, 1);
  assert.deepEqual(d.expected, { fn: 'clock_time_get', argHash: 1 });
  assert.deepEqual(d.found, { fn: 'random_get', argHash: 1, args: [100, 8] });
  assert.match(d.detail, /expected clock_time_get, found random_get/);
  assert.match(d.message, /divergence at call 1/);
});

test('divergence: the same function with different arguments', () => {
  const rep = new ReplayTape(simpleLog(3), WASI_FUNCTIONS);
  const d = divergence(() => rep.begin(CLOCK, 0xabcd, [1, 0n, 64]));
  assert.equal(d.seq, 0);
  assert.equal(d.expected.argHash, 0);
  assert.equal(d.found.argHash, 0xabcd);
  assert.match(d.detail, /clock_time_get was called with different arguments/);
});

test('divergence: a different errno, and a different effect of a performed call', () => {
  const sink = new MemorySink();
  const rec = new RecordTape(sink);
  rec.begin(WRITE, 1);
  rec.end(0, 0x1234);
  rec.begin(WRITE, 2);
  rec.end(0, 0x1234);
  rec.flush();
  const rep = new ReplayTape(sourceOf(scanFrames(sink.frames)), WASI_FUNCTIONS);
  rep.begin(WRITE, 1, []);
  const d1 = divergence(() => rep.end(28, () => 0x1234, NO_HOST_ERRNOS));
  assert.equal(d1.seq, 0);
  assert.match(d1.detail, /returned errno 28, the recording had 0/);

  const rep2 = new ReplayTape(sourceOf(scanFrames(sink.frames)), WASI_FUNCTIONS);
  rep2.begin(WRITE, 1, []);
  rep2.end(0, () => 0x1234, NO_HOST_ERRNOS);
  rep2.begin(WRITE, 2, []);
  const d2 = divergence(() => rep2.end(0, () => 0x4321, NO_HOST_ERRNOS));
  assert.equal(d2.seq, 1);
  assert.match(d2.detail, /wrote different bytes/);
  // A call that wrote nothing where the recording wrote something diverges too.
  const rep3 = new ReplayTape(sourceOf(scanFrames(sink.frames)), WASI_FUNCTIONS);
  rep3.begin(WRITE, 1, []);
  divergence(() => rep3.end(0, () => null, NO_HOST_ERRNOS));
});

test("the replaying host's own disk errors are a host failure for performed calls only", () => {
  const sink = new MemorySink();
  const rec = new RecordTape(sink);
  rec.begin(WRITE, 1);
  rec.end(0, null);
  rec.begin(WRITE, 2);
  rec.putU(26);
  rec.end(0, null);
  rec.flush();
  const ENOSPC = 51;
  const hostErrnos = new Set([ENOSPC]);
  const rep = new ReplayTape(sourceOf(scanFrames(sink.frames)), WASI_FUNCTIONS);
  rep.begin(WRITE, 1, []);
  assert.throws(
    () => rep.end(ENOSPC, () => null, hostErrnos),
    (e: unknown) =>
      e instanceof ReplayHostFailure && e.seq === 0 && e.errno === ENOSPC && e.expectedErrno === 0,
  );
  // A fed call's errno came from the log, so a mismatch there is a divergence whatever the errno.
  const rep2 = new ReplayTape(sourceOf(scanFrames(sink.frames)), WASI_FUNCTIONS);
  rep2.begin(WRITE, 1, []);
  rep2.end(0, () => null, hostErrnos);
  rep2.begin(WRITE, 2, []);
  rep2.takeU();
  divergence(() => rep2.end(ENOSPC, () => null, hostErrnos));
});

test('end of log: EndOfLog at the first call with no record, also on an empty log', () => {
  const rep = new ReplayTape(simpleLog(1), WASI_FUNCTIONS);
  rep.begin(CLOCK, 0, []);
  rep.takeZ();
  rep.end(0, () => null, NO_HOST_ERRNOS);
  assert.throws(() => rep.begin(CLOCK, 1, []), EndOfLog);
  assert.equal(rep.events, 1);
  const empty = new ReplayTape({ next: () => null }, WASI_FUNCTIONS);
  assert.throws(() => empty.begin(CLOCK, 0, []), EndOfLog);
});

test('a record that lacks the inputs the call asks for is a divergence, not a crash', () => {
  const rep = new ReplayTape(simpleLog(1), WASI_FUNCTIONS);
  rep.begin(CLOCK, 0, []);
  const d = divergence(() => rep.takeRaw(1000));
  assert.equal(d.seq, 0);
  assert.match(d.detail, /does not decode/);
});

test('flush with a record in progress: the complete records leave, the partial one stays', () => {
  const sink = new MemorySink();
  const rec = new RecordTape(sink);
  rec.begin(CLOCK, 0xaaaa);
  rec.putZ(5n);
  rec.end(0, null);
  rec.begin(RANDOM, 0xbbbb);
  rec.putRaw(Uint8Array.of(1, 2));
  // A call blocks (poll, accept) with its record open: the vCPU flushes before sleeping.
  rec.flush();
  assert.equal(sink.frames.length, 1);
  assert.deepEqual(recordsOf(sink.frames[0]!), {
    firstSeq: 0,
    count: 1,
    records: [CLOCK, 0xaa, 0xaa, 10],
  });
  rec.putRaw(Uint8Array.of(3));
  rec.end(0, null);
  rec.flush();
  assert.equal(sink.frames.length, 2);
  assert.deepEqual(recordsOf(sink.frames[1]!), {
    firstSeq: 1,
    count: 1,
    records: [RANDOM, 0xbb, 0xbb, 1, 2, 3],
  });
  // The two frames form a log that replays.
  const rep = new ReplayTape(sourceOf(scanFrames(sink.frames)), WASI_FUNCTIONS);
  rep.begin(CLOCK, 0xaaaa, []);
  assert.equal(rep.takeZ(), 5n);
  rep.end(0, () => null, NO_HOST_ERRNOS);
  rep.begin(RANDOM, 0xbbbb, []);
  assert.deepEqual([...rep.takeRaw(3)], [1, 2, 3]);
  rep.end(0, () => null, NO_HOST_ERRNOS);
});

test('a flush with nothing complete writes nothing; abort drops the record in progress', () => {
  const sink = new MemorySink();
  const rec = new RecordTape(sink);
  rec.flush();
  rec.begin(CLOCK, 1);
  rec.putZ(1n);
  rec.flush();
  assert.equal(sink.frames.length, 0);
  rec.abort();
  assert.equal(rec.events, 0);
  rec.begin(WRITE, 2);
  rec.end(0, null);
  rec.flush();
  assert.deepEqual(recordsOf(sink.frames[0]!), { firstSeq: 0, count: 1, records: [WRITE, 2, 0] });
});

test('finish drops a record in progress, then writes the last records and the trailer', () => {
  const sink = new MemorySink();
  const rec = new RecordTape(sink);
  rec.begin(CLOCK, 1);
  rec.putZ(1n);
  rec.end(0, null);
  rec.begin(CLOCK, 2);
  rec.putZ(2n);
  rec.finish({ ...TRAILER, events: 1 });
  const scanned = scanFrames(sink.frames);
  assert.deepEqual(
    scanned.map((f) => f.type),
    ['records', 'trailer'],
  );
  const r = scanned[0]!;
  assert.ok(r.type === 'records' && r.count === 1);
});

test('a tape that starts at a later sequence number numbers its frames from there', () => {
  const sink = new MemorySink();
  const rec = new RecordTape(sink, { startSeq: 1000 });
  rec.begin(WRITE, 7);
  rec.end(0, null);
  assert.equal(rec.events, 1001);
  rec.flush();
  assert.deepEqual(recordsOf(sink.frames[0]!), { firstSeq: 1000, count: 1, records: [WRITE, 7, 0] });
});

test(`random record/replay round trip across automatic flushes (seed ${SEED})`, () => {
  const rnd = prng(SEED);
  const sink = new MemorySink();
  const rec = new RecordTape(sink);
  type Call = {
    fn: number;
    arg: number;
    items: (bigint | number | Uint8Array)[];
    ret: number;
    effect: number | null;
  };
  const calls: Call[] = [];
  let bytes = 0;
  // Enough bytes for several automatic flushes at FRAME_BODY_BYTES_TARGET.
  while (bytes < FRAME_BODY_BYTES_TARGET * 3) {
    const fn = Math.floor(rnd() * WASI_FUNCTIONS.length);
    const arg = Math.floor(rnd() * 0x10000);
    const items: Call['items'] = [];
    const k = Math.floor(rnd() * 4);
    for (let i = 0; i < k; i++) {
      const t = Math.floor(rnd() * 3);
      if (t === 0) items.push(BigInt(Math.floor(rnd() * 2 ** 40)) - 2n ** 39n);
      else if (t === 1) items.push(Math.floor(rnd() * 2 ** 30));
      else items.push(Uint8Array.from({ length: Math.floor(rnd() * 2000) }, () => Math.floor(rnd() * 256)));
    }
    const ret = rnd() < 0.8 ? 0 : Math.floor(rnd() * 77);
    const effect = items.length === 0 && rnd() < 0.5 ? Math.floor(rnd() * 0x10000) : null;
    calls.push({ fn, arg, items, ret, effect });
    rec.begin(fn, arg);
    for (const it of items) {
      if (typeof it === 'bigint') rec.putZ(it);
      else if (typeof it === 'number') rec.putU(it);
      else {
        rec.putRaw(it);
        bytes += it.byteLength;
      }
    }
    rec.end(ret, effect);
    bytes += 4;
    // Now and then the vCPU sleeps and flushes by itself.
    if (rnd() < 0.01) rec.flush();
  }
  rec.finish({ ...TRAILER, events: calls.length });
  assert.ok(sink.frames.length >= 4, `seed ${SEED}: ${sink.frames.length} frames`);
  const scanned = scanFrames(sink.frames);
  let seq = 0;
  for (const f of scanned) {
    if (f.type !== 'records') continue;
    assert.equal(f.firstSeq, seq, `seed ${SEED}`);
    seq += f.count;
  }
  assert.equal(seq, calls.length);
  const rep = new ReplayTape(sourceOf(scanned), WASI_FUNCTIONS);
  for (const [i, c] of calls.entries()) {
    rep.begin(c.fn, c.arg, []);
    for (const it of c.items) {
      if (typeof it === 'bigint') assert.equal(rep.takeZ(), it, `seed ${SEED}, call ${i}`);
      else if (typeof it === 'number') assert.equal(rep.takeU(), it, `seed ${SEED}, call ${i}`);
      else
        assert.deepEqual(Buffer.from(rep.takeRaw(it.byteLength)), Buffer.from(it), `seed ${SEED}, call ${i}`);
    }
    rep.end(c.ret, () => c.effect, NO_HOST_ERRNOS);
  }
  assert.throws(() => rep.begin(0, 0, []), EndOfLog);
});

test('with a flush delay, complete records wait for it before a sleep; without one they leave at once', () => {
  let nowMs = 100;
  const sink = new MemorySink();
  const rec = new RecordTape(sink, { flushDelayMs: 5, nowMs: () => nowMs });
  assert.equal(rec.beforeSleep(), Infinity, 'nothing waits');
  rec.begin(WRITE, 1);
  rec.end(0, null);
  nowMs = 102;
  rec.begin(WRITE, 2);
  rec.end(0, null);
  // The oldest record is 2 ms old: sleep at most 3 ms more, then flush.
  assert.equal(rec.beforeSleep(), 3);
  assert.equal(sink.frames.length, 0);
  nowMs = 105;
  assert.equal(rec.beforeSleep(), Infinity);
  assert.equal(sink.frames.length, 1, 'both records left in one frame');
  // The delay counts from the oldest record of the next frame.
  rec.begin(WRITE, 3);
  rec.end(0, null);
  assert.equal(rec.beforeSleep(), 5);

  const eager = new MemorySink();
  const now = new RecordTape(eager);
  now.begin(WRITE, 1);
  now.end(0, null);
  assert.equal(now.beforeSleep(), Infinity);
  assert.equal(eager.frames.length, 1, 'flushed at the first sleep');
});
