// Cost of the instrumentation pipeline (run against dist/: `npx tsc -p tsconfig.json` first).
//
//   node bench/instrument/cost.mjs [--rounds N] [--json]
//
// Measures, in one process:
//   (a) instrumentation time per module: the full pipeline (validation, our passes, binaryen
//       asyncify + -O2, NaN pass, exports), binaryen already loaded; plus binaryen's one-time
//       load and the time of a cache hit;
//   (b) runtime of a CPU-heavy C guest (test/fixtures/instrument/cpu.c) relative to the
//       uninstrumented module, for each pass alone and all together. "binaryen -O2 only" is
//       the control: every variant goes through binaryen's optimiser, as production does, so
//       a pass's own cost is its ratio against the control.
// Every figure is a median. Runtime rounds are interleaved (each round runs every variant once,
// in a rotating order) after warm-up rounds, so tier-up and machine noise hit all variants alike.
// Each run instantiates a fresh instance from an already compiled module and times `_start`.

import { readFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const dist = new URL('../../dist/src/vm/instrument/', import.meta.url);
const fixtures = new URL('../../test/fixtures/instrument/', import.meta.url);
const { runPipeline } = await import(new URL('pipeline.js', dist).href);
const { instrument, DEFAULT_CALL_DEPTH_MAX } = await import(new URL('index.js', dist).href);
const { STUB_WASI_IMPORTS, runWithStub } = await import(new URL('stub-wasi.js', dist).href);

const args = process.argv.slice(2);
const roundsIndex = args.indexOf('--rounds');
const ROUNDS = roundsIndex >= 0 ? Number(args[roundsIndex + 1]) : 15;
const WARMUP_ROUNDS = 3;
const INSTRUMENT_RUNS = 5;
const asJson = args.includes('--json');

const OPTIONS = { memoryMaxPages: 1024, callDepthMax: DEFAULT_CALL_DEPTH_MAX, fuel: true };
const NONE = { asyncify: false, depth: false, fuel: false, nan: false, optimize: true };
const VARIANTS = [
  ['binaryen -O2 only', NONE],
  ['asyncify', { ...NONE, asyncify: true }],
  ['depth', { ...NONE, depth: true }],
  ['fuel', { ...NONE, fuel: true }],
  ['nan', { ...NONE, nan: true }],
  ['all (production)', { asyncify: true, depth: true, fuel: true, nan: true, optimize: true }],
];

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
};
const fixture = (name) => new Uint8Array(readFileSync(new URL(name, fixtures)));
const log = (...xs) => {
  if (!asJson) console.log(...xs);
};

// Binaryen's one-time load, measured before anything else imports it.
let t0 = performance.now();
await import('binaryen');
const binaryenLoadMs = performance.now() - t0;

// (a) Instrumentation time.
const instrumentation = [];
for (const name of ['cpu.wasm', 'counter.wasm', 'program.wasm']) {
  const source = fixture(name);
  const times = [];
  let outBytes = 0;
  for (let i = 0; i < INSTRUMENT_RUNS; i++) {
    t0 = performance.now();
    const result = await runPipeline(source, OPTIONS, STUB_WASI_IMPORTS, VARIANTS[5][1]);
    times.push(performance.now() - t0);
    if (!result.ok) throw new Error(`${name}: ${result.error.message}`);
    outBytes = result.module.bytes.length;
  }
  const cacheDir = mkdtempSync(join(tmpdir(), 'lockstep-bench-'));
  const hits = [];
  try {
    await instrument(source, OPTIONS, STUB_WASI_IMPORTS, cacheDir);
    for (let i = 0; i < INSTRUMENT_RUNS; i++) {
      t0 = performance.now();
      const hit = await instrument(source, OPTIONS, STUB_WASI_IMPORTS, cacheDir);
      hits.push(performance.now() - t0);
      if (!hit.ok || !hit.cached) throw new Error('expected a cache hit');
    }
  } finally {
    rmSync(cacheDir, { recursive: true, force: true });
  }
  instrumentation.push({
    module: name,
    inputBytes: source.length,
    outputBytes: outBytes,
    instrumentMsMedian: Math.round(median(times)),
    cacheHitMsMedian: Number(median(hits).toFixed(2)),
  });
}

// (b) Runtime ratios on the CPU-heavy guest.
const source = fixture('cpu.wasm');
const variants = [{ name: 'uninstrumented', bytes: source }];
for (const [name, passes] of VARIANTS) {
  const result = await runPipeline(source, OPTIONS, STUB_WASI_IMPORTS, passes);
  if (!result.ok) throw new Error(`${name}: ${result.error.message}`);
  variants.push({ name, bytes: result.module.bytes });
}
const expected = runWithStub(source).output;
for (const v of variants) {
  v.module = new WebAssembly.Module(v.bytes);
  v.times = [];
}

function runOnce(v) {
  // runWithStub compiles; here the module is compiled once and only instantiation is repeated.
  let output = '';
  let memory;
  const view = () => new DataView(memory.buffer);
  const wasi = {
    fd_write(fd, iovs, iovsLen, nwritten) {
      let n = 0;
      for (let i = 0; i < iovsLen; i++) {
        const ptr = view().getUint32(iovs + 8 * i, true);
        const len = view().getUint32(iovs + 8 * i + 4, true);
        output += Buffer.from(memory.buffer, ptr, len).toString('utf8');
        n += len;
      }
      view().setUint32(nwritten, n, true);
      return 0;
    },
    proc_exit(code) {
      throw Object.assign(new Error('exit'), { exitCode: code });
    },
  };
  const instance = new WebAssembly.Instance(v.module, { wasi_snapshot_preview1: wasi });
  memory = instance.exports.memory;
  const start = performance.now();
  try {
    instance.exports._start();
  } catch (e) {
    if (e.exitCode !== 0) throw e;
  }
  const elapsed = performance.now() - start;
  if (output !== expected) throw new Error(`${v.name}: output differs: ${output}`);
  return elapsed;
}

for (let round = 0; round < WARMUP_ROUNDS + ROUNDS; round++) {
  for (let k = 0; k < variants.length; k++) {
    const v = variants[(round + k) % variants.length];
    const ms = runOnce(v);
    if (round >= WARMUP_ROUNDS) v.times.push(ms);
  }
}
const baseline = median(variants[0].times);
const control = median(variants[1].times);
const runtime = variants.map((v) => ({
  variant: v.name,
  medianMs: Number(median(v.times).toFixed(1)),
  ratioVsUninstrumented: Number((median(v.times) / baseline).toFixed(3)),
  ratioVsOptimizeOnly: Number((median(v.times) / control).toFixed(3)),
  bytes: v.bytes.length,
}));

const report = {
  node: process.version,
  v8: process.versions.v8,
  execArgv: process.execArgv,
  rounds: ROUNDS,
  warmupRounds: WARMUP_ROUNDS,
  binaryenLoadMs: Math.round(binaryenLoadMs),
  instrumentation,
  runtime,
};
if (asJson) {
  console.log(JSON.stringify(report, null, 2));
} else {
  log(`node ${process.version} (V8 ${process.versions.v8}) ${process.execArgv.join(' ')}`);
  log(`binaryen load: ${report.binaryenLoadMs} ms (once per process, skipped on cache hits)`);
  log('\ninstrumentation time (median of %d):', INSTRUMENT_RUNS);
  console.table(instrumentation);
  log(`runtime of cpu.wasm (median of ${ROUNDS} interleaved rounds after ${WARMUP_ROUNDS} warm-up):`);
  console.table(runtime);
}
