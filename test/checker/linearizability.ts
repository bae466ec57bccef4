/**
 * Linearizability checker for client histories, in the style of Porcupine:
 * the Wing-Gong algorithm with Lowe's memoization (WGL), run separately on
 * each key (P-compositionality).
 *
 * Role: decide whether the operations a set of clients saw, each with an
 * invocation time and, when it completed, a response time and a reply, can be
 * arranged in one sequential order that respects real time (an operation that
 * returned before another was invoked comes first) and in which every reply is
 * what the sequential model gives. FT failover tests use it to prove that
 * nothing acknowledged was lost (DESIGN.md section 3, guarantee 4).
 *
 * Invariants:
 * - Pure: no I/O, no clocks, no randomness. The same history and options give
 *   the same verdict and the same counterexample.
 * - Sound and complete within the budget: 'ok: true' means a linearization
 *   exists, 'ok: false' means none does, and only an exhausted step budget
 *   gives 'unknown'. Real-time order is strict: operations whose times touch
 *   (a response at the very time of another's invocation) count as
 *   concurrent, which can only hide a violation, never invent one.
 * - Unknown outcomes ('info' and still-'pending' operations) may be
 *   linearized at any point after their invocation, with any reply, or not at
 *   all. 'fail' operations certainly did not execute and are dropped.
 * - A malformed history (an 'ok' operation without a reply, a response before
 *   its invocation, a duplicate id) is a bug in whoever recorded it, so it
 *   throws an assertion rather than returning a verdict.
 *
 * The search (per key): the history becomes a doubly linked list of call and
 * return entries in time order. Walking from the head, the calls met before
 * the first return are the operations that could take effect next; trying
 * one applies the model, and if the reply fits and the pair (set of
 * linearized operations, model state) has not been seen before, the
 * operation is lifted out of the list and the walk restarts. Meeting a return
 * entry means its operation can no longer be placed, so the search
 * backtracks. The seen pairs are the memo that makes WGL practical: a
 * configuration already explored without success is never explored again.
 * On top of plain WGL, completed reads that fit are placed at once, and
 * operations of unknown outcome are tried last, never just before a blind
 * write, once per group of interchangeable ones, and not in configurations
 * that a failed one with fewer of them covers (see checkPartition for why
 * each is sound). The memo keeps configurations in typed arrays, a few words
 * each, so long histories fit in memory.
 */
import type { ClientId, KvOpRecord, OpRecord } from './history.js';
import { kvModel, type KvInput, type KvOutput } from './kv-model.js';

/** What Model.step returns when the reply cannot follow from the state. */
export const REJECTED: unique symbol = Symbol('rejected');
export type Rejected = typeof REJECTED;

/** The sequential specification of an object, split into independent partitions (keys). */
export interface Model<S, I, O> {
  readonly name: string;
  /** The state of every partition before the first operation. */
  init(): S;
  /** The partition an operation belongs to; operations of different partitions never interact. */
  partition(input: I): string;
  /**
   * Applies `input` to `state`. `output` is the reply the client saw, or
   * undefined for an unknown outcome, in which case any reply is accepted.
   * Returns the next state, or REJECTED when the reply cannot happen here.
   * Must not mutate `state`.
   */
  step(state: S, input: I, output: O | undefined): S | Rejected;
  /**
   * True when the operation never changes the state (a read). A completed one
   * that fits the current state is placed at once, with no alternatives
   * tried; one with an unknown reply constrains nothing and is dropped.
   */
  readOnly(input: I): boolean;
  /**
   * True when, with this output (undefined = unknown), neither whether the
   * step is accepted nor the state it leaves depends on the state before: a
   * blind write such as SET. An operation of unknown outcome placed right
   * before a blind write could as well never have happened, which spares the
   * search from trying it there.
   */
  overwrites(input: I, output: O | undefined): boolean;
  hashState(state: S): number;
  equalStates(a: S, b: S): boolean;
  /**
   * Optional: equal signatures mean interchangeable operations when both have
   * unknown outcomes (same effect on every state), so only one needs trying.
   */
  inputSignature?(input: I): string;
  describeInput(input: I): string;
  describeOutput(output: O): string;
  describeState(state: S): string;
  /** Why step(state, input, output) is REJECTED, as a sentence. */
  explainRejection(state: S, input: I, output: O): string;
}

export interface CheckOptions {
  /**
   * The most search steps (entries walked plus backtracks) spent on any one
   * key before answering 'unknown'. A step costs 50 to 200 ns and the memo
   * gains at most one configuration per step, a few dozen bytes each, so the
   * default bounds a key to about a second and 100 MB or so. A linearizable
   * history of 2,000 operations on a key takes tens of thousands of steps; a
   * violation near the end of a long history, or hundreds of timed-out
   * operations on one key, can take millions (see README.md).
   */
  readonly stepsMax?: number;
}

export const STEPS_MAX_DEFAULT = 5_000_000;

/** An operation with its one-line description. */
export interface DescribedOp<I, O> {
  readonly op: OpRecord<I, O>;
  /** For example `#12 client 3: GET x -> "v1" [10ms, 12.5ms]`. */
  readonly text: string;
}

export interface Counterexample<I, O> {
  readonly key: string;
  /** Operations of this key that were checked ('ok' and 'info'; 'fail' ones and unknown reads are dropped). */
  readonly opsInKey: number;
  /** The longest linearizable prefix the search found, in order, with the state after each operation. */
  readonly prefix: readonly (DescribedOp<I, O> & { readonly stateAfter: string })[];
  /** The state after the prefix (the initial state when the prefix is empty). */
  readonly stateAfterPrefix: string;
  /** The operation that could not be placed: it returned before any order could fit it in. */
  readonly stuck: DescribedOp<I, O> & { readonly why: string };
  /** The other operations that could have come next after the prefix, each with why it could not. */
  readonly alternatives: readonly (DescribedOp<I, O> & { readonly why: string })[];
}

export type CheckResult<I, O> =
  | { readonly ok: true; readonly keysChecked: number; readonly opsChecked: number; readonly steps: number }
  | {
      readonly ok: false;
      readonly key: string;
      /** One line naming the key, the operation that could not be placed and why. */
      readonly reason: string;
      readonly counterexample: Counterexample<I, O>;
      readonly steps: number;
    }
  | {
      readonly ok: 'unknown';
      readonly key: string;
      readonly reason: 'budget';
      readonly stepsMax: number;
      readonly steps: number;
    };

export type KvCheckResult = CheckResult<KvInput, KvOutput>;

/**
 * Checks a whole history, key by key in sorted key order. A violation on any
 * key wins over a budget exhausted on another, so a key that is too hard to
 * decide never hides a key that is plainly wrong.
 */
export function checkHistory<S, I, O>(
  model: Model<S, I, O>,
  operations: readonly OpRecord<I, O>[],
  options: CheckOptions = {},
): CheckResult<I, O> {
  const stepsMax = options.stepsMax ?? STEPS_MAX_DEFAULT;
  if (!(stepsMax > 0)) throw new Error(`assertion: stepsMax must be positive, got ${stepsMax}`);
  const byKey = new Map<string, OpRecord<I, O>[]>();
  const ids = new Set<number>();
  for (const op of operations) {
    validate(op, ids);
    if (op.status === 'fail') continue;
    const known = op.status === 'ok';
    if (!known && model.readOnly(op.input)) continue;
    const key = model.partition(op.input);
    let list = byKey.get(key);
    if (list === undefined) byKey.set(key, (list = []));
    list.push(op);
  }
  let steps = 0;
  let opsChecked = 0;
  let unknown: { key: string } | null = null;
  for (const key of [...byKey.keys()].sort()) {
    const ops = byKey.get(key)!;
    opsChecked += ops.length;
    const r = checkPartition(model, ops, stepsMax);
    steps += r.steps;
    if (r.kind === 'fail') {
      const counterexample = describeFailure(model, key, ops, r);
      return { ok: false, key, reason: summarize(counterexample), counterexample, steps };
    }
    if (r.kind === 'budget' && unknown === null) unknown = { key };
  }
  if (unknown !== null) return { ok: 'unknown', key: unknown.key, reason: 'budget', stepsMax, steps };
  return { ok: true, keysChecked: byKey.size, opsChecked, steps };
}

/** checkHistory() against the Redis KV model. */
export function checkKvHistory(operations: readonly KvOpRecord[], options: CheckOptions = {}): KvCheckResult {
  return checkHistory(kvModel, operations, options);
}

/** A multi-line report of a result, for assertion messages and logs. */
export function formatCheckResult<I, O>(result: CheckResult<I, O>): string {
  if (result.ok === true) {
    return `linearizable: ${result.opsChecked} operations on ${result.keysChecked} keys (${result.steps} steps)`;
  }
  if (result.ok === 'unknown') {
    return (
      `unknown: the search on key ${JSON.stringify(result.key)} used up its budget of ` +
      `${result.stepsMax} steps; raise stepsMax or make the history smaller`
    );
  }
  const c = result.counterexample;
  const lines = [`NOT linearizable: ${result.reason}`];
  const shownMax = 12;
  const shown = c.prefix.slice(-shownMax);
  lines.push(
    `  longest linearizable prefix on key ${JSON.stringify(c.key)}: ${c.prefix.length} of ${c.opsInKey} operations` +
      (c.prefix.length > shown.length ? ` (last ${shown.length} shown)` : ''),
  );
  for (const p of shown) lines.push(`    ${p.text}   => ${p.stateAfter}`);
  lines.push(`  then the key is ${c.stateAfterPrefix}, and this operation cannot be placed:`);
  lines.push(`    ${c.stuck.text}`);
  lines.push(`      ${c.stuck.why}`);
  if (c.alternatives.length > 0) {
    lines.push('  nor can any operation that might have come before it:');
    for (const a of c.alternatives.slice(0, shownMax)) {
      lines.push(`    ${a.text}`);
      lines.push(`      ${a.why}`);
    }
    if (c.alternatives.length > shownMax) lines.push(`    ... and ${c.alternatives.length - shownMax} more`);
  }
  return lines.join('\n');
}

/** A one-line description of an operation with its client, reply and times. */
export function describeOp<S, I, O>(model: Model<S, I, O>, op: OpRecord<I, O>): string {
  const head = `#${op.id} client ${formatClient(op.clientId)}: ${model.describeInput(op.input)}`;
  if (op.status === 'ok') {
    return `${head} -> ${model.describeOutput(op.output as O)} [${formatMs(op.invokeMs)}, ${formatMs(op.responseMs!)}]`;
  }
  const gaveUp = op.responseMs === undefined ? 'never completed' : `gave up at ${formatMs(op.responseMs)}`;
  return `${head} -> ? [${formatMs(op.invokeMs)}, unknown outcome: ${gaveUp}]`;
}

function formatClient(c: ClientId): string {
  return typeof c === 'number' ? String(c) : JSON.stringify(c);
}

function formatMs(t: number): string {
  return `${Number(t.toFixed(3))}ms`;
}

function validate<I, O>(op: OpRecord<I, O>, ids: Set<number>): void {
  if (ids.has(op.id)) throw new Error(`assertion: duplicate operation id ${op.id} in the history`);
  ids.add(op.id);
  if (!Number.isFinite(op.invokeMs)) throw new Error(`assertion: op ${op.id} has invokeMs ${op.invokeMs}`);
  if (op.status === 'ok') {
    if (op.output === undefined) throw new Error(`assertion: ok op ${op.id} has no output`);
    if (op.responseMs === undefined || !(op.responseMs >= op.invokeMs)) {
      throw new Error(
        `assertion: ok op ${op.id} has responseMs ${op.responseMs} before invokeMs ${op.invokeMs}`,
      );
    }
  }
}

// ---------------------------------------------------------------------------
// The search on one partition.

type PartitionResult =
  | { kind: 'ok'; steps: number }
  | { kind: 'budget'; steps: number }
  | {
      kind: 'fail';
      steps: number;
      /** Indices into the partition's ops, in linearization order. */
      prefix: number[];
      /** Index of the operation whose return entry stopped the deepest walk. */
      stuck: number;
      /** Indices of the operations whose call entries came before that return entry. */
      callable: number[];
    };

/**
 * fmix32 of MurmurHash3: a fixed, well-spread 32-bit value per operation
 * index. XORing the values of the linearized operations gives a hash of the
 * set that can be updated in O(1) when one operation joins or leaves
 * (Zobrist hashing), instead of rehashing the whole set at every step.
 */
function zobrist(i: number): number {
  let h = Math.imul(i + 1, 0x9e3779b1);
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) | 0;
}

/**
 * The set of 'ok' operations linearized so far, as a bitset over their
 * indices in order of return, with the bounds that make it compact to store.
 *
 * WGL only ever linearizes an operation that was invoked before the earliest
 * return entry still pending, so every operation that returned before that
 * one is linearized, and every operation invoked after it is not. Numbered
 * by return, the set is therefore "all indices below r" plus a few
 * operations concurrent with r: the words below `lo` are all ones and those
 * above `hi` all zeros, and only words lo..hi need storing.
 */
class OkSet {
  readonly words: Uint32Array;
  /** The first word that is not all ones. */
  lo = 0;
  /** The last word that is not all zeros; -1 when the set is empty. */
  hi = -1;
  /** Zobrist hash of the set. */
  hash = 0;

  constructor(size: number) {
    this.words = new Uint32Array((size + 31) >>> 5);
  }

  add(k: number): void {
    const w = k >>> 5;
    this.words[w]! |= 1 << (k & 31);
    this.hash ^= zobrist(k);
    if (w > this.hi) this.hi = w;
    while (this.lo < this.words.length && this.words[this.lo] === 0xffffffff) this.lo++;
  }

  remove(k: number): void {
    const w = k >>> 5;
    this.words[w]! &= ~(1 << (k & 31));
    this.hash ^= zobrist(k);
    if (w < this.lo) this.lo = w;
    while (this.hi >= 0 && this.words[this.hi] === 0) this.hi--;
  }

  /** Number of words from lo to hi (zero when every set bit lies in a full word below lo). */
  get spanWords(): number {
    return Math.max(0, this.hi - this.lo + 1);
  }
}

/**
 * The memo of configurations already reached: which 'ok' and which info
 * operations were linearized, the state, whether the last operation was an
 * info one (which bars a blind write next), and whether the search has left
 * the configuration for good, every continuation having failed.
 *
 * Configurations number in the millions on long histories, so they live in
 * typed arrays rather than one object each: a pool of words holding each
 * key (ok-set lo, span length, the span, then the info bitset), and a
 * chained hash table over entry numbers.
 */
class ConfigCache<S> {
  private pool = new Uint32Array(1 << 12);
  private poolUsed = 0;
  private offset = new Int32Array(1 << 10);
  private chain = new Int32Array(1 << 10);
  private hashOf = new Int32Array(1 << 10);
  private flags = new Uint8Array(1 << 10);
  private readonly states: S[] = [];
  private table = new Int32Array(1 << 10).fill(-1);
  size = 0;

  static readonly INFO_LAST = 1;
  static readonly DONE = 2;

  constructor(
    private readonly infoWords: number,
    private readonly equalStates: (a: S, b: S) => boolean,
  ) {}

  /**
   * Whether a new configuration can be skipped: the same one was reached
   * before, or one that was fully explored without success and had at least
   * its options (the same 'ok' set and state, a subset of its info
   * operations, and no blind-write restriction it lacks).
   */
  covers(hash: number, ok: OkSet, info: Uint32Array, state: S, infoLast: boolean): boolean {
    const span = ok.spanWords;
    for (let e = this.table[hash & (this.table.length - 1)]!; e !== -1; e = this.chain[e]!) {
      if (this.hashOf[e] !== hash) continue;
      let o = this.offset[e]!;
      if (this.pool[o] !== ok.lo || this.pool[o + 1] !== span) continue;
      o += 2;
      let same = true;
      for (let w = 0; w < span && same; w++) same = this.pool[o + w] === ok.words[ok.lo + w];
      if (!same || !this.equalStates(this.states[e]!, state)) continue;
      o += span;
      const f = this.flags[e]!;
      const eInfoLast = (f & ConfigCache.INFO_LAST) !== 0;
      if (eInfoLast && !infoLast) continue; // it had fewer options than this one
      if ((f & ConfigCache.DONE) !== 0) {
        let subset = true;
        for (let w = 0; w < this.infoWords && subset; w++) subset = (this.pool[o + w]! & ~info[w]!) === 0;
        if (subset) return true;
      } else if (eInfoLast === infoLast) {
        let equal = true;
        for (let w = 0; w < this.infoWords && equal; w++) equal = this.pool[o + w] === info[w];
        if (equal) return true;
      }
    }
    return false;
  }

  /** Adds a configuration; returns its entry number. */
  add(hash: number, ok: OkSet, info: Uint32Array, state: S, infoLast: boolean): number {
    const span = ok.spanWords;
    const need = 2 + span + this.infoWords;
    if (this.poolUsed + need > this.pool.length) {
      const bigger = new Uint32Array(Math.max(this.pool.length * 2, this.poolUsed + need));
      bigger.set(this.pool);
      this.pool = bigger;
    }
    const e = this.size++;
    if (e === this.offset.length) this.growEntries();
    const o = this.poolUsed;
    this.pool[o] = ok.lo;
    this.pool[o + 1] = span;
    this.pool.set(ok.words.subarray(ok.lo, ok.lo + span), o + 2);
    this.pool.set(info, o + 2 + span);
    this.poolUsed += need;
    this.offset[e] = o;
    this.hashOf[e] = hash;
    this.flags[e] = infoLast ? ConfigCache.INFO_LAST : 0;
    this.states.push(state);
    if (this.size > this.table.length) this.rehash(this.table.length * 2);
    const b = hash & (this.table.length - 1);
    this.chain[e] = this.table[b]!;
    this.table[b] = e;
    return e;
  }

  markDone(e: number): void {
    this.flags[e]! |= ConfigCache.DONE;
  }

  private growEntries(): void {
    const grow = <T extends Int32Array | Uint8Array>(a: T, make: (n: number) => T): T => {
      const b = make(a.length * 2);
      b.set(a);
      return b;
    };
    this.offset = grow(this.offset, (n) => new Int32Array(n));
    this.chain = grow(this.chain, (n) => new Int32Array(n));
    this.hashOf = grow(this.hashOf, (n) => new Int32Array(n));
    this.flags = grow(this.flags, (n) => new Uint8Array(n));
  }

  private rehash(buckets: number): void {
    this.table = new Int32Array(buckets).fill(-1);
    for (let e = 0; e < this.size - 1; e++) {
      const b = this.hashOf[e]! & (buckets - 1);
      this.chain[e] = this.table[b]!;
      this.table[b] = e;
    }
  }
}

// The three lists the search walks; see checkPartition.
const OK_LIST = 0;
const INFO_LIST = 1;
const BLIND_LIST = 2;

/**
 * WGL on one partition. One refinement applies to every history:
 *
 * - A read (Model.readOnly) that completed, is callable and fits the
 *   current state is linearized at once, with no alternative tried at that
 *   level. Any linearization from here can be rearranged to place it first:
 *   it changes no state, and being callable, everything that must precede it
 *   already has (and should that put an info operation right before a blind
 *   write, the rule below removes it). So if the search fails after it, it
 *   fails here as well.
 *   Without this, a read that lost a race in the walk's order can send the
 *   search down a dead end at every level.
 *
 * And four apply to operations of unknown outcome ("info" operations):
 *
 * - They live in lists of their own, and at each level the search tries
 *   them only after every callable 'ok' operation has failed there. Most
 *   never took effect, so trying them first would send the search down a
 *   wrong path at nearly every level. The order changes nothing else: every
 *   choice is still tried.
 * - No blind write (Model.overwrites) is linearized right after an info
 *   operation. Removing an info operation that a blind write follows changes
 *   no reply and no later state, so if any linearization exists, one without
 *   that pattern does too. It stops the search from stringing together
 *   timed-out SETs, every subset of which would otherwise be a configuration
 *   of its own.
 * - The memo is keyed by the linearized 'ok' operations and the state. A
 *   configuration whose 'ok' set and state equal those of one already
 *   explored without success, and which has used a superset of its info
 *   operations (and is no less restricted by the rule above), is pruned: it
 *   has fewer options left than a configuration that failed, since info
 *   operations are never forced and using one only ever removes options.
 * - Among callable info operations with equal signatures, only the first is
 *   tried at each level, since the others would explore a mirror image of
 *   its subtree.
 */
function checkPartition<S, I, O>(
  model: Model<S, I, O>,
  ops: readonly OpRecord<I, O>[],
  stepsMax: number,
): PartitionResult {
  const n = ops.length;
  // Entries are numbered 1..count in time order, with call entries before
  // return entries at equal times, which makes touching intervals
  // concurrent. Info operations get no return entry: their response time is
  // +infinity, and the search ends as soon as every 'ok' operation is placed.
  const events: { timeMs: number; isCall: boolean; op: number }[] = [];
  const isInfo = new Uint8Array(n);
  const blind = new Uint8Array(n);
  let okTotal = 0;
  let infoTotal = 0;
  for (let i = 0; i < n; i++) {
    const op = ops[i]!;
    events.push({ timeMs: op.invokeMs, isCall: true, op: i });
    if (op.status === 'ok') {
      events.push({ timeMs: op.responseMs!, isCall: false, op: i });
      okTotal++;
    } else {
      isInfo[i] = 1;
      infoTotal++;
    }
    blind[i] = model.overwrites(op.input, isInfo[i] === 1 ? undefined : op.output) ? 1 : 0;
  }
  if (okTotal === 0) return { kind: 'ok', steps: 0 };
  events.sort((a, b) => a.timeMs - b.timeMs || (a.isCall === b.isCall ? a.op - b.op : a.isCall ? -1 : 1));

  // Three doubly linked lists over the same entry numbers, each with its own
  // arrays, 0 as its head sentinel and -1 as its end: 'ok' calls and returns
  // (OK_LIST), info calls that are not blind writes (INFO_LIST), and info
  // calls that are (BLIND_LIST). After an info operation only INFO_LIST can
  // offer a next operation, and walking it alone keeps that walk from
  // stepping over every pending blind write.
  const count = events.length;
  const nexts = [0, 1, 2].map(() => new Int32Array(count + 1).fill(-1));
  const prevs = [0, 1, 2].map(() => new Int32Array(count + 1));
  const next = nexts[OK_LIST]!;
  const listOf = new Uint8Array(count + 1);
  const entryOp = new Int32Array(count + 1);
  const isCall = new Uint8Array(count + 1);
  const match = new Int32Array(count + 1).fill(-1); // an 'ok' call entry -> its return entry
  const callEntryOf = new Int32Array(n);
  const returnEntryOf = new Int32Array(n).fill(-1);
  // 'ok' operations are numbered by return (see OkSet), info ones by call.
  const local = new Int32Array(n);
  let okSeen = 0;
  let infoSeen = 0;
  const tails = [0, 0, 0];
  for (let e = 1; e <= count; e++) {
    const ev = events[e - 1]!;
    entryOp[e] = ev.op;
    isCall[e] = ev.isCall ? 1 : 0;
    if (ev.isCall) callEntryOf[ev.op] = e;
    else returnEntryOf[ev.op] = e;
    if (ev.isCall && isInfo[ev.op] === 1) local[ev.op] = infoSeen++;
    if (!ev.isCall) local[ev.op] = okSeen++;
    const list = isInfo[ev.op] === 0 ? OK_LIST : blind[ev.op] === 1 ? BLIND_LIST : INFO_LIST;
    listOf[e] = list;
    prevs[list]![e] = tails[list]!;
    nexts[list]![tails[list]!] = e;
    tails[list] = e;
  }
  for (let i = 0; i < n; i++) if (isInfo[i] === 0) match[callEntryOf[i]!] = returnEntryOf[i]!;

  // Dancing links: relinking in the reverse order of unlinking restores a
  // list exactly, which the LIFO search stack guarantees.
  const unlink = (e: number): void => {
    const nx = nexts[listOf[e]!]!;
    const pv = prevs[listOf[e]!]!;
    nx[pv[e]!] = nx[e]!;
    if (nx[e] !== -1) pv[nx[e]!] = pv[e]!;
  };
  const relink = (e: number): void => {
    const nx = nexts[listOf[e]!]!;
    const pv = prevs[listOf[e]!]!;
    nx[pv[e]!] = e;
    if (nx[e] !== -1) pv[nx[e]!] = e;
  };
  const lift = (call: number): void => {
    unlink(call);
    if (match[call] !== -1) unlink(match[call]!);
  };
  const unlift = (call: number): void => {
    if (match[call] !== -1) relink(match[call]!);
    relink(call);
  };

  const signature: (string | undefined)[] = ops.map((op, i) =>
    isInfo[i] === 1 ? model.inputSignature?.(op.input) : undefined,
  );
  const forcedRead = new Uint8Array(n);
  for (let i = 0; i < n; i++) forcedRead[i] = isInfo[i] === 0 && model.readOnly(ops[i]!.input) ? 1 : 0;
  const okSet = new OkSet(okTotal);
  const infoBits = new Uint32Array((infoTotal + 31) >>> 5);
  const cache = new ConfigCache<S>(infoBits.length, (a, b) => model.equalStates(a, b));

  // The search stack, one frame per linearized operation: its call entry,
  // the state before it, its cache entry, and where the walk of its level
  // stood (`phase` is the list being walked; the info lists are walked only
  // up to `limit`, the first return entry of that level), with the
  // signatures of info operations already tried at that level.
  const stackEntry: number[] = [];
  const stackState: S[] = [];
  const stackCache: number[] = [];
  const stackPhase: number[] = [];
  const stackLimit: number[] = [];
  const stackTried: (Set<string> | null)[] = [];
  const stackForced: boolean[] = [];

  let state = model.init();
  let okLeft = okTotal;
  let phase = OK_LIST;
  let limit = -1;
  let tried: Set<string> | null = null;
  let infoLast = false; // whether the operation on top of the stack has an unknown outcome
  let entry = next[0]!;
  let steps = 0;
  let bestPrefix: number[] | null = null;
  let bestStuck = -1;
  // Set when the current level is known to fail without walking it further.
  let exhausted = false;

  /** Linearizes the operation of call entry `e` if it fits and leads somewhere new; true if it did. */
  const tryLinearize = (e: number): boolean => {
    const i = entryOp[e]!;
    if (infoLast && blind[i] === 1) return false;
    const op = ops[i]!;
    const info = isInfo[i] === 1;
    const after = model.step(state, op.input, info ? undefined : op.output);
    if (after === REJECTED) return false;
    const k = local[i]!;
    if (info) infoBits[k >>> 5]! |= 1 << (k & 31);
    else okSet.add(k);
    const h = (okSet.hash ^ Math.imul(model.hashState(after), 0x27d4eb2d)) | 0;
    if (cache.covers(h, okSet, infoBits, after, info)) {
      if (info) infoBits[k >>> 5]! &= ~(1 << (k & 31));
      else okSet.remove(k);
      // A fitting read leads somewhere known to fail, so this level does too.
      if (forcedRead[i] === 1) exhausted = true;
      return false;
    }
    stackEntry.push(e);
    stackState.push(state);
    stackCache.push(cache.add(h, okSet, infoBits, after, info));
    stackPhase.push(phase);
    stackLimit.push(limit);
    stackTried.push(tried);
    stackForced.push(forcedRead[i] === 1);
    if (!info) okLeft--;
    state = after;
    infoLast = info;
    lift(e);
    return true;
  };

  while (true) {
    if (++steps > stepsMax) return { kind: 'budget', steps: steps - 1 };
    if (!exhausted) {
      if (phase === OK_LIST) {
        // Every 'ok' operation not yet placed still has its return entry in
        // the list, so this walk always meets a return entry before the end.
        if (entry === -1) throw new Error('assertion: the walk ran off the end of the entry list');
        if (isCall[entry] === 1) {
          if (tryLinearize(entry)) {
            if (okLeft === 0) return { kind: 'ok', steps };
            limit = -1;
            tried = null;
            entry = next[0]!;
          } else {
            entry = next[entry]!;
          }
        } else {
          // No callable 'ok' operation leads anywhere from here: now the info
          // operations invoked before this return entry get their turn.
          phase = INFO_LIST;
          limit = entry;
          entry = nexts[INFO_LIST]![0]!;
        }
        continue;
      }
      if (entry !== -1 && entry < limit) {
        const sig = signature[entryOp[entry]!];
        let skip = false;
        if (sig !== undefined) {
          if (tried?.has(sig)) skip = true;
          else (tried ??= new Set()).add(sig);
        }
        if (!skip && tryLinearize(entry)) {
          phase = OK_LIST;
          limit = -1;
          tried = null;
          entry = next[0]!;
        } else {
          entry = nexts[phase]![entry]!;
        }
        continue;
      }
      if (phase === INFO_LIST && !infoLast) {
        phase = BLIND_LIST;
        entry = nexts[BLIND_LIST]![0]!;
        continue;
      }
      // Nothing fits at this level: the operation of `limit` had to take
      // effect by now and cannot.
      if (bestPrefix === null || stackEntry.length > bestPrefix.length) {
        bestPrefix = stackEntry.map((e) => entryOp[e]!);
        bestStuck = entryOp[limit]!;
      }
    }
    // Undo the latest choice and try the next one at its level, unless that
    // choice was a forced read, whose failure fails its level too.
    exhausted = false;
    const e = stackEntry.pop();
    if (e === undefined) break;
    state = stackState.pop()!;
    cache.markDone(stackCache.pop()!);
    phase = stackPhase.pop()!;
    limit = stackLimit.pop()!;
    tried = stackTried.pop()!;
    if (stackForced.pop()!) exhausted = true;
    const i = entryOp[e]!;
    const k = local[i]!;
    if (isInfo[i] === 1) {
      infoBits[k >>> 5]! &= ~(1 << (k & 31));
    } else {
      okSet.remove(k);
      okLeft++;
    }
    unlift(e);
    const top = stackEntry[stackEntry.length - 1];
    infoLast = top !== undefined && isInfo[entryOp[top]!] === 1;
    entry = nexts[phase]![e]!;
  }

  if (bestPrefix === null) throw new Error('assertion: the search failed without meeting a return entry');
  const inPrefix = new Uint8Array(n);
  for (const i of bestPrefix) inPrefix[i] = 1;
  const stuckReturn = returnEntryOf[bestStuck]!;
  const callable: number[] = [];
  // Entry numbers follow time order, so the calls before the stuck operation's
  // return are exactly the entries with smaller numbers.
  for (let i = 0; i < n; i++) if (inPrefix[i] === 0 && callEntryOf[i]! < stuckReturn) callable.push(i);
  return { kind: 'fail', steps, prefix: bestPrefix, stuck: bestStuck, callable };
}

/** Replays the longest prefix through the model to describe the failure in words. */
function describeFailure<S, I, O>(
  model: Model<S, I, O>,
  key: string,
  ops: readonly OpRecord<I, O>[],
  r: Extract<PartitionResult, { kind: 'fail' }>,
): Counterexample<I, O> {
  let state = model.init();
  const prefix: (DescribedOp<I, O> & { stateAfter: string })[] = [];
  for (const i of r.prefix) {
    const op = ops[i]!;
    const after = model.step(state, op.input, op.status === 'ok' ? op.output : undefined);
    if (after === REJECTED) throw new Error(`assertion: op ${op.id} of the found prefix no longer fits`);
    state = after;
    prefix.push({ op, text: describeOp(model, op), stateAfter: model.describeState(state) });
  }
  const why = (op: OpRecord<I, O>): string => {
    const known = op.status === 'ok';
    if (known && model.step(state, op.input, op.output) === REJECTED) {
      return model.explainRejection(state, op.input, op.output as O);
    }
    // At the deepest point no operation fits, unless it only fits into
    // orders the search had already ruled out.
    if (!known) return 'its outcome is unknown, and no order in which it takes effect here works out';
    return 'it fits here, but every order that continues from here fails later';
  };
  const stuckOp = ops[r.stuck]!;
  return {
    key,
    opsInKey: ops.length,
    prefix,
    stateAfterPrefix: model.describeState(state),
    stuck: { op: stuckOp, text: describeOp(model, stuckOp), why: why(stuckOp) },
    // Completed operations first: they are the ones a reader can check.
    alternatives: r.callable
      .filter((i) => i !== r.stuck)
      .sort((a, b) => Number(ops[a]!.status !== 'ok') - Number(ops[b]!.status !== 'ok') || a - b)
      .map((i) => ({ op: ops[i]!, text: describeOp(model, ops[i]!), why: why(ops[i]!) })),
  };
}

function summarize<I, O>(c: Counterexample<I, O>): string {
  return (
    `key ${JSON.stringify(c.key)}: ${c.stuck.text} cannot be linearized: ${c.stuck.why} ` +
    `(after the longest linearizable prefix found, ${c.prefix.length} of ${c.opsInKey} operations)`
  );
}
