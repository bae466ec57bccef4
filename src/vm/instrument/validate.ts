// Admission checks for guest modules, before any rewriting.
//
// Role: decide whether a module can run under Lockstep and, if not, say exactly why. Checks run
// in a fixed order so the same module always gets the same error: structure and refused
// features first (our decoder names features even when V8 itself would not know them, as with
// relaxed SIMD), then V8's own validation, then memory, imports and the `_start` entry point.
//
// Invariants: no side effects; a refusal is a value, never an exception. A module accepted here
// satisfies every assumption the passes assert (one defined 32-bit unshared memory exported as
// `memory`, no imported memory, tables or globals, no tail calls, threads or exceptions).

import { FeatureUse, newInstr, noFeatures, readInstr, skipConstExpr } from './code.js';
import { DecodeError, FeatureError, ParsedModule, Reader, ValType, parseModule } from './wasm-binary.js';

export type InstrumentErrorCode =
  'malformed' | 'unsupported-feature' | 'unknown-import' | 'memory' | 'no-start';
export type InstrumentError = { code: InstrumentErrorCode; message: string };

export interface Admitted {
  module: ParsedModule;
  features: FeatureUse;
  /** Every import as "module.name", in import order. */
  imports: string[];
}

const KIND_NAMES = ['function', 'table', 'memory', 'global', 'tag'];
const RESERVED_EXPORT = /^(lockstep_|asyncify_)/;

/** Parses the module and scans every body; DecodeError and FeatureError become results. */
export function decodeAndScan(
  source: Uint8Array,
): { ok: true; admitted: Admitted } | { ok: false; error: InstrumentError } {
  let module: ParsedModule;
  const features = noFeatures();
  let bodyIndex = -1;
  try {
    module = parseModule(source, skipConstExpr);
    const instr = newInstr();
    for (bodyIndex = 0; bodyIndex < module.bodies.length; bodyIndex++) {
      const body = module.bodies[bodyIndex];
      if (body === undefined) break;
      const r = new Reader(source, body.codeStart, body.end);
      while (!r.done) readInstr(r, instr, features);
    }
    for (const t of module.types) {
      if (t.results.length > 1) features.multiValue = true;
      for (const v of [...t.params, ...t.results]) {
        if (v === ValType.v128) features.simd = true;
        if (v === ValType.funcref || v === ValType.externref) features.referenceTypes = true;
      }
    }
    for (const g of module.globals) {
      if (g.valType === ValType.v128) features.simd = true;
      if (g.valType === ValType.funcref || g.valType === ValType.externref) features.referenceTypes = true;
    }
    if (module.tableCount > 1) features.referenceTypes = true;
    if (module.hasDataCount) features.bulkMemory = true;
  } catch (e) {
    const where = bodyIndex >= 0 ? ` (in defined function ${bodyIndex})` : '';
    if (e instanceof FeatureError) {
      return {
        ok: false,
        error: { code: 'unsupported-feature', message: `unsupported feature ${e.message}${where}` },
      };
    }
    if (e instanceof DecodeError) {
      return { ok: false, error: { code: 'malformed', message: `malformed module: ${e.message}${where}` } };
    }
    throw e;
  }
  const imports = module.imports.map((i) => `${i.module}.${i.name}`);
  return { ok: true, admitted: { module, features, imports } };
}

/** V8's own verdict, with its message when it refuses. */
function v8Validate(source: Uint8Array): string | undefined {
  if (WebAssembly.validate(source)) return undefined;
  try {
    new WebAssembly.Module(source);
  } catch (e) {
    return e instanceof Error ? e.message : String(e);
  }
  return 'WebAssembly.validate refused the module';
}

export function admit(
  source: Uint8Array,
  memoryMaxPages: number,
  knownImports: ReadonlySet<string>,
): { ok: true; admitted: Admitted } | { ok: false; error: InstrumentError } {
  const decoded = decodeAndScan(source);
  if (!decoded.ok) return decoded;
  const { module } = decoded.admitted;

  const v8Message = v8Validate(source);
  if (v8Message !== undefined) {
    return { ok: false, error: { code: 'malformed', message: `invalid module: ${v8Message}` } };
  }

  const reserved = module.exports.filter((e) => RESERVED_EXPORT.test(e.name)).map((e) => e.name);
  if (reserved.length > 0) {
    return {
      ok: false,
      error: {
        code: 'unsupported-feature',
        message: `unsupported feature already instrumented: the module exports reserved names ${reserved.join(', ')}`,
      },
    };
  }

  const memoryError = checkMemory(module, memoryMaxPages);
  if (memoryError !== undefined) return { ok: false, error: { code: 'memory', message: memoryError } };

  const snapshotError = checkGlobals(module);
  if (snapshotError !== undefined) {
    return { ok: false, error: { code: 'unsupported-feature', message: snapshotError } };
  }

  const unknown = unknownImports(module, knownImports);
  if (unknown.length > 0) {
    return {
      ok: false,
      error: { code: 'unknown-import', message: `unknown imports: ${unknown.join(', ')}` },
    };
  }

  const start = module.exports.find((e) => e.name === '_start');
  if (start === undefined || start.kind !== 0) {
    return {
      ok: false,
      error: {
        code: 'no-start',
        message: 'the module does not export a `_start` function (not a WASI command)',
      },
    };
  }
  const startType =
    start.index < module.importedFuncCount
      ? undefined
      : module.types[module.funcTypes[start.index - module.importedFuncCount] ?? -1];
  if (startType === undefined || startType.params.length !== 0 || startType.results.length !== 0) {
    return {
      ok: false,
      error: { code: 'no-start', message: '`_start` must be a defined function of type [] -> []' },
    };
  }
  return decoded;
}

function checkMemory(module: ParsedModule, memoryMaxPages: number): string | undefined {
  const imported = module.imports.filter((i) => i.kind === 2);
  if (imported.length > 0) {
    const names = imported.map((i) => `${i.module}.${i.name}`).join(', ');
    return `imported memory (${names}) is not supported: the module must define its own memory`;
  }
  if (module.memories.length === 0) return 'the module defines no memory';
  if (module.memories.length > 1)
    return `the module defines ${module.memories.length} memories; exactly one is supported`;
  const memory = module.memories[0];
  if (memory === undefined) return 'the module defines no memory';
  const exported = module.exports.find((e) => e.kind === 2 && e.index === 0);
  if (exported === undefined || !module.exports.some((e) => e.kind === 2 && e.name === 'memory')) {
    return 'the memory must be exported as `memory`';
  }
  if (memory.min > memoryMaxPages) {
    return `initial memory of ${memory.min} pages exceeds the VM limit of ${memoryMaxPages} pages (64 KiB each)`;
  }
  return undefined;
}

/** Snapshots read and write globals through JS, which cannot carry v128 or references. */
function checkGlobals(module: ParsedModule): string | undefined {
  const bad = module.globals.findIndex(
    (g) =>
      g.mutable &&
      g.valType !== ValType.i32 &&
      g.valType !== ValType.i64 &&
      g.valType !== ValType.f32 &&
      g.valType !== ValType.f64,
  );
  if (bad < 0) return undefined;
  return `unsupported feature mutable non-numeric global (global ${bad}): snapshots cannot save v128 or reference globals`;
}

function unknownImports(module: ParsedModule, knownImports: ReadonlySet<string>): string[] {
  const unknown: string[] = [];
  for (const i of module.imports) {
    if (i.kind === 2) continue; // reported by checkMemory
    const name = `${i.module}.${i.name}`;
    const label = i.kind === 0 ? name : `${name} (${KIND_NAMES[i.kind] ?? 'unknown kind'})`;
    if ((i.kind !== 0 || !knownImports.has(name)) && !unknown.includes(label)) unknown.push(label);
  }
  return unknown;
}
