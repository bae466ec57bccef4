// Tests of the log scanner's classification (scanner.ts), the part of replay
// that decides between a complete log, a truncated prefix (exit 0), a corrupt
// log (exit 4) and a refused one (exit 5):
// - a complete log, fed whole, byte by byte and in random chunks;
// - a cut at every byte offset: a prefix or "corrupt" before the header is
//   whole, never anything else, never a crash;
// - every single-bit flip: corrupt before the last frame, a torn tail in it,
//   and never accepted as complete;
// - bad magic, unknown version, an empty log, structure errors (order, gaps,
//   frames after the trailer), damaged lengths, and large frames.
//
// Random chunkings print their seed; set LOCKSTEP_TEST_SEED to replay one.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ByteWriter } from '../../core/bytes.js';
import {
  FrameKind,
  encodeFrame,
  encodeHeader,
  encodeTrailer,
  preamble,
  recordsPrefix,
  type LogHeader,
  type Trailer,
} from './format.js';
import { LogError, LogScanner, type ScanEnd, type ScanFrame } from './scanner.js';
import { seededRandom, testSeed } from '../../core/prng.js';

const SEED = testSeed();

const prng = seededRandom;

const HEADER: LogHeader = {
  moduleSha256: new Uint8Array(32).fill(1),
  sourceSha256: new Uint8Array(32).fill(2),
  memoryMaxPages: 8192,
  callDepthMax: 10_000,
  fuelBudget: null,
  args: ['app'],
  env: [],
  listeners: [],
  preopens: [],
  stdin: true,
  nodeVersion: 'v20',
  arch: 'x64',
  createdAtMs: 1,
};

function trailer(events: number): Trailer {
  return {
    events,
    memorySha256: '11'.repeat(32),
    outputSha256: '22'.repeat(32),
    exitCode: 0,
    stop: 'exit',
    outputs: 0,
    outputBytes: 0,
  };
}

/** A RECORDS frame: the scanner does not decode records, so any bytes do (one byte per record here). */
function recordsFrame(firstSeq: number, count: number, fill = 0x05): Uint8Array {
  const body = Buffer.concat([recordsPrefix(firstSeq, count), new Uint8Array(count * 3).fill(fill)]);
  return encodeFrame(FrameKind.RECORDS, body);
}

interface Built {
  bytes: Buffer;
  /** [start, end) of every frame, header first. */
  frames: { start: number; end: number; events: number }[];
}

/** preamble, header, RECORDS frames of the given counts, and a trailer unless `withTrailer` is false. */
function buildLog(counts: number[], withTrailer = true): Built {
  const pieces: Uint8Array[] = [preamble()];
  const frames: Built['frames'] = [];
  let at = pieces[0]!.byteLength;
  const add = (f: Uint8Array, events: number): void => {
    pieces.push(f);
    frames.push({ start: at, end: at + f.byteLength, events });
    at += f.byteLength;
  };
  add(encodeFrame(FrameKind.HEADER, encodeHeader(HEADER)), 0);
  let seq = 0;
  for (const c of counts) {
    add(recordsFrame(seq, c), c);
    seq += c;
  }
  if (withTrailer) add(encodeFrame(FrameKind.TRAILER, encodeTrailer(trailer(seq))), 0);
  return { bytes: Buffer.concat(pieces), frames };
}

type Outcome = { frames: ScanFrame[]; end: ScanEnd } | { error: LogError };

/** Scans `bytes` cut into pieces at the given sizes (the rest in one piece). Any non-LogError throw fails the test. */
function scan(bytes: Uint8Array, chunk: (() => number) | null = null): Outcome {
  const s = new LogScanner();
  const frames: ScanFrame[] = [];
  try {
    let off = 0;
    while (off < bytes.byteLength) {
      const n = chunk === null ? bytes.byteLength : Math.max(1, chunk());
      frames.push(...s.push(bytes.subarray(off, off + n)));
      off += n;
    }
    return { frames, end: s.end() };
  } catch (e) {
    if (e instanceof LogError) return { error: e };
    throw e;
  }
}

function describeOutcome(o: Outcome): string {
  if ('error' in o) return `LogError(${o.error.kind}: ${o.error.message})`;
  return `complete=${o.end.complete} events=${o.end.events} note=${o.end.note} frames=${o.frames.length}`;
}

function assertCorrupt(o: Outcome, what: string): LogError {
  assert.ok(
    'error' in o && o.error.kind === 'corrupt',
    `${what}: expected a corrupt log, got ${describeOutcome(o)}`,
  );
  return o.error;
}

/** A frame summary that compares frames from different scans. */
function shape(frames: ScanFrame[]): string[] {
  return frames.map((f) =>
    f.type === 'records'
      ? `records@${f.offset}:${f.firstSeq}+${f.count}:${Buffer.from(f.records).toString('hex')}`
      : `${f.type}@${f.offset}`,
  );
}

const SMALL = buildLog([3, 2, 1]);

test('a complete log: every frame at its offset, complete, with its event count', () => {
  const o = scan(SMALL.bytes);
  assert.ok(!('error' in o), describeOutcome(o));
  assert.deepEqual(o.end, { complete: true, note: null, events: 6 });
  assert.deepEqual(
    o.frames.map((f) => [f.type, f.offset]),
    SMALL.frames.map((f, i) => [
      i === 0 ? 'header' : i === SMALL.frames.length - 1 ? 'trailer' : 'records',
      f.start,
    ]),
  );
  const h = o.frames[0]!;
  assert.ok(h.type === 'header');
  // The scanner may hand out Buffers for the hashes; compare their bytes.
  assert.deepEqual(
    { ...h.header, moduleSha256: [...h.header.moduleSha256], sourceSha256: [...h.header.sourceSha256] },
    { ...HEADER, moduleSha256: [...HEADER.moduleSha256], sourceSha256: [...HEADER.sourceSha256] },
  );
  const t = o.frames.at(-1)!;
  assert.ok(t.type === 'trailer');
  assert.deepEqual(t.trailer, trailer(6));
});

test(`chunking does not matter: byte by byte and random chunks give the same frames (seed ${SEED})`, () => {
  const whole = scan(SMALL.bytes);
  assert.ok(!('error' in whole));
  const byByte = scan(SMALL.bytes, () => 1);
  assert.ok(!('error' in byByte), describeOutcome(byByte));
  assert.deepEqual(shape(byByte.frames), shape(whole.frames));
  assert.deepEqual(byByte.end, whole.end);
  const rnd = prng(SEED);
  for (let i = 0; i < 50; i++) {
    const o = scan(SMALL.bytes, () => 1 + Math.floor(rnd() * 40));
    assert.ok(!('error' in o), `seed ${SEED}, chunking ${i}: ${describeOutcome(o)}`);
    assert.deepEqual(shape(o.frames), shape(whole.frames), `seed ${SEED}, chunking ${i}`);
    assert.deepEqual(o.end, whole.end, `seed ${SEED}, chunking ${i}`);
  }
});

test('frames are yielded as soon as their bytes are in, before the log goes on', () => {
  const s = new LogScanner();
  const headerEnd = SMALL.frames[0]!.end;
  assert.deepEqual(s.push(SMALL.bytes.subarray(0, headerEnd - 1)), []);
  const got = s.push(SMALL.bytes.subarray(headerEnd - 1, headerEnd));
  assert.deepEqual(
    got.map((f) => f.type),
    ['header'],
  );
  assert.equal(s.events, 0);
  const r = s.push(SMALL.bytes.subarray(headerEnd, SMALL.frames[1]!.end));
  assert.deepEqual(
    r.map((f) => f.type),
    ['records'],
  );
  assert.equal(s.events, 3);
});

test(`a cut at every byte offset is a truncated prefix, or corrupt before the header is whole (seed ${SEED})`, () => {
  const rnd = prng(SEED);
  const headerEnd = SMALL.frames[0]!.end;
  for (let cut = 0; cut <= SMALL.bytes.byteLength; cut++) {
    const prefix = SMALL.bytes.subarray(0, cut);
    for (const chunking of [null, () => 1 + Math.floor(rnd() * 17)]) {
      const o = scan(prefix, chunking);
      const what = `cut at ${cut} of ${SMALL.bytes.byteLength}${chunking ? ` (seed ${SEED})` : ''}`;
      if (cut < headerEnd) {
        assertCorrupt(o, what);
        continue;
      }
      assert.ok(!('error' in o), `${what}: ${describeOutcome(o)}`);
      const whole = SMALL.frames.filter((f) => f.end <= cut);
      const events = whole.reduce((n, f) => n + f.events, 0);
      assert.equal(o.frames.length, whole.length, `${what}: frames`);
      assert.equal(o.end.events, events, `${what}: events`);
      if (cut === SMALL.bytes.byteLength) {
        assert.equal(o.end.complete, true, what);
        continue;
      }
      assert.equal(o.end.complete, false, `${what}: a prefix must not pass for a complete log`);
      const onBoundary = SMALL.frames.some((f) => f.end === cut);
      assert.match(o.end.note ?? '', onBoundary ? /no trailer/ : /torn/, what);
    }
  }
});

/** Checks every single-bit flip of SMALL's frames under one chunking. */
function checkFlips(chunking: (() => number) | null, how: string): void {
  const last = SMALL.frames.at(-1)!;
  const first = SMALL.frames[0]!;
  for (let at = first.start; at < SMALL.bytes.byteLength; at++) {
    for (let bit = 0; bit < 8; bit++) {
      const bad = Buffer.from(SMALL.bytes);
      bad[at] = bad[at]! ^ (1 << bit);
      const what = `bit ${bit} of byte ${at}, ${how}`;
      const o = scan(bad, chunking);
      if (at < last.start) {
        assertCorrupt(o, what);
      } else {
        assert.ok(!('error' in o), `${what} (in the last frame, at ${last.start}): ${describeOutcome(o)}`);
        assert.equal(o.end.complete, false, `${what}: accepted as complete`);
        assert.match(o.end.note ?? '', /torn/, what);
        assert.equal(o.end.events, 6, what);
      }
    }
  }
}

test('every single-bit flip in a frame before the last is corrupt; in the last frame it is a torn tail', () => {
  checkFlips(null, 'in one chunk');
});

test(`the same bit flips classify the same way however the bytes are chunked (seed ${SEED})`, () => {
  // A backup reads the log from the network in arbitrary pieces; the verdict must depend on the bytes only.
  const rnd = prng(SEED);
  checkFlips(() => 1 + Math.floor(rnd() * 64), `in random chunks (seed ${SEED})`);
  checkFlips(() => 1, 'byte by byte');
});

test('a bit flip in the preamble: the magic is corrupt, the version refused, and the reserved bytes must not pass', () => {
  for (let at = 0; at < 12; at++) {
    for (let bit = 0; bit < 8; bit++) {
      const bad = Buffer.from(SMALL.bytes);
      bad[at] = bad[at]! ^ (1 << bit);
      const o = scan(bad);
      const what = `bit ${bit} of preamble byte ${at}`;
      if (at >= 8 && at < 10) {
        assert.ok('error' in o && o.error.kind === 'refused', `${what}: ${describeOutcome(o)}`);
      } else {
        // The reserved u16 is written as zero; a reader that ignores it accepts damage no checksum covers.
        assertCorrupt(o, what);
      }
    }
  }
});

test('bad magic, a text file, random bytes: not a log (corrupt)', () => {
  const e = assertCorrupt(scan(Buffer.from('GIF89a this is not a log at all\n')), 'text');
  assert.match(e.message, /not a Lockstep log/);
  const rnd = prng(SEED);
  const noise = Uint8Array.from({ length: 4096 }, () => Math.floor(rnd() * 256));
  assertCorrupt(scan(noise), `random bytes (seed ${SEED})`);
});

test('an unknown version is refused, not corrupt', () => {
  for (const v of [0, 2, 0x100, 0xffff]) {
    const bad = Buffer.from(SMALL.bytes);
    bad.writeUInt16LE(v, 8);
    const o = scan(bad);
    assert.ok('error' in o && o.error.kind === 'refused', `version ${v}: ${describeOutcome(o)}`);
    assert.match(o.error.message, new RegExp(`version ${v} is not supported`));
  }
});

test('an empty log and a preamble alone are corrupt, with distinct messages', () => {
  assert.match(assertCorrupt(scan(new Uint8Array(0)), 'empty').message, /empty/);
  assert.match(assertCorrupt(scan(preamble()), 'preamble only').message, /header/);
  assert.match(assertCorrupt(scan(preamble().subarray(0, 5)), 'half a preamble').message, /preamble/);
});

test('a log with a header and nothing else is an empty prefix, not an error', () => {
  const o = scan(buildLog([], false).bytes);
  assert.ok(!('error' in o), describeOutcome(o));
  assert.deepEqual([o.end.complete, o.end.events], [false, 0]);
  assert.match(o.end.note ?? '', /no trailer/);
});

/** Reassembles the log from its preamble and the given frames (indexes into SMALL.frames) or raw frames. */
function reassemble(parts: (number | Uint8Array)[]): Buffer {
  return Buffer.concat([
    SMALL.bytes.subarray(0, 12),
    ...parts.map((p) =>
      typeof p === 'number' ? SMALL.bytes.subarray(SMALL.frames[p]!.start, SMALL.frames[p]!.end) : p,
    ),
  ]);
}

test('structure: frames out of order, a gap in the sequence, a frame after the trailer', () => {
  // SMALL is header(0), records 0+3 (1), records 3+2 (2), records 5+1 (3), trailer (4).
  assert.match(assertCorrupt(scan(reassemble([0, 2, 1, 3, 4])), 'swapped').message, /expected 0/);
  assert.match(assertCorrupt(scan(reassemble([0, 1, 3, 4])), 'gap').message, /starts at event 5, expected 3/);
  assertCorrupt(scan(reassemble([0, 1, 2, 3, 4, 4])), 'two trailers');
  assert.match(
    assertCorrupt(scan(reassemble([0, 1, 2, 3, 4, recordsFrame(6, 1)])), 'records after the trailer').message,
    /follows the trailer/,
  );
  assertCorrupt(scan(reassemble([0, 1, 1, 2, 3, 4])), 'a frame repeated');
});

test('any byte after the trailer makes the log corrupt, not complete', () => {
  // Nothing may follow the trailer; a torn "frame" there is not the tail of a recording.
  for (const extra of [[0], [2], [2, 5, 0], [0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48]]) {
    const o = scan(Buffer.concat([SMALL.bytes, Uint8Array.from(extra)]));
    assertCorrupt(o, `${extra.length} bytes after the trailer`);
  }
});

test('structure: the header must come first and once, the trailer must count the events', () => {
  const header = SMALL.frames[0]!;
  const headerBytes = SMALL.bytes.subarray(header.start, header.end);
  assert.match(
    assertCorrupt(scan(reassemble([1, 0, 2, 3, 4])), 'records first').message,
    /before the header/,
  );
  assert.match(assertCorrupt(scan(reassemble([4])), 'a trailer alone').message, /trailer before the header/);
  assert.match(assertCorrupt(scan(reassemble([0, headerBytes, 1])), 'two headers').message, /second header/);
  const wrongCount = encodeFrame(FrameKind.TRAILER, encodeTrailer(trailer(7)));
  assert.match(
    assertCorrupt(scan(reassemble([0, 1, 2, 3, wrongCount])), 'trailer count').message,
    /counts 7 events but the log holds 6/,
  );
});

test('well-checksummed frames that do not decode are corrupt', () => {
  const cases: [string, Uint8Array][] = [
    ['an unknown kind', encodeFrame(9, Uint8Array.of(1, 2, 3))],
    ['a records frame of zero records', encodeFrame(FrameKind.RECORDS, recordsPrefix(6, 0))],
    [
      'a records frame claiming more records than bytes',
      encodeFrame(FrameKind.RECORDS, recordsPrefix(6, 100)),
    ],
    ['an empty records body', encodeFrame(FrameKind.RECORDS, new Uint8Array(0))],
    [
      'a trailer with a stray byte',
      encodeFrame(FrameKind.TRAILER, Buffer.concat([encodeTrailer(trailer(6)), Uint8Array.of(0)])),
    ],
  ];
  for (const [what, frame] of cases) {
    const o = scan(reassemble([0, 1, 2, 3, frame, 4]));
    assertCorrupt(o, what);
  }
  const garbageHeader = encodeFrame(FrameKind.HEADER, Uint8Array.of(1, 2, 3));
  assert.match(assertCorrupt(scan(reassemble([garbageHeader])), 'garbage header').message, /does not decode/);
});

test('a damaged length field: corrupt when frames follow, a torn tail when it is the last frame', () => {
  // Frame 2 (records 3+2) gets a length that runs past the end of the file (no later CRC can match).
  const f = SMALL.frames[2]!;
  const long = Buffer.from(SMALL.bytes);
  long[f.start + 1] = 0x7f;
  assertCorrupt(scan(long), 'length too long, frames after it');
  assertCorrupt(
    scan(long, () => 3),
    'length too long, frames after it, in chunks of 3',
  );
  // A length varint that never ends (5 continuation bytes) or exceeds FRAME_BODY_BYTES_MAX.
  const endless = Buffer.concat([
    SMALL.bytes.subarray(0, f.start),
    Uint8Array.of(FrameKind.RECORDS, 0xff, 0xff, 0xff, 0xff, 0x7f),
    SMALL.bytes.subarray(f.start + 2),
  ]);
  assertCorrupt(scan(endless), 'an endless length varint');
  const huge = Buffer.concat([
    SMALL.bytes.subarray(0, f.start),
    Uint8Array.of(FrameKind.RECORDS, 0xff, 0xff, 0xff, 0x7f),
    SMALL.bytes.subarray(f.start + 2),
  ]);
  assertCorrupt(scan(huge), 'a length over the limit');
  // The same damage in the last frame is a torn tail.
  const t = SMALL.frames.at(-1)!;
  const tornLong = Buffer.from(SMALL.bytes);
  tornLong[t.start + 1] = 0x7f;
  const o = scan(tornLong);
  assert.ok(!('error' in o) && !o.end.complete && /torn/.test(o.end.note ?? ''), describeOutcome(o));
  const tornHuge = Buffer.concat([
    SMALL.bytes.subarray(0, t.start),
    Uint8Array.of(FrameKind.TRAILER, 0xff, 0xff, 0xff, 0x7f),
  ]);
  const o2 = scan(tornHuge);
  assert.ok(!('error' in o2) && !o2.end.complete && /torn/.test(o2.end.note ?? ''), describeOutcome(o2));
});

test('after a damaged last frame, an empty push changes nothing and a stray byte is still a torn tail', () => {
  const last = SMALL.frames.at(-1)!;
  const bad = Buffer.from(SMALL.bytes.subarray(0, last.end));
  bad[last.start + 3] = bad[last.start + 3]! ^ 1;
  const s = new LogScanner();
  s.push(bad);
  assert.deepEqual(s.push(new Uint8Array(0)), []);
  // One byte after it is not the log's own continuation (it could be the start of a frame
  // the recorder was writing when it died), so the verdict stays: torn.
  assert.deepEqual(s.push(Uint8Array.of(0)), []);
  const end = s.end();
  assert.equal(end.complete, false);
  assert.match(end.note ?? '', /torn/);
});

/** A log whose only RECORDS frame has a body of `bodyBytes`, followed by a trailer. */
function logWithBigFrame(bodyBytes: number): { bytes: Buffer; bigStart: number } {
  const head = buildLog([], false).bytes;
  const body = new Uint8Array(bodyBytes).fill(0x41);
  body.set(recordsPrefix(0, 1), 0);
  const big = encodeFrame(FrameKind.RECORDS, body);
  const tr = encodeFrame(FrameKind.TRAILER, encodeTrailer(trailer(1)));
  return { bytes: Buffer.concat([head, big, tr]), bigStart: head.byteLength };
}

test('a bit flip in a frame under 1 MiB followed by the trailer is corrupt', () => {
  const { bytes, bigStart } = logWithBigFrame(900 * 1024);
  const bad = Buffer.from(bytes);
  bad[bigStart + 100] = bad[bigStart + 100]! ^ 1;
  assertCorrupt(scan(bad), '900 KiB frame');
});

test('a bit flip in a frame over 1 MiB followed by the trailer is corrupt, not a torn tail', () => {
  // random_get may take 16 MiB per call (RANDOM_BYTES_PER_CALL_MAX), so a recorder can write such frames.
  const { bytes, bigStart } = logWithBigFrame(2 * 1024 * 1024);
  assert.ok(!('error' in scan(bytes)), 'the undamaged log scans');
  const bad = Buffer.from(bytes);
  bad[bigStart + 100] = bad[bigStart + 100]! ^ 1;
  assertCorrupt(scan(bad), '2 MiB frame, one chunk');
  // The same file read as replay reads it, in 1 MiB chunks.
  assertCorrupt(
    scan(bad, () => 1 << 20),
    '2 MiB frame, 1 MiB chunks',
  );
});

test('a torn last frame whose payload holds frame-like bytes is still a torn tail', () => {
  // Guest input (a socket read, a random_get) is copied into records verbatim; a client can send bytes that
  // form a well-checksummed TRAILER frame. A cut after them, inside the frame that carries them, is truncation.
  const embedded = encodeFrame(FrameKind.TRAILER, encodeTrailer(trailer(1)));
  const w = new ByteWriter();
  w.bytes(recordsPrefix(0, 2));
  w.bytes(new Uint8Array(10).fill(0x05));
  w.bytes(embedded);
  w.bytes(new Uint8Array(10).fill(0x05));
  const frame = encodeFrame(FrameKind.RECORDS, w.take());
  const head = buildLog([], false).bytes;
  const full = Buffer.concat([head, frame]);
  assert.ok(!('error' in scan(full)), 'the whole frame scans');
  const cut = head.byteLength + frame.byteLength - 6;
  const o = scan(full.subarray(0, cut));
  assert.ok(!('error' in o), `a torn frame carrying guest bytes: ${describeOutcome(o)}`);
  assert.match(o.end.note ?? '', /torn/);
});
