/**
 * Record → replay of real guests, end to end (DESIGN.md §3.1 and §5): every
 * example guest under real client load, and every test guest of
 * test/guests, is recorded with `lockstep record` and replayed with
 * `lockstep replay` in another process, on `cp -r` copies of its folders
 * taken before recording. Every replay runs inside a network namespace with
 * no interface up (not even loopback), which proves that replay never touches
 * the network.
 *
 * A round trip passes when replay exits 0 and prints the recording's summary
 * (events, memorySha256, outputSha256, exitCode; stop "end-of-log" where the
 * recording stopped at a signal), and when the folders replay leaves behind
 * have the same content as those the recording left. Failure messages give
 * the commands that reproduce the round trip, and the artifacts (log, folder
 * copies, traces) are then kept.
 *
 * The last test holds the completeness table (src/ft/completeness.ts) to the
 * truth: every preview1 function was called, during the recording of a round
 * trip that matched, by each guest the table names for it (`--trace-calls`).
 *
 * Budget: about 60 s on the 2-core CI machine (plus the guests' instrumentation
 * the first time, into the shared cache); needs root for the namespace.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Redis } from 'ioredis';
import {
  BIN,
  CACHE_DIR,
  ROOT,
  repoPath,
  runCollected,
  runLockstep,
  startLockstep,
  tempDir,
  type RunResult,
  type Running,
} from './harness.js';
import { connect, readExactly } from './clients.js';
import { createNetns, NETNS_SETUP, type Netns } from './netns.js';
import { folderManifestSha256 } from '../../src/io/manifest.js';
import { RECORD_REPLAY_COMPLETENESS, type RoundTripGuest } from '../../src/ft/completeness.js';
import { WASI_FUNCTIONS } from '../../src/wasi/abi.js';

const guestWasm = (name: string): string => repoPath('test', 'guests', `${name}.wasm`);
const exampleWasm = (name: string): string => repoPath('examples', name, `${name}.wasm`);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

let work: { dir: string; cleanup: () => void };
let ns: Netns;
let failed = false;
/** Trace files of recordings whose replay matched, per guest. */
const matchedTraces = new Map<RoundTripGuest, string[]>();
/** Client processes (redis-benchmark) still running; killed in after(). */
const clients = new Set<ChildProcess>();

before(async () => {
  work = tempDir('record-replay');
  ns = await createNetns();
  assert.deepEqual(await ns.interfacesUp(), [], `namespace ${ns.name} has interfaces up`);
});

after(async () => {
  for (const c of clients) c.kill('SIGKILL');
  await ns?.remove();
  if (failed)
    process.stderr.write(`record-replay: artifacts of the failed round trips kept in ${work.dir}\n`);
  else work?.cleanup();
});

// ---------------------------------------------------------------- round trips

interface Summary {
  events: number;
  memorySha256: string;
  outputSha256: string;
  exitCode: number | null;
  stop: 'exit' | 'trap' | 'signal' | 'budget' | 'end-of-log';
}

/** The summary JSON alone on the last line of stdout, checked for its exact shape. */
function lastSummary(stdout: string): Summary | null {
  const lines = stdout.split('\n');
  if (lines.at(-1) !== '') return null;
  const last = lines.at(-2);
  if (last === undefined || !last.startsWith('{')) return null;
  let s: Summary;
  try {
    s = JSON.parse(last) as Summary;
  } catch {
    return null;
  }
  const keys = Object.keys(s).sort().join(',');
  if (keys !== 'events,exitCode,memorySha256,outputSha256,stop') return null;
  return s;
}

/** stdout without its summary line (and without the newline record adds before it when needed). */
function guestStdout(stdout: string): string {
  return stdout.replace(/[^\n]*\n$/, '');
}

/** Quotes a word for a POSIX shell when it needs it. */
function sh(word: string): string {
  return /^[\w@%+=:,./-]+$/.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`;
}

function cmdLine(words: string[]): string {
  return words.map(sh).join(' ');
}

type Files = Record<string, string | Buffer>;

/** A folder of the VM: as the recording left it, its copy from before recording, and the copy replay runs on. */
interface Folder {
  now: string;
  before: string;
  replayed: string;
}

/**
 * One recorded guest: its folders (and their copies as they were before
 * recording), the log, the trace, and how to reproduce it.
 */
class RoundTrip {
  readonly dir: string;
  readonly log: string;
  readonly trace: string;
  readonly disk: Folder | null;
  readonly dirs: (Folder & { guest: string })[] = [];
  private readonly notes: string[] = [];
  private recordCmd: string[] = [];
  /** What the recording printed, once it ended. */
  recorded: RunResult | null = null;

  constructor(
    readonly guest: RoundTripGuest,
    readonly wasm: string,
    folders: { disk?: Files; dirs?: { guest: string; files: Files }[] } = {},
  ) {
    this.dir = path.join(work.dir, `${guest}-${Math.random().toString(16).slice(2, 8)}`);
    mkdirSync(this.dir, { recursive: true });
    this.log = path.join(this.dir, 'events.log');
    this.trace = path.join(this.dir, 'trace.json');
    const make = (name: string, files: Files): Folder => {
      const now = path.join(this.dir, name);
      mkdirSync(now);
      for (const [rel, content] of Object.entries(files)) {
        mkdirSync(path.dirname(path.join(now, rel)), { recursive: true });
        writeFileSync(path.join(now, rel), content);
      }
      const before = `${now}.before`;
      // Replay is given the folders as they were before recording, copied as a user would.
      execFileSync('cp', ['-r', now, before]);
      const listing = Object.keys(files).length === 0 ? 'empty' : Object.keys(files).join(', ');
      this.notes.push(`folder ${now} (${listing}); before recording: cp -r ${now} ${before}`);
      // Replay changes its folders too, so it works on another copy and \`before\` stays for a rerun.
      return { now, before, replayed: `${now}.replayed` };
    };
    this.disk = folders.disk === undefined ? null : make('disk', folders.disk);
    for (const [i, d] of (folders.dirs ?? []).entries()) {
      this.dirs.push({ ...make(`dir${i}`, d.files), guest: d.guest });
    }
  }

  note(line: string): void {
    this.notes.push(line);
  }

  /** `record` arguments: the log, the trace, the folders, then `extra` (listeners, options, `-- args`). */
  recordArgs(extra: string[]): string[] {
    const args = ['record', this.wasm, '--log', this.log, '--trace-calls', this.trace];
    if (this.disk) args.push('--disk', this.disk.now);
    for (const d of this.dirs) args.push('--dir', `${d.now}::${d.guest}`);
    args.push(...extra);
    this.recordCmd = ['node', 'bin/lockstep.js', ...args];
    return args;
  }

  replayArgs(showOutput: boolean): string[] {
    const args = ['replay', this.wasm, '--log', this.log];
    if (this.disk) args.push('--disk', this.disk.replayed);
    for (const d of this.dirs) args.push('--dir', `${d.replayed}::${d.guest}`);
    if (showOutput) args.push('--show-output');
    return args;
  }

  folders(): Folder[] {
    return [...(this.disk ? [this.disk] : []), ...this.dirs];
  }

  /** Everything needed to redo this round trip by hand. */
  repro(replayArgs: string[], rec: RunResult | null, rep: RunResult | null): string {
    const lines = [
      `To reproduce (in ${ROOT}; LOCKSTEP_CACHE_DIR=${CACHE_DIR} is optional):`,
      ...this.notes.map((n) => `  ${n}`),
      `  record: ${cmdLine(this.recordCmd)}`,
      ...this.folders().map((f) => `  before replay: rm -rf ${f.replayed}; cp -r ${f.before} ${f.replayed}`),
      `  replay: ip netns add NAME && ${cmdLine(['ip', 'netns', 'exec', 'NAME', 'node', 'bin/lockstep.js', ...replayArgs])}; ip netns del NAME`,
      `  (${NETNS_SETUP})`,
      `  artifacts kept in ${this.dir}`,
    ];
    if (rec) lines.push(`record exit ${rec.code} (signal ${rec.signal}); stderr:\n${tail(rec.stderr)}`);
    if (rep) lines.push(`replay exit ${rep.code} (signal ${rep.signal}); stderr:\n${tail(rep.stderr)}`);
    return lines.join('\n');
  }
}

function tail(s: string, lines = 30): string {
  return s.split('\n').slice(-lines).join('\n');
}

/** The same failure, with how to reproduce it appended to its message (which the stack already holds). */
function withRepro(e: unknown, repro: string): Error {
  if (e instanceof assert.AssertionError) {
    return new assert.AssertionError({
      message: `${e.message}\n${repro}`,
      actual: e.actual,
      expected: e.expected,
      operator: e.operator,
    });
  }
  return new Error(`${e instanceof Error ? e.message : String(e)}\n${repro}`, { cause: e });
}

/** What a recording must have ended with. */
interface Expect {
  /** record's exit status. */
  code: number;
  stop: Summary['stop'];
  exitCode: number | null;
  /** The guest checks itself (ok/FAIL lines): none may fail. */
  selfChecking?: boolean;
}

/**
 * Checks the recording, replays it in the namespace and compares. With
 * `showOutput`, replay must also emit exactly the stdout the recording did.
 * `recSummary` is null when the recording's stdout could not be read (a
 * closed pipe): replay's own comparison with the log's trailer then decides.
 */
async function replayAndCompare(
  rt: RoundTrip,
  rec: RunResult,
  expect: Expect,
  opts: { showOutput?: boolean; summaryVisible?: boolean } = {},
): Promise<Summary> {
  const showOutput = opts.showOutput ?? false;
  const replayArgs = rt.replayArgs(showOutput);
  let rep: RunResult | null = null;
  rt.recorded = rec;
  try {
    const recSummary = opts.summaryVisible === false ? null : lastSummary(rec.stdout);
    assert.equal(rec.code, expect.code, `record exit status`);
    if (opts.summaryVisible !== false) {
      assert.ok(recSummary, `record printed no summary as its last stdout line:\n${tail(rec.stdout, 5)}`);
      assert.equal(recSummary.stop, expect.stop, 'record stop');
      assert.equal(recSummary.exitCode, expect.exitCode, 'record exitCode');
    }
    if (expect.selfChecking) {
      const fails = rec.stdout.split('\n').filter((l) => l.startsWith('FAIL'));
      assert.deepEqual(fails, [], `the guest failed its own checks while recording:\n${rec.stdout}`);
      assert.ok(/^ok /m.test(rec.stdout), `the guest printed no checks:\n${tail(rec.stdout, 10)}`);
    }
    assert.deepEqual(await ns.interfacesUp(), [], `namespace ${ns.name} has interfaces up`);
    for (const f of rt.folders()) execFileSync('cp', ['-r', f.before, f.replayed]);
    rep = await ns.runLockstep(replayArgs, { timeoutMs: 60_000 });
    const repSummary = lastSummary(rep.stdout);
    assert.equal(rep.code, 0, 'replay exit status');
    assert.ok(repSummary, `replay printed no summary as its last stdout line:\n${tail(rep.stdout, 5)}`);
    assert.ok(/replay matches the recording/.test(rep.stderr), 'replay did not say that it matches');
    if (recSummary) {
      const want = { ...recSummary, stop: recSummary.stop === 'signal' ? 'end-of-log' : recSummary.stop };
      assert.deepEqual(repSummary, want, 'replay summary differs from the recording');
    } else {
      assert.equal(repSummary.stop, expect.stop, 'replay stop');
      assert.equal(repSummary.exitCode, expect.exitCode, 'replay exitCode');
    }
    if (showOutput) {
      // Compared as booleans: a guest's output can be megabytes, too much for a failure message.
      const same = guestStdout(rep.stdout) === guestStdout(rec.stdout);
      assert.ok(
        same,
        `replay --show-output printed other stdout than the recording (${rep.stdout.length} and ${rec.stdout.length} characters)`,
      );
    }
    // Replay performs file operations for real: it must leave the folders as the recording did.
    for (const p of rt.folders()) {
      const a = Buffer.from(folderManifestSha256(p.now)).toString('hex');
      const b = Buffer.from(folderManifestSha256(p.replayed)).toString('hex');
      assert.equal(b, a, `after replay, ${p.replayed} differs from ${p.now} after recording`);
    }
    const traces = matchedTraces.get(rt.guest) ?? [];
    traces.push(rt.trace);
    matchedTraces.set(rt.guest, traces);
    return repSummary;
  } catch (e) {
    failed = true;
    throw withRepro(e, rt.repro(replayArgs, rec, rep));
  }
}

/** Records a guest that runs to its end by itself, then replays it. */
async function roundTrip(
  rt: RoundTrip,
  extra: string[],
  expect: Expect,
  opts: { stdin?: Buffer; showOutput?: boolean } = {},
): Promise<Summary> {
  if (opts.stdin) rt.note(`stdin of record: ${opts.stdin.length} bytes (hex ${opts.stdin.toString('hex')})`);
  const rec = await runLockstep(rt.recordArgs(extra), { timeoutMs: 60_000, stdin: opts.stdin });
  return replayAndCompare(rt, rec, expect, { showOutput: opts.showOutput ?? true });
}

/** Waits until the log stops growing for quietMs (the guest idles), or maxMs in all. */
async function waitLogQuiet(log: string, quietMs = 500, maxMs = 5000): Promise<void> {
  const stepMs = 50;
  let size = -1;
  let still = 0;
  for (let waited = 0; waited < maxMs; waited += stepMs) {
    const now = existsSync(log) ? statSync(log).size : 0;
    still = now === size ? still + stepMs : 0;
    size = now;
    if (still >= quietMs) return;
    await sleep(stepMs);
  }
}

/**
 * Records a server guest under `drive` (its clients), then either waits for
 * the guest to exit or, once its clients are gone and it idles, stops the
 * recording with SIGTERM; then replays it.
 */
async function serveRoundTrip(
  rt: RoundTrip,
  extra: string[],
  listeners: number,
  drive: (ports: number[]) => Promise<void>,
  expect: Expect,
  opts: { end: 'exit' | 'sigterm'; showOutput?: boolean },
): Promise<Summary> {
  let vm: Running | null = null;
  let rec: RunResult;
  try {
    vm = await startLockstep(rt.recordArgs(extra), { expectListeners: listeners, timeoutMs: 60_000 });
    await drive(vm.addresses.map((a) => a.port));
    if (opts.end === 'sigterm') {
      await waitLogQuiet(rt.log);
      rt.note('record stopped with SIGTERM once the clients had closed and the log was quiet for 500 ms');
      rec = await vm.stop('SIGTERM', 20_000);
    } else {
      // The guest ends by itself once its client is done; a hung one is killed and fails below.
      const killer = setTimeout(() => vm?.child.kill('SIGKILL'), 20_000);
      rec = await vm.exited;
      clearTimeout(killer);
    }
  } catch (e) {
    failed = true;
    const stderr = `record stderr:\n${tail(vm?.stderr() ?? '')}`;
    throw withRepro(e, `while recording; ${rt.repro(rt.replayArgs(false), null, null)}\n${stderr}`);
  } finally {
    await vm?.stop('SIGKILL');
  }
  return replayAndCompare(rt, rec, expect, { showOutput: opts.showOutput ?? true });
}

// ---------------------------------------------------------------- clients

/** A line-protocol client: send a line, await the reply line. */
class LineClient {
  private buf = '';
  private waiters: { resolve: (line: string) => void; reject: (e: Error) => void }[] = [];
  private readonly closed: Promise<void>;
  private constructor(private readonly s: net.Socket) {
    s.setEncoding('utf8');
    s.on('data', (d: string) => {
      this.buf += d;
      for (let i = this.buf.indexOf('\n'); i >= 0 && this.waiters.length > 0; i = this.buf.indexOf('\n')) {
        const line = this.buf.slice(0, i).replace(/\r$/, '');
        this.buf = this.buf.slice(i + 1);
        this.waiters.shift()!.resolve(line);
      }
    });
    this.closed = new Promise((resolve) => s.once('close', () => resolve()));
    s.on('close', () => {
      for (const w of this.waiters.splice(0)) w.reject(new Error('connection closed before a reply'));
    });
    s.on('error', () => {});
  }
  static async connect(port: number): Promise<LineClient> {
    return new LineClient(await connect(port));
  }
  ask(line: string): Promise<string> {
    return new Promise((resolve, reject) => {
      this.waiters.push({ resolve, reject });
      this.s.write(line + '\n');
    });
  }
  /** Sends QUIT, expects `reply`, and waits until the server has closed the connection. */
  async quit(reply: string): Promise<void> {
    assert.equal(await this.ask('QUIT'), reply);
    this.s.end();
    await this.closed;
  }
  destroy(): void {
    this.s.destroy();
  }
}

/** Runs a client program (redis-benchmark) as its own process, killed after timeoutMs or in after(). */
function runClient(cmd: string, args: string[], timeoutMs: number): Promise<RunResult> {
  return runCollected(cmd, args, { timeoutMs, live: clients });
}

async function redisBenchmark(port: number, extra: string[]): Promise<void> {
  const args = ['-h', '127.0.0.1', '-p', String(port), '-n', '2000', '-c', '10', '-t', 'set,get', '-q'];
  const r = await runClient('redis-benchmark', [...args, ...extra], 60_000);
  assert.equal(r.code, 0, `redis-benchmark ${args.join(' ')} ${extra.join(' ')}: ${r.stderr}`);
  const lines = r.stdout.split(/[\r\n]/).filter((l) => /requests per second/.test(l));
  assert.equal(lines.length, 2, `expected SET and GET results, got: ${r.stdout}`);
}

/** One RESP command, as an AOF holds it. */
function resp(...words: string[]): string {
  return `*${words.length}\r\n` + words.map((w) => `$${Buffer.byteLength(w)}\r\n${w}\r\n`).join('');
}

// ---------------------------------------------------------------- the example guests, under load

test(
  'kv (C, RESP, AOF on /data): ioredis and redis-benchmark, plain and pipelined; replay offline',
  { timeout: 120_000 },
  async () => {
    const rt = new RoundTrip('kv', exampleWasm('kv'), {
      disk: { 'appendonly.aof': resp('SET', 'seed', 'planted') + resp('SET', 'counter', '10') },
    });
    rt.note('clients: ioredis (commands, a 200-command pipeline, expiry, a 300 KB value) alongside');
    rt.note('  redis-benchmark -n 2000 -c 10 -t set,get -q, then the same with -P 16');
    const s = await serveRoundTrip(
      rt,
      ['--listen', '127.0.0.1:0'],
      1,
      async ([port]) => {
        const client = new Redis({
          host: '127.0.0.1',
          port: port!,
          lazyConnect: true,
          maxRetriesPerRequest: 0,
          enableOfflineQueue: false,
          autoResendUnfulfilledCommands: false,
          retryStrategy: () => null,
        });
        try {
          await client.connect();
          assert.equal(await client.get('seed'), 'planted', 'the AOF on the disk was loaded');
          assert.equal(await client.incr('counter'), 11);
          const workload = async (): Promise<void> => {
            const pipe = client.pipeline();
            for (let i = 0; i < 200; i++) pipe.set(`k${i}`, `v${i}`);
            assert.equal((await pipe.exec())?.length, 200);
            const values = await client.mget(...Array.from({ length: 200 }, (_, i) => `k${i}`));
            values.forEach((v, i) => assert.equal(v, `v${i}`));
            // Expiry reads the guest's clock: a key set to live 200 ms is gone 400 ms later.
            assert.equal(await client.set('short', 'lived', 'PX', 200), 'OK');
            assert.equal(await client.pexpire('counter', 600_000), 1);
            assert.ok((await client.pttl('counter')) > 0);
            await sleep(400);
            assert.equal(await client.get('short'), null);
            const big = 'x'.repeat(300_000); // more than a socket ring: partial sends and backpressure
            await client.set('big', big);
            assert.equal(await client.get('big'), big);
            assert.equal(await client.del('k0', 'k1', 'nope'), 2);
          };
          // ioredis and a redis-benchmark process at the same time: interleaved connections.
          await Promise.all([workload(), redisBenchmark(port!, [])]);
          await redisBenchmark(port!, ['-P', '16']);
          assert.ok((await client.dbsize()) >= 200);
          await client.quit();
        } finally {
          client.disconnect();
        }
      },
      { code: 0, stop: 'signal', exitCode: null },
      { end: 'sigterm', showOutput: false },
    );
    assert.ok(s.events > 1000, `only ${s.events} events were recorded`);
    const aof = readFileSync(path.join(rt.disk!.now, 'appendonly.aof'), 'latin1');
    assert.match(aof, /big/, 'the recording appended to the AOF');
  },
);

test(
  'rust-kv (Rust std, one connection at a time, log on /data): queued clients; replay offline',
  { timeout: 90_000 },
  async () => {
    const rt = new RoundTrip('rust-kv', exampleWasm('rust-kv'), {
      disk: { 'rust-kv.log': 'SET seed planted\nSET colour blue\nDEL colour\n' },
    });
    rt.note('clients: 4 concurrent line clients (served one after another), 40 SET/GET each, QUIT');
    const s = await serveRoundTrip(
      rt,
      ['--listen', '127.0.0.1:0'],
      1,
      async ([port]) => {
        const one = async (c: number): Promise<void> => {
          const cl = await LineClient.connect(port!);
          try {
            assert.equal(await cl.ask('GET seed'), 'VALUE planted');
            assert.equal(await cl.ask('GET colour'), 'NIL');
            for (let i = 0; i < 40; i++) {
              assert.equal(await cl.ask(`SET c${c}k${i} value ${i} of client ${c} é`), 'OK');
              assert.equal(await cl.ask(`GET c${c}k${i}`), `VALUE value ${i} of client ${c} é`);
            }
            assert.equal(await cl.ask(`DEL c${c}k0`), 'DELETED 1');
            assert.match(await cl.ask('COUNT'), /^COUNT \d+$/);
            assert.match(await cl.ask('NOPE'), /^ERR/);
            await cl.quit('BYE');
          } finally {
            cl.destroy();
          }
        };
        await Promise.all([0, 1, 2, 3].map(one));
      },
      { code: 0, stop: 'signal', exitCode: null },
      { end: 'sigterm', showOutput: false },
    );
    assert.ok(s.events > 300, `only ${s.events} events were recorded`);
  },
);

test(
  'sessions (C, timers, random ids, both clocks): concurrent clients, expiry; replay offline',
  { timeout: 60_000 },
  async () => {
    const rt = new RoundTrip('sessions', exampleWasm('sessions'));
    rt.note('clients: 3 concurrent line clients (NEW 200/60000, GET, TOUCH, TIME, expiry after 400 ms, DEL)');
    const s = await serveRoundTrip(
      rt,
      ['--listen', '127.0.0.1:0', '--', '700'], // a stats line on stderr every 700 ms: timer-driven output
      1,
      async ([port]) => {
        const one = async (): Promise<void> => {
          const c = await LineClient.connect(port!);
          try {
            const a = await c.ask('NEW 200');
            const b = await c.ask('NEW 60000');
            assert.match(a, /^OK [0-9a-f]{32}$/);
            assert.match(b, /^OK [0-9a-f]{32}$/);
            assert.match(await c.ask(`GET ${a.slice(3)}`), /^OK \d+$/);
            assert.match(await c.ask(`TOUCH ${b.slice(3)}`), /^OK 60000$/);
            assert.match(await c.ask('TIME'), /^OK \d+ \d+$/);
            await sleep(400);
            assert.equal(await c.ask(`GET ${a.slice(3)}`), 'ERR not found');
            assert.equal(await c.ask(`DEL ${b.slice(3)}`), 'OK 1');
            assert.equal(await c.ask('NOPE'), 'ERR unknown command');
            await c.quit('OK bye');
          } finally {
            c.destroy();
          }
        };
        await Promise.all([one(), one(), one()]);
        await sleep(800); // at least one more stats line, with no client connected
      },
      { code: 0, stop: 'signal', exitCode: null },
      { end: 'sigterm', showOutput: false },
    );
    assert.ok(s.events > 50, `only ${s.events} events were recorded`);
  },
);

// ---------------------------------------------------------------- the test guests

const ok = (code = 0): Expect => ({ code, stop: 'exit', exitCode: code, selfChecking: true });

test('args_env: non-ASCII and empty args and environment', { timeout: 60_000 }, async () => {
  const rt = new RoundTrip('args_env', guestWasm('args_env'));
  await roundTrip(
    rt,
    ['--env', 'A=1', '--env', 'UNICODE=ñandú', '--env', 'EMPTY=', '--', 'héllo', '日本語', '', '🚀x'],
    ok(),
  );
});

test('clocks_random: clocks, sleeps and entropy are fed from the log', { timeout: 60_000 }, async () => {
  await roundTrip(new RoundTrip('clocks_random', guestWasm('clocks_random')), [], ok());
});

test('files: every file operation on the disk, performed again by replay', { timeout: 60_000 }, async () => {
  await roundTrip(new RoundTrip('files', guestWasm('files'), { disk: {} }), [], ok());
});

test('sandbox: escapes refused in both runs, with a disk and --dir', { timeout: 60_000 }, async () => {
  const rt = new RoundTrip('sandbox', guestWasm('sandbox'), {
    disk: {},
    dirs: [{ guest: '/extra', files: { 'hello.txt': 'hello\n' } }],
  });
  await roundTrip(rt, [], ok());
});

test(
  'exit_code and proc_exit_direct: the exit code is part of the summary',
  { timeout: 60_000 },
  async () => {
    const a = await roundTrip(new RoundTrip('exit_code', guestWasm('exit_code')), ['--', '42'], {
      code: 42,
      stop: 'exit',
      exitCode: 42,
    });
    assert.equal(a.exitCode, 42);
    const b = await roundTrip(new RoundTrip('proc_exit_direct', guestWasm('proc_exit_direct')), ['--', '9'], {
      code: 9,
      stop: 'exit',
      exitCode: 9,
    });
    assert.equal(b.exitCode, 9);
  },
);

test('yield', { timeout: 60_000 }, async () => {
  await roundTrip(new RoundTrip('yield', guestWasm('yield')), [], ok());
});

test('stdio: stdin fed from the log, byte-exact stdout and stderr', { timeout: 60_000 }, async () => {
  const input = Buffer.from('some input bytes\n\u00e9\u0000end');
  const rt = new RoundTrip('stdio', guestWasm('stdio'));
  const expect: Expect = { code: 0, stop: 'exit', exitCode: 0 };
  await roundTrip(rt, [], expect, { stdin: input });
  let h = 0xcbf29ce484222325n;
  for (const b of input) h = BigInt.asUintN(64, (h ^ BigInt(b)) * 0x100000001b3n);
  const want = `stdin bytes=${input.length} fnv1a=${h.toString(16).padStart(16, '0')}`;
  // The replay above printed the same stdout (--show-output); this checks that it is the right one.
  const out = rt.recorded?.stdout ?? '';
  assert.ok(out.includes(want + '\n'), `the guest did not see stdin: ${tail(out, 3)}`);
});

test('trap: record exits 134, replay stops at the same trap', { timeout: 60_000 }, async () => {
  const s = await roundTrip(new RoundTrip('trap', guestWasm('trap')), [], {
    code: 134,
    stop: 'trap',
    exitCode: null,
  });
  assert.equal(s.stop, 'trap');
});

test('deep_recursion: the call-depth limit (137) and moderate recursion', { timeout: 60_000 }, async () => {
  await roundTrip(new RoundTrip('deep_recursion', guestWasm('deep_recursion')), [], {
    code: 137,
    stop: 'trap',
    exitCode: null,
  });
  await roundTrip(new RoundTrip('deep_recursion', guestWasm('deep_recursion')), ['--', '5000'], {
    code: 0,
    stop: 'exit',
    exitCode: 0,
  });
});

test('memory_bomb: stopped at the memory limit (137) at the same point', { timeout: 60_000 }, async () => {
  const s = await roundTrip(
    new RoundTrip('memory_bomb', guestWasm('memory_bomb')),
    ['--memory-max-mib', '48'],
    { code: 137, stop: 'trap', exitCode: null },
  );
  assert.ok(s.events > 10);
});

test(
  'endless_loop: the CPU budget stops record (137) and replay at the same count',
  { timeout: 60_000 },
  async () => {
    const s = await roundTrip(
      new RoundTrip('endless_loop', guestWasm('endless_loop')),
      ['--cpu-budget', '30000000'],
      { code: 137, stop: 'budget', exitCode: null },
    );
    assert.equal(s.stop, 'budget');
  },
);

test('yes: stdout closed under the guest, EPIPE fed from the log', { timeout: 60_000 }, async () => {
  const rt = new RoundTrip('yes', guestWasm('yes'));
  rt.note("record's stdout is a pipe that the test closes after the first bytes (like `| head -1`)");
  const args = rt.recordArgs([]);
  const child = spawn(process.execPath, [BIN, ...args], {
    cwd: ROOT,
    env: { ...process.env, LOCKSTEP_CACHE_DIR: CACHE_DIR },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const killer = setTimeout(() => child.kill('SIGKILL'), 60_000);
  let rec: RunResult;
  try {
    rec = await new Promise<RunResult>((resolve, reject) => {
      let stderr = '';
      child.stdout.once('data', () => child.stdout.destroy());
      child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
      child.on('error', reject);
      child.on('close', (code, signal) => resolve({ code, signal, stdout: '', stderr }));
    });
  } finally {
    clearTimeout(killer);
    child.kill('SIGKILL');
  }
  // The summary went to the closed pipe; replay compares with the log's trailer itself.
  await replayAndCompare(rt, rec, { code: 3, stop: 'exit', exitCode: 3 }, { summaryVisible: false });
});

test(
  'idle_poll: SIGTERM while the guest sleeps in poll_oneoff, with no network',
  { timeout: 60_000 },
  async () => {
    const rt = new RoundTrip('idle_poll', guestWasm('idle_poll'));
    rt.note('record stopped with SIGTERM about 1.5 s after the guest printed "idle_poll: started"');
    const args = rt.recordArgs([]);
    const child = spawn(process.execPath, [BIN, ...args], {
      cwd: ROOT,
      env: { ...process.env, LOCKSTEP_CACHE_DIR: CACHE_DIR },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const killer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    let stdout = '';
    let stderr = '';
    child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
    const started = new Promise<void>((resolve) => {
      child.stdout.on('data', (b: Buffer) => {
        stdout += b.toString();
        if (stdout.includes('idle_poll: started\n')) resolve();
      });
    });
    const exited = new Promise<RunResult>((resolve) =>
      child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr })),
    );
    try {
      await Promise.race([started, exited]);
      // A turn or two of its loop (one clock read and one 1 s poll each), then a stop in the middle of a poll.
      await sleep(1500);
      child.kill('SIGTERM');
      const rec = await exited;
      const s = await replayAndCompare(rt, rec, { code: 0, stop: 'signal', exitCode: null });
      assert.equal(s.stop, 'end-of-log');
    } finally {
      clearTimeout(killer);
      child.kill('SIGKILL');
    }
  },
);

test('prestat: two listeners then the disk', { timeout: 60_000 }, async () => {
  const rt = new RoundTrip('prestat', guestWasm('prestat'), { disk: {} });
  await roundTrip(rt, ['--listen', '127.0.0.1:0', '--listen', '127.0.0.1:0', '--', 'LLD'], ok());
});

test('wasi_direct: rarely used functions, ENOSYS and error paths', { timeout: 60_000 }, async () => {
  const rt = new RoundTrip('wasi_direct', guestWasm('wasi_direct'), {
    disk: {},
    dirs: [{ guest: '/extra', files: {} }],
  });
  await roundTrip(rt, ['--listen', '127.0.0.1:0'], ok());
});

test('poll: timeouts and readiness under a real client', { timeout: 60_000 }, async () => {
  const rt = new RoundTrip('poll', guestWasm('poll'));
  rt.note('client: connect once, wait 100 ms, send "ping\\n", read "pong\\n", close');
  await serveRoundTrip(
    rt,
    ['--listen', '127.0.0.1:0'],
    1,
    async ([port]) => {
      const s = await connect(port!);
      try {
        await sleep(100);
        s.write('ping\n');
        assert.equal((await readExactly(s, 5, { buf: Buffer.alloc(0) })).toString(), 'pong\n');
        s.end();
      } finally {
        s.on('error', () => {});
      }
    },
    ok(),
    { end: 'exit' },
  );
});

test('sockets: peek, EAGAIN, 1 MiB send, echo, half-close', { timeout: 60_000 }, async () => {
  const rt = new RoundTrip('sockets', guestWasm('sockets'));
  rt.note('client: the protocol of test/guests/README.md (sockets), echoing 300 KiB');
  await serveRoundTrip(
    rt,
    ['--listen', '127.0.0.1:0'],
    1,
    async ([port]) => {
      const s = await connect(port!);
      try {
        const st = { buf: Buffer.alloc(0) };
        s.write('hello');
        assert.equal((await readExactly(s, 5, st)).toString(), 'world');
        const big = await readExactly(s, 1 << 20, st);
        for (let i = 0; i < big.length; i++) {
          if (big[i] !== ((i * 31 + 7) & 0xff)) assert.fail(`byte ${i} is ${big[i]}`);
        }
        const payload = Buffer.alloc(300 * 1024);
        for (let i = 0; i < payload.length; i++) payload[i] = (i * 7) & 0xff;
        const echoed = readExactly(s, payload.length, st);
        s.write(payload);
        assert.ok((await echoed).equals(payload), 'echo differs');
        s.end();
        assert.equal((await readExactly(s, 4, st)).toString(), 'bye\n');
      } finally {
        s.on('error', () => {});
      }
    },
    ok(),
    { end: 'exit' },
  );
});

test('rust_fs_net: Rust std files and TcpListener::from_raw_fd(3)', { timeout: 60_000 }, async () => {
  const rt = new RoundTrip('rust_fs_net', guestWasm('rust_fs_net'), { disk: {} });
  rt.note('client: connect once, send "lockstep é\\n", read the reversed line, close');
  await serveRoundTrip(
    rt,
    ['--listen', '127.0.0.1:0'],
    1,
    async ([port]) => {
      const s = await connect(port!);
      try {
        s.write('lockstep é\n');
        const reply = await readExactly(s, Buffer.byteLength('é petskcol\n'), { buf: Buffer.alloc(0) });
        assert.equal(reply.toString(), 'é petskcol\n');
        s.end();
      } finally {
        s.on('error', () => {});
      }
    },
    ok(),
    { end: 'exit' },
  );
});

test(
  'send_and_exit: the guest exits while its client keeps the connection open',
  { timeout: 60_000 },
  async () => {
    const rt = new RoundTrip('send_and_exit', guestWasm('send_and_exit'));
    rt.note(
      'client: connect (half-open allowed), read "hi\\n", keep the connection open until the guest exits',
    );
    let client: net.Socket | null = null;
    try {
      await serveRoundTrip(
        rt,
        ['--listen', '127.0.0.1:0'],
        1,
        async ([port]) => {
          client = await connect(port!, true);
          client.on('error', () => {});
          assert.equal((await readExactly(client, 3, { buf: Buffer.alloc(0) })).toString(), 'hi\n');
        },
        { code: 0, stop: 'exit', exitCode: 0 },
        { end: 'exit' },
      );
    } finally {
      (client as net.Socket | null)?.destroy();
    }
  },
);

// ---------------------------------------------------------------- completeness

test('completeness: every preview1 function ran in a round trip that matched, by the guests named', () => {
  const called = new Map<RoundTripGuest, Set<string>>();
  for (const [guest, files] of matchedTraces) {
    const s = new Set<string>();
    for (const f of files) {
      if (!existsSync(f)) continue;
      const t = JSON.parse(readFileSync(f, 'utf8')) as Record<string, Record<string, number>>;
      for (const [fn, counts] of Object.entries(t)) {
        if (Object.values(counts).some((n) => n > 0)) s.add(fn);
      }
    }
    called.set(guest, s);
  }
  const total = [...called.values()].reduce((n, s) => n + s.size, 0);
  assert.ok(
    matchedTraces.size === 0 || total > 0,
    `every trace written by \`lockstep record --trace-calls\` is empty (${[...matchedTraces.values()].flat()[0]}): record counts no host calls`,
  );
  const problems: string[] = [];
  for (const fn of WASI_FUNCTIONS) {
    const row = RECORD_REPLAY_COMPLETENESS[fn];
    if (row.guests.length === 0) problems.push(`${fn}: the table names no guest`);
    for (const g of row.guests) {
      if (!matchedTraces.has(g)) problems.push(`${fn}: ${g} has no round trip that matched`);
      else if (called.get(g)?.has(fn) !== true)
        problems.push(`${fn}: the table names ${g}, which never called it`);
    }
  }
  assert.deepEqual(problems, [], problems.join('\n'));
});
