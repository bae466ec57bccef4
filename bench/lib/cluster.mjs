// Shared by the cluster benchmarks (bench/cluster.mjs, bench/ft.mjs): start
// one `lockstep host` process and wait for its ready line, PING a service
// address, and the median of a sample.
import { spawn } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { LOCKSTEP_BIN } from './kvbench.mjs';

/**
 * Starts host NAME with its data in DIR/NAME; resolves with its ready line
 * ({name, pid, api}), the child and its log so far, or rejects if it exits first.
 */
export function startHost(dir, name, coordinator, profile) {
  const child = spawn(
    process.execPath,
    [
      LOCKSTEP_BIN,
      'host',
      'start',
      '--name',
      name,
      '--data',
      path.join(dir, name),
      '--coordinator',
      coordinator,
      '--profile',
      profile,
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let log = '';
  child.stderr.on('data', (b) => (log += b.toString()));
  return new Promise((resolve, reject) => {
    createInterface({ input: child.stdout }).once('line', (l) =>
      resolve({ child, log: () => log, ...JSON.parse(l) }),
    );
    child.once('exit', (c) => reject(new Error(`host ${name} exited ${c}: ${log}`)));
  });
}

/** Whether HOST:PORT answers a RESP PING with PONG within 200 ms. */
export function ping(host, port) {
  return new Promise((resolve) => {
    const s = net.connect({ host, port });
    const done = (ok) => {
      s.destroy();
      resolve(ok);
    };
    s.setTimeout(200, () => done(false));
    s.once('error', () => done(false));
    s.once('connect', () => s.write('PING\r\n'));
    s.once('data', (b) => done(b.toString().startsWith('+PONG')));
  });
}

/** The median of the finite numbers in xs, or null when there are none. */
export function median(xs) {
  const s = xs.filter((x) => x !== null && Number.isFinite(x)).sort((a, b) => a - b);
  if (s.length === 0) return null;
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

/** The value after `--name` on the command line, or `dflt`. */
export function cliArg(name, dflt) {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : dflt;
}
