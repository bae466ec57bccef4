// Lockstep's own instrumentation passes, applied directly to the binary.
//
// Role: two rewrites around binaryen's asyncify + optimisation step.
//   - Limits (before asyncify): rewrite the memory maximum, stop on a failed memory.grow, count
//     call depth, charge fuel. They run before asyncify on purpose: asyncify then treats our
//     counters as ordinary guest code, which it skips while rewinding and abandons while
//     unwinding, so an unwind/rewind cycle leaves `lockstep_depth` and `lockstep_fuel` exactly
//     as an uninterrupted run would.
//   - Finish (after optimisation): canonicalise NaNs and export every mutable global. NaN
//     canonicalisation runs last so no optimiser can rewrite it, and global exports are added
//     last so the `lockstep_g<N>` index is the index in the final module.
//
// Invariants: passes only append (types, locals, globals, exports) and never renumber an
// existing index; every function keeps its type; the only control-flow change is one wrapper
// block per function, which `return` now branches to.

import { Op, PREFIX_SIMD, SimdOp, newInstr, noFeatures, prefixed, readInstr } from './code.js';
import {
  FuncType,
  ParsedModule,
  Reader,
  SectionId,
  ValType,
  Writer,
  assembleModule,
  assert,
  writeLimits,
} from './wasm-binary.js';

/** Values of the exported `lockstep_limit` global, read by the host after a trap. */
export const LimitReason = { none: 0, memory: 1, callDepth: 2, fuel: 3 } as const;

export const LIMIT_GLOBAL = 'lockstep_limit';
export const DEPTH_GLOBAL = 'lockstep_depth';
export const FUEL_GLOBAL = 'lockstep_fuel';

/** Initial fuel: the largest i64, so a host that sets no budget runs unmetered. */
export const FUEL_UNLIMITED = 0x7fff_ffff_ffff_ffffn;

export interface LimitPassOptions {
  memoryMaxPages: number;
  callDepthMax: number;
  depth: boolean;
  fuel: boolean;
}

const EMPTY_BLOCK = 0x40;
const IF_EMPTY = [Op.if, EMPTY_BLOCK] as const;

/** The payload of a vector section with its count replaced and `extra` entries appended. */
function appendToVector(m: ParsedModule, id: number, extraCount: number, extra: Uint8Array): Uint8Array {
  const w = new Writer();
  const section = m.sections.find((s) => s.id === id);
  if (section === undefined) {
    w.u32(extraCount).bytes(extra);
    return w.finish();
  }
  const r = new Reader(m.bytes, section.payloadStart, section.end);
  const count = r.u32();
  w.u32(count + extraCount).bytes(m.bytes.subarray(r.pos, section.end));
  w.bytes(extra);
  return w.finish();
}

function encodeLocals(w: Writer, runs: ReadonlyArray<readonly [number, number]>): void {
  w.u32(runs.length);
  for (const [count, type] of runs) w.u32(count).u8(type);
}

function emitStop(w: Writer, limitGlobal: number, reason: number): void {
  w.u8(Op.i32Const).s32(reason).u8(Op.globalSet).u32(limitGlobal).u8(Op.unreachable);
}

function emitFuelCharge(w: Writer, fuelGlobal: number, limitGlobal: number, cost: number): void {
  w.u8(Op.globalGet)
    .u32(fuelGlobal)
    .u8(Op.i64Const)
    .s64(BigInt(cost))
    .u8(Op.i64Sub)
    .u8(Op.globalSet)
    .u32(fuelGlobal);
  w.u8(Op.globalGet).u32(fuelGlobal).u8(Op.i64Const).s64(0n).u8(Op.i64LtS).bytes(IF_EMPTY);
  emitStop(w, limitGlobal, LimitReason.fuel);
  w.u8(Op.end);
}

/** Control frames as the walkers see them; only loops matter for fuel accounting. */
const enum Frame {
  block,
  loop,
  if,
}

/**
 * Static fuel costs: one unit per instruction (structural `end`/`else` excluded). The function
 * entry pays for every instruction outside loops, and each loop header pays for its body
 * excluding nested loops. Any executed instruction is thus paid for at least once per pass
 * through its charging point, so the charge bounds the work, and it is the same on every run.
 */
function fuelCosts(m: ParsedModule, bodyIndex: number): { functionCost: number; loopCosts: number[] } {
  const body = m.bodies[bodyIndex];
  assert(body !== undefined, 'body index in range');
  const r = new Reader(m.bytes, body.codeStart, body.end);
  const instr = newInstr();
  const features = noFeatures();
  const frames: Frame[] = [];
  const counters: number[] = [0];
  const counterOwner: number[] = [-1];
  const loopCosts: number[] = [];
  while (!r.done) {
    readInstr(r, instr, features);
    const op = instr.op;
    if (op === Op.end) {
      const frame = frames.pop();
      if (frame === Frame.loop) {
        const cost = counters.pop();
        const owner = counterOwner.pop();
        assert(cost !== undefined && owner !== undefined && owner >= 0, 'loop counter balanced');
        loopCosts[owner] = cost;
      }
      continue;
    }
    if (op === Op.else) continue;
    counters[counters.length - 1] = (counters[counters.length - 1] as number) + 1;
    if (op === Op.block) frames.push(Frame.block);
    else if (op === Op.if) frames.push(Frame.if);
    else if (op === Op.loop) {
      frames.push(Frame.loop);
      counterOwner.push(loopCosts.length);
      loopCosts.push(0);
      counters.push(0);
    }
  }
  assert(counters.length === 1, 'all loops closed');
  return { functionCost: counters[0] as number, loopCosts };
}

function findOrAddBlockType(types: FuncType[], added: FuncType[], results: readonly number[]): number {
  const all = [...types, ...added];
  const found = all.findIndex(
    (t) =>
      t.params.length === 0 &&
      t.results.length === results.length &&
      t.results.every((v, i) => v === results[i]),
  );
  if (found >= 0) return found;
  added.push({ params: [], results: [...results] });
  return types.length + added.length - 1;
}

/**
 * The limits pass. Assumes a module already accepted by `validate.ts`: exactly one defined
 * memory, no imported globals, no refused features.
 */
export function limitsPass(m: ParsedModule, opts: LimitPassOptions): Uint8Array {
  assert(m.memories.length === 1, 'exactly one defined memory');
  assert(m.importedGlobalCount === 0, 'no imported globals');
  const limitGlobal = m.globals.length;
  const depthGlobal = limitGlobal + 1;
  const fuelGlobal = limitGlobal + 2;
  const addedTypes: FuncType[] = [];
  const code = new Writer();
  code.u32(m.bodies.length);
  const instr = newInstr();
  const features = noFeatures();

  for (let i = 0; i < m.bodies.length; i++) {
    const body = m.bodies[i] as FuncBody;
    const type = m.types[m.funcTypes[i] as number] as FuncType;
    const { functionCost, loopCosts } = opts.fuel ? fuelCosts(m, i) : { functionCost: 0, loopCosts: [] };
    const growScratch = type.params.length + body.localCount;
    const w = new Writer();
    let usesGrow = false;

    // Prologue: the depth check, then the function-level fuel charge.
    if (opts.depth) {
      w.u8(Op.globalGet)
        .u32(depthGlobal)
        .u8(Op.i32Const)
        .s32(1)
        .u8(Op.i32Add)
        .u8(Op.globalSet)
        .u32(depthGlobal);
      w.u8(Op.globalGet)
        .u32(depthGlobal)
        .u8(Op.i32Const)
        .s32(opts.callDepthMax | 0)
        .u8(Op.i32GtU)
        .bytes(IF_EMPTY);
      emitStop(w, limitGlobal, LimitReason.callDepth);
      w.u8(Op.end);
    }
    if (opts.fuel) emitFuelCharge(w, fuelGlobal, limitGlobal, functionCost);
    if (opts.depth) {
      // The wrapper block takes the place of the function's own label, so every branch to the
      // outermost label (and every rewritten `return`) lands on the decrement below.
      w.u8(Op.block);
      if (type.results.length === 0) w.u8(EMPTY_BLOCK);
      else if (type.results.length === 1) w.u8(type.results[0] as number);
      else w.s64(BigInt(findOrAddBlockType(m.types, addedTypes, type.results)));
    }

    const r = new Reader(m.bytes, body.codeStart, body.end);
    let copied = r.pos;
    let nesting = 0;
    let loopOrdinal = 0;
    while (!r.done) {
      readInstr(r, instr, features);
      const op = instr.op;
      if (op === Op.block || op === Op.if) {
        nesting++;
      } else if (op === Op.loop) {
        nesting++;
        if (opts.fuel) {
          w.bytes(m.bytes.subarray(copied, instr.end));
          copied = instr.end;
          emitFuelCharge(w, fuelGlobal, limitGlobal, loopCosts[loopOrdinal] as number);
        }
        loopOrdinal++;
      } else if (op === Op.end) {
        if (nesting === 0) {
          assert(r.done, 'function end is the last instruction');
          w.bytes(m.bytes.subarray(copied, instr.start));
          copied = instr.end;
          if (opts.depth) {
            w.u8(Op.end); // closes the wrapper block
            w.u8(Op.globalGet)
              .u32(depthGlobal)
              .u8(Op.i32Const)
              .s32(1)
              .u8(Op.i32Sub)
              .u8(Op.globalSet)
              .u32(depthGlobal);
          }
          w.u8(Op.end);
        } else {
          nesting--;
        }
      } else if (op === Op.return && opts.depth) {
        w.bytes(m.bytes.subarray(copied, instr.start));
        copied = instr.end;
        w.u8(Op.br).u32(nesting);
      } else if (op === Op.memoryGrow) {
        usesGrow = true;
        w.bytes(m.bytes.subarray(copied, instr.end));
        copied = instr.end;
        // A failed grow (-1) is the guest exhausting its memory limit: stop it with reason 1.
        w.u8(Op.localTee).u32(growScratch).u8(Op.i32Const).s32(-1).u8(Op.i32Eq).bytes(IF_EMPTY);
        emitStop(w, limitGlobal, LimitReason.memory);
        w.u8(Op.end).u8(Op.localGet).u32(growScratch);
      }
    }
    assert(copied === body.end, 'whole body copied');
    const out = new Writer();
    const runs: Array<readonly [number, number]> = [...body.localRuns];
    if (usesGrow) runs.push([1, ValType.i32]);
    encodeLocals(out, runs);
    out.bytes(w.finish());
    const encoded = out.finish();
    code.u32(encoded.length).bytes(encoded);
  }

  const replaced = new Map<number, Uint8Array>();
  replaced.set(SectionId.code, code.finish());

  const memory = m.memories[0];
  assert(memory !== undefined, 'memory present');
  const memoryMaxPages = Math.min(memory.max ?? opts.memoryMaxPages, opts.memoryMaxPages);
  const memoryPayload = new Writer().u32(1);
  writeLimits(memoryPayload, { flags: 1, min: memory.min, max: memoryMaxPages });
  replaced.set(SectionId.memory, memoryPayload.finish());

  const globals = new Writer();
  const exports = new Writer();
  globals.u8(ValType.i32).u8(1).u8(Op.i32Const).s32(0).u8(Op.end);
  globals.u8(ValType.i32).u8(1).u8(Op.i32Const).s32(0).u8(Op.end);
  exports.name(LIMIT_GLOBAL).u8(3).u32(limitGlobal);
  exports.name(DEPTH_GLOBAL).u8(3).u32(depthGlobal);
  let addedGlobals = 2;
  if (opts.fuel) {
    globals.u8(ValType.i64).u8(1).u8(Op.i64Const).s64(FUEL_UNLIMITED).u8(Op.end);
    exports.name(FUEL_GLOBAL).u8(3).u32(fuelGlobal);
    addedGlobals++;
  }
  replaced.set(SectionId.global, appendToVector(m, SectionId.global, addedGlobals, globals.finish()));
  replaced.set(SectionId.export, appendToVector(m, SectionId.export, addedGlobals, exports.finish()));

  if (addedTypes.length > 0) {
    const types = new Writer();
    for (const t of addedTypes) {
      types.u8(0x60).u32(t.params.length).bytes(t.params).u32(t.results.length).bytes(t.results);
    }
    replaced.set(SectionId.type, appendToVector(m, SectionId.type, addedTypes.length, types.finish()));
  }
  // Debug sections describe code offsets that no longer exist, so only names survive.
  return assembleModule(m, replaced, (name) => name === 'name');
}

type FuncBody = ParsedModule['bodies'][number];

const F32_CANONICAL_NAN = [0x00, 0x00, 0xc0, 0x7f];
const F64_CANONICAL_NAN = [0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xf8, 0x7f];

/** Scalar operators whose result may be a NaN with an unspecified bit pattern. */
const NAN_F32 = new Set([0x8d, 0x8e, 0x8f, 0x90, 0x91, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0xb6]);
const NAN_F64 = new Set([0x9b, 0x9c, 0x9d, 0x9e, 0x9f, 0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xbb]);
/** The SIMD equivalents, as prefixed opcodes (ceil, floor, trunc, nearest, sqrt, add, sub, mul, div, min, max, demote/promote). */
const NAN_F32X4 = new Set(
  [0x67, 0x68, 0x69, 0x6a, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0x5e].map((s) =>
    prefixed(PREFIX_SIMD, s),
  ),
);
const NAN_F64X2 = new Set(
  [0x74, 0x75, 0x7a, 0x94, 0xef, 0xf0, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0x5f].map((s) =>
    prefixed(PREFIX_SIMD, s),
  ),
);

/** Which canonicalisation an opcode needs, or undefined; exported for tests. */
export function nanKind(op: number): 'f32' | 'f64' | 'f32x4' | 'f64x2' | undefined {
  if (NAN_F32.has(op)) return 'f32';
  if (NAN_F64.has(op)) return 'f64';
  if (NAN_F32X4.has(op)) return 'f32x4';
  if (NAN_F64X2.has(op)) return 'f64x2';
  return undefined;
}

function simd(w: Writer, sub: number): Writer {
  return w.u8(PREFIX_SIMD).u32(sub);
}

export interface FinishResult {
  bytes: Uint8Array;
  globalExports: string[];
  nanSites: number;
}

/**
 * The finishing pass: NaN canonicalisation (when `nan`) and one export per mutable global. The
 * canonicalisation after an operator producing x is `select(x, NaN, x == x)`, or for vectors
 * `bitselect(x, NaN, x == x)`: non-NaN lanes keep their exact bits and NaN lanes become the
 * canonical NaN, whatever the tier or the CPU produced.
 */
export function finishPass(m: ParsedModule, nan: boolean): FinishResult {
  const replaced = new Map<number, Uint8Array>();
  let nanSites = 0;
  if (nan) {
    const code = new Writer();
    code.u32(m.bodies.length);
    const instr = newInstr();
    const features = noFeatures();
    for (let i = 0; i < m.bodies.length; i++) {
      const body = m.bodies[i] as FuncBody;
      const type = m.types[m.funcTypes[i] as number] as FuncType;
      const base = type.params.length + body.localCount;
      // Scratch locals are appended lazily in a fixed order: f32, f64, v128.
      const scratch = { f32: -1, f64: -1, v128: -1 };
      const scratchTypes: number[] = [];
      const local = (kind: 'f32' | 'f64' | 'v128', valType: number): number => {
        if (scratch[kind] < 0) {
          scratch[kind] = base + scratchTypes.length;
          scratchTypes.push(valType);
        }
        return scratch[kind];
      };
      const w = new Writer();
      const r = new Reader(m.bytes, body.codeStart, body.end);
      let copied = r.pos;
      while (!r.done) {
        readInstr(r, instr, features);
        const kind = nanKind(instr.op);
        if (kind === undefined) continue;
        nanSites++;
        w.bytes(m.bytes.subarray(copied, instr.end));
        copied = instr.end;
        emitCanonicalise(w, kind, local);
      }
      w.bytes(m.bytes.subarray(copied, body.end));
      const out = new Writer();
      encodeLocals(out, [...body.localRuns, ...scratchTypes.map((t) => [1, t] as const)]);
      out.bytes(w.finish());
      const encoded = out.finish();
      code.u32(encoded.length).bytes(encoded);
    }
    replaced.set(SectionId.code, code.finish());
  }

  // Export every mutable global so a snapshot can read and restore all of them.
  assert(m.importedGlobalCount === 0, 'no imported globals');
  const exportNames = new Map<number, string>();
  for (const e of m.exports) if (e.kind === 3 && !exportNames.has(e.index)) exportNames.set(e.index, e.name);
  const taken = new Set(m.exports.map((e) => e.name));
  const globalExports: string[] = [];
  const added = new Writer();
  let addedCount = 0;
  m.globals.forEach((g, index) => {
    if (!g.mutable) return;
    let name = exportNames.get(index);
    if (name === undefined) {
      name = `lockstep_g${index}`;
      assert(!taken.has(name), `export name ${name} is free`);
      added.name(name).u8(3).u32(index);
      addedCount++;
    }
    globalExports.push(name);
  });
  if (addedCount > 0)
    replaced.set(SectionId.export, appendToVector(m, SectionId.export, addedCount, added.finish()));
  return { bytes: assembleModule(m, replaced, (name) => name === 'name'), globalExports, nanSites };
}

function emitCanonicalise(
  w: Writer,
  kind: 'f32' | 'f64' | 'f32x4' | 'f64x2',
  local: (kind: 'f32' | 'f64' | 'v128', valType: number) => number,
): void {
  switch (kind) {
    case 'f32': {
      const t = local('f32', ValType.f32);
      w.u8(Op.localTee).u32(t).u8(Op.f32Const).bytes(F32_CANONICAL_NAN);
      w.u8(Op.localGet).u32(t).u8(Op.localGet).u32(t).u8(Op.f32Eq).u8(Op.select);
      return;
    }
    case 'f64': {
      const t = local('f64', ValType.f64);
      w.u8(Op.localTee).u32(t).u8(Op.f64Const).bytes(F64_CANONICAL_NAN);
      w.u8(Op.localGet).u32(t).u8(Op.localGet).u32(t).u8(Op.f64Eq).u8(Op.select);
      return;
    }
    case 'f32x4':
    case 'f64x2': {
      const t = local('v128', ValType.v128);
      const lane = kind === 'f32x4' ? F32_CANONICAL_NAN : F64_CANONICAL_NAN;
      const constant: number[] = [];
      while (constant.length < 16) constant.push(...lane);
      w.u8(Op.localTee).u32(t);
      simd(w, SimdOp.v128Const).bytes(constant);
      w.u8(Op.localGet).u32(t).u8(Op.localGet).u32(t);
      simd(w, kind === 'f32x4' ? SimdOp.f32x4Eq : SimdOp.f64x2Eq);
      simd(w, SimdOp.bitselect);
      return;
    }
  }
}
