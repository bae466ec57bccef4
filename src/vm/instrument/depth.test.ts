// The default call-depth limit must stop runaway recursion before V8's own stack limit does,
// in both compiler tiers, where guests actually run: a worker thread with Node's default stack.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { DEFAULT_CALL_DEPTH_MAX, LimitReason } from './index.js';
import { LIFTOFF_ONLY, TURBOFAN_ONLY, distModule, fixture, instrumentOk, runChild } from './testkit.js';

interface Outcome {
  name: string;
  kind: string;
  error: string | null;
  limit: number | null;
  depth: number;
}

// The child starts a worker with default resourceLimits (as the VM does) and runs each case there.
const WORKER = `
  import { workerData, parentPort } from 'node:worker_threads';
  import { readFileSync } from 'node:fs';
  const { StubWasi, runStart } = await import(${JSON.stringify(distModule('stub-wasi.js'))});
  const cases = JSON.parse(readFileSync(workerData.dir + '/cases.json', 'utf8'));
  const results = cases.map((c) => {
    const wasi = new StubWasi(c.args);
    const bytes = readFileSync(workerData.dir + '/' + c.file);
    const instance = new WebAssembly.Instance(new WebAssembly.Module(bytes), wasi.imports());
    wasi.bind(instance);
    const outcome = runStart(instance);
    return {
      name: c.name,
      kind: outcome.kind,
      error: outcome.kind === 'trap' ? outcome.error.constructor.name : null,
      limit: outcome.kind === 'trap' ? outcome.limit : null,
      depth: instance.exports.lockstep_depth.value,
    };
  });
  parentPort.postMessage(results);
`;

// V8 flags are process-wide, so the worker runs in the tier the child process was started with;
// execArgv is cleared only to drop --input-type, which workers reject.
const CHILD = `
  import { Worker } from 'node:worker_threads';
  import { pathToFileURL } from 'node:url';
  const dir = process.argv[1];
  const worker = new Worker(pathToFileURL(dir + '/worker.mjs'), { workerData: { dir }, execArgv: [] });
  worker.on('message', (m) => console.log(JSON.stringify(m)));
  worker.on('error', (e) => { console.error(e); process.exit(1); });
`;

describe('call-depth limit versus V8 stack overflow', () => {
  it('stops recursion at the default limit, with V8 headroom to spare, in Liftoff and TurboFan', async (t) => {
    const source = fixture('recurse.wasm');
    const limited = await instrumentOk(source);
    const unlimited = await instrumentOk(source, { callDepthMax: 0x7fffffff });
    const cases = [
      { name: 'plain', file: 'limited.wasm', args: ['guest'] },
      { name: 'asyncified', file: 'limited.wasm', args: ['guest', 'io'] },
      { name: 'plain-unlimited', file: 'unlimited.wasm', args: ['guest'] },
      { name: 'asyncified-unlimited', file: 'unlimited.wasm', args: ['guest', 'io'] },
    ];
    for (const [tier, flags] of [
      ['liftoff', LIFTOFF_ONLY],
      ['turbofan', TURBOFAN_ONLY],
    ] as const) {
      const stdout = runChild(flags, CHILD, {
        'limited.wasm': limited.bytes,
        'unlimited.wasm': unlimited.bytes,
        'cases.json': Buffer.from(JSON.stringify(cases)),
        'worker.mjs': Buffer.from(WORKER),
      });
      const outcomes = JSON.parse(stdout) as Outcome[];
      const byName = new Map(outcomes.map((o) => [o.name, o]));
      for (const name of ['plain', 'asyncified']) {
        const o = byName.get(name);
        assert.ok(o !== undefined);
        assert.equal(o.error, 'RuntimeError', `${tier} ${name}: the depth limit, not V8, stops it`);
        assert.equal(o.limit, LimitReason.callDepth, `${tier} ${name}`);
        assert.equal(o.depth, DEFAULT_CALL_DEPTH_MAX + 1);
      }
      for (const name of ['plain-unlimited', 'asyncified-unlimited']) {
        const o = byName.get(name);
        assert.ok(o !== undefined);
        // Without our limit the same code runs into V8's RangeError; record where.
        assert.equal(o.error, 'RangeError', `${tier} ${name}`);
        t.diagnostic(`${tier} ${name}: V8 stack overflow at depth ${o.depth}`);
        assert.ok(o.depth > 2 * DEFAULT_CALL_DEPTH_MAX, `${tier} ${name}: at least 2x headroom (${o.depth})`);
      }
    }
  });
});
