/**
 * History: what the clients of a test asked the store and what they heard
 * back, with the times, for the linearizability checker.
 *
 * Role: a client program calls recordInvoke() just before it sends a request
 * and then exactly one of recordOk() (a reply arrived), recordFail() (the
 * request certainly never executed, say the connection was refused before
 * anything was sent) or recordInfo() (the outcome is unknown: a timeout, or a
 * connection reset after the request was sent). A child process serialises
 * its history to a file with serialize(), and the test reads it back with
 * parseKvHistory().
 *
 * Invariants:
 * - Time comes only from the injected clock, which must be monotonic and, for
 *   the histories of several processes to be merged, shared by them (for
 *   example `() => Number(process.hrtime.bigint()) / 1e6`). The clock is read
 *   once per event, so a fake clock makes a history exactly reproducible.
 * - An operation is completed at most once; a second completion is a bug in
 *   the client program and throws.
 * - An operation still pending when the history is taken is one whose reply
 *   never came: the checker treats it as an unknown outcome, like 'info'.
 * - For 'ok' operations `output` and `responseMs` are set; for 'fail' and
 *   'info' `responseMs` is only the time the client gave up, kept for reports
 *   (the checker ignores it: an unknown outcome may take effect at any later
 *   time).
 */
import { isKvInput, isKvOutput, type KvInput, type KvOutput } from './kv-model.js';

/** A client's name in reports; any number or string, distinct per client. */
export type ClientId = number | string;

/** 'pending' until completed; 'ok' = reply received; 'fail' = certainly not executed; 'info' = unknown. */
export type OpStatus = 'pending' | 'ok' | 'fail' | 'info';

/** One operation of a history. `id` is unique within the history. */
export interface OpRecord<I, O> {
  readonly id: number;
  readonly clientId: ClientId;
  readonly input: I;
  readonly invokeMs: number;
  readonly status: OpStatus;
  /** The reply; present exactly when status is 'ok' (null is a reply: a missing key). */
  readonly output?: O;
  /** When the reply came ('ok'), or when the client gave up ('fail', 'info'). */
  readonly responseMs?: number;
}

export type KvOpRecord = OpRecord<KvInput, KvOutput>;

/** The top-level shape of a serialised history file. */
export interface SerializedHistory<I, O> {
  readonly format: 'lockstep-history';
  readonly version: 1;
  readonly operations: readonly OpRecord<I, O>[];
}

export const HISTORY_FORMAT = 'lockstep-history';
export const HISTORY_VERSION = 1;

interface MutableRecord<I, O> {
  id: number;
  clientId: ClientId;
  input: I;
  invokeMs: number;
  status: OpStatus;
  output?: O;
  responseMs?: number;
}

/** Records the operations of any number of clients, in the order they happen. */
export class History<I = KvInput, O = KvOutput> {
  private readonly records: MutableRecord<I, O>[] = [];
  private lastMs = -Infinity;

  /** `nowMs` is a monotonic clock in milliseconds (fractions allowed). */
  constructor(private readonly nowMs: () => number) {}

  /** Notes that `clientId` is about to send `input`; returns the operation's id. */
  recordInvoke(clientId: ClientId, input: I): number {
    const id = this.records.length;
    this.records.push({ id, clientId, input, invokeMs: this.now(), status: 'pending' });
    return id;
  }

  /** The reply `output` arrived for operation `id`. */
  recordOk(id: number, output: O): void {
    if (output === undefined) throw new Error(`assertion: op ${id} completed with an undefined output`);
    const r = this.pending(id);
    r.responseMs = this.now();
    r.status = 'ok';
    r.output = output;
  }

  /** Operation `id` certainly did not execute (nothing was sent); the checker drops it. */
  recordFail(id: number): void {
    const r = this.pending(id);
    r.responseMs = this.now();
    r.status = 'fail';
  }

  /** Operation `id` has an unknown outcome: it may take effect at any time after its invocation, or never. */
  recordInfo(id: number): void {
    const r = this.pending(id);
    r.responseMs = this.now();
    r.status = 'info';
  }

  /** Number of operations recorded so far. */
  get size(): number {
    return this.records.length;
  }

  /** A snapshot of the operations so far, in invocation order. */
  operations(): OpRecord<I, O>[] {
    return this.records.map((r) => ({ ...r }));
  }

  /** The history as JSON text, for a child process to write to a file. */
  serialize(): string {
    return serializeHistory(this.records);
  }

  private now(): number {
    const t = this.nowMs();
    if (!Number.isFinite(t)) throw new Error(`assertion: the history clock returned ${t}`);
    // A clock that runs backwards would invent real-time orders that never
    // happened, and with them violations that never happened.
    if (t < this.lastMs)
      throw new Error(`assertion: the history clock went back from ${this.lastMs} to ${t}`);
    this.lastMs = t;
    return t;
  }

  private pending(id: number): MutableRecord<I, O> {
    const r = this.records[id];
    if (r === undefined) throw new Error(`assertion: no operation ${id} in this history`);
    if (r.status !== 'pending') throw new Error(`assertion: op ${id} completed twice (already ${r.status})`);
    return r;
  }
}

/** JSON text for a list of operations (one operation per line, to keep diffs and greps readable). */
export function serializeHistory<I, O>(operations: readonly OpRecord<I, O>[]): string {
  // A fixed field order, so that a history read back serialises to the same text.
  const lines = operations.map((op) => {
    const o: Record<string, unknown> = {
      id: op.id,
      clientId: op.clientId,
      input: op.input,
      invokeMs: op.invokeMs,
      status: op.status,
    };
    if (op.output !== undefined) o['output'] = op.output;
    if (op.responseMs !== undefined) o['responseMs'] = op.responseMs;
    return '    ' + JSON.stringify(o);
  });
  return (
    `{\n  "format": ${JSON.stringify(HISTORY_FORMAT)},\n  "version": ${HISTORY_VERSION},\n` +
    `  "operations": [\n${lines.join(',\n')}\n  ]\n}\n`
  );
}

export type ParseHistoryResult<I, O> =
  | { readonly ok: true; readonly operations: OpRecord<I, O>[] }
  | { readonly ok: false; readonly error: string };

const STATUSES: ReadonlySet<string> = new Set(['pending', 'ok', 'fail', 'info']);

/**
 * Reads a serialised history back. A file truncated or damaged (a child killed
 * while writing it, say) is an expected failure, so it comes back as a value
 * naming the first problem.
 */
export function parseHistory<I, O>(
  text: string,
  isInput: (x: unknown) => x is I,
  isOutput: (x: unknown) => x is O,
): ParseHistoryResult<I, O> {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    return { ok: false, error: `history is not JSON: ${(e as Error).message}` };
  }
  if (typeof doc !== 'object' || doc === null) return { ok: false, error: 'history is not an object' };
  const d = doc as Record<string, unknown>;
  if (d['format'] !== HISTORY_FORMAT) return { ok: false, error: `history format is not ${HISTORY_FORMAT}` };
  if (d['version'] !== HISTORY_VERSION) {
    return { ok: false, error: `history version ${String(d['version'])} is not ${HISTORY_VERSION}` };
  }
  const raw = d['operations'];
  if (!Array.isArray(raw)) return { ok: false, error: 'history has no operations array' };
  const ids = new Set<number>();
  const operations: OpRecord<I, O>[] = [];
  for (let i = 0; i < raw.length; i++) {
    const o = raw[i] as Record<string, unknown> | null;
    const bad = (why: string): ParseHistoryResult<I, O> => ({ ok: false, error: `operation [${i}]: ${why}` });
    if (typeof o !== 'object' || o === null) return bad('not an object');
    const { id, clientId, input, invokeMs, status, output, responseMs } = o;
    if (!Number.isSafeInteger(id) || (id as number) < 0) return bad('id is not a non-negative integer');
    if (ids.has(id as number)) return bad(`duplicate id ${String(id)}`);
    ids.add(id as number);
    if (typeof clientId !== 'number' && typeof clientId !== 'string')
      return bad('clientId is not a number or string');
    if (!isInput(input)) return bad('input is not a valid operation');
    if (typeof invokeMs !== 'number' || !Number.isFinite(invokeMs))
      return bad('invokeMs is not a finite number');
    if (typeof status !== 'string' || !STATUSES.has(status)) return bad(`unknown status ${String(status)}`);
    if (responseMs !== undefined && (typeof responseMs !== 'number' || !(responseMs >= invokeMs))) {
      return bad('responseMs is not a number at or after invokeMs');
    }
    if (status === 'ok') {
      if (responseMs === undefined) return bad('an ok operation has no responseMs');
      if (!isOutput(output)) return bad('an ok operation has no valid output');
    } else if (output !== undefined) {
      return bad(`a ${status} operation has an output`);
    }
    const rec: MutableRecord<I, O> = {
      id: id as number,
      clientId,
      input,
      invokeMs,
      status: status as OpStatus,
    };
    if (status === 'ok') rec.output = output as O;
    if (responseMs !== undefined) rec.responseMs = responseMs as number;
    operations.push(rec);
  }
  return { ok: true, operations };
}

/** parseHistory() for the KV store's operations. */
export function parseKvHistory(text: string): ParseHistoryResult<KvInput, KvOutput> {
  return parseHistory(text, isKvInput, isKvOutput);
}

/**
 * One history from the histories of several recorders (several child
 * processes, say), renumbering ids so they stay unique. The recorders must
 * have shared one clock and used distinct client ids.
 */
export function mergeHistories<I, O>(parts: readonly (readonly OpRecord<I, O>[])[]): OpRecord<I, O>[] {
  const out: OpRecord<I, O>[] = [];
  for (const part of parts) for (const op of part) out.push({ ...op, id: out.length });
  return out;
}
