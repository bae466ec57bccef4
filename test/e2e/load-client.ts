/**
 * Load client: drives a Redis-protocol KV store with SET, INCR and GET from
 * several concurrent connections and records every operation in a History
 * for the linearizability checker (test/checker/). The failover tests run it
 * as a separate OS process, so that killing the host under test never kills
 * the witness:
 *
 *   node dist/test/e2e/load-client.js --host H --port P --clients N --keys K
 *     --duration-ms D --ops-max M --seed S --out FILE [--timeout-ms T]
 *     [--progress-ms P]
 *
 * It writes the serialised history to FILE, prints one JSON line of LoadStats
 * on stdout, and a `{"progress": LoadStats}` line on stderr every P ms
 * (default 200). SIGTERM or SIGINT stops it early; it still writes the file.
 * Tests can also call runLoad() in-process.
 *
 * Invariants (the checker is only as sound as these):
 * - An operation is recorded as 'fail' only when ioredis rejected it before
 *   writing a byte of it to any socket (classifyError). Every other error
 *   (timeout, connection lost or closed after the write, anything unknown) is
 *   'info': the command may have executed, now or later.
 * - Each logical client has its own connection and at most one command in
 *   flight, and ioredis never queues or resends a command
 *   (enableOfflineQueue, autoResendUnfulfilledCommands and
 *   maxRetriesPerRequest are all off), so what the history says was sent once
 *   was sent at most once.
 * - The keys must be missing when the load starts (a fresh store), because
 *   the model starts every key missing. Several load clients may share the
 *   keys at once, as long as their histories are merged before checking.
 * - Every value a SET writes is unique across clients and processes
 *   (`c<clientId>-<n>`), and counters and strings live in separate keys, so
 *   a stale or lost value cannot hide behind an equal one.
 * - The clock is `process.hrtime.bigint()`, CLOCK_MONOTONIC on Linux, shared
 *   by every process on the machine, so histories of several load clients
 *   merge with mergeHistories().
 * - Bounded: the run stops at durationMs or after opsMax operations, whichever
 *   comes first, and no command waits longer than timeoutMs for its reply.
 */
import { realpathSync, renameSync, writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { pathToFileURL } from 'node:url';
import { Redis } from 'ioredis';
import { Prng } from '../../src/core/prng.js';
import { History, type ClientId, type KvOpRecord } from '../checker/history.js';
import { kv, type KvInput, type KvOutput } from '../checker/kv-model.js';
import { checkKvHistory, type CheckOptions, type KvCheckResult } from '../checker/linearizability.js';

/**
 * How often a lost connection is retried. Short, because a failover makes the
 * address refuse connections for a few seconds and the clients should be back
 * as soon as it answers again; the retries never stop while the load runs.
 */
export const RECONNECT_DELAY_MS = 50;
/** How long a client whose connection is not ready waits before looking again, so it does not spin. */
export const NOT_READY_WAIT_MS = 20;
/** How long one connection attempt may take; an address that drops SYNs must not stall a client for long. */
export const CONNECT_TIMEOUT_MS = 1_000;
/** The default per-command reply timeout: well above a failover, so that few operations end as 'info'. */
export const COMMAND_TIMEOUT_MS_DEFAULT = 5_000;
/** The default interval between progress reports. */
export const PROGRESS_INTERVAL_MS_DEFAULT = 200;
/** The most distinct error kinds counted; more would only flood the stats line. */
const ERROR_KINDS_MAX = 64;
/** Limits on the command line, so a typo cannot start an unbounded run. */
const CLIENTS_MAX = 1_000;
const KEYS_MAX = 100_000;
const DURATION_MS_MAX = 3_600_000;
const OPS_MAX_MAX = 10_000_000;

/** The message ioredis rejects a command with when it did not write it (no offline queue). */
export const NOT_WRITEABLE_MESSAGE = "Stream isn't writeable and enableOfflineQueue options is false";

/** The clock every load client records with: CLOCK_MONOTONIC in milliseconds, to the microsecond. */
export function monotonicNowMs(): number {
  // Dividing the bigint first keeps the value exact (and so never backwards)
  // however long the machine has been up.
  return Number(process.hrtime.bigint() / 1000n) / 1000;
}

export interface LoadOptions {
  readonly host: string;
  readonly port: number;
  /** Number of concurrent logical clients, each with its own connection. */
  readonly clients: number;
  /** Number of keys, at least 2: half strings (SET/GET), half counters (INCR/GET). */
  readonly keys: number;
  readonly durationMs: number;
  /** The most operations recorded, over all clients. */
  readonly opsMax: number;
  readonly seed: number;
  /** The per-command reply timeout (ioredis commandTimeout). */
  readonly timeoutMs: number;
  /** Where the operations are recorded; its clock should be monotonicNowMs for merging. */
  readonly history: History;
  /** Prefix of the client ids; distinct per process so merged histories stay apart. Default `<pid>.`. */
  readonly clientIdPrefix?: string;
  /** Stops the load early: commands still in flight are recorded as 'info'. */
  readonly signal?: AbortSignal;
  readonly onProgress?: (stats: LoadStats) => void;
  readonly progressIntervalMs?: number;
}

export interface LoadStats {
  /** Operations recorded: ok + fail + info. */
  ops: number;
  ok: number;
  fail: number;
  info: number;
  /** SETs and INCRs that got their normal reply: state the store must never lose. */
  ackedWrites: number;
  /** Times a client found its connection not ready and waited NOT_READY_WAIT_MS. */
  notReadyWaits: number;
  /** Counts by kind: `fail:<kind>`, `info:<kind>`, `reply:<code>` (error replies) and `conn:<code>` (connection errors). */
  errorsByKind: Record<string, number>;
  elapsedMs: number;
}

/** The keys a load with `keys` keys uses. */
export function loadKeyNames(keys: number): { strings: string[]; counters: string[]; all: string[] } {
  if (!Number.isSafeInteger(keys) || keys < 2)
    throw new RangeError(`keys must be an integer >= 2, got ${keys}`);
  const strings = Array.from({ length: Math.ceil(keys / 2) }, (_, i) => `str:${i}`);
  const counters = Array.from({ length: Math.floor(keys / 2) }, (_, i) => `ctr:${i}`);
  return { strings, counters, all: [...strings, ...counters] };
}

/** How an operation ended, from the reply or error ioredis gave. */
export type Outcome =
  | { readonly status: 'ok'; readonly output: KvOutput; readonly errorReply?: boolean }
  | { readonly status: 'fail' | 'info'; readonly kind: string };

/**
 * Maps an ioredis error to an outcome. Only the rejection ioredis issues in
 * sendCommand() before writing anything (no offline queue, stream not
 * writeable) is a certain 'fail'. A Redis error reply is a reply: it is
 * recorded 'ok' with its message, as the model expects for INCR on a
 * non-integer; any other error reply then shows up in the checker's report
 * as a reply the model cannot explain, which is what a test should hear
 * about. Everything else may have reached the server, so it is 'info':
 * "Command timed out", MaxRetriesPerRequestError (the connection closed with
 * the command in flight), "Connection is closed.", and anything unknown.
 */
export function classifyError(err: unknown): Outcome {
  if (!(err instanceof Error)) return { status: 'info', kind: 'non-error' };
  if (err.name === 'ReplyError') return { status: 'ok', output: err.message, errorReply: true };
  if (err.message === NOT_WRITEABLE_MESSAGE) return { status: 'fail', kind: 'not-writeable' };
  if (err.message === 'Command timed out') return { status: 'info', kind: 'timeout' };
  if (err.name === 'MaxRetriesPerRequestError') return { status: 'info', kind: 'connection-lost' };
  if (err.message === 'Connection is closed.') return { status: 'info', kind: 'connection-closed' };
  return { status: 'info', kind: `other:${err.name}:${err.message.slice(0, 60)}` };
}

/**
 * Runs the load until durationMs, opsMax or the abort signal, recording into
 * opts.history, and returns the counts. Never throws for what the network or
 * the store does: that is all recorded.
 */
export async function runLoad(opts: LoadOptions): Promise<LoadStats> {
  const keyNames = loadKeyNames(opts.keys);
  const startMs = monotonicNowMs();
  const deadlineMs = startMs + opts.durationMs;
  const prefix = opts.clientIdPrefix ?? `${process.pid}.`;
  const stats: LoadStats = {
    ops: 0,
    ok: 0,
    fail: 0,
    info: 0,
    ackedWrites: 0,
    notReadyWaits: 0,
    errorsByKind: {},
    elapsedMs: 0,
  };
  const countKind = (kind: string): void => {
    const known = stats.errorsByKind[kind];
    if (known !== undefined) stats.errorsByKind[kind] = known + 1;
    else if (Object.keys(stats.errorsByKind).length < ERROR_KINDS_MAX) stats.errorsByKind[kind] = 1;
  };
  let opsStarted = 0;
  let stopping = false;
  const aborted = new Promise<'aborted'>((resolve) => {
    if (opts.signal?.aborted) resolve('aborted');
    opts.signal?.addEventListener('abort', () => resolve('aborted'), { once: true });
  });
  const shouldStop = (): boolean =>
    stopping || opts.signal?.aborted === true || monotonicNowMs() >= deadlineMs;
  const snapshot = (): LoadStats => ({
    ...stats,
    errorsByKind: { ...stats.errorsByKind },
    elapsedMs: Math.round(monotonicNowMs() - startMs),
  });

  const clientLoop = async (index: number): Promise<void> => {
    const clientId: ClientId = `${prefix}${index}`;
    // One stream per client: the op sequence of each client depends only on (seed, index).
    const prng = new Prng(opts.seed, index);
    const redis = new Redis({
      host: opts.host,
      port: opts.port,
      lazyConnect: true,
      maxRetriesPerRequest: 0,
      enableOfflineQueue: false,
      autoResendUnfulfilledCommands: false,
      retryStrategy: () => (stopping ? null : RECONNECT_DELAY_MS),
      connectTimeout: CONNECT_TIMEOUT_MS,
      commandTimeout: opts.timeoutMs,
    });
    // Connection errors are expected during a failover; each command's own
    // rejection is what the history records, these are only counted.
    redis.on('error', (e: NodeJS.ErrnoException) => countKind(`conn:${e.code ?? e.name}`));
    // A failed first attempt is retried by retryStrategy like any lost connection.
    redis.connect().catch(() => {});
    let writesIssued = 0;
    try {
      while (!shouldStop()) {
        if (redis.status !== 'ready') {
          stats.notReadyWaits++;
          await sleep(NOT_READY_WAIT_MS, opts.signal);
          continue;
        }
        if (opsStarted >= opts.opsMax) break;
        opsStarted++;
        const input = pickOperation(prng, keyNames, `c${clientId}-${writesIssued}`);
        if (input.kind === 'set') writesIssued++;
        const id = opts.history.recordInvoke(clientId, input);
        const reply = send(redis, input).then(
          (output): Outcome => ({ status: 'ok', output }),
          (e: unknown) => classifyError(e),
        );
        const outcome = await Promise.race([reply, aborted]);
        stats.ops++;
        if (outcome === 'aborted') {
          stats.info++;
          countKind('info:stopped');
          opts.history.recordInfo(id);
          break;
        }
        if (outcome.status === 'ok') {
          stats.ok++;
          opts.history.recordOk(id, outcome.output);
          if (outcome.errorReply === true) countKind(`reply:${String(outcome.output).split(' ')[0] ?? ''}`);
          else if (input.kind !== 'get') stats.ackedWrites++;
        } else if (outcome.status === 'fail') {
          stats.fail++;
          countKind(`fail:${outcome.kind}`);
          opts.history.recordFail(id);
        } else {
          stats.info++;
          countKind(`info:${outcome.kind}`);
          opts.history.recordInfo(id);
        }
      }
    } finally {
      redis.disconnect();
    }
  };

  const progressTimer =
    opts.onProgress === undefined
      ? undefined
      : setInterval(
          () => opts.onProgress?.(snapshot()),
          opts.progressIntervalMs ?? PROGRESS_INTERVAL_MS_DEFAULT,
        );
  try {
    await Promise.all(Array.from({ length: opts.clients }, (_, i) => clientLoop(i)));
  } finally {
    stopping = true;
    if (progressTimer !== undefined) clearInterval(progressTimer);
  }
  return snapshot();
}

/** The next operation of a client: 35% SET of a fresh value, 25% INCR, 40% GET of any key. */
function pickOperation(
  prng: Prng,
  keyNames: { strings: string[]; counters: string[]; all: string[] },
  freshValue: string,
): KvInput {
  const r = prng.next();
  const pick = (list: string[]): string => list[prng.int(0, list.length - 1)]!;
  if (r < 0.35) return kv.set(pick(keyNames.strings), freshValue);
  if (r < 0.6) return kv.incr(pick(keyNames.counters));
  return kv.get(pick(keyNames.all));
}

/** Sends one command; the reply is a KvOutput as the model expects it. */
function send(redis: Redis, input: KvInput): Promise<KvOutput> {
  switch (input.kind) {
    case 'set':
      return redis.set(input.key, input.value);
    case 'get':
      return redis.get(input.key);
    case 'incr':
      return redis.incr(input.key);
    case 'del':
      return redis.del(input.key);
  }
}

/** Resolves after `ms`, or at once when `signal` aborts. */
function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    if (signal?.aborted) done();
    else signal?.addEventListener('abort', done, { once: true });
  });
}

/**
 * Reads every key in `keys` over one fresh connection, for a final snapshot
 * after the load. Retries the connection until `timeoutMs` (the address may
 * still be failing over) and throws if a read fails.
 */
export async function readKeys(
  host: string,
  port: number,
  keys: readonly string[],
  timeoutMs: number,
): Promise<Map<string, string | null>> {
  const deadlineMs = monotonicNowMs() + timeoutMs;
  const redis = new Redis({
    host,
    port,
    lazyConnect: true,
    maxRetriesPerRequest: 0,
    enableOfflineQueue: false,
    autoResendUnfulfilledCommands: false,
    retryStrategy: () => (monotonicNowMs() < deadlineMs ? RECONNECT_DELAY_MS : null),
    connectTimeout: CONNECT_TIMEOUT_MS,
    commandTimeout: timeoutMs,
  });
  redis.on('error', () => {}); // a failure surfaces as the rejected connect or read below
  try {
    await redis.connect().catch(() => {});
    while (redis.status !== 'ready') {
      if (monotonicNowMs() >= deadlineMs || redis.status === 'end') {
        throw new Error(`readKeys: ${host}:${port} not ready within ${timeoutMs} ms (${redis.status})`);
      }
      await sleep(NOT_READY_WAIT_MS);
    }
    const values = new Map<string, string | null>();
    for (const key of keys) values.set(key, await redis.get(key));
    return values;
  } finally {
    redis.disconnect();
  }
}

/**
 * `operations` followed by one completed GET per key of `finalValues`, each
 * invoked and answered after every time in `operations`: the snapshot read
 * once the load is over.
 */
export function withFinalReads(
  operations: readonly KvOpRecord[],
  finalValues: ReadonlyMap<string, string | null>,
  clientId: ClientId = 'final-read',
): KvOpRecord[] {
  let lastMs = 0;
  let nextId = 0;
  for (const op of operations) {
    lastMs = Math.max(lastMs, op.invokeMs, op.responseMs ?? -Infinity);
    nextId = Math.max(nextId, op.id + 1);
  }
  const out = [...operations];
  for (const [key, value] of finalValues) {
    out.push({
      id: nextId++,
      clientId,
      input: kv.get(key),
      invokeMs: lastMs + 1,
      status: 'ok',
      output: value,
      responseMs: lastMs + 2,
    });
  }
  return out;
}

/**
 * Checks a (merged) history together with the final snapshot of its keys, so
 * that "every acknowledged write is still readable" is decided by the same
 * checker: a SET or INCR acknowledged during the run and missing from the
 * snapshot leaves the final GET with no place in any linearization.
 */
export function checkFinalReads(
  operations: readonly KvOpRecord[],
  finalValues: ReadonlyMap<string, string | null>,
  options: CheckOptions = {},
): KvCheckResult {
  return checkKvHistory(withFinalReads(operations, finalValues), options);
}

// ---------------------------------------------------------------------------
// The command line.

const USAGE =
  'usage: load-client --host H --port P --clients N --keys K --duration-ms D --ops-max M ' +
  '--seed S --out FILE [--timeout-ms T] [--progress-ms P]';

function intOption(values: Record<string, unknown>, name: string, min: number, max: number): number {
  const text = values[name];
  if (typeof text !== 'string') throw new UsageError(`--${name} is required`);
  if (!/^\d+$/.test(text)) throw new UsageError(`--${name} must be a non-negative integer, got ${text}`);
  const n = Number(text);
  if (!(n >= min && n <= max)) throw new UsageError(`--${name} must be in [${min}, ${max}], got ${text}`);
  return n;
}

class UsageError extends Error {}

async function main(argv: string[]): Promise<number> {
  let options: Omit<LoadOptions, 'history'> & { out: string };
  try {
    const { values } = parseArgs({
      args: argv,
      strict: true,
      options: {
        host: { type: 'string' },
        port: { type: 'string' },
        clients: { type: 'string' },
        keys: { type: 'string' },
        'duration-ms': { type: 'string' },
        'ops-max': { type: 'string' },
        seed: { type: 'string' },
        out: { type: 'string' },
        'timeout-ms': { type: 'string', default: String(COMMAND_TIMEOUT_MS_DEFAULT) },
        'progress-ms': { type: 'string', default: String(PROGRESS_INTERVAL_MS_DEFAULT) },
      },
    });
    if (values.host === undefined) throw new UsageError('--host is required');
    if (values.out === undefined) throw new UsageError('--out is required');
    options = {
      host: values.host,
      port: intOption(values, 'port', 1, 65_535),
      clients: intOption(values, 'clients', 1, CLIENTS_MAX),
      keys: intOption(values, 'keys', 2, KEYS_MAX),
      durationMs: intOption(values, 'duration-ms', 1, DURATION_MS_MAX),
      opsMax: intOption(values, 'ops-max', 1, OPS_MAX_MAX),
      seed: intOption(values, 'seed', 0, Number.MAX_SAFE_INTEGER),
      timeoutMs: intOption(values, 'timeout-ms', 1, DURATION_MS_MAX),
      progressIntervalMs: intOption(values, 'progress-ms', 10, DURATION_MS_MAX),
      out: values.out,
    };
  } catch (e) {
    process.stderr.write(`load-client: ${(e as Error).message}\n${USAGE}\n`);
    return 2;
  }

  const history = new History(monotonicNowMs);
  const stop = new AbortController();
  process.once('SIGTERM', () => stop.abort());
  process.once('SIGINT', () => stop.abort());
  let stats: LoadStats;
  try {
    stats = await runLoad({
      ...options,
      history,
      signal: stop.signal,
      onProgress: (s) => process.stderr.write(JSON.stringify({ progress: s }) + '\n'),
    });
  } finally {
    // Written even when the load failed, and atomically, so a reader never
    // sees half a history from a run that was cut short.
    const tmp = `${options.out}.tmp-${process.pid}`;
    writeFileSync(tmp, history.serialize());
    renameSync(tmp, options.out);
  }
  process.stdout.write(JSON.stringify(stats) + '\n');
  return 0;
}

function isMainModule(): boolean {
  const script = process.argv[1];
  if (script === undefined) return false;
  try {
    return import.meta.url === pathToFileURL(realpathSync(script)).href;
  } catch {
    return false;
  }
}

if (isMainModule()) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (e: unknown) => {
      process.stderr.write(`load-client: ${(e as Error)?.stack ?? String(e)}\n`);
      process.exit(1);
    },
  );
}
