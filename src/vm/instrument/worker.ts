/**
 * Instrumentation in a worker thread.
 *
 * Role: a host daemon must keep its event loop free (heartbeats, the API,
 * other VMs' I/O), and instrumenting a module the first time runs binaryen
 * for seconds. This runs `instrument()` on a worker and hands back the same
 * result, so a cold cache slows only the VM being loaded.
 *
 * Invariants: the result is exactly what `instrument()` returns on the main
 * thread (same cache, same bytes); a worker that dies reports an error value.
 */
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { instrument, type InstrumentOptions, type InstrumentResult } from './index.js';

interface Job {
  source: Uint8Array;
  opts: InstrumentOptions;
  knownImports: string[];
  cacheDir: string | undefined;
}

export function instrumentInWorker(
  source: Uint8Array,
  opts: InstrumentOptions,
  knownImports: ReadonlySet<string>,
  cacheDir?: string,
): Promise<InstrumentResult> {
  const job: Job = { source, opts, knownImports: [...knownImports], cacheDir };
  return new Promise((resolve) => {
    const worker = new Worker(new URL(import.meta.url), { workerData: job });
    let settled = false;
    const settle = (r: InstrumentResult): void => {
      if (settled) return;
      settled = true;
      resolve(r);
    };
    worker.once('message', (r: InstrumentResult) => settle(r));
    // A worker that dies is reported like a module binaryen could not process: the VM is
    // refused with the reason, and the host carries on.
    worker.once('error', (e) =>
      settle({ ok: false, error: { code: 'malformed', message: `instrumentation failed: ${e.message}` } }),
    );
    worker.once('exit', (code) =>
      settle({
        ok: false,
        error: { code: 'malformed', message: `instrumentation worker exited with ${code}` },
      }),
    );
  });
}

if (!isMainThread && parentPort !== null && (workerData as { knownImports?: unknown })?.knownImports) {
  const job = workerData as Job;
  const r = await instrument(job.source, job.opts, new Set(job.knownImports), job.cacheDir);
  parentPort.postMessage(r);
}
