// Shared helpers for the instrumentation tests (not used by production code).
//
// Role: locate the prebuilt fixtures, assemble WebAssembly text with binaryen, instrument with
// test defaults, and run small scripts in child node processes with V8 tier flags.

import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';
import { DEFAULT_CALL_DEPTH_MAX, InstrumentOptions, InstrumentedModule, instrument } from './index.js';
import { STUB_WASI_IMPORTS } from './stub-wasi.js';

/** From dist/src/vm/instrument/ back to the repository root. */
export const REPO_ROOT = fileURLToPath(new URL('../../../../', import.meta.url));
export const FIXTURES = join(REPO_ROOT, 'test', 'fixtures', 'instrument');

export function fixture(name: string): Uint8Array {
  return new Uint8Array(readFileSync(join(FIXTURES, name)));
}

export const TEST_OPTIONS: InstrumentOptions = {
  memoryMaxPages: 256,
  callDepthMax: DEFAULT_CALL_DEPTH_MAX,
  fuel: true,
};

/**
 * Assembles WebAssembly text into bytes, with the features the tests exercise enabled. Not
 * `Features.All`: with it binaryen emits encodings from newer proposals (compact imports)
 * that Node 20 cannot read.
 */
export async function wat(text: string): Promise<Uint8Array> {
  const { default: binaryen } = await import('binaryen');
  const F = binaryen.Features;
  const module = binaryen.parseText(text);
  try {
    module.setFeatures(
      F.MutableGlobals |
        F.SignExt |
        F.NontrappingFPToInt |
        F.SIMD128 |
        F.BulkMemory |
        F.BulkMemoryOpt |
        F.Multivalue |
        F.ReferenceTypes |
        F.TailCall |
        F.Atomics |
        F.ExceptionHandling |
        F.RelaxedSIMD,
    );
    return module.emitBinary();
  } finally {
    module.dispose();
  }
}

const instrumented = new Map<string, Promise<InstrumentedModule>>();

/**
 * Instruments and asserts success. Results are memoised per process (the pipeline is
 * deterministic, see cache.test.ts), which keeps the suite from re-running binaryen on the
 * same fixture in every test.
 */
export function instrumentOk(
  source: Uint8Array,
  opts: Partial<InstrumentOptions> = {},
  knownImports: ReadonlySet<string> = STUB_WASI_IMPORTS,
): Promise<InstrumentedModule> {
  const options = { ...TEST_OPTIONS, ...opts };
  const key = `${createHash('sha256').update(source).digest('hex')}:${JSON.stringify(options)}:${[...knownImports].sort().join(',')}`;
  let pending = instrumented.get(key);
  if (pending === undefined) {
    pending = instrument(source, options, knownImports).then((result) => {
      if (!result.ok) assert.fail(`instrument failed: ${result.error.code}: ${result.error.message}`);
      return result.module;
    });
    instrumented.set(key, pending);
  }
  return pending;
}

/** URL of a compiled module in this folder, for child scripts to import. */
export function distModule(name: string): string {
  return new URL(`./${name}`, import.meta.url).href;
}

export const LIFTOFF_ONLY = ['--liftoff', '--no-wasm-tier-up'] as const;
export const TURBOFAN_ONLY = ['--no-liftoff'] as const;

/**
 * Runs an ES module script in a child node with the given V8 flags; `files` are written to a
 * temporary folder whose path the script receives as process.argv[1]. Returns stdout.
 */
export function runChild(
  flags: readonly string[],
  script: string,
  files: Record<string, Uint8Array> = {},
): string {
  const dir = mkdtempSync(join(tmpdir(), 'lockstep-instrument-'));
  try {
    for (const [name, bytes] of Object.entries(files)) writeFileSync(join(dir, name), bytes);
    const child = spawnSync(process.execPath, [...flags, '--input-type=module', '-e', script, dir], {
      encoding: 'utf8',
      timeout: 120_000,
    });
    assert.equal(child.status, 0, `child failed (${flags.join(' ')}): ${child.stderr}`);
    return child.stdout;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
