// Instruction decoder for function bodies and constant expressions.
//
// Role: step through a body one instruction at a time, decoding every immediate (including the
// 0xFC and 0xFD prefixed spaces), so the passes can copy untouched spans verbatim and splice
// instrumentation in between. It is also the feature scanner: instructions Lockstep refuses
// throw FeatureError naming the feature (threads, relaxed SIMD, tail calls, ...).
//
// Invariants: the decoder never accepts an opcode it does not know (DecodeError), so a pass can
// never skip over an instruction whose immediates it misread. Opcodes are reported as a single
// number: the byte itself, or (prefix << 16) | sub-opcode for the prefixed spaces.

import { DecodeError, FeatureError, Reader } from './wasm-binary.js';

export const Op = {
  unreachable: 0x00,
  block: 0x02,
  loop: 0x03,
  if: 0x04,
  else: 0x05,
  end: 0x0b,
  br: 0x0c,
  brIf: 0x0d,
  brTable: 0x0e,
  return: 0x0f,
  call: 0x10,
  callIndirect: 0x11,
  select: 0x1b,
  localGet: 0x20,
  localSet: 0x21,
  localTee: 0x22,
  globalGet: 0x23,
  globalSet: 0x24,
  memoryGrow: 0x40,
  i32Const: 0x41,
  i64Const: 0x42,
  f32Const: 0x43,
  f64Const: 0x44,
  i32Eq: 0x46,
  i32GtU: 0x4b,
  i64LtS: 0x53,
  f32Eq: 0x5b,
  f64Eq: 0x61,
  i32Add: 0x6a,
  i32Sub: 0x6b,
  i64Sub: 0x7d,
} as const;

export const PREFIX_FC = 0xfc;
export const PREFIX_SIMD = 0xfd;
export const PREFIX_THREADS = 0xfe;

export function prefixed(prefix: number, sub: number): number {
  return prefix * 0x10000 + sub;
}

export const SimdOp = {
  v128Const: 12,
  f32x4Eq: 0x41,
  f64x2Eq: 0x47,
  bitselect: 0x52,
} as const;

/** Features seen while scanning, used to enable exactly those in binaryen. */
export interface FeatureUse {
  simd: boolean;
  bulkMemory: boolean;
  referenceTypes: boolean;
  multiValue: boolean;
}

export function noFeatures(): FeatureUse {
  return { simd: false, bulkMemory: false, referenceTypes: false, multiValue: false };
}

/** The decoded form of one instruction; the decoder reuses a single object for speed. */
export interface Instr {
  op: number;
  start: number;
  end: number;
  /** The first index immediate (label, local, global, function), or -1. */
  index: number;
  /** Block type as s33: -64 empty, -1..-17 a value type, >= 0 a type index. */
  blockType: number;
  /** br_table targets including the default, last. */
  targets: number[];
}

export function newInstr(): Instr {
  return { op: 0, start: 0, end: 0, index: -1, blockType: 0, targets: [] };
}

const BLOCK_VALTYPES = new Set([-1, -2, -3, -4, -5, -16, -17]);

function readBlockType(r: Reader, features: FeatureUse): number {
  const first = r.peek();
  if (first === 0x63 || first === 0x64) {
    throw new FeatureError('typed function references / GC', 'block type with a heap type');
  }
  const bt = r.s33();
  if (bt >= 0) {
    features.multiValue = true;
    return bt;
  }
  if (bt !== -64 && !BLOCK_VALTYPES.has(bt)) throw new DecodeError(`invalid block type at byte ${r.pos}`);
  if (bt === -5) features.simd = true;
  if (bt === -16 || bt === -17) features.referenceTypes = true;
  return bt;
}

/** memarg: alignment (bit 6 flags an explicit memory index: multi-memory) and offset. */
function readMemarg(r: Reader): void {
  const align = r.u32();
  if (align & 0x40) throw new FeatureError('multi-memory', 'an instruction addresses a memory other than 0');
  if (align >= 0x40) throw new DecodeError(`invalid alignment at byte ${r.pos}`);
  r.u32();
}

function readMemoryIndexZero(r: Reader): void {
  const memoryIndex = r.u32();
  if (memoryIndex !== 0)
    throw new FeatureError('multi-memory', 'an instruction addresses a memory other than 0');
}

const TAIL_CALLS = new Set([0x12, 0x13, 0x15]);
const EXCEPTIONS = new Set([0x06, 0x07, 0x08, 0x09, 0x0a, 0x18, 0x19, 0x1f]);
const GC_ONLY = new Set([0x14, 0xd3, 0xd4, 0xd5, 0xd6, 0xfb]);

/**
 * Decodes one instruction at `r.pos` into `out` and advances past it. Throws FeatureError for
 * refused features and DecodeError for anything malformed or unknown.
 */
export function readInstr(r: Reader, out: Instr, features: FeatureUse): void {
  out.start = r.pos;
  out.index = -1;
  const op = r.u8();
  out.op = op;
  if (op <= 0x44) {
    switch (op) {
      case 0x00: // unreachable
      case 0x01: // nop
      case 0x05: // else
      case 0x0b: // end
      case 0x0f: // return
      case 0x1a: // drop
      case 0x1b: // select
        break;
      case 0x02:
      case 0x03:
      case 0x04:
        out.blockType = readBlockType(r, features);
        break;
      case 0x0c:
      case 0x0d:
      case 0x10:
      case 0x20:
      case 0x21:
      case 0x22:
      case 0x23:
      case 0x24:
        out.index = r.u32();
        break;
      case 0x0e: {
        out.targets.length = 0;
        const count = r.u32();
        if (count > r.end - r.pos) throw new DecodeError(`br_table too long at byte ${r.pos}`);
        for (let i = 0; i <= count; i++) out.targets.push(r.u32());
        break;
      }
      case 0x11: {
        out.index = r.u32();
        const table = r.u32();
        if (table !== 0) features.referenceTypes = true;
        break;
      }
      case 0x1c: {
        const count = r.u32();
        if (count !== 1) throw new DecodeError(`typed select with ${count} types at byte ${r.pos}`);
        const t = r.u8();
        if (t === 0x7b) features.simd = true;
        else if (t === 0x70 || t === 0x6f) features.referenceTypes = true;
        else if (t < 0x7c || t > 0x7f) throw new DecodeError(`invalid select type at byte ${r.pos}`);
        break;
      }
      case 0x25:
      case 0x26:
        features.referenceTypes = true;
        out.index = r.u32();
        break;
      case 0x3f:
      case 0x40:
        readMemoryIndexZero(r);
        break;
      case 0x41:
        r.skipLeb(5);
        break;
      case 0x42:
        r.skipLeb(10);
        break;
      case 0x43:
        r.skip(4); // f32.const: a 4-byte immediate (a byte reader's skip, not a skipped test)
        break;
      case 0x44:
        r.skip(8); // f64.const: an 8-byte immediate
        break;
      default:
        if (op >= 0x28 && op <= 0x3e) {
          readMemarg(r);
          break;
        }
        if (TAIL_CALLS.has(op)) {
          throw new FeatureError(
            'tail calls',
            'return_call instructions would bypass the call-depth counter',
          );
        }
        if (EXCEPTIONS.has(op)) throw new FeatureError('exception handling', `opcode 0x${op.toString(16)}`);
        if (GC_ONLY.has(op))
          throw new FeatureError('typed function references / GC', `opcode 0x${op.toString(16)}`);
        throw new DecodeError(`unknown opcode 0x${op.toString(16)} at byte ${out.start}`);
    }
  } else if (op <= 0xc4) {
    // Numeric instructions without immediates (0xc0..0xc4 are the sign-extension operators).
  } else if (op === 0xd0) {
    features.referenceTypes = true;
    const heapType = r.u8();
    if (heapType !== 0x70 && heapType !== 0x6f) {
      throw new FeatureError('typed function references / GC', 'ref.null of a heap type');
    }
  } else if (op === 0xd1) {
    features.referenceTypes = true;
  } else if (op === 0xd2) {
    features.referenceTypes = true;
    out.index = r.u32();
  } else if (op === PREFIX_FC) {
    const sub = r.u32();
    out.op = prefixed(PREFIX_FC, sub);
    if (sub <= 7) {
      // Saturating float-to-int conversions.
    } else if (sub === 8) {
      features.bulkMemory = true;
      r.u32();
      readMemoryIndexZero(r);
    } else if (sub === 9) {
      features.bulkMemory = true;
      r.u32();
    } else if (sub === 10) {
      features.bulkMemory = true;
      readMemoryIndexZero(r);
      readMemoryIndexZero(r);
    } else if (sub === 11) {
      features.bulkMemory = true;
      readMemoryIndexZero(r);
    } else if (sub === 12 || sub === 14) {
      features.bulkMemory = true;
      features.referenceTypes = true;
      r.u32();
      r.u32();
    } else if (sub === 13 || sub === 15 || sub === 16 || sub === 17) {
      features.bulkMemory = true;
      features.referenceTypes = true;
      r.u32();
    } else {
      throw new DecodeError(`unknown opcode 0xfc ${sub} at byte ${out.start}`);
    }
  } else if (op === PREFIX_SIMD) {
    features.simd = true;
    const sub = r.u32();
    out.op = prefixed(PREFIX_SIMD, sub);
    if (sub <= 11) {
      readMemarg(r);
    } else if (sub === 12 || sub === 13) {
      r.skip(16); // v128.const and i8x16.shuffle: 16 immediate bytes
    } else if (sub >= 21 && sub <= 34) {
      r.skip(1); // extract/replace_lane: a one-byte lane index
    } else if (sub >= 84 && sub <= 91) {
      readMemarg(r);
      r.skip(1); // load/store_lane: a memarg, then a one-byte lane index
    } else if (sub === 92 || sub === 93) {
      readMemarg(r);
    } else if (sub >= 0x100 && sub <= 0x113) {
      throw new FeatureError('relaxed SIMD', `instruction 0xfd ${sub} is nondeterministic across CPUs`);
    } else if (sub > 0xff) {
      throw new DecodeError(`unknown opcode 0xfd ${sub} at byte ${out.start}`);
    }
  } else if (op === PREFIX_THREADS) {
    throw new FeatureError('threads', 'atomic instructions (0xfe prefix) are not supported');
  } else if (op === 0xfb) {
    throw new FeatureError(
      'typed function references / GC',
      'GC instructions (0xfb prefix) are not supported',
    );
  } else {
    throw new DecodeError(`unknown opcode 0x${op.toString(16)} at byte ${out.start}`);
  }
  out.end = r.pos;
}

/** Skips a constant expression (global initialisers), up to and including its `end`. */
export function skipConstExpr(r: Reader): void {
  const instr = newInstr();
  const features = noFeatures();
  for (;;) {
    readInstr(r, instr, features);
    if (instr.op === Op.end) return;
  }
}
