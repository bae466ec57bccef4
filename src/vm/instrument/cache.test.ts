// Cache tests: keyed by source + options + pipeline version, atomic files, hits skip binaryen,
// damaged entries are misses, and the import check still applies on a hit.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PIPELINE_VERSION, instrument } from './index.js';
import { STUB_WASI_IMPORTS } from './stub-wasi.js';
import { TEST_OPTIONS, distModule, fixture, runChild } from './testkit.js';

function withCacheDir(run: (dir: string) => Promise<void>): () => Promise<void> {
  return async () => {
    const dir = mkdtempSync(join(tmpdir(), 'lockstep-cache-'));
    try {
      await run(dir);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  };
}

const sha256 = (data: Uint8Array | string) => createHash('sha256').update(data).digest('hex');

describe('instrumentation cache', () => {
  it(
    'stores <sha256(source + options JSON + PIPELINE_VERSION)>.wasm and returns it as cached',
    withCacheDir(async (dir) => {
      const source = fixture('counter.wasm');
      const first = await instrument(source, TEST_OPTIONS, STUB_WASI_IMPORTS, dir);
      assert.ok(first.ok && !first.cached);
      const key = sha256(
        Buffer.concat([
          source,
          Buffer.from(
            JSON.stringify({
              memoryMaxPages: TEST_OPTIONS.memoryMaxPages,
              callDepthMax: TEST_OPTIONS.callDepthMax,
              fuel: TEST_OPTIONS.fuel,
            }),
          ),
          Buffer.from(PIPELINE_VERSION),
        ]),
      );
      assert.deepEqual(
        readdirSync(dir).sort(),
        [`${key}.json`, `${key}.wasm`],
        'no temporary files left behind',
      );
      assert.deepEqual(new Uint8Array(readFileSync(join(dir, `${key}.wasm`))), first.module.bytes);
      assert.equal(first.module.sha256, sha256(first.module.bytes));
      assert.equal(first.module.sourceSha256, sha256(source));

      const second = await instrument(source, TEST_OPTIONS, STUB_WASI_IMPORTS, dir);
      assert.ok(second.ok && second.cached);
      assert.deepEqual(second.module, first.module);

      const other = await instrument(source, { ...TEST_OPTIONS, fuel: false }, STUB_WASI_IMPORTS, dir);
      assert.ok(other.ok && !other.cached, 'different options are a different entry');
      assert.notEqual(other.module.sha256, first.module.sha256);
    }),
  );

  it(
    'serves a hit in a fresh process without loading binaryen, with the same bytes',
    withCacheDir(async (dir) => {
      const source = fixture('counter.wasm');
      const first = await instrument(source, TEST_OPTIONS, STUB_WASI_IMPORTS, dir);
      assert.ok(first.ok);
      const script = `
        import { readFileSync } from 'node:fs';
        const { instrument } = await import(${JSON.stringify(distModule('index.js'))});
        const { binaryenLoadCount } = await import(${JSON.stringify(distModule('binaryen-stage.js'))});
        const { STUB_WASI_IMPORTS } = await import(${JSON.stringify(distModule('stub-wasi.js'))});
        const dir = process.argv[1];
        const result = await instrument(new Uint8Array(readFileSync(dir + '/source.wasm')), ${JSON.stringify(TEST_OPTIONS)}, STUB_WASI_IMPORTS, ${JSON.stringify(dir)});
        console.log(JSON.stringify({ cached: result.cached, sha256: result.module.sha256, binaryenLoads: binaryenLoadCount() }));
      `;
      const out = JSON.parse(runChild([], script, { 'source.wasm': source }));
      assert.deepEqual(out, { cached: true, sha256: first.module.sha256, binaryenLoads: 0 });
    }),
  );

  it('produces the same bytes in another process without a cache (primary and backup agree)', async () => {
    const source = fixture('program.wasm');
    const here = await instrument(source, TEST_OPTIONS, STUB_WASI_IMPORTS);
    assert.ok(here.ok);
    const script = `
      import { readFileSync } from 'node:fs';
      const { instrument } = await import(${JSON.stringify(distModule('index.js'))});
      const { STUB_WASI_IMPORTS } = await import(${JSON.stringify(distModule('stub-wasi.js'))});
      const result = await instrument(new Uint8Array(readFileSync(process.argv[1] + '/source.wasm')), ${JSON.stringify(TEST_OPTIONS)}, STUB_WASI_IMPORTS);
      console.log(result.module.sha256);
    `;
    assert.equal(runChild([], script, { 'source.wasm': source }).trim(), here.module.sha256);
  });

  it(
    'treats a damaged entry as a miss and repairs it',
    withCacheDir(async (dir) => {
      const source = fixture('counter.wasm');
      const first = await instrument(source, TEST_OPTIONS, STUB_WASI_IMPORTS, dir);
      assert.ok(first.ok);
      const wasmFile = readdirSync(dir).find((f) => f.endsWith('.wasm'));
      assert.ok(wasmFile !== undefined);
      writeFileSync(join(dir, wasmFile), first.module.bytes.subarray(0, 100));
      const second = await instrument(source, TEST_OPTIONS, STUB_WASI_IMPORTS, dir);
      assert.ok(second.ok && !second.cached);
      assert.deepEqual(second.module.bytes, first.module.bytes);
      writeFileSync(join(dir, wasmFile.replace(/\.wasm$/, '.json')), '{ not json');
      const third = await instrument(source, TEST_OPTIONS, STUB_WASI_IMPORTS, dir);
      assert.ok(third.ok && !third.cached);
      const fourth = await instrument(source, TEST_OPTIONS, STUB_WASI_IMPORTS, dir);
      assert.ok(fourth.ok && fourth.cached);
    }),
  );

  it(
    'still refuses imports the caller does not provide on a cache hit',
    withCacheDir(async (dir) => {
      const source = fixture('counter.wasm');
      assert.ok((await instrument(source, TEST_OPTIONS, STUB_WASI_IMPORTS, dir)).ok);
      const fewer = new Set([...STUB_WASI_IMPORTS].filter((n) => !n.endsWith('.poll_oneoff')));
      const result = await instrument(source, TEST_OPTIONS, fewer, dir);
      assert.equal(result.ok, false);
      assert.ok(!result.ok && result.error.code === 'unknown-import');
      assert.match(!result.ok ? result.error.message : '', /wasi_snapshot_preview1\.poll_oneoff/);
    }),
  );

  it(
    'does not cache refusals',
    withCacheDir(async (dir) => {
      const result = await instrument(new Uint8Array([1, 2, 3]), TEST_OPTIONS, STUB_WASI_IMPORTS, dir);
      assert.ok(!result.ok);
      assert.deepEqual(readdirSync(dir), []);
    }),
  );
});
