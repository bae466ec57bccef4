// Module instrumentation: the one-time transformation every guest module goes through on load.
//
// Role: admit or refuse a WASI preview1 command module with a clear error, then produce the
// module Lockstep actually runs:
//   - memory maximum rewritten to the VM limit; a failed memory.grow stops the guest;
//   - call-depth counter (`lockstep_depth`) with a fixed limit, well below V8's stack limit;
//   - optional fuel counter (`lockstep_fuel`, i64) for the CPU budget;
//   - NaN canonicalisation, so float results are bit-identical in every V8 tier;
//   - binaryen asyncify, so the stack can be unwound at any import call and rewound later;
//   - every mutable global exported (`globalExports`), so snapshots can save all of them.
// A limit stop sets `lockstep_limit` (LimitReason) and executes `unreachable`: the host sees a
// RuntimeError and reads the global to tell a limit (exit 137) from a guest trap (exit 134).
//
// Invariants: the same input bytes and options give the same output bytes on every host with
// the same PIPELINE_VERSION; results are cached by that triple; refusals are values. This
// module imports nothing from the WASI host, io or cli.

import { readCache, writeCache, cacheKey } from './cache.js';
import { InstrumentOptions, InstrumentedModule, assertOptions, runPipeline } from './pipeline.js';
import type { InstrumentError } from './validate.js';

export type { InstrumentOptions, InstrumentedModule } from './pipeline.js';
export type { InstrumentError, InstrumentErrorCode } from './validate.js';
export { PIPELINE_VERSION } from './cache.js';
export { LimitReason, LIMIT_GLOBAL, DEPTH_GLOBAL, FUEL_GLOBAL, FUEL_UNLIMITED } from './passes.js';
export { ASYNCIFY_EXPORTS, MEMORY_PAGES_MAX } from './pipeline.js';

/**
 * Default call-depth limit. depth.test.ts runs unbounded C recursion in a worker thread with
 * Node's default 4 MB stack (the VM gives its vCPU worker 16 MiB, more still): V8's RangeError comes at 55k frames for
 * plain code and 41k-45k frames for asyncify-instrumented code (TurboFan, Liftoff), so the
 * limit always fires first, with 4x headroom. The main thread's ~1 MB stack would not do: there
 * asyncify-instrumented recursion overflows at about 9.7k frames under TurboFan.
 */
export const DEFAULT_CALL_DEPTH_MAX = 10_000;

export type InstrumentResult =
  { ok: true; module: InstrumentedModule; cached: boolean } | { ok: false; error: InstrumentError };

/**
 * Instruments `source`. `knownImports` holds every import the host provides, as
 * "module.name" (e.g. "wasi_snapshot_preview1.fd_write"). With `cacheDir`, results are read
 * from and written to that folder; a hit neither loads binaryen nor re-runs any pass.
 */
export async function instrument(
  source: Uint8Array,
  opts: InstrumentOptions,
  knownImports: ReadonlySet<string>,
  cacheDir?: string,
): Promise<InstrumentResult> {
  assertOptions(opts);
  const key = cacheDir === undefined ? undefined : cacheKey(source, opts);
  if (cacheDir !== undefined && key !== undefined) {
    const hit = await readCache(cacheDir, key);
    if (hit !== undefined) {
      // The import check depends on the caller's set, which is not part of the key.
      const unknown = hit.imports.filter((name) => !knownImports.has(name));
      if (unknown.length > 0) {
        return {
          ok: false,
          error: { code: 'unknown-import', message: `unknown imports: ${unknown.join(', ')}` },
        };
      }
      return { ok: true, module: hit.module, cached: true };
    }
  }
  const result = await runPipeline(source, opts, knownImports, {
    asyncify: true,
    depth: true,
    fuel: opts.fuel,
    nan: true,
    optimize: true,
  });
  if (!result.ok) return result;
  if (cacheDir !== undefined && key !== undefined) {
    await writeCache(cacheDir, key, { module: result.module, imports: result.imports });
  }
  return { ok: true, module: result.module, cached: false };
}
