// Tests of the linearizability checker (linearizability.ts), the KV model
// (kv-model.ts) and the history recorder (history.ts).
//
// Hand-written histories pin down the verdicts the FT failover tests rely on:
// what must pass (concurrency, timeouts) and what must fail (lost writes,
// stale reads, doubled INCRs, values never written). Randomized tests then
// simulate a real linearizable store under random concurrency, check that
// every history passes, inject one bug and check that it is caught, and hold
// the checker against a brute-force search on small histories.
//
// The randomized tests use a seeded PRNG and print the seed; set
// LOCKSTEP_TEST_SEED to replay one.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Prng, testSeed } from '../../src/core/prng.js';
import {
  History,
  mergeHistories,
  parseKvHistory,
  serializeHistory,
  type ClientId,
  type KvOpRecord,
  type OpStatus,
} from './history.js';
import {
  INCR_ERROR_NOT_INTEGER,
  INCR_ERROR_OVERFLOW,
  kv,
  kvModel,
  parseRedisInteger,
  type KvInput,
  type KvOutput,
} from './kv-model.js';
import {
  checkKvHistory,
  formatCheckResult,
  type CheckOptions,
  type KvCheckResult,
} from './linearizability.js';

const SEED = testSeed();

// ---------------------------------------------------------------------------
// Building histories by hand: ok(client, input, [invokeMs, responseMs], output),
// info(client, input, invokeMs) and failed(client, input, invokeMs).

type Row = Omit<KvOpRecord, 'id'>;

function ok(clientId: ClientId, input: KvInput, timesMs: [number, number], output: KvOutput): Row {
  return { clientId, input, invokeMs: timesMs[0], responseMs: timesMs[1], status: 'ok', output };
}
function info(clientId: ClientId, input: KvInput, invokeMs: number): Row {
  return { clientId, input, invokeMs, responseMs: invokeMs + 1000, status: 'info' };
}
function failed(clientId: ClientId, input: KvInput, invokeMs: number): Row {
  return { clientId, input, invokeMs, responseMs: invokeMs + 1, status: 'fail' };
}
function h(...rows: Row[]): KvOpRecord[] {
  return rows.map((r, id) => ({ id, ...r }));
}

function assertLinearizable(ops: readonly KvOpRecord[], context = ''): KvCheckResult {
  const r = checkKvHistory(ops);
  assert.equal(r.ok, true, `${context}${formatCheckResult(r)}`);
  return r;
}

function assertViolation(
  ops: readonly KvOpRecord[],
  key: string,
  context = '',
): KvCheckResult & { ok: false } {
  const r = checkKvHistory(ops);
  assert.equal(r.ok, false, `${context}expected a violation on ${key}: ${formatCheckResult(r)}`);
  if (r.ok !== false) throw new Error('unreachable');
  assert.equal(r.key, key, `${context}${formatCheckResult(r)}`);
  return r;
}

// ---------------------------------------------------------------------------
// The model alone.

test('the KV model follows Redis semantics for SET, GET, INCR and DEL', () => {
  assert.equal(kvModel.step(null, kv.set('x', 'a'), 'OK'), 'a');
  assert.equal(typeof kvModel.step(null, kv.set('x', 'a'), 'NO'), 'symbol');
  assert.equal(kvModel.step('a', kv.get('x'), 'a'), 'a');
  assert.equal(typeof kvModel.step('a', kv.get('x'), null), 'symbol');
  assert.equal(kvModel.step(null, kv.get('x'), null), null);
  assert.equal(kvModel.step(null, kv.incr('x'), 1), '1');
  assert.equal(kvModel.step('41', kv.incr('x'), 42), '42');
  assert.equal(kvModel.step('-1', kv.incr('x'), 0), '0');
  assert.equal(kvModel.step('abc', kv.incr('x'), INCR_ERROR_NOT_INTEGER), 'abc');
  assert.equal(kvModel.step('007', kv.incr('x'), INCR_ERROR_NOT_INTEGER), '007');
  assert.equal(kvModel.step('9223372036854775807', kv.incr('x'), INCR_ERROR_OVERFLOW), '9223372036854775807');
  assert.equal(kvModel.step('a', kv.del('x'), 1), null);
  assert.equal(kvModel.step(null, kv.del('x'), 0), null);
  assert.equal(typeof kvModel.step(null, kv.del('x'), 1), 'symbol');
  // Unknown outcomes: the effect happens and any reply is accepted.
  assert.equal(kvModel.step('5', kv.incr('x'), undefined), '6');
  assert.equal(kvModel.step('x', kv.incr('x'), undefined), 'x');
  assert.equal(parseRedisInteger('-0'), null);
  assert.equal(parseRedisInteger('9223372036854775808'), null);
  assert.equal(parseRedisInteger('-9223372036854775808'), -9223372036854775808n);
});

// ---------------------------------------------------------------------------
// Histories that must pass.

test('a sequential history passes', () => {
  assertLinearizable(
    h(
      ok(1, kv.get('x'), [0, 1], null),
      ok(1, kv.set('x', 'a'), [2, 3], 'OK'),
      ok(2, kv.get('x'), [4, 5], 'a'),
      ok(2, kv.del('x'), [6, 7], 1),
      ok(1, kv.del('x'), [8, 9], 0),
      ok(1, kv.incr('x'), [10, 11], 1),
      ok(2, kv.incr('x'), [12, 13], 2),
      ok(1, kv.get('x'), [14, 15], '2'),
      ok(1, kv.set('x', 'word'), [16, 17], 'OK'),
      ok(1, kv.incr('x'), [18, 19], INCR_ERROR_NOT_INTEGER),
      ok(2, kv.get('x'), [20, 21], 'word'),
    ),
  );
  assertLinearizable([]);
});

test('a GET overlapping a SET may return the old or the new value, and nothing else', () => {
  for (const seen of ['old', 'new']) {
    assertLinearizable(
      h(
        ok(1, kv.set('x', 'old'), [0, 1], 'OK'),
        ok(1, kv.set('x', 'new'), [2, 10], 'OK'),
        ok(2, kv.get('x'), [3, 5], seen),
        ok(3, kv.get('x'), [4, 6], seen === 'old' ? 'new' : 'old'),
      ),
    );
  }
  // Once a reader has seen the new value, a reader that starts later cannot see the old one.
  assertViolation(
    h(
      ok(1, kv.set('x', 'old'), [0, 1], 'OK'),
      ok(1, kv.set('x', 'new'), [2, 10], 'OK'),
      ok(2, kv.get('x'), [3, 4], 'new'),
      ok(3, kv.get('x'), [5, 6], 'old'),
    ),
    'x',
  );
  assertViolation(
    h(
      ok(1, kv.set('x', 'old'), [0, 1], 'OK'),
      ok(1, kv.set('x', 'new'), [2, 10], 'OK'),
      ok(2, kv.get('x'), [3, 5], 'other'),
    ),
    'x',
  );
});

test('operations whose times only touch count as concurrent', () => {
  // The GET is invoked at the very time the SET returns; either order is allowed.
  assertLinearizable(h(ok(1, kv.set('x', 'a'), [0, 5], 'OK'), ok(2, kv.get('x'), [5, 6], null)));
  assertViolation(h(ok(1, kv.set('x', 'a'), [0, 5], 'OK'), ok(2, kv.get('x'), [5.001, 6], null)), 'x');
});

test('overlapping INCRs from several clients pass in any order their intervals allow', () => {
  assertLinearizable(
    h(
      ok(1, kv.incr('n'), [0, 10], 3),
      ok(2, kv.incr('n'), [1, 4], 1),
      ok(3, kv.incr('n'), [2, 9], 2),
      ok(2, kv.incr('n'), [5, 12], 4),
      ok(3, kv.get('n'), [11, 13], '4'),
      ok(1, kv.incr('n'), [14, 15], 5),
    ),
  );
  // Client 2's second INCR starts after the INCRs that returned 1 and 2 have completed, and it
  // may return 3 because client 1's long INCR can take effect last, which its interval allows.
  assertLinearizable(
    h(
      ok(1, kv.incr('n'), [0, 10], 4),
      ok(2, kv.incr('n'), [1, 2], 1),
      ok(3, kv.incr('n'), [1, 3], 2),
      ok(2, kv.incr('n'), [4, 5], 3),
    ),
  );
  // But two INCRs cannot both return 1.
  assertViolation(h(ok(1, kv.incr('n'), [0, 10], 1), ok(2, kv.incr('n'), [1, 2], 1)), 'n');
});

test('a timed-out SET may be observed later, or never', () => {
  // Observed: a GET long after the timeout returns the value.
  assertLinearizable(
    h(
      ok(1, kv.set('x', 'a'), [0, 1], 'OK'),
      info(2, kv.set('x', 'b'), 2),
      ok(1, kv.get('x'), [3, 4], 'a'),
      ok(1, kv.get('x'), [50, 51], 'b'),
    ),
  );
  // Never observed.
  assertLinearizable(
    h(
      ok(1, kv.set('x', 'a'), [0, 1], 'OK'),
      info(2, kv.set('x', 'b'), 2),
      ok(1, kv.get('x'), [3, 4], 'a'),
      ok(1, kv.get('x'), [50, 51], 'a'),
    ),
  );
  // It takes effect at most once and cannot come back after being overwritten.
  assertViolation(
    h(
      info(2, kv.set('x', 'b'), 0),
      ok(1, kv.get('x'), [10, 11], 'b'),
      ok(1, kv.set('x', 'c'), [12, 13], 'OK'),
      ok(1, kv.get('x'), [14, 15], 'b'),
    ),
    'x',
  );
  // It cannot take effect before it was invoked.
  assertViolation(h(ok(1, kv.get('x'), [0, 1], 'b'), info(2, kv.set('x', 'b'), 2)), 'x');
});

test('a timed-out INCR is visible through a later INCR result, or never happened', () => {
  assertLinearizable(h(info(1, kv.incr('n'), 0), ok(2, kv.incr('n'), [10, 11], 2)));
  assertLinearizable(h(info(1, kv.incr('n'), 0), ok(2, kv.incr('n'), [10, 11], 1)));
  assertViolation(h(info(1, kv.incr('n'), 0), ok(2, kv.incr('n'), [10, 11], 3)), 'n');
  // After being seen to have happened, it cannot also not have happened.
  assertViolation(
    h(info(1, kv.incr('n'), 0), ok(2, kv.incr('n'), [10, 11], 2), ok(2, kv.get('n'), [12, 13], '1')),
    'n',
  );
});

test('operations still pending when the history was taken count as unknown outcomes', () => {
  const clock = { ms: 0 };
  const hist = new History(() => clock.ms);
  const a = hist.recordInvoke(1, kv.set('x', 'a'));
  clock.ms = 1;
  hist.recordOk(a, 'OK');
  hist.recordInvoke(2, kv.set('x', 'b')); // the client was killed before any reply
  clock.ms = 5;
  const g = hist.recordInvoke(1, kv.get('x'));
  clock.ms = 6;
  hist.recordOk(g, 'b');
  assertLinearizable(hist.operations());
});

test('failed operations are dropped: their effect must never be seen', () => {
  assertLinearizable(h(failed(1, kv.set('x', 'a'), 0), ok(2, kv.get('x'), [5, 6], null)));
  assertViolation(h(failed(1, kv.set('x', 'a'), 0), ok(2, kv.get('x'), [5, 6], 'a')), 'x');
});

test('many identical timed-out operations are checked without exploring every subset', () => {
  const rows: Row[] = [];
  for (let c = 0; c < 40; c++) rows.push(info(c, kv.incr('n'), c * 0.01));
  rows.push(ok('reader', kv.get('n'), [100, 101], '17'));
  assertLinearizable(h(...rows), 'GET 17 after 40 unknown INCRs: ');
  const r = assertViolation(h(...rows.slice(0, -1), ok('reader', kv.get('n'), [100, 101], '41')), 'n');
  assert.ok(r.steps < 10_000, `steps ${r.steps}`);
  // Distinct values: the last write may be any of them.
  const sets: Row[] = [];
  for (let c = 0; c < 16; c++) sets.push(info(c, kv.set('x', `v${c}`), c * 0.01));
  assertLinearizable(
    h(...sets, ok('reader', kv.get('x'), [100, 101], 'v7'), ok('reader', kv.get('x'), [102, 103], 'v3')),
  );
});

// ---------------------------------------------------------------------------
// Histories that must fail.

test('LOST WRITE: an acknowledged SET, then a later GET returns the older value', () => {
  const r = assertViolation(
    h(
      ok(1, kv.set('k', 'v1'), [0, 1], 'OK'),
      ok(2, kv.set('k', 'v2'), [2, 3], 'OK'),
      ok(3, kv.get('k'), [4, 5], 'v1'),
    ),
    'k',
  );
  assert.equal(r.counterexample.stuck.op.id, 2, formatCheckResult(r));
  assert.deepEqual(
    r.counterexample.prefix.map((p) => p.op.id),
    [0, 1],
  );
  assert.equal(r.counterexample.stateAfterPrefix, '"v2"');
  // And with nothing written before: GET returns null (the key "came back" missing).
  assertViolation(h(ok(1, kv.set('k', 'v1'), [0, 1], 'OK'), ok(3, kv.get('k'), [4, 5], null)), 'k');
});

test('STALE READ: after SET v1 then SET v2 completed, a later GET returns v1', () => {
  const r = assertViolation(
    h(
      ok(1, kv.set('k', 'v1'), [0, 1], 'OK'),
      ok(1, kv.set('k', 'v2'), [2, 3], 'OK'),
      ok(2, kv.get('k'), [3.5, 4], 'v2'),
      ok(3, kv.get('k'), [6, 7], 'v1'),
    ),
    'k',
  );
  assert.equal(r.counterexample.stuck.op.id, 3);
});

test('DOUBLED INCR: acknowledged once but applied twice', () => {
  // Two INCRs acknowledged 1 and 2, and a later GET sees 3 with no other writer.
  assertViolation(
    h(ok(1, kv.incr('n'), [0, 1], 1), ok(2, kv.incr('n'), [2, 3], 2), ok(3, kv.get('n'), [4, 5], '3')),
    'n',
  );
  // One INCR acknowledged once, then a later INCR returns +2.
  const r = assertViolation(h(ok(1, kv.incr('n'), [0, 1], 1), ok(2, kv.incr('n'), [2, 3], 3)), 'n');
  assert.match(r.reason, /INCR n -> 3/);
  assert.match(r.reason, /so INCR would return 2/);
});

test('a read of a value never written fails', () => {
  const r = assertViolation(
    h(ok(1, kv.set('k', 'a'), [0, 1], 'OK'), ok(2, kv.get('k'), [0.5, 3], 'zzz')),
    'k',
  );
  assert.equal(r.counterexample.stuck.op.id, 1);
  // DEL reporting a delete of a missing key, and SET replying something other than OK, fail too.
  assertViolation(h(ok(1, kv.del('k'), [0, 1], 1)), 'k');
  assertViolation(h(ok(1, kv.set('k', 'a'), [0, 1], 'QUEUED')), 'k');
});

test('a failure report names the key, the operations, their clients, replies and times', () => {
  const r = assertViolation(
    h(
      ok('writer', kv.set('user:7', 'v1'), [0, 1.25], 'OK'),
      ok('writer', kv.set('user:7', 'v2'), [2, 3], 'OK'),
      ok(4, kv.get('user:7'), [2.5, 3.5], 'v2'),
      ok(5, kv.get('user:7'), [10, 11], 'v1'),
    ),
    'user:7',
  );
  const text = formatCheckResult(r);
  for (const needle of [
    'NOT linearizable',
    'key "user:7"',
    '#0 client "writer": SET user:7 "v1" -> "OK" [0ms, 1.25ms]',
    '#3 client 5: GET user:7 -> "v1" [10ms, 11ms]',
    'it returned "v1", but at that point user:7 holds "v2"',
    'longest linearizable prefix',
  ]) {
    assert.ok(text.includes(needle), `report lacks ${JSON.stringify(needle)}:\n${text}`);
  }
  // Operations concurrent with the stuck one are listed with their own reasons.
  const r2 = assertViolation(
    h(
      ok(1, kv.set('k', 'a'), [0, 1], 'OK'),
      ok(2, kv.get('k'), [2, 5], 'b'),
      ok(3, kv.get('k'), [2, 6], 'c'),
    ),
    'k',
  );
  assert.equal(r2.counterexample.alternatives.length, 1, formatCheckResult(r2));
  assert.match(formatCheckResult(r2), /GET k -> "c"/);
  assert.match(formatCheckResult(r2), /it returned "c", but at that point k holds "a"/);
  const r3 = assertViolation(h(info(1, kv.set('k', 'z'), 0), ok(2, kv.get('k'), [2, 5], 'b')), 'k');
  assert.match(formatCheckResult(r3), /unknown outcome/);
});

test('a violation on one key is found among thousands of operations on another', () => {
  const prng = new Prng(SEED, 1);
  const sim = simulate(prng, { clients: 5, opsPerClient: 800, keys: [{ name: 'a', family: 'c' }] });
  const ops = [
    ...sim.ops,
    ...h(ok(90, kv.set('b', 'new'), [1e6, 1e6 + 1], 'OK'), ok(91, kv.get('b'), [1e6 + 2, 1e6 + 3], null)).map(
      (op) => ({ ...op, id: op.id + sim.ops.length }),
    ),
  ];
  const r = assertViolation(ops, 'b', `seed ${SEED}: `);
  assert.equal(r.counterexample.opsInKey, 2);
  // Even when key a is too hard for the budget, the plain violation on b is reported.
  const tight = checkKvHistory(ops, { stepsMax: 50 });
  assert.equal(tight.ok, false, formatCheckResult(tight));
});

test('an exhausted step budget answers unknown, naming the key', () => {
  const sim = simulate(new Prng(SEED, 2), {
    clients: 4,
    opsPerClient: 50,
    keys: [{ name: 'q', family: 'r' }],
  });
  const r = checkKvHistory(sim.ops, { stepsMax: 20 });
  assert.equal(r.ok, 'unknown', formatCheckResult(r));
  if (r.ok !== 'unknown') return;
  assert.equal(r.key, 'q');
  assert.equal(r.reason, 'budget');
  assert.match(formatCheckResult(r), /budget of 20 steps/);
});

test('a malformed history is an assertion, not a verdict', () => {
  assert.throws(() => checkKvHistory(h(ok(1, kv.get('x'), [5, 4], null))), /assertion: ok op 0/);
  const noOutput: KvOpRecord = {
    id: 0,
    clientId: 1,
    input: kv.get('x'),
    invokeMs: 0,
    responseMs: 1,
    status: 'ok',
  };
  assert.throws(() => checkKvHistory([noOutput]), /assertion: ok op 0 has no output/);
  assert.throws(() => checkKvHistory([noOutput, noOutput]), /assertion/);
});

// ---------------------------------------------------------------------------
// The recorder.

test('History records invocations and outcomes with times from the injected clock', () => {
  let ms = 10;
  const hist = new History(() => ms);
  const a = hist.recordInvoke(1, kv.set('x', 'a'));
  const b = hist.recordInvoke('c2', kv.incr('n'));
  const c = hist.recordInvoke(3, kv.get('x'));
  const d = hist.recordInvoke(4, kv.get('x'));
  ms = 12.5;
  hist.recordOk(a, 'OK');
  hist.recordInfo(b);
  hist.recordFail(c);
  hist.recordOk(d, null);
  assert.equal(hist.size, 4);
  assert.deepEqual(hist.operations(), [
    {
      id: 0,
      clientId: 1,
      input: kv.set('x', 'a'),
      invokeMs: 10,
      status: 'ok',
      responseMs: 12.5,
      output: 'OK',
    },
    { id: 1, clientId: 'c2', input: kv.incr('n'), invokeMs: 10, status: 'info', responseMs: 12.5 },
    { id: 2, clientId: 3, input: kv.get('x'), invokeMs: 10, status: 'fail', responseMs: 12.5 },
    { id: 3, clientId: 4, input: kv.get('x'), invokeMs: 10, status: 'ok', responseMs: 12.5, output: null },
  ]);
  assert.throws(() => hist.recordOk(a, 'OK'), /assertion: op 0 completed twice/);
  assert.throws(() => hist.recordInfo(99), /assertion: no operation 99/);
  ms = 5;
  assert.throws(() => hist.recordInvoke(1, kv.get('x')), /assertion: the history clock went back/);
});

test('History survives JSON, and a damaged file is an error value', () => {
  let ms = 0;
  const hist = new History(() => ms++);
  const ids = [hist.recordInvoke(1, kv.set('x', 'a')), hist.recordInvoke(2, kv.get('x'))];
  hist.recordOk(ids[0]!, 'OK');
  hist.recordOk(ids[1]!, null);
  hist.recordInvoke(3, kv.del('x'));
  const text = hist.serialize();
  const back = parseKvHistory(text);
  assert.ok(back.ok, back.ok ? '' : back.error);
  if (!back.ok) return;
  assert.deepEqual(back.operations, hist.operations());
  assert.equal(serializeHistory(back.operations), text);

  const bad = (t: string, re: RegExp): void => {
    const r = parseKvHistory(t);
    assert.equal(r.ok, false);
    if (!r.ok) assert.match(r.error, re);
  };
  bad(text.slice(0, text.length / 2), /not JSON/);
  bad(text.replace('"version": 1', '"version": 2'), /version 2/);
  bad(text.replace('"kind":"get"', '"kind":"getx"'), /operation \[1\]: input/);
  bad(text.replace(',"output":null', ''), /operation \[1\]: an ok operation has no valid output/);
  bad(text.replace('"status":"pending"', '"status":"lost"'), /unknown status/);
  bad(text.replace('"id":1', '"id":0'), /duplicate id/);
});

test('mergeHistories renumbers ids so several recorders make one history', () => {
  const part = h(ok(1, kv.set('x', 'a'), [0, 1], 'OK'));
  const merged = mergeHistories([part, h(ok(2, kv.get('x'), [2, 3], 'a'))]);
  assert.deepEqual(
    merged.map((op) => op.id),
    [0, 1],
  );
  assertLinearizable(merged);
});

// ---------------------------------------------------------------------------
// Simulation of a real linearizable store under random concurrency.

/** Key families: r = register (SET/GET, unique values), c = counter (INCR/GET), m = mixed (all four). */
type Family = 'r' | 'c' | 'm';

interface PlannedOp {
  id: number;
  clientId: ClientId;
  input: KvInput;
  invokeMs: number;
  /** When it takes effect; null when it never does. */
  linMs: number | null;
  /** When the reply arrives ('ok') or the client gives up ('fail', 'info'). */
  endMs: number;
  status: Exclude<OpStatus, 'pending'>;
}

interface SimOptions {
  clients: number;
  opsPerClient: number;
  keys: { name: string; family: Family }[];
  infoP?: number;
  /** The chance that a timed-out operation takes effect after all. */
  infoAppliedP?: number;
  failP?: number;
  latencyMs?: number;
}

type Bug = { kind: 'drop-write'; opId: number } | { kind: 'double-incr'; opId: number };

/** An independent, deliberately plain implementation of the store, for the simulation to run. */
function applyToStore(store: Map<string, string>, input: KvInput, times = 1): KvOutput {
  switch (input.kind) {
    case 'set':
      store.set(input.key, input.value);
      return 'OK';
    case 'get':
      return store.get(input.key) ?? null;
    case 'incr': {
      const cur = store.get(input.key) ?? '0';
      if (!/^-?\d+$/.test(cur)) return INCR_ERROR_NOT_INTEGER;
      const first = Number(cur) + 1;
      store.set(input.key, String(Number(cur) + times));
      return first;
    }
    case 'del':
      return store.delete(input.key) ? 1 : 0;
  }
}

function planOps(prng: Prng, o: SimOptions): PlannedOp[] {
  const latencyMs = o.latencyMs ?? 6;
  const infoP = o.infoP ?? 0.05;
  const failP = o.failP ?? 0.03;
  const infoAppliedP = o.infoAppliedP ?? 0.5;
  const planned: PlannedOp[] = [];
  let id = 0;
  let endAllMs = 0;
  for (let c = 0; c < o.clients; c++) {
    let t = prng.int(0, 3);
    for (let k = 0; k < o.opsPerClient; k++) {
      const key = o.keys[prng.int(0, o.keys.length - 1)]!;
      const roll = prng.next();
      let input: KvInput;
      if (key.family === 'r') input = roll < 0.5 ? kv.set(key.name, `c${c}-${k}`) : kv.get(key.name);
      else if (key.family === 'c') input = roll < 0.6 ? kv.incr(key.name) : kv.get(key.name);
      else if (roll < 0.25) input = kv.set(key.name, prng.chance(0.1) ? 'x' : String(prng.int(0, 9)));
      else if (roll < 0.5) input = kv.get(key.name);
      else if (roll < 0.85) input = kv.incr(key.name);
      else input = kv.del(key.name);
      const invokeMs = t;
      let linMs: number | null;
      let endMs: number;
      let status: PlannedOp['status'];
      const fate = prng.next();
      if (fate < failP) {
        status = 'fail';
        linMs = null;
        endMs = invokeMs + prng.int(0, 2);
      } else if (fate < failP + infoP) {
        // A timeout: the request may still take effect long after the client gave up, or never.
        status = 'info';
        endMs = invokeMs + 2 * latencyMs;
        linMs = prng.chance(infoAppliedP) ? invokeMs + prng.int(0, 6 * latencyMs) : null;
      } else {
        status = 'ok';
        linMs = invokeMs + prng.int(0, latencyMs);
        endMs = linMs + prng.int(0, latencyMs);
      }
      planned.push({ id: id++, clientId: c, input, invokeMs, linMs, endMs, status });
      endAllMs = Math.max(endAllMs, endMs, linMs ?? 0);
      // Think time may be zero, so intervals touch and times tie.
      t = endMs + prng.int(0, 2);
    }
  }
  // A final read of every key once everything has settled, as Jepsen does:
  // it is what makes a lost effect at the very end observable.
  for (const [j, key] of o.keys.entries()) {
    const t = endAllMs + 10 + 2 * j;
    planned.push({
      id: id++,
      clientId: 'final',
      input: kv.get(key.name),
      invokeMs: t,
      linMs: t,
      endMs: t + 1,
      status: 'ok',
    });
  }
  return planned;
}

/** Runs the plan against the store in effect order (optionally with one bug) and records it through History. */
function runPlan(planned: readonly PlannedOp[], bug?: Bug): KvOpRecord[] {
  const store = new Map<string, string>();
  const outputs = new Map<number, KvOutput>();
  const effective = planned
    .filter((p) => p.linMs !== null)
    .sort((a, b) => a.linMs! - b.linMs! || a.id - b.id);
  for (const p of effective) {
    let out: KvOutput;
    if (bug?.opId === p.id && bug.kind === 'drop-write') out = 'OK';
    else out = applyToStore(store, p.input, bug?.opId === p.id && bug.kind === 'double-incr' ? 2 : 1);
    outputs.set(p.id, out);
  }
  const clock = { ms: 0 };
  const hist = new History(() => clock.ms);
  const events: { ms: number; invoke: boolean; p: PlannedOp }[] = [];
  for (const p of planned)
    events.push({ ms: p.invokeMs, invoke: true, p }, { ms: p.endMs, invoke: false, p });
  events.sort((a, b) => a.ms - b.ms || (a.invoke === b.invoke ? a.p.id - b.p.id : a.invoke ? -1 : 1));
  const historyId = new Map<number, number>();
  for (const ev of events) {
    clock.ms = ev.ms;
    if (ev.invoke) {
      historyId.set(ev.p.id, hist.recordInvoke(ev.p.clientId, ev.p.input));
      continue;
    }
    const hid = historyId.get(ev.p.id)!;
    if (ev.p.status === 'ok') hist.recordOk(hid, outputs.get(ev.p.id)!);
    else if (ev.p.status === 'info') hist.recordInfo(hid);
    else hist.recordFail(hid);
  }
  return hist.operations();
}

function simulate(prng: Prng, o: SimOptions): { planned: PlannedOp[]; ops: KvOpRecord[] } {
  const planned = planOps(prng, o);
  return { planned, ops: runPlan(planned) };
}

/**
 * SETs on register keys whose dropped effect a linearizability checker must
 * notice: the previous effective write W on the key is an ok SET that returned
 * before the candidate D was invoked (or there is none), and some ok GET R
 * invoked after D returned comes before any later write takes effect. With D
 * dropped R reads W's value, yet every linearization orders W before D before
 * R, and values on register keys are unique.
 */
function dropWriteCandidates(planned: readonly PlannedOp[]): PlannedOp[] {
  const out: PlannedOp[] = [];
  const byKey = effectiveByKey(planned);
  for (const [key, seq] of byKey) {
    const all = planned.filter((p) => p.input.key === key);
    if (all.some((p) => p.input.kind === 'incr' || p.input.kind === 'del')) continue;
    const values = all.flatMap((p) => (p.input.kind === 'set' ? [p.input.value] : []));
    if (new Set(values).size !== values.length) continue;
    for (let j = 0; j < seq.length; j++) {
      const d = seq[j]!;
      if (d.input.kind !== 'set' || d.status !== 'ok') continue;
      let prevWrite: PlannedOp | undefined;
      for (let q = j - 1; q >= 0 && prevWrite === undefined; q--)
        if (seq[q]!.input.kind === 'set') prevWrite = seq[q];
      if (prevWrite !== undefined && (prevWrite.status !== 'ok' || prevWrite.endMs >= d.invokeMs)) continue;
      for (let q = j + 1; q < seq.length; q++) {
        const r = seq[q]!;
        if (r.input.kind === 'set') break;
        if (r.status === 'ok' && r.invokeMs > d.endMs) {
          out.push(d);
          break;
        }
      }
    }
  }
  return out;
}

/**
 * INCRs on counter keys whose doubled effect must be noticed: every unknown
 * INCR of the key took effect (else one could explain the extra increment),
 * and the final read sees one more than the number of INCRs.
 */
function doubleIncrCandidates(planned: readonly PlannedOp[]): PlannedOp[] {
  const out: PlannedOp[] = [];
  const keys = new Map<string, PlannedOp[]>();
  for (const p of planned) {
    const list = keys.get(p.input.key) ?? [];
    list.push(p);
    keys.set(p.input.key, list);
  }
  for (const [, list] of keys) {
    if (list.some((p) => p.input.kind === 'set' || p.input.kind === 'del')) continue;
    if (list.some((p) => p.input.kind === 'incr' && p.status === 'info' && p.linMs === null)) continue;
    for (const p of list) if (p.input.kind === 'incr' && p.status === 'ok') out.push(p);
  }
  return out;
}

function effectiveByKey(planned: readonly PlannedOp[]): Map<string, PlannedOp[]> {
  const byKey = new Map<string, PlannedOp[]>();
  const effective = planned
    .filter((p) => p.linMs !== null)
    .sort((a, b) => a.linMs! - b.linMs! || a.id - b.id);
  for (const p of effective) {
    const list = byKey.get(p.input.key) ?? [];
    list.push(p);
    byKey.set(p.input.key, list);
  }
  return byKey;
}

test('randomized: simulated linearizable stores pass, and one injected bug is caught', (t) => {
  t.diagnostic(`seed ${SEED} (set LOCKSTEP_TEST_SEED to replay)`);
  const keys: SimOptions['keys'] = [
    { name: 'r0', family: 'r' },
    { name: 'r1', family: 'r' },
    { name: 'c0', family: 'c' },
    { name: 'c1', family: 'c' },
    { name: 'm0', family: 'm' },
  ];
  let caughtDrop = 0;
  let caughtDouble = 0;
  for (let round = 0; round < 40; round++) {
    const prng = new Prng(SEED, 100 + round);
    const context = `seed ${SEED} round ${round}: `;
    const clients = prng.int(2, 6);
    const planned = planOps(prng, {
      clients,
      opsPerClient: prng.int(10, 60),
      keys,
      infoP: 0.08,
      failP: 0.04,
    });
    assertLinearizable(runPlan(planned), context);

    const drops = dropWriteCandidates(planned);
    if (drops.length > 0) {
      const d = drops[prng.int(0, drops.length - 1)]!;
      const r = assertViolation(
        runPlan(planned, { kind: 'drop-write', opId: d.id }),
        d.input.key,
        context + 'drop-write: ',
      );
      assert.ok(r.reason.length > 0);
      caughtDrop++;
    }
    const doubles = doubleIncrCandidates(planned);
    if (doubles.length > 0) {
      const d = doubles[prng.int(0, doubles.length - 1)]!;
      assertViolation(
        runPlan(planned, { kind: 'double-incr', opId: d.id }),
        d.input.key,
        context + 'double-incr: ',
      );
      caughtDouble++;
    }
  }
  // The final reads make a candidate of the last write of every register key,
  // so almost every round injects both bugs.
  assert.ok(
    caughtDrop >= 30 && caughtDouble >= 20,
    `seed ${SEED}: only ${caughtDrop} / ${caughtDouble} bugs injected`,
  );
  t.diagnostic(`caught ${caughtDrop} dropped writes and ${caughtDouble} doubled INCRs`);
});

// ---------------------------------------------------------------------------
// Against a brute-force search.

/** Linearizable by definition: some order of the ok operations, plus any unknown ones, that respects real time. */
function bruteForce(ops: readonly KvOpRecord[]): boolean {
  const live = ops.filter((op) => op.status !== 'fail');
  const placed = new Array<boolean>(live.length).fill(false);
  const okCount = live.filter((op) => op.status === 'ok').length;
  const go = (store: Map<string, string>, okPlaced: number): boolean => {
    if (okPlaced === okCount) return true;
    for (let j = 0; j < live.length; j++) {
      if (placed[j]) continue;
      const op = live[j]!;
      // j may go next only if no unplaced ok operation returned strictly before j was invoked.
      const blocked = live.some(
        (k, i) => !placed[i] && i !== j && k.status === 'ok' && k.responseMs! < op.invokeMs,
      );
      if (blocked) continue;
      const s = new Map(store);
      const out = applyToStore(s, op.input);
      if (op.status === 'ok' && out !== op.output) continue;
      placed[j] = true;
      const found = go(s, okPlaced + (op.status === 'ok' ? 1 : 0));
      placed[j] = false;
      if (found) return true;
    }
    return false;
  };
  return go(new Map(), 0);
}

test('randomized: the checker agrees with a brute-force search on small histories', (t) => {
  t.diagnostic(`seed ${SEED}`);
  const prng = new Prng(SEED, 7);
  let yes = 0;
  let no = 0;
  for (let round = 0; round < 1500; round++) {
    const family = (['r', 'c', 'm'] as const)[prng.int(0, 2)]!;
    const planned = planOps(prng, {
      clients: prng.int(1, 3),
      opsPerClient: prng.int(1, 3),
      keys: [{ name: 'k', family }],
      infoP: 0.2,
      failP: 0.1,
      latencyMs: 3,
    });
    let ops = runPlan(planned);
    if (prng.chance(0.5)) {
      // Perturb one reply into another plausible one.
      const okIdx = ops.flatMap((op, i) => (op.status === 'ok' && op.input.kind !== 'set' ? [i] : []));
      const i = okIdx[prng.int(0, okIdx.length - 1)] ?? 0;
      const op = ops[i]!;
      const choices: KvOutput[] = [
        null,
        '1',
        '2',
        'x',
        ...ops.flatMap((o) => (o.input.kind === 'set' ? [o.input.value] : [])),
      ];
      const output: KvOutput =
        op.input.kind === 'incr'
          ? (op.output as number) + (prng.chance(0.5) ? 1 : -1)
          : op.input.kind === 'del'
            ? 1 - (op.output as number)
            : choices[prng.int(0, choices.length - 1)]!;
      ops = ops.map((o, j) => (j === i ? { ...o, output } : o));
    }
    const expected = bruteForce(ops);
    const r = checkKvHistory(ops);
    const context = `seed ${SEED} round ${round}:\n${ops.map((o) => JSON.stringify(o)).join('\n')}\n`;
    assert.equal(r.ok, expected, context + formatCheckResult(r));
    if (expected) yes++;
    else no++;
  }
  assert.ok(
    yes > 300 && no > 150,
    `seed ${SEED}: ${yes} linearizable, ${no} not: too one-sided to test much`,
  );
  t.diagnostic(`${yes} linearizable, ${no} not`);
});

// ---------------------------------------------------------------------------
// Performance sanity (no timing assertions: the step budget makes every check terminate).

test('hundreds of timed-out operations on one key, most never taking effect, stay within budget', (t) => {
  const keys: SimOptions['keys'] = [
    { name: 'hot-counter', family: 'c' },
    { name: 'hot-register', family: 'r' },
  ];
  const sim = simulate(new Prng(SEED, 4), {
    clients: 5,
    opsPerClient: 600,
    keys,
    infoP: 0.05,
    infoAppliedP: 0.2,
    failP: 0.01,
  });
  const infos = sim.ops.filter((op) => op.status === 'info').length;
  const startMs = performance.now();
  const r = checkKvHistory(sim.ops);
  const elapsedMs = performance.now() - startMs;
  assert.equal(r.ok, true, `seed ${SEED}: ${formatCheckResult(r)}`);
  t.diagnostic(
    `${sim.ops.length} operations with ${infos} timeouts on 2 keys checked in ${elapsedMs.toFixed(1)} ms ` +
      `(${r.ok === true ? r.steps : 0} steps)`,
  );
});

test('5 clients x 2,000 operations on 20 keys check quickly', (t) => {
  const keys: SimOptions['keys'] = [];
  for (let i = 0; i < 20; i++) keys.push({ name: `key${i}`, family: (['r', 'c', 'm'] as const)[i % 3]! });
  const sim = simulate(new Prng(SEED, 3), { clients: 5, opsPerClient: 2000, keys, infoP: 0.02, failP: 0.01 });
  const options: CheckOptions = {};
  const startMs = performance.now();
  const r = checkKvHistory(sim.ops, options);
  const elapsedMs = performance.now() - startMs;
  assert.equal(r.ok, true, `seed ${SEED}: ${formatCheckResult(r)}`);
  t.diagnostic(
    `${sim.ops.length} operations checked in ${elapsedMs.toFixed(1)} ms (${r.ok === true ? r.steps : 0} steps)`,
  );
});
