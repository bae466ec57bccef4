// NaN canonicalisation tests: every NaN-producing operator is covered, and results are
// bit-identical and canonical in Liftoff-only and TurboFan-only child processes.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { finishPass } from './passes.js';
import { parseModule } from './wasm-binary.js';
import { skipConstExpr } from './code.js';
import { LIFTOFF_ONLY, TURBOFAN_ONLY, instrumentOk, runChild, wat } from './testkit.js';

const F32_CANONICAL = 0x7fc00000;
const F64_CANONICAL = 0x7ff8000000000000n;

// Inputs laid out in memory, so V8 cannot see them at compile time.
const INPUTS = `
  (data (i32.const 0) "\\01\\00\\a0\\7f")          ;; 0: f32 signalling NaN 0x7fa00001
  (data (i32.const 4) "\\45\\23\\c1\\ff")          ;; 4: f32 negative quiet NaN with payload
  (data (i32.const 8) "\\00\\00\\80\\bf")          ;; 8: f32 -1
  (data (i32.const 12) "\\00\\00\\80\\7f")         ;; 12: f32 +inf
  (data (i32.const 16) "\\00\\00\\00\\00")         ;; 16: f32 0
  (data (i32.const 32) "\\01\\00\\00\\00\\00\\00\\f4\\7f")  ;; 32: f64 signalling NaN
  (data (i32.const 40) "\\34\\12\\00\\00\\00\\00\\f8\\ff")  ;; 40: f64 negative NaN with payload
  (data (i32.const 48) "\\00\\00\\00\\00\\00\\00\\f0\\bf")  ;; 48: f64 -1
  (data (i32.const 56) "\\00\\00\\00\\00\\00\\00\\f0\\7f")  ;; 56: f64 +inf
  (data (i32.const 64) "\\00\\00\\00\\00\\00\\00\\00\\00")  ;; 64: f64 0
`;
const f32 = (offset: number) => `(f32.load (i32.const ${offset}))`;
const f64 = (offset: number) => `(f64.load (i32.const ${offset}))`;
const v128 = (offset: number) => `(v128.load (i32.const ${offset}))`;
const SNAN32 = f32(0),
  PNAN32 = f32(4),
  NEG32 = f32(8),
  INF32 = f32(12),
  ZERO32 = f32(16);
const SNAN64 = f64(32),
  PNAN64 = f64(40),
  NEG64 = f64(48),
  INF64 = f64(56),
  ZERO64 = f64(64);

type Kind = 'f32' | 'f64' | 'f32x4' | 'f64x2';
const CASES: Array<[Kind, string]> = [
  // Constant operands, which an optimising tier (or binaryen) could fold.
  ['f32', '(f32.div (f32.const 0) (f32.const 0))'],
  ['f32', '(f32.sqrt (f32.const -1))'],
  ['f32', '(f32.add (f32.const nan:0x200001) (f32.const 1))'],
  ['f32', '(f32.mul (f32.const -nan:0x412345) (f32.const 2))'],
  ['f64', '(f64.div (f64.const 0) (f64.const 0))'],
  ['f64', '(f64.sub (f64.const inf) (f64.const inf))'],
  ['f64', '(f64.promote_f32 (f32.const nan:0x200001))'],
  ['f32', '(f32.demote_f64 (f64.const -nan:0x8000000001234))'],
  // Runtime operands.
  ['f32', `(f32.div ${ZERO32} ${ZERO32})`],
  ['f32', `(f32.sub ${INF32} ${INF32})`],
  ['f32', `(f32.mul ${ZERO32} ${INF32})`],
  ['f32', `(f32.sqrt ${NEG32})`],
  ['f32', `(f32.add ${SNAN32} (f32.const 1))`],
  ['f32', `(f32.add (f32.const 1) ${PNAN32})`],
  ['f32', `(f32.add ${PNAN32} ${SNAN32})`],
  ['f32', `(f32.min ${PNAN32} (f32.const 1))`],
  ['f32', `(f32.max (f32.const 1) ${SNAN32})`],
  ['f32', `(f32.ceil ${SNAN32})`],
  ['f32', `(f32.floor ${PNAN32})`],
  ['f32', `(f32.trunc ${SNAN32})`],
  ['f32', `(f32.nearest ${PNAN32})`],
  ['f32', `(f32.demote_f64 ${PNAN64})`],
  ['f32', `(f32.demote_f64 ${SNAN64})`],
  ['f64', `(f64.div ${ZERO64} ${ZERO64})`],
  ['f64', `(f64.mul ${INF64} ${ZERO64})`],
  ['f64', `(f64.sqrt ${NEG64})`],
  ['f64', `(f64.add ${SNAN64} (f64.const 1))`],
  ['f64', `(f64.sub (f64.const 1) ${PNAN64})`],
  ['f64', `(f64.min ${SNAN64} ${PNAN64})`],
  ['f64', `(f64.max ${PNAN64} (f64.const 2))`],
  ['f64', `(f64.ceil ${PNAN64})`],
  ['f64', `(f64.floor ${SNAN64})`],
  ['f64', `(f64.trunc ${PNAN64})`],
  ['f64', `(f64.nearest ${SNAN64})`],
  ['f64', `(f64.promote_f32 ${SNAN32})`],
  ['f64', `(f64.promote_f32 ${PNAN32})`],
  // Non-NaN results must keep their exact bits, signed zeros included.
  ['f32', '(f32.min (f32.const -0) (f32.const 0))'],
  ['f32', `(f32.add ${NEG32} (f32.const 0.25))`],
  ['f64', `(f64.max ${NEG64} (f64.const -0))`],
  ['f64', `(f64.div (f64.const 1) ${NEG64})`],
  // SIMD: lanes 0..3 at 0 are snan, -nan, -1, +inf; f64 lanes at 32 are snan, -nan; at 48 are -1, +inf.
  ['f32x4', `(f32x4.add ${v128(0)} (f32x4.splat (f32.const 1)))`],
  ['f32x4', `(f32x4.sub ${v128(0)} ${v128(0)})`],
  ['f32x4', `(f32x4.mul ${v128(0)} (f32x4.splat (f32.const 0)))`],
  ['f32x4', `(f32x4.div (f32x4.splat (f32.const 0)) (f32x4.splat (f32.const 0)))`],
  ['f32x4', `(f32x4.sqrt ${v128(0)})`],
  ['f32x4', `(f32x4.min ${v128(0)} ${v128(4)})`],
  ['f32x4', `(f32x4.max ${v128(4)} ${v128(0)})`],
  ['f32x4', `(f32x4.ceil ${v128(0)})`],
  ['f32x4', `(f32x4.floor ${v128(0)})`],
  ['f32x4', `(f32x4.trunc ${v128(0)})`],
  ['f32x4', `(f32x4.nearest ${v128(0)})`],
  ['f32x4', `(f32x4.demote_f64x2_zero ${v128(32)})`],
  ['f64x2', `(f64x2.promote_low_f32x4 ${v128(0)})`],
  ['f64x2', `(f64x2.add ${v128(32)} (f64x2.splat (f64.const 1)))`],
  ['f64x2', `(f64x2.sub ${v128(56)} ${v128(56)})`],
  ['f64x2', `(f64x2.mul ${v128(56)} (f64x2.splat (f64.const 0)))`],
  ['f64x2', `(f64x2.div ${v128(32)} ${v128(48)})`],
  ['f64x2', `(f64x2.sqrt ${v128(48)})`],
  ['f64x2', `(f64x2.min ${v128(32)} ${v128(48)})`],
  ['f64x2', `(f64x2.max ${v128(48)} ${v128(32)})`],
  ['f64x2', `(f64x2.ceil ${v128(32)})`],
  ['f64x2', `(f64x2.floor ${v128(32)})`],
  ['f64x2', `(f64x2.trunc ${v128(32)})`],
  ['f64x2', `(f64x2.nearest ${v128(32)})`],
];

const RESULTS_AT = 1024;
const SLOT_BYTES = 16;

function nanModuleText(): string {
  const stores = CASES.map(([kind, expr], i) => {
    const store = kind === 'f32' ? 'f32.store' : kind === 'f64' ? 'f64.store' : 'v128.store';
    return `(${store} (i32.const ${RESULTS_AT + i * SLOT_BYTES}) ${expr})`;
  });
  return `(module (memory (export "memory") 1) ${INPUTS}
    (func (export "_start"))
    (func (export "run") ${stores.join('\n')}))`;
}

/** Each float lane of a result slot: its bits, and whether it is a NaN. */
function lanes(kind: Kind, slot: Buffer): Array<{ bits: bigint; nan: boolean; canonical: boolean }> {
  const out = [];
  const wide = kind === 'f64' || kind === 'f64x2';
  const count = kind === 'f32' || kind === 'f64' ? 1 : wide ? 2 : 4;
  for (let i = 0; i < count; i++) {
    if (wide) {
      const bits = slot.readBigUInt64LE(i * 8);
      const nan = Number.isNaN(slot.readDoubleLE(i * 8));
      out.push({ bits, nan, canonical: bits === F64_CANONICAL });
    } else {
      const bits = slot.readUInt32LE(i * 4);
      const nan = Number.isNaN(slot.readFloatLE(i * 4));
      out.push({ bits: BigInt(bits), nan, canonical: bits === F32_CANONICAL });
    }
  }
  return out;
}

const CHILD = `
  import { readFileSync } from 'node:fs';
  const dir = process.argv[1];
  const out = {};
  for (const name of ['plain.wasm', 'instrumented.wasm']) {
    const instance = new WebAssembly.Instance(new WebAssembly.Module(readFileSync(dir + '/' + name)), {});
    // Call several times so that a tier-up, if any were allowed, would have happened.
    for (let i = 0; i < 50; i++) instance.exports.run();
    out[name] = Buffer.from(instance.exports.memory.buffer, ${RESULTS_AT}, ${CASES.length * SLOT_BYTES}).toString('hex');
  }
  console.log(JSON.stringify(out));
`;

describe('NaN canonicalisation', () => {
  it('gives bit-identical canonical NaNs in Liftoff-only and TurboFan-only processes', async () => {
    const plain = await wat(nanModuleText());
    const instrumented = (await instrumentOk(plain)).bytes;
    const runs = [LIFTOFF_ONLY, TURBOFAN_ONLY].map(
      (flags) =>
        JSON.parse(
          runChild(flags, CHILD, { 'plain.wasm': plain, 'instrumented.wasm': instrumented }),
        ) as Record<string, string>,
    );
    const [liftoff, turbofan] = runs;
    assert.ok(liftoff !== undefined && turbofan !== undefined);
    assert.equal(liftoff['instrumented.wasm'], turbofan['instrumented.wasm'], 'both tiers agree bit for bit');

    let nanLanes = 0;
    let plainNonCanonical = 0;
    for (const run of runs) {
      const result = Buffer.from(run['instrumented.wasm'] ?? '', 'hex');
      const reference = Buffer.from(run['plain.wasm'] ?? '', 'hex');
      CASES.forEach(([kind, expr], i) => {
        const got = lanes(kind, result.subarray(i * SLOT_BYTES, (i + 1) * SLOT_BYTES));
        const want = lanes(kind, reference.subarray(i * SLOT_BYTES, (i + 1) * SLOT_BYTES));
        got.forEach((lane, l) => {
          const plainLane = want[l];
          assert.ok(plainLane !== undefined);
          assert.equal(lane.nan, plainLane.nan, `${expr} lane ${l}: NaN-ness unchanged`);
          if (lane.nan) {
            nanLanes++;
            assert.ok(
              lane.canonical,
              `${expr} lane ${l}: got 0x${lane.bits.toString(16)}, want the canonical NaN`,
            );
            if (!plainLane.canonical) plainNonCanonical++;
          } else {
            assert.equal(lane.bits, plainLane.bits, `${expr} lane ${l}: non-NaN bits unchanged`);
          }
        });
      });
    }
    assert.ok(nanLanes > 100, 'the cases produce many NaNs');
    // The test has teeth: without the pass this CPU yields NaNs that are not canonical.
    assert.ok(plainNonCanonical > 0, 'uninstrumented results include non-canonical NaNs');
  });

  it('canonicalises exactly the NaN-producing operators', async () => {
    const produce = [
      'f32.add',
      'f32.sub',
      'f32.mul',
      'f32.div',
      'f32.min',
      'f32.max',
      'f64.add',
      'f64.sub',
      'f64.mul',
      'f64.div',
      'f64.min',
      'f64.max',
      'f32x4.add',
      'f32x4.sub',
      'f32x4.mul',
      'f32x4.div',
      'f32x4.min',
      'f32x4.max',
      'f64x2.add',
      'f64x2.sub',
      'f64x2.mul',
      'f64x2.div',
      'f64x2.min',
      'f64x2.max',
    ];
    const unary = [
      'f32.sqrt',
      'f32.ceil',
      'f32.floor',
      'f32.trunc',
      'f32.nearest',
      'f64.sqrt',
      'f64.ceil',
      'f64.floor',
      'f64.trunc',
      'f64.nearest',
      'f32x4.sqrt',
      'f32x4.ceil',
      'f32x4.floor',
      'f32x4.trunc',
      'f32x4.nearest',
      'f64x2.sqrt',
      'f64x2.ceil',
      'f64x2.floor',
      'f64x2.trunc',
      'f64x2.nearest',
    ];
    const exact = [
      'f32.abs',
      'f32.neg',
      'f64.abs',
      'f64.neg',
      'f32x4.abs',
      'f32x4.neg',
      'f64x2.abs',
      'f64x2.neg',
    ];
    const exactBinary = [
      'f32.copysign',
      'f64.copysign',
      'f32x4.pmin',
      'f32x4.pmax',
      'f64x2.pmin',
      'f64x2.pmax',
    ];
    const typeOf = (op: string) =>
      op.startsWith('f32x4') || op.startsWith('f64x2') ? 'v128' : op.slice(0, 3);
    const funcs = [
      ...[...produce, ...exactBinary].map(
        (op) =>
          `(func (param ${typeOf(op)} ${typeOf(op)}) (result ${typeOf(op)}) (${op} (local.get 0) (local.get 1)))`,
      ),
      ...[...unary, ...exact].map(
        (op) => `(func (param ${typeOf(op)}) (result ${typeOf(op)}) (${op} (local.get 0)))`,
      ),
      '(func (param f64) (result f32) (f32.demote_f64 (local.get 0)))',
      '(func (param f32) (result f64) (f64.promote_f32 (local.get 0)))',
      '(func (param v128) (result v128) (f32x4.demote_f64x2_zero (local.get 0)))',
      '(func (param v128) (result v128) (f64x2.promote_low_f32x4 (local.get 0)))',
      '(func (param i32) (result f32) (f32.convert_i32_s (local.get 0)))',
      '(func (param i32) (result f32) (f32.reinterpret_i32 (local.get 0)))',
      '(func (param v128) (result v128) (f32x4.convert_i32x4_u (local.get 0)))',
    ];
    const bytes = await wat(`(module ${funcs.join('\n')})`);
    const { nanSites } = finishPass(parseModule(bytes, skipConstExpr), true);
    assert.equal(nanSites, produce.length + unary.length + 4);
  });
});
