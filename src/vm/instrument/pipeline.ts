// The instrumentation pipeline without the cache: admit, limits pass, binaryen, finishing pass.
//
// Role: turn an admitted guest module into the module Lockstep runs. The order is fixed and
// explained in passes.ts: our counters go in before asyncify (so asyncify treats them as guest
// code), binaryen runs asyncify then -O2, and NaN canonicalisation plus the global exports come
// last (so no optimiser can undo the former and the latter use final indices).
//
// Invariants: the output always passes WebAssembly.validate and exports `memory`, `_start`, the
// limit globals and (when asyncify is on) binaryen's five asyncify functions; a failure of any
// of these is our bug and is asserted, not returned. `PassSelection` exists for the cost
// benchmark; production always runs every pass (fuel per options).

import { createHash } from 'node:crypto';
import { skipConstExpr } from './code.js';
import { BinaryenError, runBinaryen } from './binaryen-stage.js';
import { DEPTH_GLOBAL, FUEL_GLOBAL, LIMIT_GLOBAL, finishPass, limitsPass } from './passes.js';
import { InstrumentError, admit } from './validate.js';
import { assert, parseModule } from './wasm-binary.js';

export interface InstrumentOptions {
  /** VM memory limit in 64 KiB pages; the module's maximum is rewritten to this (or kept, if lower). */
  memoryMaxPages: number;
  /** Fixed call-depth limit; see DEFAULT_CALL_DEPTH_MAX. */
  callDepthMax: number;
  /** Whether to add CPU-budget (fuel) counting. */
  fuel: boolean;
}

export interface InstrumentedModule {
  bytes: Uint8Array;
  sha256: string;
  sourceSha256: string;
  memoryMaxPages: number;
  memoryInitialPages: number;
  globalExports: string[];
}

export interface PassSelection {
  asyncify: boolean;
  depth: boolean;
  fuel: boolean;
  nan: boolean;
  optimize: boolean;
}

export const ASYNCIFY_EXPORTS = [
  'asyncify_start_unwind',
  'asyncify_stop_unwind',
  'asyncify_start_rewind',
  'asyncify_stop_rewind',
  'asyncify_get_state',
] as const;

/** 64 Ki pages of 64 KiB is the whole 32-bit address space. */
export const MEMORY_PAGES_MAX = 65536;

export function sha256Hex(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/** Options come from the caller, which validates user input; a bad value here is a bug. */
export function assertOptions(opts: InstrumentOptions): void {
  assert(
    Number.isInteger(opts.memoryMaxPages) &&
      opts.memoryMaxPages >= 1 &&
      opts.memoryMaxPages <= MEMORY_PAGES_MAX,
    `memoryMaxPages must be an integer in 1..${MEMORY_PAGES_MAX}, got ${opts.memoryMaxPages}`,
  );
  assert(
    Number.isInteger(opts.callDepthMax) && opts.callDepthMax >= 1 && opts.callDepthMax <= 0x7fffffff,
    `callDepthMax must be a positive 32-bit integer, got ${opts.callDepthMax}`,
  );
  assert(typeof opts.fuel === 'boolean', 'fuel must be a boolean');
}

export type PipelineResult =
  { ok: true; module: InstrumentedModule; imports: string[] } | { ok: false; error: InstrumentError };

export async function runPipeline(
  source: Uint8Array,
  opts: InstrumentOptions,
  knownImports: ReadonlySet<string>,
  passes: PassSelection,
): Promise<PipelineResult> {
  assertOptions(opts);
  const admitted = admit(source, opts.memoryMaxPages, knownImports);
  if (!admitted.ok) return admitted;
  const { module, features, imports } = admitted.admitted;

  const limited = limitsPass(module, {
    memoryMaxPages: opts.memoryMaxPages,
    callDepthMax: opts.callDepthMax,
    depth: passes.depth,
    fuel: passes.fuel,
  });
  assert(WebAssembly.validate(limited), 'limits pass output validates');

  let transformed: Uint8Array;
  if (passes.asyncify || passes.optimize) {
    try {
      transformed = await runBinaryen(limited, features, {
        asyncify: passes.asyncify,
        optimize: passes.optimize,
      });
    } catch (e) {
      if (e instanceof BinaryenError) {
        return {
          ok: false,
          error: { code: 'unsupported-feature', message: `unsupported module: ${e.message}` },
        };
      }
      throw e;
    }
  } else {
    transformed = limited;
  }

  const finished = finishPass(parseModule(transformed, skipConstExpr), passes.nan);
  const bytes = finished.bytes;
  assert(WebAssembly.validate(bytes), 'instrumented module validates');
  const final = parseModule(bytes, skipConstExpr);
  const exportNames = new Set(final.exports.map((e) => e.name));
  const required = ['memory', '_start', LIMIT_GLOBAL, DEPTH_GLOBAL];
  if (passes.fuel) required.push(FUEL_GLOBAL);
  if (passes.asyncify) required.push(...ASYNCIFY_EXPORTS);
  for (const name of required) assert(exportNames.has(name), `instrumented module exports ${name}`);
  const memory = final.memories[0];
  assert(
    final.memories.length === 1 && memory !== undefined && memory.max !== undefined,
    'one bounded memory',
  );

  return {
    ok: true,
    imports,
    module: {
      bytes,
      sha256: sha256Hex(bytes),
      sourceSha256: sha256Hex(source),
      memoryMaxPages: memory.max,
      memoryInitialPages: memory.min,
      globalExports: finished.globalExports,
    },
  };
}
