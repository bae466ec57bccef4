// Tests of the log's byte format (format.ts): the preamble's exact bytes, frame
// encoding and its CRC, and round trips of the HEADER and TRAILER bodies,
// including the refusal of truncated, padded and out-of-range bodies.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { crc32 } from 'node:zlib';
import { DecodeError, ByteWriter } from '../../core/bytes.js';
import {
  FrameKind,
  LOG_MAGIC,
  LOG_VERSION,
  PREAMBLE_BYTES,
  decodeHeader,
  decodeTrailer,
  encodeFrame,
  encodeHeader,
  encodeTrailer,
  frameCrc,
  framePrefix,
  preamble,
  recordsPrefix,
  type LogHeader,
  type StopKind,
  type Trailer,
} from './format.js';

function sampleHeader(over: Partial<LogHeader> = {}): LogHeader {
  return {
    moduleSha256: Uint8Array.from({ length: 32 }, (_, i) => i),
    sourceSha256: Uint8Array.from({ length: 32 }, (_, i) => 255 - i),
    memoryMaxPages: 8192,
    callDepthMax: 10_000,
    fuelBudget: 123_456_789_012n,
    args: ['kv', 'héllo', '', '日本語 🚀'],
    env: ['A=1', 'EMPTY='],
    listeners: ['127.0.0.1:6379', '[::1]:0'],
    preopens: [
      { guestPath: '/data', manifestSha256: new Uint8Array(32).fill(7) },
      { guestPath: '/', manifestSha256: new Uint8Array(32).fill(9) },
    ],
    stdin: true,
    nodeVersion: 'v20.20.2',
    arch: 'x64',
    createdAtMs: 1_764_000_000_000,
    ...over,
  };
}

function sampleTrailer(over: Partial<Trailer> = {}): Trailer {
  return {
    events: 10_057,
    memorySha256: 'ab'.repeat(32),
    outputSha256: 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
    exitCode: 0,
    stop: 'exit',
    outputs: 31,
    outputBytes: 1024,
    ...over,
  };
}

test('the preamble is the magic, the version (u16 LE) and a zero reserved u16', () => {
  const p = preamble();
  assert.equal(p.byteLength, PREAMBLE_BYTES);
  assert.deepEqual([...p.subarray(0, 8)], [...Buffer.from('\x89LSLOG\r\n', 'latin1')]);
  assert.deepEqual([...p.subarray(0, 8)], [...LOG_MAGIC]);
  assert.deepEqual([...p.subarray(8)], [LOG_VERSION & 0xff, LOG_VERSION >> 8, 0, 0]);
});

test('a frame is kind, varint length, body and the CRC32 (LE) of everything before it', () => {
  for (const len of [0, 1, 127, 128, 300, 70_000]) {
    const body = Uint8Array.from({ length: len }, (_, i) => (i * 31) & 0xff);
    const f = encodeFrame(FrameKind.RECORDS, body);
    const w = new ByteWriter();
    w.u8(FrameKind.RECORDS);
    w.varint(len);
    const prefix = w.take();
    assert.deepEqual([...f.subarray(0, prefix.byteLength)], [...prefix], `prefix, body ${len}`);
    assert.deepEqual([...framePrefix(FrameKind.RECORDS, len)], [...prefix]);
    assert.equal(f.byteLength, prefix.byteLength + len + 4);
    assert.deepEqual(Buffer.from(f.subarray(prefix.byteLength, prefix.byteLength + len)), Buffer.from(body));
    const crc = Buffer.from(f).readUInt32LE(f.byteLength - 4);
    assert.equal(crc, crc32(f.subarray(0, f.byteLength - 4)) >>> 0, `crc, body ${len}`);
  }
});

test('frameCrc over pieces equals the CRC of their concatenation', () => {
  const a = Uint8Array.of(2, 5);
  const b = Uint8Array.of(0, 3);
  const c = Uint8Array.of(1, 2, 3);
  const want = crc32(Buffer.concat([a, b, c])) >>> 0;
  assert.equal(Buffer.from(frameCrc([a, b, c])).readUInt32LE(0), want);
  assert.equal(Buffer.from(frameCrc([])).readUInt32LE(0), 0);
});

test('header round trip, with non-ASCII strings, several preopens and listeners', () => {
  const h = sampleHeader();
  assert.deepEqual(decodeHeader(encodeHeader(h)), h);
});

test('header round trip with empty lists, no budget and stdin off', () => {
  const h = sampleHeader({
    args: [],
    env: [],
    listeners: [],
    preopens: [],
    fuelBudget: null,
    stdin: false,
    createdAtMs: 0,
  });
  assert.deepEqual(decodeHeader(encodeHeader(h)), h);
  // A budget at the top of the range survives too.
  const big = sampleHeader({ fuelBudget: (1n << 63n) - 1n });
  assert.equal(decodeHeader(encodeHeader(big)).fuelBudget, (1n << 63n) - 1n);
});

test('a header refuses every truncation and any trailing byte', () => {
  const body = encodeHeader(sampleHeader());
  for (let cut = 0; cut < body.byteLength; cut++) {
    assert.throws(() => decodeHeader(body.subarray(0, cut)), DecodeError, `cut at ${cut}`);
  }
  assert.throws(() => decodeHeader(Buffer.concat([body, Uint8Array.of(0)])), DecodeError, 'trailing byte');
});

test('a header refuses lists and strings longer than its limits without allocating them', () => {
  // 64 bytes of hashes, then memoryMaxPages, callDepthMax, fuel, and an args count of 2^20.
  const w = new ByteWriter();
  w.bytes(new Uint8Array(64));
  w.varint(1);
  w.varint(1);
  w.varbig(0n);
  w.varint(1 << 20);
  assert.throws(() => decodeHeader(w.take()), DecodeError);
  // An args list of one string claiming 2 MiB.
  const w2 = new ByteWriter();
  w2.bytes(new Uint8Array(64));
  w2.varint(1);
  w2.varint(1);
  w2.varbig(0n);
  w2.varint(1);
  w2.varint(2 << 20);
  assert.throws(() => decodeHeader(w2.take()), DecodeError);
});

test('trailer round trip for every stop kind and exit codes at the edges', () => {
  const stops: StopKind[] = ['exit', 'trap', 'signal', 'budget', 'end-of-log'];
  for (const stop of stops) {
    for (const exitCode of [null, 0, 1, 134, 255, 2 ** 32 - 1]) {
      const t = sampleTrailer({ stop, exitCode });
      assert.deepEqual(decodeTrailer(encodeTrailer(t)), t, `${stop} ${exitCode}`);
    }
  }
  const zero = sampleTrailer({ events: 0, outputs: 0, outputBytes: 0, memorySha256: '00'.repeat(32) });
  assert.deepEqual(decodeTrailer(encodeTrailer(zero)), zero);
});

test('a trailer distinguishes exit code 0 from no exit code', () => {
  assert.equal(decodeTrailer(encodeTrailer(sampleTrailer({ exitCode: 0 }))).exitCode, 0);
  assert.equal(decodeTrailer(encodeTrailer(sampleTrailer({ exitCode: null }))).exitCode, null);
});

test('a trailer refuses every truncation, trailing bytes and an unknown stop kind', () => {
  const body = encodeTrailer(sampleTrailer());
  for (let cut = 0; cut < body.byteLength; cut++) {
    assert.throws(() => decodeTrailer(body.subarray(0, cut)), DecodeError, `cut at ${cut}`);
  }
  assert.throws(() => decodeTrailer(Buffer.concat([body, Uint8Array.of(0)])), DecodeError);
  // The stop kind is the byte after the events varint (10_057 takes two bytes).
  const bad = Buffer.from(body);
  bad[2] = 5;
  assert.throws(() => decodeTrailer(bad), DecodeError);
  bad[2] = 255;
  assert.throws(() => decodeTrailer(bad), DecodeError);
});

test('the RECORDS prefix is firstSeq then count, as varints', () => {
  assert.deepEqual([...recordsPrefix(0, 1)], [0, 1]);
  assert.deepEqual([...recordsPrefix(10_021, 6)], [0xa5, 0x4e, 6]);
});
