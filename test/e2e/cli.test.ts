/**
 * The command-line contract of `lockstep run` (DESIGN.md §5): help, usage
 * errors (exit 2), and modules Lockstep refuses with a clear message (exit
 * 125): malformed bytes, unknown imports, threads, relaxed SIMD.
 *
 * Budget: about 15 s.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import binaryen from 'binaryen';
import { ROOT, runLockstep, tempDir } from './harness.js';

const execFileP = promisify(execFile);
let tmp: { dir: string; cleanup: () => void };

function wat(name: string, text: string, features = binaryen.Features.All): string {
  const mod = binaryen.parseText(text);
  mod.setFeatures(features);
  const file = path.join(tmp.dir, name);
  writeFileSync(file, mod.emitBinary());
  mod.dispose();
  return file;
}

before(() => {
  tmp = tempDir('cli');
});
after(() => tmp.cleanup());

test('npx lockstep works after npm ci (the installed command)', { timeout: 30_000 }, async () => {
  const { stdout } = await execFileP('npx', ['--no-install', 'lockstep', '--help'], {
    cwd: ROOT,
    timeout: 25_000,
  });
  assert.match(stdout, /Usage: lockstep/);
  assert.match(stdout, /run/);
});

test('run --help documents the options', async () => {
  const r = await runLockstep(['run', '--help']);
  assert.equal(r.code, 0);
  for (const opt of ['--listen', '--disk', '--dir', '--env', '--memory-max-mib', '--cpu-budget']) {
    assert.ok(r.stdout.includes(opt), `help lacks ${opt}`);
  }
});

test('usage errors exit 2 and name the problem', async () => {
  const cases: [string[], RegExp][] = [
    [['run'], /missing required argument/],
    [['run', 'x.wasm', '--listen', 'nope'], /ADDR:PORT/],
    [['run', 'x.wasm', '--listen', '127.0.0.1:70000'], /port out of range/],
    [['run', 'x.wasm', '--env', 'NOEQUALS'], /KEY=VALUE/],
    [['run', 'x.wasm', '--dir', '::/x'], /HOSTDIR::GUESTPATH/],
    [['run', 'x.wasm', '--memory-max-mib', '-3'], /positive integer/],
    [['frobnicate'], /unknown command/],
    [[], /Usage: lockstep/],
  ];
  for (const [args, msg] of cases) {
    const r = await runLockstep(args);
    assert.equal(r.code, 2, `${args.join(' ')} → ${r.code}: ${r.stderr}`);
    assert.match(r.stderr, msg);
  }
});

test('a missing file or folder is refused with 125', async () => {
  let r = await runLockstep(['run', path.join(tmp.dir, 'missing.wasm')]);
  assert.equal(r.code, 125);
  assert.match(r.stderr, /cannot read/);
  const ok = wat('ok.wasm', '(module (memory (export "memory") 1) (func (export "_start")))');
  r = await runLockstep(['run', ok, '--memory-max-mib', '4096']);
  assert.equal(r.code, 125, 'a memory limit above 2047 MiB is a bad option value');
  assert.match(r.stderr, /2047 MiB/);
  r = await runLockstep(['run', ok, '--disk', path.join(tmp.dir, 'no-such-disk')]);
  assert.equal(r.code, 125);
  assert.match(r.stderr, /does not exist/);
});

test('bad modules are refused with 125 and a message naming the problem', async () => {
  const garbage = path.join(tmp.dir, 'garbage.wasm');
  writeFileSync(garbage, Buffer.from('this is not webassembly'));
  const truncated = path.join(tmp.dir, 'truncated.wasm');
  writeFileSync(truncated, Buffer.from([0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, 0x01, 0x05]));
  const unknownImport = wat(
    'unknown-import.wasm',
    `(module
       (import "env" "frobnicate" (func $f))
       (import "wasi_snapshot_preview1" "sock_open" (func $g))
       (memory (export "memory") 1)
       (func (export "_start") (call $f) (call $g)))`,
  );
  const threads = wat(
    'threads.wasm',
    `(module (memory (export "memory") 1 1 shared)
       (func (export "_start") (drop (i32.atomic.rmw.add (i32.const 0) (i32.const 1)))))`,
  );
  const noStart = wat('no-start.wasm', '(module (memory (export "memory") 1))');
  const cases: [string, RegExp][] = [
    [garbage, /malformed|not a WebAssembly|magic/i],
    [truncated, /malformed|truncated|unexpected end/i],
    [unknownImport, /env\.frobnicate.*sock_open|sock_open.*env\.frobnicate/s],
    [threads, /thread/i],
    [noStart, /_start/],
  ];
  for (const [file, msg] of cases) {
    const r = await runLockstep(['run', file]);
    assert.equal(r.code, 125, `${path.basename(file)} → ${r.code}: ${r.stderr}`);
    assert.match(r.stderr, msg, path.basename(file));
    assert.equal(r.stdout, '', 'nothing on stdout');
  }
});

test('relaxed SIMD is refused', async () => {
  const relaxed = wat(
    'relaxed.wasm',
    `(module (memory (export "memory") 1)
       (func (export "_start")
         (drop (i32x4.relaxed_trunc_f32x4_s (v128.const i32x4 0 0 0 0)))))`,
  );
  const r = await runLockstep(['run', relaxed]);
  assert.equal(r.code, 125, r.stderr);
  assert.match(r.stderr, /relaxed SIMD/i);
});
