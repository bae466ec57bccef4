/**
 * Shared pieces of the in-process FT tests: the KV example as an FT VM.
 */
import { Vm, type VmConfig } from '../../src/vm/vm.js';
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
