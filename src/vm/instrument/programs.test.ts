// Real programs: instrumented wasi-libc and Rust std programs print exactly what the original
// modules print, and exit the same way.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { runWithStub } from './stub-wasi.js';
import { fixture, instrumentOk } from './testkit.js';

describe('real programs', () => {
  for (const name of ['counter.wasm', 'cpu.wasm', 'program.wasm']) {
    it(`${name} produces identical output and exit status when instrumented`, async () => {
      const source = fixture(name);
      const module = await instrumentOk(source, { memoryMaxPages: 1024 });
      const original = runWithStub(source);
      const instrumented = runWithStub(module.bytes);
      assert.ok(original.output.length > 20, 'the program printed something');
      assert.equal(instrumented.output, original.output);
      assert.deepEqual(instrumented.outcome, original.outcome);
      assert.equal(original.outcome.kind, 'exit');
    });
  }

  it('the Rust program exits through proc_exit with its own code', () => {
    const run = runWithStub(fixture('program.wasm'));
    assert.deepEqual(run.outcome, { kind: 'exit', code: 3 });
    assert.match(run.output, /longest collatz below 20000/);
  });

  it('real programs get the full set of instrumentation exports', async () => {
    for (const name of ['counter.wasm', 'program.wasm']) {
      const module = await instrumentOk(fixture(name));
      const exports = WebAssembly.Module.exports(new WebAssembly.Module(module.bytes)).map((e) => e.name);
      for (const expected of [
        'memory',
        '_start',
        'lockstep_limit',
        'lockstep_depth',
        'lockstep_fuel',
        'asyncify_start_unwind',
        'asyncify_stop_unwind',
        'asyncify_start_rewind',
        'asyncify_stop_rewind',
        'asyncify_get_state',
      ]) {
        assert.ok(exports.includes(expected), `${name} exports ${expected}`);
      }
      for (const g of module.globalExports) assert.ok(exports.includes(g), `${name} exports ${g}`);
    }
  });
});
