// The binaryen step of the pipeline: asyncify, then optimisation.
//
// Role: the only code that touches binaryen. binaryen takes about a second to load, so it is
// imported lazily, on the first module that misses the cache, and never on a cache hit.
//
// Invariants: every global binaryen setting the result depends on is set explicitly before each
// run (binaryen keeps them as process-wide state), so the output depends only on the input bytes
// and the stage options. In particular traps must keep happening (traps-never-happen off) and
// float semantics must stay exact (fast-math off); our limit stops are traps. The whole run is
// synchronous once binaryen is loaded, so concurrent calls cannot interleave their settings.

import type Binaryen from 'binaryen';
import type { FeatureUse } from './code.js';

type BinaryenApi = typeof Binaryen;

let binaryenPromise: Promise<BinaryenApi> | undefined;
let binaryenLoads = 0;

/** How many times this process has started loading binaryen; tests use it to prove cache hits skip it. */
export function binaryenLoadCount(): number {
  return binaryenLoads;
}

function loadBinaryen(): Promise<BinaryenApi> {
  if (binaryenPromise === undefined) {
    binaryenLoads++;
    binaryenPromise = import('binaryen').then((m) => m.default);
  }
  return binaryenPromise;
}

export interface BinaryenStageOptions {
  asyncify: boolean;
  optimize: boolean;
}

/**
 * Optimisation level for the post-asyncify run. Asyncify's output is dominated by state checks
 * and local spills that -O2 removes well (binaryen recommends optimising after asyncify); -O3
 * and -O4 mostly add time on large modules. shrink 0 favours speed over size.
 */
export const OPTIMIZE_LEVEL = 2;
export const SHRINK_LEVEL = 0;

/** Error from binaryen itself on a module V8 accepted; the caller reports it as unsupported. */
export class BinaryenError extends Error {
  override name = 'BinaryenError';
}

export async function runBinaryen(
  bytes: Uint8Array,
  features: FeatureUse,
  stage: BinaryenStageOptions,
): Promise<Uint8Array> {
  const binaryen = await loadBinaryen();
  const F = binaryen.Features;
  // Only features the module already uses are enabled, so the optimiser cannot introduce new
  // ones (for example passive segments with memory.init, whose dropped state a snapshot could
  // not capture). Sign extension and saturating conversions are universally supported.
  let enabled = F.MutableGlobals | F.SignExt | F.NontrappingFPToInt | F.Multivalue;
  if (features.simd) enabled |= F.SIMD128;
  if (features.bulkMemory) enabled |= F.BulkMemory | F.BulkMemoryOpt;
  if (features.referenceTypes) enabled |= F.ReferenceTypes | F.CallIndirectOverlong;

  binaryen.setOptimizeLevel(OPTIMIZE_LEVEL);
  binaryen.setShrinkLevel(SHRINK_LEVEL);
  binaryen.setDebugInfo(true);
  binaryen.setTrapsNeverHappen(false);
  binaryen.setFastMath(false);
  binaryen.setLowMemoryUnused(false);
  binaryen.clearPassArguments();
  binaryen.clearPassesToSkip();

  let module: Binaryen.Module;
  try {
    // binaryen.js's readBinary takes the feature set as an optional second argument (its typings
    // name a readBinaryWithFeatures that the runtime does not have).
    const readBinary = binaryen.readBinary as (data: Uint8Array, features?: number) => Binaryen.Module;
    module = readBinary(bytes, enabled);
  } catch (e) {
    throw new BinaryenError(
      `binaryen could not read the module: ${e instanceof Error ? e.message : String(e)}`,
    );
  }
  try {
    module.setFeatures(enabled);
    // Asyncify's defaults are what Lockstep needs: every import may unwind or rewind, and
    // indirect calls are assumed to reach imports. Its export names stay binaryen's defaults.
    if (stage.asyncify) module.runPasses(['asyncify']);
    if (stage.optimize) module.optimize();
    return module.emitBinary();
  } finally {
    module.dispose();
  }
}
