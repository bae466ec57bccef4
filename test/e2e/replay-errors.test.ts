/**
 * `lockstep replay` given bad input, as a user would meet it: damaged logs
 * (bit flips, cuts, not a log at all), logs of another module, folders that
 * do not match the recording, and logs tampered with (CRCs recomputed, so
 * only replay itself can notice) to force divergences. Also `lockstep record`
 * refusing an impossible --log and creating its log with mode 0600.
 *
 * Every case checks the exit status (DESIGN.md §5: 0 faithful or truncated,
 * 3 divergence, 4 corrupt, 5 refused) and a stderr message that names the
 * problem, without a stack trace. The recordings are made once, in before():
 * clocks_random (frames split by its sleeps), exit_code (5 calls), files
 * (on a disk with content) and the KV example under a short client session
 * ended by SIGTERM. test/e2e/logtool.ts takes the logs apart.
 *
 * Budget: about 30 s on the 2-core CI machine.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import {
  chmodSync,
  existsSync,
  mkdirSync,
  readFileSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { repoPath, runLockstep, startLockstep, tempDir, type RunResult } from './harness.js';
import * as L from './logtool.js';

const CLOCKS = repoPath('test', 'guests', 'clocks_random.wasm');
const EXIT_CODE = repoPath('test', 'guests', 'exit_code.wasm');
const FILES = repoPath('test', 'guests', 'files.wasm');
const KV = repoPath('examples', 'kv', 'kv.wasm');
const REPLAY_TIMEOUT_MS = 30_000;

/** b0 bits (test/e2e/logtool.ts): the function id and the flags. */
const FN_MASK = 0x3f;
const B0_EFFECT = 0x40;
const B0_RET = 0x80;
const FN_ARGS_SIZES_GET = 1;
const FN_POLL_ONEOFF = 37;

interface Summary {
  events: number;
  memorySha256: string;
  outputSha256: string;
  exitCode: number | null;
  stop: string;
}

interface Recording {
  wasm: string;
  log: string;
  parsed: L.ParsedLog;
  summary: Summary;
  /** The folder options replay needs (copies of the folders as they were before recording). */
  folders: () => string[];
}

let tmp: { dir: string; cleanup: () => void };
let seq = 0;
let clocks: Recording;
let exitCode: Recording;
let files: Recording;
let kv: Recording;
/** The files guest's disk as it was before recording (never handed to a VM). */
let filesPristine: string;

function lastJson(stdout: string): Summary {
  const lines = stdout.trimEnd().split('\n');
  return JSON.parse(lines[lines.length - 1]!) as Summary;
}

/** A new path in the test's temporary folder. */
function fresh(name: string): string {
  return path.join(tmp.dir, `${seq++}-${name}`);
}

/** A fresh `cp -r` copy of a folder. */
function copyOf(dir: string): string {
  const dst = fresh(path.basename(dir));
  execFileSync('cp', ['-r', dir, dst]);
  return dst;
}

/** Stderr must name the problem in Lockstep's words, never as a JavaScript crash. */
function assertNoCrash(r: RunResult, what: string): void {
  assert.doesNotMatch(r.stderr, /^\s+at .*:\d+:\d+\)?$/m, `${what}: a stack trace on stderr:\n${r.stderr}`);
  assert.doesNotMatch(r.stderr, /^Node\.js v\d+/m, `${what}: node crashed:\n${r.stderr}`);
  assert.equal(r.signal, null, `${what}: killed by ${r.signal}`);
}

function show(r: RunResult): string {
  return `exit ${r.code}\n--- stderr\n${r.stderr}--- stdout (last 300 bytes)\n${r.stdout.slice(-300)}`;
}

/** Replays `rec`'s module against the given log bytes (written to a fresh file) or log path. */
async function replay(
  rec: Recording,
  log: Uint8Array | string,
  extra: { wasm?: string; args?: string[]; folders?: string[] } = {},
): Promise<RunResult> {
  let logPath: string;
  if (typeof log === 'string') logPath = log;
  else {
    logPath = fresh('damaged.log');
    writeFileSync(logPath, log);
  }
  const r = await runLockstep(
    [
      'replay',
      extra.wasm ?? rec.wasm,
      '--log',
      logPath,
      ...(extra.folders ?? rec.folders()),
      ...(extra.args ?? []),
    ],
    { timeoutMs: REPLAY_TIMEOUT_MS },
  );
  assertNoCrash(r, `replay of ${path.basename(logPath)}`);
  return r;
}

async function record(wasm: string, args: string[], name: string): Promise<{ log: string; r: RunResult }> {
  const log = fresh(`${name}.log`);
  const r = await runLockstep(['record', wasm, '--log', log, ...args], { timeoutMs: 60_000 });
  assertNoCrash(r, `record ${name}`);
  return { log, r };
}

function recording(wasm: string, log: string, summary: Summary, folders: () => string[]): Recording {
  return { wasm, log, parsed: L.parseLog(readFileSync(log)), summary, folders };
}

/** One request/response exchange with the KV server (RESP), over a fresh connection. */
function kvRequest(port: number, request: string, replyEnd: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const sock = net.connect(port, '127.0.0.1');
    let got = '';
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error(`no reply to ${JSON.stringify(request)}: ${JSON.stringify(got)}`));
    }, 10_000);
    sock.on('data', (b) => {
      got += b.toString('latin1');
      if (got.endsWith(replyEnd)) {
        clearTimeout(timer);
        sock.end();
        resolve(got);
      }
    });
    sock.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    sock.write(request);
  });
}

function resp(...words: string[]): string {
  return `*${words.length}\r\n` + words.map((w) => `$${Buffer.byteLength(w)}\r\n${w}\r\n`).join('');
}

before(async () => {
  tmp = tempDir('replay-errors');

  const c = await record(CLOCKS, [], 'clocks');
  assert.equal(c.r.code, 0, show(c.r));
  clocks = recording(CLOCKS, c.log, lastJson(c.r.stdout), () => []);

  const e = await record(EXIT_CODE, ['--', '7'], 'exit-code');
  assert.equal(e.r.code, 7, show(e.r));
  exitCode = recording(EXIT_CODE, e.log, lastJson(e.r.stdout), () => []);

  // The files guest empties its disk first, so a disk with content (and a symlink) suits it.
  filesPristine = fresh('files-disk');
  mkdirSync(path.join(filesPristine, 'sub'), { recursive: true });
  writeFileSync(path.join(filesPristine, 'sub', 'note.txt'), 'hello');
  writeFileSync(path.join(filesPristine, 'top.bin'), Buffer.from([0, 1, 2, 3]));
  symlinkSync('sub/note.txt', path.join(filesPristine, 'link'));
  const f = await record(FILES, ['--disk', copyOf(filesPristine)], 'files');
  assert.equal(f.r.code, 0, show(f.r));
  files = recording(FILES, f.log, lastJson(f.r.stdout), () => ['--disk', copyOf(filesPristine)]);

  const kvPristine = fresh('kv-disk');
  mkdirSync(kvPristine);
  const kvLog = fresh('kv.log');
  const vm = await startLockstep([
    'record',
    KV,
    '--listen',
    '127.0.0.1:0',
    '--disk',
    copyOf(kvPristine),
    '--log',
    kvLog,
  ]);
  let kvResult: RunResult;
  try {
    const port = vm.addresses[0]!.port;
    assert.equal(await kvRequest(port, resp('SET', 'lockstep-key', 'value-one'), '\r\n'), '+OK\r\n');
    assert.equal(await kvRequest(port, resp('GET', 'lockstep-key'), 'value-one\r\n'), '$9\r\nvalue-one\r\n');
    assert.equal(await kvRequest(port, resp('INCR', 'counter'), '\r\n'), ':1\r\n');
  } finally {
    kvResult = await vm.stop('SIGTERM');
  }
  assertNoCrash(kvResult, 'record kv');
  assert.equal(kvResult.code, 0, show(kvResult));
  kv = recording(KV, kvLog, lastJson(kvResult.stdout), () => ['--disk', copyOf(kvPristine)]);
});

after(() => tmp?.cleanup());

test(
  'the recordings replay faithfully (the baseline for every damaged copy)',
  { timeout: 60_000 },
  async () => {
    for (const rec of [clocks, exitCode, files, kv]) {
      const r = await replay(rec, rec.log);
      assert.equal(r.code, 0, `${path.basename(rec.wasm)}: ${show(r)}`);
      assert.match(r.stderr, /replay matches the recording/);
      const s = lastJson(r.stdout);
      assert.deepEqual(
        { ...s, stop: s.stop === 'end-of-log' && rec.summary.stop === 'signal' ? 'signal' : s.stop },
        rec.summary,
      );
    }
    // The logs are split as the tests below need: clocks_random has RECORDS frames between others.
    assert.ok(L.middleRecordsFrames(clocks.parsed).length >= 2, L.describe(clocks.parsed));
    assert.ok(L.middleRecordsFrames(kv.parsed).length >= 1, L.describe(kv.parsed));
  },
);

// ---------------------------------------------------------------- damaged logs

test(
  'a bit flip in a middle frame is a corrupt log (4), and nothing is replayed',
  { timeout: 60_000 },
  async () => {
    const mid = L.middleRecordsFrames(clocks.parsed)[0]!;
    const header = clocks.parsed.frames[0]!;
    const cases: [string, Buffer][] = [
      ['a record byte', L.flipBit(clocks.parsed.bytes, mid.recordsOffset + 1, 3)],
      ['the kind byte', L.flipBit(clocks.parsed.bytes, mid.offset, 0)],
      ['the length', L.flipBit(clocks.parsed.bytes, mid.offset + 1, 1)],
      ['the CRC', L.flipBit(clocks.parsed.bytes, mid.crcOffset + 2, 7)],
      ['the header', L.flipBit(clocks.parsed.bytes, header.bodyOffset + 40, 0)],
    ];
    for (const [what, bytes] of cases) {
      const r = await replay(clocks, bytes);
      assert.equal(r.code, 4, `${what}: ${show(r)}`);
      assert.match(r.stderr, /corrupt log/, what);
      assert.equal(r.stdout, '', `${what}: a corrupt log must replay nothing`);
    }
  },
);

test(
  'a bit flip in the last frame is a torn tail: the prefix replays (0) and stderr says so',
  { timeout: 60_000 },
  async () => {
    const last = clocks.parsed.frames.at(-1)!;
    for (const at of [last.offset, last.bodyOffset + 5, last.crcOffset + 3]) {
      const r = await replay(clocks, L.flipBit(clocks.parsed.bytes, at, 4));
      assert.equal(r.code, 0, `flip at ${at}: ${show(r)}`);
      assert.match(r.stderr, /truncated prefix/);
      assert.match(r.stderr, /torn/);
      // Every record is still there; only the trailer is lost.
      assert.equal(lastJson(r.stdout).events, clocks.summary.events);
    }
  },
);

test(
  'a cut inside a frame replays the whole frames before it (0, "truncated prefix")',
  { timeout: 60_000 },
  async () => {
    const frame = L.middleRecordsFrames(clocks.parsed).at(-1)!;
    const cutAt = frame.offset + Math.floor((frame.end - frame.offset) / 2);
    const r = await replay(clocks, L.cut(clocks.parsed.bytes, cutAt));
    assert.equal(r.code, 0, show(r));
    assert.match(r.stderr, /truncated prefix/);
    assert.match(r.stderr, /torn/);
    const s = lastJson(r.stdout);
    assert.equal(s.events, frame.firstSeq, 'the records of the whole frames before the cut');
    assert.ok(s.events < clocks.summary.events);
    assert.equal(s.stop, 'end-of-log');
    // A cut between frames (the trailer missing) is a prefix too.
    const last = clocks.parsed.frames.at(-1)!;
    const r2 = await replay(clocks, L.cut(clocks.parsed.bytes, last.offset));
    assert.equal(r2.code, 0, show(r2));
    assert.match(r2.stderr, /truncated prefix.*no trailer/);
  },
);

test(
  'a cut inside the header or the preamble, or an empty file, is a corrupt log (4)',
  { timeout: 60_000 },
  async () => {
    const header = clocks.parsed.frames[0]!;
    const cases: [string, Buffer, RegExp][] = [
      [
        'inside the header',
        L.cut(clocks.parsed.bytes, header.bodyOffset + 10),
        /before its header is complete/,
      ],
      ['after the preamble', L.cut(clocks.parsed.bytes, L.PREAMBLE_BYTES), /before its header is complete/],
      ['inside the preamble', L.cut(clocks.parsed.bytes, 5), /inside its preamble/],
      ['an empty file', Buffer.alloc(0), /empty/],
    ];
    for (const [what, bytes, message] of cases) {
      const r = await replay(clocks, bytes);
      assert.equal(r.code, 4, `${what}: ${show(r)}`);
      assert.match(r.stderr, message, what);
    }
  },
);

test(
  'not a log at all (text, random bytes) is a corrupt log (4): "not a Lockstep log"',
  { timeout: 60_000 },
  async () => {
    const text = Buffer.from('SET key value\r\n'.repeat(50));
    const noise = Buffer.from(Array.from({ length: 4096 }, (_, i) => Math.imul(i + 1, 0x9e3779b1) >>> 24));
    for (const [what, bytes] of [
      ['text', text],
      ['random bytes', noise],
    ] as const) {
      const r = await replay(clocks, bytes);
      assert.equal(r.code, 4, `${what}: ${show(r)}`);
      assert.match(r.stderr, /not a Lockstep log/, what);
    }
  },
);

test('a log of an unknown format version is refused (5)', { timeout: 30_000 }, async () => {
  const bytes = Buffer.from(clocks.parsed.bytes);
  bytes.writeUInt16LE(2, 8);
  const r = await replay(clocks, bytes);
  assert.equal(r.code, 5, show(r));
  assert.match(r.stderr, /version 2 is not supported/);
});

test(
  'damage to the reserved bytes of the preamble is not accepted as a faithful log',
  { timeout: 30_000 },
  async () => {
    // The preamble has no checksum; its reserved u16 is written as 0 (docs/LOG-FORMAT.md).
    const bytes = L.flipBit(clocks.parsed.bytes, 10, 0);
    const r = await replay(clocks, bytes);
    assert.equal(r.code, 4, show(r));
  },
);

test('bytes after the trailer make the log corrupt (4), not complete', { timeout: 30_000 }, async () => {
  const r = await replay(clocks, Buffer.concat([clocks.parsed.bytes, Buffer.from('xyz')]));
  assert.equal(r.code, 4, show(r));
  assert.match(r.stderr, /corrupt log/);
  // A whole frame after the trailer is already caught.
  const last = clocks.parsed.frames.at(-1)!;
  const twice = Buffer.concat([clocks.parsed.bytes, clocks.parsed.bytes.subarray(last.offset)]);
  const r2 = await replay(clocks, twice);
  assert.equal(r2.code, 4, show(r2));
  assert.match(r2.stderr, /follows the trailer/);
});

test(
  'well-checksummed frames out of place: a dropped frame, a wrong count (4)',
  { timeout: 30_000 },
  async () => {
    const mid = L.middleRecordsFrames(clocks.parsed)[0]!;
    const r = await replay(clocks, L.dropFrame(clocks.parsed, mid));
    assert.equal(r.code, 4, show(r));
    assert.match(r.stderr, /starts at event \d+, expected \d+/);
    // The count is the varint just before the records; one more record than a small frame holds.
    const small = L.middleRecordsFrames(clocks.parsed).find((f) => f.count < 127);
    assert.ok(small, `no frame with a one-byte count:\n${L.describe(clocks.parsed)}`);
    const r2 = await replay(
      clocks,
      L.rewriteByte(clocks.parsed, small, small.recordsOffset - 1, small.count + 1),
    );
    assert.equal(r2.code, 4, show(r2));
    assert.match(r2.stderr, /corrupt log/);
  },
);

test(
  'a bit flip in a RECORDS frame over 1 MiB followed by the trailer is corrupt (4)',
  { timeout: 30_000 },
  async () => {
    // random_get takes up to 16 MiB per call, so a real recording can hold such a frame.
    const head = clocks.parsed.bytes.subarray(0, clocks.parsed.frames[0]!.end);
    const body = Buffer.concat([L.varint(0), L.varint(1), Buffer.alloc(2 << 20, 0x41)]);
    const big = L.encodeFrame(L.KIND_RECORDS, body);
    const trailer = clocks.parsed.frames.at(-1)!;
    const trailerBody = Buffer.from(clocks.parsed.bytes.subarray(trailer.bodyOffset, trailer.crcOffset));
    // The trailer's first field is the event count; it must say 1, the big frame's one record.
    const events = L.readVarint(trailerBody, 0);
    const newTrailer = L.encodeFrame(
      L.KIND_TRAILER,
      Buffer.concat([L.varint(1), trailerBody.subarray(events.next)]),
    );
    const good = Buffer.concat([head, big, newTrailer]);
    assert.equal(L.parseLog(good).frames.length, 3);
    const r = await replay(clocks, L.flipBit(good, head.byteLength + 1000, 0));
    assert.equal(r.code, 4, show(r));
  },
);

test(
  'a missing log, or a folder given as the log, is an I/O failure (1) with a clear message',
  { timeout: 30_000 },
  async () => {
    // Not refused input (5): nothing was read that could be judged.
    const r = await replay(clocks, fresh('does-not-exist.log'));
    assert.equal(r.code, 1, show(r));
    assert.match(r.stderr, /cannot open the log.*ENOENT/);
    assert.equal(r.stdout, '');
    const dir = fresh('a-folder');
    mkdirSync(dir);
    const r2 = await replay(clocks, dir);
    assert.equal(r2.code, 1, show(r2));
    assert.match(r2.stderr, /^lockstep: .*cannot read the log.*EISDIR/m);
    assert.equal(r2.stdout, '');
  },
);

// ---------------------------------------------------------------- refused input

test('a log recorded from another module is refused (5)', { timeout: 30_000 }, async () => {
  const r = await replay(exitCode, exitCode.log, { wasm: CLOCKS });
  assert.equal(r.code, 5, show(r));
  assert.match(r.stderr, /recorded from another module/);
  assert.equal(r.stdout, '');
});

test(
  'folders: a missing --disk, other content, another set of folders are refused (5)',
  { timeout: 60_000 },
  async () => {
    const r1 = await replay(files, files.log, { folders: [] });
    assert.equal(r1.code, 5, show(r1));
    assert.match(r1.stderr, /folders \/data; replay was given none/);

    const changed = copyOf(filesPristine);
    writeFileSync(path.join(changed, 'sub', 'note.txt'), 'hellO');
    const r2 = await replay(files, files.log, { folders: ['--disk', changed] });
    assert.equal(r2.code, 5, show(r2));
    assert.match(r2.stderr, /does not match the folder \/data/);

    const retargeted = copyOf(filesPristine);
    execFileSync('ln', ['-sfn', 'top.bin', path.join(retargeted, 'link')]);
    const r3 = await replay(files, files.log, { folders: ['--disk', retargeted] });
    assert.equal(r3.code, 5, show(r3));

    const extraDir = copyOf(filesPristine);
    mkdirSync(path.join(extraDir, 'new-empty-dir'));
    const r4 = await replay(files, files.log, { folders: ['--disk', extraDir] });
    assert.equal(r4.code, 5, show(r4));

    const r5 = await replay(files, files.log, {
      folders: ['--disk', copyOf(filesPristine), '--dir', `${copyOf(filesPristine)}::/more`],
    });
    assert.equal(r5.code, 5, show(r5));
    assert.match(r5.stderr, /replay was given \/data, \/more/);

    const r6 = await replay(files, files.log, { folders: ['--disk', fresh('no-such-folder')] });
    assert.equal(r6.code, 5, show(r6));
    assert.match(r6.stderr, /cannot read/);
  },
);

test(
  'folders: a cp -r copy with new timestamps and permissions is accepted (0)',
  { timeout: 60_000 },
  async () => {
    const copy = copyOf(filesPristine);
    execFileSync('touch', [
      '-d',
      '2001-02-03 04:05:06',
      path.join(copy, 'sub', 'note.txt'),
      path.join(copy, 'sub'),
    ]);
    execFileSync('touch', [path.join(copy, 'top.bin'), copy]);
    chmodSync(path.join(copy, 'top.bin'), 0o600);
    chmodSync(path.join(copy, 'sub'), 0o700);
    const r = await replay(files, files.log, { folders: ['--disk', copy] });
    assert.equal(r.code, 0, show(r));
    assert.match(r.stderr, /replay matches the recording/);
    assert.deepEqual(lastJson(r.stdout), files.summary);
  },
);

// ---------------------------------------------------------------- divergence

/** The call number a divergence report names, checked for its three parts. */
function assertDivergenceReport(r: RunResult, what: string): number {
  assert.equal(r.code, 3, `${what}: ${show(r)}`);
  const m = /divergence at call (\d+): .+\n\s+expected: .+\n\s+found: .+/.exec(r.stderr);
  assert.ok(m, `${what}: no report naming the call, the expected and the found:\n${r.stderr}`);
  return Number(m[1]);
}

test('divergence (a): another module with --ignore-module-hash', { timeout: 30_000 }, async () => {
  const r = await replay(exitCode, exitCode.log, { wasm: CLOCKS, args: ['--ignore-module-hash'] });
  assert.match(r.stderr, /not the one recorded/);
  const call = assertDivergenceReport(r, 'another module');
  assert.ok(call < exitCode.summary.events);
});

test(
  'divergence (b): a tampered argument hash is reported at that very call',
  { timeout: 60_000 },
  async () => {
    for (const frame of L.middleRecordsFrames(clocks.parsed).slice(0, 2)) {
      const at = frame.recordsOffset + 1;
      const old = clocks.parsed.bytes.readUInt16LE(at);
      const r = await replay(clocks, L.rewriteU16(clocks.parsed, frame, at, old ^ 0x5a5a));
      const call = assertDivergenceReport(r, `argHash of call ${frame.firstSeq}`);
      assert.equal(call, frame.firstSeq);
      assert.match(r.stderr, /called with different arguments/);
      assert.match(r.stderr, new RegExp(`argument hash 0x${(old ^ 0x5a5a).toString(16).padStart(4, '0')}`));
      assert.equal(lastJson(r.stdout).events, frame.firstSeq, 'the summary stops at the divergent call');
    }
  },
);

test(
  'divergence (b): a tampered function id names the expected and the found function',
  { timeout: 30_000 },
  async () => {
    const frame = L.middleRecordsFrames(clocks.parsed)[0]!;
    const b0 = clocks.parsed.bytes[frame.recordsOffset]!;
    // sched_yield (40) is never what clocks_random calls at a frame's start.
    const r = await replay(
      clocks,
      L.rewriteByte(clocks.parsed, frame, frame.recordsOffset, (b0 & ~FN_MASK) | 40),
    );
    const call = assertDivergenceReport(r, 'function id');
    assert.equal(call, frame.firstSeq);
    assert.match(r.stderr, /expected sched_yield, found \w+/);
  },
);

test(
  'divergence (c): a tampered fed input (poll events) is reported at its call',
  { timeout: 30_000 },
  async () => {
    // Each sleep of clocks_random starts a frame with its poll_oneoff: one clock subscription, one event.
    const frame = L.middleRecordsFrames(clocks.parsed).find(
      (f) => (clocks.parsed.bytes[f.recordsOffset]! & FN_MASK) === FN_POLL_ONEOFF,
    );
    assert.ok(frame, `no frame starts with poll_oneoff:\n${L.describe(clocks.parsed)}`);
    const countAt = frame.recordsOffset + 3;
    assert.equal(clocks.parsed.bytes[countAt], 1, 'one poll event');
    // Two events for one subscription: replay must not trust the log beyond what the call allows.
    const r = await replay(clocks, L.rewriteByte(clocks.parsed, frame, countAt, 2));
    const call = assertDivergenceReport(r, 'poll event count');
    assert.equal(call, frame.firstSeq);
    assert.match(r.stderr, /poll_oneoff returned errno \d+, the recording had 0/);
  },
);

test(
  'divergence (c): tampered bytes received by the KV server diverge at a later call',
  { timeout: 30_000 },
  async () => {
    const at = L.find(kv.parsed.bytes, 'lockstep-key');
    assert.ok(at > 0, 'the received command is in the log');
    const frame = L.frameAt(kv.parsed, at);
    assert.ok(frame && frame.kind === L.KIND_RECORDS);
    const r = await replay(kv, L.rewriteByte(kv.parsed, frame, at + 11, 'z'.charCodeAt(0)));
    const call = assertDivergenceReport(r, 'received bytes');
    assert.ok(call >= frame.firstSeq && call < kv.summary.events, `call ${call}`);
  },
);

test('divergence (c): a tampered errno or effect hash of a performed call', { timeout: 30_000 }, async () => {
  // exit_code's call 0 is args_sizes_get, performed, errno 0, with an effect hash: b0 argHash(2) effect(2).
  const frame = exitCode.parsed.frames[1]!;
  assert.equal(frame.kind, L.KIND_RECORDS);
  assert.equal(frame.firstSeq, 0);
  const rec = frame.recordsOffset;
  const b0 = exitCode.parsed.bytes[rec]!;
  assert.equal(b0, FN_ARGS_SIZES_GET | B0_EFFECT, 'call 0 is args_sizes_get with an effect hash');
  const effectAt = rec + 3;
  const effect = exitCode.parsed.bytes.readUInt16LE(effectAt);
  const r = await replay(exitCode, L.rewriteU16(exitCode.parsed, frame, effectAt, effect ^ 1));
  assert.equal(assertDivergenceReport(r, 'effect hash'), 0);
  assert.match(r.stderr, /args_sizes_get wrote different bytes into guest memory/);

  // Claim the call failed with errno 8 (BADF): set the ret bit and insert the varint before the effect.
  const body = Buffer.from(exitCode.parsed.bytes.subarray(frame.bodyOffset, frame.crcOffset));
  const recInBody = rec - frame.bodyOffset;
  body[recInBody] = b0 | B0_RET;
  const tampered = Buffer.concat([
    body.subarray(0, recInBody + 3),
    Buffer.of(8),
    body.subarray(recInBody + 3),
  ]);
  const r2 = await replay(exitCode, L.replaceBody(exitCode.parsed, frame, tampered));
  assert.equal(assertDivergenceReport(r2, 'errno'), 0);
  assert.match(r2.stderr, /args_sizes_get returned errno 0, the recording had 8/);
});

test(
  'divergence (d): a trailer that disagrees with the replay is a divergence at the end of the log',
  { timeout: 60_000 },
  async () => {
    const t = exitCode.parsed.frames.at(-1)!;
    assert.equal(t.kind, L.KIND_TRAILER);
    // The trailer body: events varint, stop u8, exitCode+1 varint, memorySha256, outputSha256, ...
    const ev = L.readVarint(exitCode.parsed.bytes, t.bodyOffset);
    const exitAt = ev.next + 1;
    const memAt = exitAt + 1;
    assert.equal(exitCode.parsed.bytes[exitAt], 8, 'exit code 7, stored as 8');
    const r = await replay(
      exitCode,
      L.rewriteByte(exitCode.parsed, t, memAt, exitCode.parsed.bytes[memAt]! ^ 0xff),
    );
    assert.equal(r.code, 3, show(r));
    assert.match(r.stderr, /divergence at the end of the log/);
    assert.match(r.stderr, /final memory differs/);
    const r2 = await replay(exitCode, L.rewriteByte(exitCode.parsed, t, exitAt, 4));
    assert.equal(r2.code, 3, show(r2));
    assert.match(r2.stderr, /exit code: recorded 3, replayed 7/);
  },
);

// ---------------------------------------------------------------- record refusals

test(
  'record: --log in a folder that does not exist is refused (125) and creates nothing',
  { timeout: 30_000 },
  async () => {
    const missing = fresh('no-such-dir');
    const r = await runLockstep(['record', EXIT_CODE, '--log', path.join(missing, 'x.log')], {
      timeoutMs: 30_000,
    });
    assertNoCrash(r, 'record');
    assert.equal(r.code, 125, show(r));
    assert.match(r.stderr, /cannot create the log/);
    assert.equal(existsSync(missing), false);
    const r2 = await runLockstep(['record', EXIT_CODE, '--log', tmp.dir], { timeoutMs: 30_000 });
    assertNoCrash(r2, 'record to a folder');
    assert.equal(r2.code, 125, show(r2));
    assert.match(r2.stderr, /cannot create the log/);
  },
);

test(
  'record: the log is created with mode 0600, also over an existing 0644 file',
  { timeout: 30_000 },
  async () => {
    const { log, r } = await record(EXIT_CODE, [], 'mode');
    assert.equal(r.code, 0, show(r));
    assert.equal(statSync(log).mode & 0o777, 0o600);
    const existing = fresh('existing.log');
    writeFileSync(existing, 'old content that must go\n');
    chmodSync(existing, 0o644);
    const r2 = await runLockstep(['record', EXIT_CODE, '--log', existing], { timeoutMs: 30_000 });
    assertNoCrash(r2, 'record over an existing file');
    assert.equal(r2.code, 0, show(r2));
    assert.equal(statSync(existing).mode & 0o777, 0o600);
    assert.equal(L.parseLog(readFileSync(existing)).tailBytes, 0, 'the old content is gone');
  },
);
