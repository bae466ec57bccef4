// On-disk cache of instrumented modules, keyed by a hash of everything the output depends on.
//
// Role: make the second load of a module cheap (no binaryen). Layout in the cache folder:
//   <key>.wasm   the instrumented module
//   <key>.json   metadata: sha256 of the .wasm, source hash, memory pages, global exports, imports
// where key = sha256(source bytes + JSON of the options + PIPELINE_VERSION). Both files are
// written to a temporary name and renamed, .wasm first: the .json is the commit point, and an
// entry counts only if the .wasm's hash matches the one the .json records.
//
// Invariants: a damaged, partial or foreign entry is a miss, never an error; failing to write
// the cache never fails instrumentation (the cache is only an optimisation).

import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { threadId } from 'node:worker_threads';
import { createHash } from 'node:crypto';
import type { InstrumentOptions, InstrumentedModule } from './pipeline.js';
import { sha256Hex } from './pipeline.js';

/**
 * Bump whenever the pipeline's output for a given input could change. The binaryen version is
 * part of it because binaryen's asyncify and optimiser shape the bytes, and primary and backup
 * must agree on the module's hash.
 */
export const PIPELINE_VERSION = `lockstep-instrument-1+binaryen-${binaryenVersion()}`;

function binaryenVersion(): string {
  try {
    const require = createRequire(import.meta.url);
    const pkg = require('binaryen/package.json') as { version?: unknown };
    return typeof pkg.version === 'string' ? pkg.version : 'unknown';
  } catch {
    return 'unknown';
  }
}

export function cacheKey(source: Uint8Array, opts: InstrumentOptions): string {
  // Only the recognised option fields, in a fixed order, so extra caller fields cannot split entries.
  const options = JSON.stringify({
    memoryMaxPages: opts.memoryMaxPages,
    callDepthMax: opts.callDepthMax,
    fuel: opts.fuel,
  });
  return createHash('sha256').update(source).update(options).update(PIPELINE_VERSION).digest('hex');
}

export interface CacheEntry {
  module: InstrumentedModule;
  imports: string[];
}

interface Sidecar {
  pipelineVersion: string;
  sha256: string;
  sourceSha256: string;
  memoryMaxPages: number;
  memoryInitialPages: number;
  globalExports: string[];
  imports: string[];
}

function isStringArray(value: unknown): value is string[] {
  return Array.isArray(value) && value.every((v) => typeof v === 'string');
}

function parseSidecar(text: string): Sidecar | undefined {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (typeof value !== 'object' || value === null) return undefined;
  const v = value as Record<string, unknown>;
  if (
    v.pipelineVersion !== PIPELINE_VERSION ||
    typeof v.sha256 !== 'string' ||
    typeof v.sourceSha256 !== 'string' ||
    typeof v.memoryMaxPages !== 'number' ||
    typeof v.memoryInitialPages !== 'number' ||
    !isStringArray(v.globalExports) ||
    !isStringArray(v.imports)
  ) {
    return undefined;
  }
  return v as unknown as Sidecar;
}

export async function readCache(cacheDir: string, key: string): Promise<CacheEntry | undefined> {
  let sidecar: Sidecar | undefined;
  let bytes: Uint8Array;
  try {
    sidecar = parseSidecar(await readFile(join(cacheDir, `${key}.json`), 'utf8'));
    if (sidecar === undefined) return undefined;
    bytes = new Uint8Array(await readFile(join(cacheDir, `${key}.wasm`)));
  } catch {
    return undefined;
  }
  if (sha256Hex(bytes) !== sidecar.sha256) return undefined;
  return {
    imports: sidecar.imports,
    module: {
      bytes,
      sha256: sidecar.sha256,
      sourceSha256: sidecar.sourceSha256,
      memoryMaxPages: sidecar.memoryMaxPages,
      memoryInitialPages: sidecar.memoryInitialPages,
      globalExports: sidecar.globalExports,
    },
  };
}

let tempCounter = 0;

async function writeAtomically(path: string, data: Uint8Array | string): Promise<void> {
  // pid + thread + counter is unique among concurrent writers on this host without randomness.
  const temp = `${path}.${process.pid}.${threadId}.${tempCounter++}.tmp`;
  try {
    await writeFile(temp, data);
    await rename(temp, path);
  } catch (e) {
    await rm(temp, { force: true });
    throw e;
  }
}

/** Stores an entry; returns false (and leaves no partial entry visible) if the folder is unwritable. */
export async function writeCache(cacheDir: string, key: string, entry: CacheEntry): Promise<boolean> {
  const sidecar: Sidecar = {
    pipelineVersion: PIPELINE_VERSION,
    sha256: entry.module.sha256,
    sourceSha256: entry.module.sourceSha256,
    memoryMaxPages: entry.module.memoryMaxPages,
    memoryInitialPages: entry.module.memoryInitialPages,
    globalExports: entry.module.globalExports,
    imports: entry.imports,
  };
  try {
    await mkdir(cacheDir, { recursive: true });
    await writeAtomically(join(cacheDir, `${key}.wasm`), entry.module.bytes);
    await writeAtomically(join(cacheDir, `${key}.json`), `${JSON.stringify(sidecar, null, 2)}\n`);
    return true;
  } catch {
    return false;
  }
}
