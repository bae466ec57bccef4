// Limit tests: memory maximum and failed grows, call depth, fuel; each stop is distinguishable.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { LimitReason, FUEL_UNLIMITED } from './index.js';
import { parseModule } from './wasm-binary.js';
import { skipConstExpr } from './code.js';
import { StubWasi, runStart } from './stub-wasi.js';
import { fixture, instrumentOk, wat } from './testkit.js';

type Exports = Record<string, unknown>;

function instantiate(bytes: Uint8Array): { exports: Exports; instance: WebAssembly.Instance } {
  const instance = new WebAssembly.Instance(new WebAssembly.Module(bytes), {});
  return { exports: instance.exports as Exports, instance };
}

function call(exports: Exports, name: string, ...args: number[]): number {
  const f = exports[name];
  assert.equal(typeof f, 'function', `export ${name}`);
  return (f as (...a: number[]) => number)(...args);
}

function globalValue(exports: Exports, name: string): number | bigint {
  const g = exports[name];
  assert.ok(g instanceof WebAssembly.Global, `global ${name}`);
  return g.value as number | bigint;
}

function setGlobal(exports: Exports, name: string, value: number | bigint): void {
  const g = exports[name];
  assert.ok(g instanceof WebAssembly.Global, `global ${name}`);
  g.value = value;
}

/** Calls `name` expecting a trap; returns the `lockstep_limit` value read afterwards. */
function trapReason(exports: Exports, name: string, ...args: number[]): number {
  assert.throws(() => call(exports, name, ...args), WebAssembly.RuntimeError);
  return globalValue(exports, 'lockstep_limit') as number;
}

describe('memory limit', () => {
  const source = () =>
    wat(`(module
      (memory (export "memory") 1)
      (func (export "_start"))
      (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0)))
      (func (export "size") (result i32) (memory.size)))`);

  it('rewrites the maximum to memoryMaxPages and keeps the memory exported as `memory`', async () => {
    const module = await instrumentOk(await source(), { memoryMaxPages: 4 });
    assert.equal(module.memoryMaxPages, 4);
    assert.equal(module.memoryInitialPages, 1);
    const parsed = parseModule(module.bytes, skipConstExpr);
    assert.deepEqual(
      parsed.memories.map((m) => [m.min, m.max]),
      [[1, 4]],
    );
    const { exports } = instantiate(module.bytes);
    assert.ok(exports.memory instanceof WebAssembly.Memory);
    // The maximum is in the binary, so even the host cannot grow past it.
    assert.throws(() => (exports.memory as WebAssembly.Memory).grow(4), RangeError);
  });

  it('lets successful grows behave normally and stops the guest on a failed grow with reason 1', async () => {
    const { exports } = instantiate((await instrumentOk(await source(), { memoryMaxPages: 4 })).bytes);
    assert.equal(call(exports, 'grow', 0), 1);
    assert.equal(call(exports, 'grow', 2), 1);
    assert.equal(call(exports, 'grow', 1), 3);
    assert.equal(call(exports, 'size'), 4);
    assert.equal(globalValue(exports, 'lockstep_limit'), LimitReason.none);
    assert.equal(trapReason(exports, 'grow', 1), LimitReason.memory);
  });

  it('keeps a lower maximum declared by the module itself', async () => {
    const bytes = await wat(`(module (memory (export "memory") 1 2) (func (export "_start"))
      (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0))))`);
    const module = await instrumentOk(bytes, { memoryMaxPages: 8 });
    assert.equal(module.memoryMaxPages, 2);
    const { exports } = instantiate(module.bytes);
    assert.equal(call(exports, 'grow', 1), 1);
    assert.equal(trapReason(exports, 'grow', 1), LimitReason.memory);
  });

  it('stops a real C program that exhausts memory with reason 1, not a crash of its own', async () => {
    // cpu.c mallocs 800 KB; a 4-page (256 KiB) limit makes its malloc's grow fail.
    const module = await instrumentOk(fixture('cpu.wasm'), { memoryMaxPages: 4 });
    const wasi = new StubWasi();
    const instance = new WebAssembly.Instance(new WebAssembly.Module(module.bytes), wasi.imports());
    wasi.bind(instance);
    const outcome = runStart(instance);
    assert.equal(outcome.kind, 'trap');
    assert.equal(outcome.kind === 'trap' && outcome.limit, LimitReason.memory);
  });
});

/** Functions that leave through every kind of exit: fallthrough, return, br/br_if/br_table to the outer label. */
const EXITS = `(module
  (memory (export "memory") 1)
  (func (export "_start"))
  (func $fall (param i32) (result i32) (i32.add (local.get 0) (i32.const 1)))
  (func $ret (param i32) (result i32)
    (block (loop (if (i32.gt_u (local.get 0) (i32.const 3)) (then (return (i32.const 30))))
      (br_if 1 (i32.eqz (local.get 0))) (local.set 0 (i32.add (local.get 0) (i32.const 1))) (br 0)))
    (i32.const 10))
  (func $br_outer (param i32) (result i32)
    (block $inner (br_if 1 (i32.const 20) (i32.eqz (local.get 0))) (br $inner))
    (i32.const 21))
  (func $table (param i32) (result i32)
    (i32.add
      (block $a (result i32)
        (drop (block $b (result i32) (br_table $a $b 2 (i32.const 40) (local.get 0))))
        (return (i32.const 41)))
      (i32.const 1)))
  (func $pair (param i32) (result i32 i64)
    (if (local.get 0) (then (return (i32.const 5) (i64.const 6))))
    (i32.const 7) (i64.const 8))
  (func $rec (export "rec") (param i32) (result i32)
    (if (result i32) (i32.eqz (local.get 0)) (then (i32.const 0))
      (else (i32.add (call $rec (i32.sub (local.get 0) (i32.const 1))) (i32.const 1)))))
  (func (export "all") (param i32) (result i32)
    (local i64)
    (i32.add (i32.add (i32.add (call $fall (local.get 0)) (call $ret (local.get 0)))
      (i32.add (call $br_outer (local.get 0)) (call $table (local.get 0))))
      (i32.add (call $rec (local.get 0)) (block (result i32) (call $pair (local.get 0)) (local.set 1) (i32.wrap_i64 (local.get 1)) (i32.add)))))
  (func (export "boom") (unreachable)))`;

describe('call depth', () => {
  it('returns to depth 0 through every kind of function exit', async () => {
    const source = await wat(EXITS);
    const plain = instantiate(source).exports;
    const { exports } = instantiate((await instrumentOk(source)).bytes);
    for (const n of [0, 1, 2, 3, 4, 5, 9]) {
      assert.equal(call(exports, 'all', n), call(plain, 'all', n), `all(${n})`);
      assert.equal(globalValue(exports, 'lockstep_depth'), 0, `depth after all(${n})`);
    }
  });

  it('allows exactly callDepthMax frames and stops the next call with reason 2', async () => {
    const source = await wat(EXITS);
    const { exports } = instantiate((await instrumentOk(source, { callDepthMax: 50 })).bytes);
    // rec(n) is n + 1 frames deep.
    assert.equal(call(exports, 'rec', 49), 49);
    assert.equal(globalValue(exports, 'lockstep_depth'), 0);
    assert.equal(trapReason(exports, 'rec', 50), LimitReason.callDepth);
  });

  it('leaves lockstep_limit at 0 for an ordinary trap, so it is told apart from a limit', async () => {
    const { exports } = instantiate((await instrumentOk(await wat(EXITS))).bytes);
    assert.equal(trapReason(exports, 'boom'), LimitReason.none);
  });
});

const SPIN = `(module
  (memory (export "memory") 1)
  (global $progress (export "progress") (mut i32) (i32.const 0))
  (func (export "_start"))
  (func (export "spin") (param $n i32)
    (loop $l
      (global.set $progress (i32.add (global.get $progress) (i32.const 1)))
      (br_if $l (i32.lt_u (global.get $progress) (local.get $n))))))`;

describe('fuel', () => {
  it('starts unlimited and charges a fixed amount per loop iteration', async () => {
    const { exports } = instantiate((await instrumentOk(await wat(SPIN))).bytes);
    assert.equal(globalValue(exports, 'lockstep_fuel'), FUEL_UNLIMITED);
    const spent = (n: number): bigint => {
      setGlobal(exports, 'progress', 0);
      setGlobal(exports, 'lockstep_fuel', 1_000_000n);
      call(exports, 'spin', n);
      return 1_000_000n - (globalValue(exports, 'lockstep_fuel') as bigint);
    };
    const perIteration = spent(11) - spent(10);
    assert.ok(perIteration > 0n);
    assert.equal(spent(20) - spent(10), 10n * perIteration);
    assert.ok(spent(1) > perIteration, 'the function entry is charged too');
  });

  it('stops with reason 3 at the same point on every run', async () => {
    const module = await instrumentOk(await wat(SPIN));
    const stops: Array<[number | bigint, number | bigint]> = [];
    for (let run = 0; run < 3; run++) {
      const { exports } = instantiate(module.bytes);
      setGlobal(exports, 'lockstep_fuel', 5000n);
      assert.equal(trapReason(exports, 'spin', 1_000_000), LimitReason.fuel);
      stops.push([globalValue(exports, 'progress'), globalValue(exports, 'lockstep_fuel')]);
    }
    assert.ok((stops[0]?.[0] as number) > 100);
    assert.deepEqual(stops[1], stops[0]);
    assert.deepEqual(stops[2], stops[0]);
  });

  it('stops a real C program deterministically, after the same output', async () => {
    const module = await instrumentOk(fixture('counter.wasm'));
    const outputs = new Set<string>();
    for (let run = 0; run < 2; run++) {
      const wasi = new StubWasi();
      const instance = new WebAssembly.Instance(new WebAssembly.Module(module.bytes), wasi.imports());
      wasi.bind(instance);
      (instance.exports.lockstep_fuel as WebAssembly.Global).value = 200_000n;
      const outcome = runStart(instance);
      assert.equal(outcome.kind === 'trap' && outcome.limit, LimitReason.fuel);
      outputs.add(`${wasi.output}|${wasi.polls}`);
    }
    assert.equal(outputs.size, 1);
    const [only] = outputs;
    assert.match(only ?? '', /^count 0 /, 'it ran for a while before the budget ran out');
  });

  it('adds no fuel counter when fuel is off', async () => {
    const { exports } = instantiate((await instrumentOk(await wat(SPIN), { fuel: false })).bytes);
    assert.equal(exports.lockstep_fuel, undefined);
    call(exports, 'spin', 1000);
    assert.equal(globalValue(exports, 'progress'), 1000);
  });
});
