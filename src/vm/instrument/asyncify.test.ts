// Snapshot mechanics tests: unwind at a host call, capture, rewind in the same or a fresh
// instance; depth, fuel, memory and output are exactly those of an uninterrupted run.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { AsyncifyController, Capture } from './asyncify.js';
import { InstrumentedModule } from './index.js';
import { ImportFunction, StubWasi, runStart } from './stub-wasi.js';
import { fixture, instrumentOk, wat } from './testkit.js';

const CHAIN = `(module
  (import "host" "pause" (func $pause (param i32) (result i32)))
  (memory (export "memory") 1)
  (global $result (export "result") (mut i32) (i32.const 0))
  (func (export "_start") (global.set $result (call $chain (i32.const 40))))
  (func $chain (param $n i32) (result i32)
    (local $x f64)
    (local.set $x (f64.mul (f64.convert_i32_u (local.get $n)) (f64.const 1.5)))
    (if (result i32) (i32.eqz (local.get $n))
      (then (call $pause (i32.const 7)))
      (else (i32.add (call $chain (i32.sub (local.get $n) (i32.const 1))) (i32.trunc_f64_u (local.get $x)))))))`;

/** sum over n = 1..40 of trunc(1.5 n), plus what pause returns. */
const CHAIN_SUM = Array.from({ length: 40 }, (_, i) => Math.trunc(1.5 * (i + 1))).reduce((a, b) => a + b, 0);
const FUEL_BUDGET = 1_000_000_000n;

function exportsOf(instance: WebAssembly.Instance): Record<string, unknown> {
  return instance.exports as Record<string, unknown>;
}

function global(instance: WebAssembly.Instance, name: string): WebAssembly.Global {
  const g = exportsOf(instance)[name];
  assert.ok(g instanceof WebAssembly.Global, name);
  return g;
}

function start(instance: WebAssembly.Instance): void {
  (exportsOf(instance)._start as () => void)();
}

describe('asyncify unwind and rewind in a deep call chain', () => {
  async function chainModule(): Promise<InstrumentedModule> {
    return instrumentOk(await wat(CHAIN), {}, new Set(['host.pause']));
  }

  it('runs uninterrupted to depth 0', async () => {
    const module = await chainModule();
    const instance = new WebAssembly.Instance(new WebAssembly.Module(module.bytes), {
      host: { pause: () => 1000 },
    });
    global(instance, 'lockstep_fuel').value = FUEL_BUDGET;
    start(instance);
    assert.equal(global(instance, 'result').value, 1000 + CHAIN_SUM);
    assert.equal(global(instance, 'lockstep_depth').value, 0);
  });

  for (const target of ['the same instance', 'a fresh instance'] as const) {
    it(`unwinds 42 frames deep and rewinds into ${target}, finishing at depth 0 with the same fuel`, async () => {
      const module = await chainModule();
      const compiled = new WebAssembly.Module(module.bytes);

      // Reference: an uninterrupted run.
      const reference = new WebAssembly.Instance(compiled, { host: { pause: () => 1000 } });
      global(reference, 'lockstep_fuel').value = FUEL_BUDGET;
      start(reference);
      const fuelAfter = global(reference, 'lockstep_fuel').value as bigint;

      let controller: AsyncifyController | undefined;
      const depthsSeen: number[] = [];
      const imports = (getInstance: () => WebAssembly.Instance) => ({
        host: {
          pause: (arg: number) => {
            assert.equal(arg, 7);
            assert.ok(controller !== undefined);
            depthsSeen.push(global(getInstance(), 'lockstep_depth').value as number);
            if (controller.state === 'rewinding') return controller.finishRewind() as number;
            controller.startUnwind(1000);
            return 0;
          },
        },
      });
      const first: WebAssembly.Instance = new WebAssembly.Instance(
        compiled,
        imports(() => first),
      );
      controller = new AsyncifyController(first, module.globalExports);
      global(first, 'lockstep_fuel').value = FUEL_BUDGET;
      start(first);
      assert.equal(controller.state, 'unwinding');
      const capture = controller.finishUnwind();
      assert.equal(controller.state, 'normal');
      // Unwinding skips the decrements: the captured depth is the depth at the host call.
      assert.equal(capture.globals[module.globalExports.indexOf('lockstep_depth')], 42);
      assert.ok(capture.stack.length > 0);

      let second: WebAssembly.Instance | undefined;
      if (target === 'the same instance') {
        second = first;
      } else {
        second = new WebAssembly.Instance(
          compiled,
          imports(() => second as WebAssembly.Instance),
        );
        controller = new AsyncifyController(second, module.globalExports);
      }
      controller.startRewind(capture);
      start(second);
      assert.equal(controller.state, 'normal');
      assert.equal(global(second, 'result').value, 1000 + CHAIN_SUM);
      assert.equal(global(second, 'lockstep_depth').value, 0);
      assert.deepEqual(depthsSeen, [42, 42], 'rewinding skips the increments, restoring the same depth');
      assert.equal(global(second, 'lockstep_fuel').value, fuelAfter, 'unwind + rewind costs no fuel');
    });
  }
});

/** A run of the C counter program that migrates to a fresh instance at each listed poll. */
function runCounter(module: InstrumentedModule, migrateAtPolls: readonly number[]) {
  const compiled = new WebAssembly.Module(module.bytes);
  let output = '';
  let polls = 0;
  let controller: AsyncifyController | undefined;
  let memoryAtUnwind: Uint8Array | undefined;
  const captures: Capture[] = [];
  const memoryChecks: boolean[] = [];

  const create = (): { instance: WebAssembly.Instance; wasi: StubWasi } => {
    const wasi = new StubWasi();
    const base = wasi.imports().wasi_snapshot_preview1 as Record<string, ImportFunction>;
    const basePoll = base.poll_oneoff as (...args: number[]) => number;
    const poll_oneoff = (...args: number[]): number => {
      assert.ok(controller !== undefined);
      if (controller.state === 'rewinding') {
        const value = controller.finishRewind() as number;
        // The guest resumes with exactly the memory it had when the host call returned.
        memoryChecks.push(Buffer.from(memoryOf(instance)).equals(Buffer.from(memoryAtUnwind ?? [])));
        return value;
      }
      const result = basePoll(...args);
      polls++;
      if (migrateAtPolls.includes(polls)) {
        memoryAtUnwind = memoryOf(instance).slice();
        controller.startUnwind(result);
      }
      return result;
    };
    const instance = new WebAssembly.Instance(
      compiled,
      wasi.imports({ poll_oneoff: poll_oneoff as ImportFunction }),
    );
    wasi.bind(instance);
    return { instance, wasi };
  };

  let { instance, wasi } = create();
  controller = new AsyncifyController(instance, module.globalExports);
  global(instance, 'lockstep_fuel').value = FUEL_BUDGET;
  for (;;) {
    const outcome = runStart(instance);
    output += wasi.output;
    if (controller.state !== 'unwinding') {
      return {
        outcome,
        output,
        polls,
        captures,
        memoryChecks,
        depth: global(instance, 'lockstep_depth').value as number,
        fuel: global(instance, 'lockstep_fuel').value as bigint,
      };
    }
    const capture = controller.finishUnwind();
    captures.push(capture);
    // The image holds the guest's own bytes, not asyncify's: it equals memory at the host call.
    memoryChecks.push(Buffer.from(capture.memory).equals(Buffer.from(memoryAtUnwind ?? [])));
    ({ instance, wasi } = create());
    controller = new AsyncifyController(instance, module.globalExports);
    controller.startRewind(capture);
  }
}

function memoryOf(instance: WebAssembly.Instance): Uint8Array {
  const memory = exportsOf(instance).memory;
  assert.ok(memory instanceof WebAssembly.Memory);
  return new Uint8Array(memory.buffer);
}

describe('asyncify with a real wasi-libc program', () => {
  it('continues in fresh instances after unwinding at poll_oneoff, with output identical to an uninterrupted run', async () => {
    const module = await instrumentOk(fixture('counter.wasm'));
    const straight = runCounter(module, []);
    assert.deepEqual(straight.outcome, { kind: 'exit', code: 0 });
    assert.match(straight.output, /^count 0 depth 0 .*\ndone [0-9a-f]{8}\n$/s);
    assert.equal(straight.depth, 0);

    // Odd polls are at the bottom of descend(): poll 3 under 26 of its frames, poll 7 under 76.
    // Even polls are the main loop's own sleep.
    for (const migrateAt of [[1], [3], [4, 7], [2, 5, 8, 13, 21]]) {
      const migrated = runCounter(module, migrateAt);
      assert.equal(migrated.captures.length, migrateAt.length);
      assert.equal(migrated.output, straight.output, `migrating at polls ${migrateAt.join(', ')}`);
      assert.deepEqual(migrated.outcome, straight.outcome);
      assert.equal(migrated.polls, straight.polls);
      assert.equal(migrated.depth, 0);
      assert.equal(migrated.fuel, straight.fuel, 'fuel use is unchanged by migrations');
      assert.ok(
        migrated.memoryChecks.length === 2 * migrateAt.length && migrated.memoryChecks.every(Boolean),
      );
    }
    const shallow = runCounter(module, [1]).captures[0];
    const deep = runCounter(module, [7]).captures[0];
    assert.ok(shallow !== undefined && deep !== undefined);
    assert.ok(
      deep.stack.length > shallow.stack.length + 75 * 8,
      'the deep unwind saved every descend() frame',
    );
  });

  it('produces the same capture, and memory hash, on every run', async () => {
    const module = await instrumentOk(fixture('counter.wasm'));
    const digest = (c: Capture) =>
      createHash('sha256')
        .update(c.memory)
        .update(c.stack)
        .update(JSON.stringify(c.globals, (_k, v) => (typeof v === 'bigint' ? `${v}n` : v)))
        .digest('hex');
    const first = runCounter(module, [7]).captures.map(digest);
    const second = runCounter(module, [7]).captures.map(digest);
    assert.equal(first.length, 1);
    assert.deepEqual(first, second);
  });
});
