import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MessageChannel } from 'node:worker_threads';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { WASI_COVERAGE } from './coverage.js';
import { Errno, WASI_FUNCTIONS } from '../../wasi/abi.js';
import { WasiHost } from './host.js';
import { Channel, Ctl } from '../channel.js';
import { FileSystem } from '../fs/fs.js';
import { realClock } from '../../io/clock.js';
import { realEntropy } from '../../io/entropy.js';

test('the coverage table lists exactly the preview1 functions', () => {
  assert.deepEqual(Object.keys(WASI_COVERAGE).sort(), [...WASI_FUNCTIONS].sort());
  assert.equal(WASI_FUNCTIONS.length, 46);
});

test('the host provides every function, and the ENOSYS ones answer ENOSYS', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'lockstep-cov-'));
  const io = new MessageChannel();
  try {
    const host = new WasiHost(
      { args: [], env: [], listenerCount: 0, stdin: Channel.create(1024, 1024) },
      {
        clock: realClock,
        entropy: realEntropy,
        out: { stdout: () => true, stderr: () => true },
        ctl: new Ctl(),
        ioPort: io.port2,
        postToIo: () => {},
        fs: new FileSystem([{ guestPath: '/data', hostPath: dir }]),
      },
    );
    host.bindMemory(new WebAssembly.Memory({ initial: 1 }));
    const imports = host.imports() as unknown as Record<string, (...a: unknown[]) => number>;
    for (const fn of WASI_FUNCTIONS) assert.equal(typeof imports[fn], 'function', fn);
    for (const [fn, row] of Object.entries(WASI_COVERAGE)) {
      if (row.status === 'enosys') assert.equal(imports[fn]!(0, 0, 0, 0), Errno.NOSYS, fn);
    }
    // A bad pointer is a FAULT, never an exception into the guest.
    assert.equal(imports['clock_time_get']!(1, 0n, 70_000), Errno.FAULT);
    assert.equal(imports['args_sizes_get']!(-4, 0), Errno.FAULT);
  } finally {
    io.port1.close();
    io.port2.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
