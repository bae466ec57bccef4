// Admission tests: every refusal names its problem, and nothing refused is ever instrumented.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { instrument, type InstrumentError } from './index.js';
import { STUB_WASI_IMPORTS } from './stub-wasi.js';
import { TEST_OPTIONS, fixture, instrumentOk, wat } from './testkit.js';

const WASI_START = `
  (memory (export "memory") 1)
  (func (export "_start"))`;

async function refusal(
  bytes: Uint8Array,
  known: ReadonlySet<string> = STUB_WASI_IMPORTS,
  memoryMaxPages = 256,
): Promise<InstrumentError> {
  const result = await instrument(bytes, { ...TEST_OPTIONS, memoryMaxPages }, known);
  assert.equal(result.ok, false, 'module must be refused');
  if (result.ok) throw new Error('unreachable');
  return result.error;
}

describe('malformed modules', () => {
  it('refuses bytes that are not wasm', async () => {
    const error = await refusal(new TextEncoder().encode('#!/bin/sh\necho hello\n'));
    assert.equal(error.code, 'malformed');
    assert.match(error.message, /magic/);
  });

  it('refuses an empty input', async () => {
    assert.equal((await refusal(new Uint8Array(0))).code, 'malformed');
  });

  it('refuses a truncated module', async () => {
    const whole = fixture('counter.wasm');
    for (const length of [7, 9, 100, Math.floor(whole.length / 2), whole.length - 1]) {
      const error = await refusal(whole.subarray(0, length));
      assert.equal(error.code, 'malformed', `truncated to ${length} bytes`);
    }
  });

  it('refuses a module that decodes but fails WebAssembly.validate', async () => {
    // (func (result i32) i64.const 7): well-formed bytes, wrong type.
    const bytes = await wat(`(module ${WASI_START} (func (export "f") (result i32) (i32.const 7)))`);
    const bad = Uint8Array.from(bytes);
    const at = bad.findIndex((b, i) => b === 0x41 && bad[i + 1] === 0x07 && bad[i + 2] === 0x0b);
    assert.ok(at > 0);
    bad[at] = 0x42; // now an i64.const
    assert.equal(WebAssembly.validate(bad), false);
    const error = await refusal(bad);
    assert.equal(error.code, 'malformed');
    assert.match(error.message, /invalid module/);
  });

  it('refuses a component', async () => {
    const component = Uint8Array.from([0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00]);
    const error = await refusal(component);
    assert.equal(error.code, 'malformed');
    assert.match(error.message, /component/);
  });
});

describe('unsupported features', () => {
  it('refuses shared memory as threads', async () => {
    const bytes = await wat(`(module (memory (export "memory") 1 2 shared) (func (export "_start")))`);
    const error = await refusal(bytes);
    assert.equal(error.code, 'unsupported-feature');
    assert.match(error.message, /threads/);
  });

  it('refuses atomic opcodes as threads, even on unshared memory', async () => {
    const bytes = await wat(`(module ${WASI_START}
      (func (export "f") (result i32) (i32.atomic.load (i32.const 0))))`);
    const error = await refusal(bytes);
    assert.equal(error.code, 'unsupported-feature');
    assert.match(error.message, /threads/);
  });

  it('refuses relaxed SIMD', async () => {
    const bytes = await wat(`(module ${WASI_START}
      (func (export "f") (param v128) (result v128) (i32x4.relaxed_trunc_f32x4_s (local.get 0))))`);
    const error = await refusal(bytes);
    assert.equal(error.code, 'unsupported-feature');
    assert.match(error.message, /relaxed SIMD/);
  });

  it('refuses tail calls, which would bypass the depth counter', async () => {
    for (const call of ['(return_call $g)', '(return_call_indirect (type $t) (i32.const 0))']) {
      const bytes = await wat(`(module ${WASI_START}
        (type $t (func))
        (table 1 funcref)
        (func $g)
        (func (export "f") ${call}))`);
      const error = await refusal(bytes);
      assert.equal(error.code, 'unsupported-feature', call);
      assert.match(error.message, /tail calls/);
    }
  });

  it('refuses exception handling', async () => {
    const bytes = await wat(`(module ${WASI_START} (tag $e) (func (export "f") (throw $e)))`);
    const error = await refusal(bytes);
    assert.equal(error.code, 'unsupported-feature');
    assert.match(error.message, /exception handling/);
  });

  it('refuses a module that is already instrumented', async () => {
    const once = await instrumentOk(fixture('counter.wasm'));
    const error = await refusal(once.bytes);
    assert.equal(error.code, 'unsupported-feature');
    assert.match(error.message, /already instrumented/);
  });
});

describe('memory', () => {
  it('refuses imported memory', async () => {
    const bytes = await wat(
      `(module (import "env" "memory" (memory 1)) (export "memory" (memory 0)) (func (export "_start")))`,
    );
    const error = await refusal(bytes, new Set(['env.memory']));
    assert.equal(error.code, 'memory');
    assert.match(error.message, /imported memory \(env\.memory\)/);
  });

  it('refuses an initial memory above the VM limit, naming both sizes', async () => {
    const bytes = await wat(`(module (memory (export "memory") 17) (func (export "_start")))`);
    const error = await refusal(bytes, STUB_WASI_IMPORTS, 16);
    assert.equal(error.code, 'memory');
    assert.match(error.message, /17 pages exceeds the VM limit of 16 pages/);
  });

  it('refuses a module without a memory, or whose memory is not exported as `memory`', async () => {
    assert.equal((await refusal(await wat(`(module (func (export "_start")))`))).code, 'memory');
    const hidden = await wat(`(module (memory (export "mem") 1) (func (export "_start")))`);
    const error = await refusal(hidden);
    assert.equal(error.code, 'memory');
    assert.match(error.message, /exported as `memory`/);
  });
});

describe('imports and entry point', () => {
  it('lists every unknown import as module.name', async () => {
    const bytes = await wat(`(module
      (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "sock_open" (func))
      (import "env" "emscripten_thing" (func))
      (import "env" "g" (global i32))
      ${WASI_START})`);
    const error = await refusal(bytes);
    assert.equal(error.code, 'unknown-import');
    assert.match(error.message, /wasi_snapshot_preview1\.sock_open/);
    assert.match(error.message, /env\.emscripten_thing/);
    assert.match(error.message, /env\.g \(global\)/);
    assert.doesNotMatch(error.message, /fd_write/);
  });

  it('refuses a module without an exported _start function', async () => {
    const reactor = await wat(`(module (memory (export "memory") 1) (func (export "_initialize")))`);
    const error = await refusal(reactor);
    assert.equal(error.code, 'no-start');
    assert.match(error.message, /_start/);
    const wrongType = await wat(`(module (memory (export "memory") 1) (func (export "_start") (param i32)))`);
    assert.equal((await refusal(wrongType)).code, 'no-start');
  });

  it('accepts real wasi-libc and Rust std modules', async () => {
    for (const name of ['counter.wasm', 'recurse.wasm', 'cpu.wasm', 'program.wasm']) {
      const module = await instrumentOk(fixture(name));
      assert.ok(WebAssembly.validate(module.bytes), name);
    }
  });
});
