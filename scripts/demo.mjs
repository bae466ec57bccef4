#!/usr/bin/env node
// The README's main job: a local 3-host cluster (`lockstep cluster up`, a
// file: coordinator under .demo/cluster) with the example KV server placed on
// it, and how to talk to it; it prints the web console's address (with the
// API token in the URL's fragment). `npm start` runs scripts/setup.mjs
// first, which installs what is missing and builds the console. Ctrl-C stops
// the cluster.
//
// Settings: LOCKSTEP_DEMO_PORT (default 6380) and LOCKSTEP_DEMO_IP (default
// 127.0.0.2) give the VM's service address; LOCKSTEP_DEMO_API_PORT (default
// 7401) the first host's API and console port (h2 and h3 take the next two).
// Hosts killed from the console come back after 2 s (`cluster up --restart`).
import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const bin = path.join(root, 'bin', 'lockstep.js');
const port = process.env.LOCKSTEP_DEMO_PORT ?? '6380';
const ip = process.env.LOCKSTEP_DEMO_IP ?? '127.0.0.2';
const data = path.join(root, '.demo', 'cluster');
const image = path.join(root, '.demo', 'kv-image');
mkdirSync(image, { recursive: true });

const apiPort = process.env.LOCKSTEP_DEMO_API_PORT ?? '7401';
const cluster = spawn(
  process.execPath,
  [bin, 'cluster', 'up', '--hosts', '3', '--data', data, '--api-port', apiPort, '--restart'],
  {
    stdio: ['ignore', 'pipe', 'inherit'],
  },
);
// Ctrl-C reaches the whole process group; the cluster stops itself and we exit with it.
process.on('SIGINT', () => {});
process.on('SIGTERM', () => cluster.kill('SIGTERM'));
cluster.on('exit', (code, signal) => process.exit(code ?? (signal ? 1 : 0)));

createInterface({ input: cluster.stdout }).once('line', (line) => {
  const { coordinator } = JSON.parse(line);
  const env = { ...process.env, LOCKSTEP_COORDINATOR: coordinator };
  const lockstep = (...args) => spawnSync(process.execPath, [bin, ...args], { env, encoding: 'utf8' });
  const existing = lockstep('vm', 'show', 'kv', '--json');
  const r =
    existing.status === 0
      ? lockstep('vm', 'start', 'kv', '--json')
      : lockstep(
          'vm',
          'create',
          'kv',
          '--wasm',
          path.join(root, 'examples', 'kv', 'kv.wasm'),
          '--listen',
          `${ip}:${port}`,
          '--disk',
          image,
          '--ft',
          '--json',
        );
  if (r.status !== 0) {
    process.stderr.write(r.stderr);
    process.stderr.write(
      'demo: could not start the example VM; the cluster keeps running (Ctrl-C stops it)\n',
    );
    return;
  }
  // `vm ft kv on` waits until the backup has caught up (a restarted demo's `vm start` does not).
  const protectedVm = lockstep('vm', 'ft', 'kv', 'on', '--json');
  const vm = JSON.parse((protectedVm.status === 0 ? protectedVm : r).stdout.trim().split('\n').pop());
  // The console: any host serves it; the token rides in the URL's fragment, which the browser
  // never sends to a server, and the page moves it into its own storage at once.
  const token = lockstep('cluster', 'token').stdout.trim();
  const hosts = JSON.parse(line).hosts;
  const consoleUrl = `http://${hosts[0].api}/#token=${token}`;
  process.stdout.write(`${JSON.stringify({ console: consoleUrl, coordinator, vm: vm.name })}\n`);
  process.stderr.write(
    [
      '',
      `Console:  ${consoleUrl}`,
      `          (every host serves it: ${hosts.map((h) => `http://${h.api}/`).join(', ')})`,
      `The example KV server runs as VM "kv" on host ${vm.primary}, at ${vm.address},` +
        (vm.ft ? ` fault tolerant: its backup is on ${vm.backup} (${vm.protection}).` : ' without FT.'),
      `  talk to it:        redis-cli -h ${ip} -p ${port}`,
      `  see the cluster:   LOCKSTEP_COORDINATOR=${coordinator} npx lockstep vm show kv`,
      `  simulate a crash:  LOCKSTEP_COORDINATOR=${coordinator} npx lockstep host kill ${vm.primary}`,
      vm.ft
        ? '                     (the backup goes live at the same address with the same memory and disk)'
        : '                     (the VM restarts on another host from its disk image)',
      `  test failover:     LOCKSTEP_COORDINATOR=${coordinator} npx lockstep vm failover kv`,
      '  or in the console: tick Fault Tolerance, "Simulate host failure", watch the timeline.',
      'Ctrl-C stops the cluster.',
      '',
    ].join('\n'),
  );
});
