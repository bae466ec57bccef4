/**
 * KvModel: the sequential specification of the Redis-protocol key-value store
 * that the linearizability checker (linearizability.ts) holds client histories
 * against. It covers SET, GET, INCR and DEL, one key per operation.
 *
 * Role: given the value a key holds, an operation and the reply a client saw,
 * say what the key holds afterwards, or that no sequential execution could
 * have produced that reply. The checker does the searching; this module only
 * knows Redis semantics.
 *
 * Invariants:
 * - Pure and total: every (state, input, output) gives a next state or
 *   REJECTED. A reply a client received is data, so a strange reply is a
 *   rejection, never an exception.
 * - One operation touches one key, and the state of a key is its value alone
 *   (a string, or null when the key is missing). That is what makes checking
 *   each key separately (P-compositionality) exact rather than approximate.
 * - An output of `undefined` means the outcome is unknown (the client timed
 *   out): the operation's effect is applied and any reply is accepted.
 * - Integers follow Redis: a value INCR accepts is the canonical decimal form
 *   of a signed 64-bit integer, and INCR past 2^63 - 1 is an error that
 *   changes nothing.
 */
import { REJECTED, type Model, type Rejected } from './linearizability.js';

/** One client operation on the store. Each names exactly one key. */
export type KvInput =
  | { readonly kind: 'set'; readonly key: string; readonly value: string }
  | { readonly kind: 'get'; readonly key: string }
  | { readonly kind: 'incr'; readonly key: string }
  | { readonly kind: 'del'; readonly key: string };

/**
 * A reply as a Redis client library (ioredis) surfaces it: 'OK' for SET, the
 * value or null for GET, an integer for INCR and DEL. A Redis error reply is
 * recorded as its message string (for example INCR_ERROR_NOT_INTEGER), since
 * the command did execute: it just changed nothing.
 */
export type KvOutput = string | number | null;

/** The value of one key; null when the key is missing. */
export type KvState = string | null;

/** Redis's reply to INCR on a value that is not a 64-bit decimal integer. */
export const INCR_ERROR_NOT_INTEGER = 'ERR value is not an integer or out of range';
/** Redis's reply to INCR on 9223372036854775807. */
export const INCR_ERROR_OVERFLOW = 'ERR increment or decrement would overflow';

const INT64_MAX = 9223372036854775807n;
const INT64_MIN = -9223372036854775808n;
// Canonical decimal integers only, as Redis's string2ll demands: no sign on
// zero, no leading zeros, no spaces, at most 20 characters with the sign.
const CANONICAL_INTEGER = /^(0|-?[1-9][0-9]{0,18})$/;

/** Builders for inputs, so histories in tests and clients read like commands. */
export const kv = {
  set: (key: string, value: string): KvInput => ({ kind: 'set', key, value }),
  get: (key: string): KvInput => ({ kind: 'get', key }),
  incr: (key: string): KvInput => ({ kind: 'incr', key }),
  del: (key: string): KvInput => ({ kind: 'del', key }),
} as const;

/**
 * The value Redis would parse from `value` for INCR, or null when INCR must
 * reply INCR_ERROR_NOT_INTEGER. A missing key counts as 0.
 */
export function parseRedisInteger(value: KvState): bigint | null {
  if (value === null) return 0n;
  if (!CANONICAL_INTEGER.test(value)) return null;
  const n = BigInt(value);
  return n >= INT64_MIN && n <= INT64_MAX ? n : null;
}

/** What INCR does to `state`: the new state and the reply, an integer or an error message. */
export function applyIncr(state: KvState): { state: KvState; reply: number | string } {
  const n = parseRedisInteger(state);
  if (n === null) return { state, reply: INCR_ERROR_NOT_INTEGER };
  if (n === INT64_MAX) return { state, reply: INCR_ERROR_OVERFLOW };
  const next = n + 1n;
  return { state: next.toString(), reply: Number(next) };
}

/** Runtime guard for inputs read back from JSON. */
export function isKvInput(x: unknown): x is KvInput {
  if (typeof x !== 'object' || x === null) return false;
  const o = x as Record<string, unknown>;
  if (typeof o['key'] !== 'string') return false;
  switch (o['kind']) {
    case 'set':
      return typeof o['value'] === 'string';
    case 'get':
    case 'incr':
    case 'del':
      return true;
    default:
      return false;
  }
}

/** Runtime guard for outputs read back from JSON. */
export function isKvOutput(x: unknown): x is KvOutput {
  return x === null || typeof x === 'string' || (typeof x === 'number' && Number.isFinite(x));
}

function quote(v: KvState): string {
  return v === null ? 'null' : JSON.stringify(v);
}

function describeInput(input: KvInput): string {
  switch (input.kind) {
    case 'set':
      return `SET ${input.key} ${JSON.stringify(input.value)}`;
    case 'get':
      return `GET ${input.key}`;
    case 'incr':
      return `INCR ${input.key}`;
    case 'del':
      return `DEL ${input.key}`;
  }
}

function describeOutput(output: KvOutput): string {
  return typeof output === 'number' ? String(output) : quote(output);
}

/** FNV-1a over UTF-16 code units; null hashes apart from every string. */
function hashState(state: KvState): number {
  if (state === null) return 0x5bd1e995;
  let h = 0x811c9dc5;
  for (let i = 0; i < state.length; i++) h = Math.imul(h ^ state.charCodeAt(i), 0x01000193);
  return h | 0;
}

function step(state: KvState, input: KvInput, output: KvOutput | undefined): KvState | Rejected {
  const known = output !== undefined;
  switch (input.kind) {
    case 'set':
      return known && output !== 'OK' ? REJECTED : input.value;
    case 'get':
      return known && output !== state ? REJECTED : state;
    case 'incr': {
      const r = applyIncr(state);
      return known && output !== r.reply ? REJECTED : r.state;
    }
    case 'del':
      if (known && output !== (state === null ? 0 : 1)) return REJECTED;
      return null;
  }
}

/** Why `step(state, input, output)` is REJECTED, as a sentence for a failure report. */
function explainRejection(state: KvState, input: KvInput, output: KvOutput): string {
  const got = describeOutput(output);
  const holds = state === null ? `${input.key} is missing` : `${input.key} holds ${quote(state)}`;
  switch (input.kind) {
    case 'set':
      return `SET always replies "OK", but this one replied ${got}`;
    case 'get':
      return `it returned ${got}, but at that point ${holds}`;
    case 'incr': {
      const r = applyIncr(state);
      return `it returned ${got}, but at that point ${holds}, so INCR would return ${describeOutput(r.reply)}`;
    }
    case 'del':
      return `it returned ${got}, but at that point ${holds}, so DEL would return ${state === null ? 0 : 1}`;
  }
}

/** The sequential specification of the store, for checkHistory(). */
export const kvModel: Model<KvState, KvInput, KvOutput> = {
  name: 'redis-kv',
  init: () => null,
  partition: (input) => input.key,
  step,
  // A GET with an unknown outcome constrains nothing and changes nothing, so
  // the checker may drop it instead of trying to place it.
  readOnly: (input) => input.kind === 'get',
  // SET always replies OK and leaves its value; DEL leaves the key missing,
  // and only its reply (when known) depends on what was there.
  overwrites: (input, output) => input.kind === 'set' || (input.kind === 'del' && output === undefined),
  hashState,
  equalStates: (a, b) => a === b,
  // Two timed-out operations with the same signature are interchangeable once
  // both have been invoked, which lets the checker try only one of them.
  inputSignature: (input) => (input.kind === 'set' ? `set:${input.value}` : input.kind),
  describeInput,
  describeOutput,
  describeState: (state) => (state === null ? 'missing' : quote(state)),
  explainRejection,
};
