/**
 * Shared pieces of the in-process FT tests: the KV example as an FT VM.
 */
import { Vm, type VmConfig } from '../../src/vm/vm.js';
import { Redis } from 'ioredis';
import { CACHE_DIR, repoPath } from './harness.js';

const KV = repoPath('examples', 'kv', 'kv.wasm');

/** The KV example on 127.0.0.1:PORT with its disk at `disk`, in the given log mode. */
export function kvConfig(
  disk: string,
  port: number,
  log: VmConfig['log'],
  extra: Partial<VmConfig> = {},
): VmConfig {
  return {
    wasmPath: KV,
    args: ['kv'],
    env: [],
    listen: [{ host: '127.0.0.1', port }],
    disk,
    dirs: [],
    memoryMaxMib: 64,
    cpuBudget: null,
    cacheDir: CACHE_DIR,
    log,
    ...extra,
  };
}

export async function loadVm(config: VmConfig): Promise<Vm> {
  const r = await Vm.load(config);
  if (!r.ok) throw new Error(r.error.message);
  return r.vm;
}

export const quiet = { info: (): void => {}, warn: (): void => {} };

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Polls `cond` every 10 ms until it holds, or throws naming `what` after timeoutMs. */
export async function waitFor(cond: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > until) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(10);
  }
}

/** An ioredis client on 127.0.0.1:PORT that fails instead of queueing or retrying. */
export async function kvClient(port: number): Promise<Redis> {
  const r = new Redis({
    host: '127.0.0.1',
    port,
    lazyConnect: true,
    maxRetriesPerRequest: 0,
    enableOfflineQueue: false,
    retryStrategy: () => null,
  });
  await r.connect();
  return r;
}
