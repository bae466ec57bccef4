/**
 * `lockstep cluster up` and `lockstep cluster token`.
 *
 * `cluster up` starts a local cluster on this machine: N `host start`
 * processes sharing a `file:` coordinator under DIR. It stays in the
 * foreground, supervises them (a host that dies is reported, and restarted
 * with --restart), and stops them all cleanly on Ctrl-C. Each host's log goes
 * to DIR/hosts/NAME/host.log.
 *
 * Invariants: when it exits, no host it started is left running (SIGTERM,
 * then SIGKILL after HOST_STOP_GRACE_MS).
 */
import { Option, type Command } from 'commander';
import type { ClusterEvent } from '../api/backend.js';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, openSync, closeSync } from 'node:fs';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import {
  addAccessOptions,
  connect,
  CliError,
  openCoordinatorForCli,
  readClusterRecord,
  runCli,
  type AccessOptions,
} from './access.js';

const BIN = fileURLToPath(new URL('../../../bin/lockstep.js', import.meta.url));
/** How long a host may take to say it is ready (a cold start reads the coordinator and binds). */
const HOST_READY_TIMEOUT_MS = 30_000;
/** How long stopping hosts get before they are killed. */
const HOST_STOP_GRACE_MS = 15_000;
const HOSTS_MAX = 16;
/** A restarted host waits this long, so a crash loop cannot spin. */
const RESTART_DELAY_MS = 2000;

interface UpOptions {
  hosts: string;
  data: string;
  profile: 'default' | 'fast';
  restart?: boolean;
  apiPort?: string;
}

export function addClusterCommands(program: Command): void {
  const cluster = program.command('cluster').description('a local cluster, and cluster-wide facts');
  cluster
    .command('up')
    .description('start a local cluster of N hosts on this machine (file: coordinator); Ctrl-C stops it')
    .requiredOption('--hosts <n>', 'how many hosts (1-16)')
    .requiredOption('--data <dir>', 'the folder for the coordinator and the hosts')
    .addOption(
      new Option('--profile <profile>', 'timing profile of the hosts')
        .choices(['default', 'fast'])
        .default('default'),
    )
    .option('--restart', 'restart a host that dies (after 2 s)')
    .option(
      '--api-port <port>',
      "host hN's API (and console) on 127.0.0.1:PORT+N-1, stable across restarts (default: free ports)",
    )
    .action((o: UpOptions) => runCli(() => clusterUp(o)));
  addAccessOptions(
    cluster
      .command('token')
      .description("print the cluster's API token (for scripts)")
      .option('--json', 'print {"token": …}'),
  ).action((o: AccessOptions & { json?: boolean }) => runCli(() => clusterToken(o)));
  addAccessOptions(
    cluster
      .command('events')
      .description("the cluster's event timeline (failures, test-and-set, fencing, go-live, protection…)")
      .option('--vm <name>', "only this VM's events")
      .option('--follow', 'keep printing new events until interrupted')
      .option('--json', 'print one JSON event per line'),
  ).action((o: EventsOptions) => runCli(() => clusterEvents(o)));
}

interface EventsOptions extends AccessOptions {
  vm?: string;
  follow?: boolean;
  json?: boolean;
}

/** How often `cluster events --follow` asks for new events. */
const EVENTS_FOLLOW_MS = 500;
/** Ids remembered to print each event once across a switch of hosts; older ones cannot come again. */
const EVENTS_SEEN_MAX = 20_000;

/**
 * Prints the timeline; with --follow, polls one host for what comes after
 * its cursor, and moves to another host if that one stops answering
 * (cursors are per host, so the move starts from the new host's backlog
 * and skips events already printed, by id).
 */
async function clusterEvents(o: EventsOptions): Promise<void> {
  const a = await connect(o);
  const seen = new Set<string>();
  const print = (e: ClusterEvent): void => {
    if (seen.has(e.id) || (o.vm !== undefined && e.vm !== o.vm)) return;
    seen.add(e.id);
    if (seen.size > EVENTS_SEEN_MAX) seen.delete(seen.values().next().value!);
    if (o.json) {
      process.stdout.write(`${JSON.stringify(e)}\n`);
      return;
    }
    const t = new Date(e.atMs).toISOString().slice(11, 23);
    const took = e.durationMs === null ? '' : ` [${e.durationMs} ms]`;
    process.stdout.write(`${t}  ${e.host.padEnd(8)} ${e.kind.padEnd(18)} ${e.message}${took}\n`);
  };
  try {
    let client = a.client;
    let cursor = 0;
    let stopped = false;
    process.once('SIGINT', () => (stopped = true));
    for (;;) {
      const r = await client.events({ after: cursor });
      if (!r.ok) {
        if (!o.follow) throw new CliError(r.error.message);
        // The host went away: the next call goes to any host, from that host's start.
        client = a.client;
        cursor = 0;
      } else {
        // Events arrive in the answering host's order; printed by time within each page.
        for (const e of [...r.value.events].sort((x, y) => x.atMs - y.atMs)) print(e);
        cursor = r.value.events.at(-1)?.cursor ?? cursor;
        const host = a.hosts.find((h) => h.name === r.value.host);
        if (host !== undefined) client = a.client.withEndpoint(host.api);
        if (r.value.events.length > 0) continue; // more may be waiting beyond one page
      }
      if (!o.follow || stopped) return;
      await new Promise((res) => setTimeout(res, EVENTS_FOLLOW_MS));
      if (stopped) return;
    }
  } finally {
    await a.coord.close();
  }
}

interface Managed {
  name: string;
  child: ChildProcess | null;
  api: string | null;
  pid: number | null;
}

async function clusterUp(o: UpOptions): Promise<void> {
  const n = Number(o.hosts);
  if (!Number.isInteger(n) || n < 1 || n > HOSTS_MAX)
    throw new CliError(`--hosts: a number from 1 to ${HOSTS_MAX}`, 2);
  const apiPort = o.apiPort === undefined ? null : Number(o.apiPort);
  if (apiPort !== null && !(Number.isInteger(apiPort) && apiPort >= 1 && apiPort + n - 1 <= 65535))
    throw new CliError(`--api-port: a port from 1 to ${65536 - n} (${n} hosts take consecutive ports)`, 2);
  const data = path.resolve(o.data);
  const coordDir = path.join(data, 'coord');
  mkdirSync(coordDir, { recursive: true });
  const coordinator = `file:${coordDir}`;
  const hosts: Managed[] = [];
  for (let i = 1; i <= n; i++) hosts.push({ name: `h${i}`, child: null, api: null, pid: null });
  let stopping = false;

  const startHost = (h: Managed): Promise<void> => {
    const dir = path.join(data, 'hosts', h.name);
    mkdirSync(dir, { recursive: true });
    const logFd = openSync(path.join(dir, 'host.log'), 'a');
    const child = spawn(
      process.execPath,
      [
        BIN,
        'host',
        'start',
        '--name',
        h.name,
        '--data',
        dir,
        '--coordinator',
        coordinator,
        '--profile',
        o.profile,
        ...(apiPort !== null ? ['--api', `127.0.0.1:${apiPort + hosts.indexOf(h)}`] : []),
      ],
      { stdio: ['ignore', 'pipe', logFd] },
    );
    closeSync(logFd);
    h.child = child;
    h.pid = child.pid ?? null;
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(
        () =>
          reject(
            new CliError(
              `host ${h.name} did not start within ${HOST_READY_TIMEOUT_MS} ms; see ${dir}/host.log`,
            ),
          ),
        HOST_READY_TIMEOUT_MS,
      );
      const lines = createInterface({ input: child.stdout! });
      lines.once('line', (line) => {
        clearTimeout(timer);
        try {
          const ready = JSON.parse(line) as { api: string; pid: number };
          h.api = ready.api;
          resolve();
        } catch {
          reject(new CliError(`host ${h.name} printed an unexpected line: ${line}`));
        }
      });
      child.once('exit', (code, signal) => {
        clearTimeout(timer);
        h.child = null;
        if (h.api === null) {
          reject(new CliError(`host ${h.name} exited during start (${signal ?? code}); see ${dir}/host.log`));
          return;
        }
        if (stopping) return;
        process.stderr.write(
          `lockstep: host ${h.name} (pid ${h.pid}) exited: ${signal ?? `status ${code}`}\n`,
        );
        h.api = null;
        if (o.restart) {
          setTimeout(() => {
            if (stopping) return;
            startHost(h).then(
              () => process.stderr.write(`lockstep: host ${h.name} restarted, API ${h.api}\n`),
              (e: unknown) => process.stderr.write(`lockstep: ${(e as Error).message}\n`),
            );
          }, RESTART_DELAY_MS);
        }
      });
    });
  };

  const stopAll = async (): Promise<void> => {
    stopping = true;
    const exits = hosts
      .filter((h) => h.child !== null)
      .map(
        (h) =>
          new Promise<void>((resolve) => {
            const c = h.child!;
            if (c.exitCode !== null || c.signalCode !== null) return resolve();
            c.once('exit', () => resolve());
            c.kill('SIGTERM');
            setTimeout(() => c.kill('SIGKILL'), HOST_STOP_GRACE_MS).unref();
          }),
      );
    await Promise.all(exits);
  };

  process.stderr.write(`lockstep: starting ${n} hosts; coordinator ${coordinator}\n`);
  try {
    // The first host creates the cluster's secrets; the others join it.
    await startHost(hosts[0]!);
    await Promise.all(hosts.slice(1).map((h) => startHost(h)));
  } catch (e) {
    await stopAll();
    throw e;
  }
  for (const h of hosts) process.stderr.write(`lockstep: host ${h.name} pid ${h.pid}, API http://${h.api}\n`);
  process.stderr.write(
    `lockstep: cluster up. In another shell:\n  export LOCKSTEP_COORDINATOR=${coordinator}\n  lockstep vm ls\nCtrl-C stops the cluster.\n`,
  );
  process.stdout.write(
    `${JSON.stringify({ coordinator, hosts: hosts.map((h) => ({ name: h.name, pid: h.pid, api: h.api })) })}\n`,
  );
  // The supervisor stays until a signal, even when every host has died and nothing else is left
  // on the event loop.
  const keepAlive = setInterval(() => {}, 1 << 30);
  await new Promise<void>((resolve) => {
    const onSignal = (): void => {
      if (stopping) return;
      process.stderr.write('lockstep: stopping the cluster…\n');
      void stopAll().then(resolve, resolve);
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
  });
  clearInterval(keepAlive);
  process.stderr.write('lockstep: cluster stopped\n');
}

async function clusterToken(o: AccessOptions & { json?: boolean }): Promise<void> {
  const coord = await openCoordinatorForCli(o.coordinator);
  try {
    const c = await readClusterRecord(coord);
    process.stdout.write(o.json ? `${JSON.stringify({ token: c.tokenHex })}\n` : `${c.tokenHex}\n`);
  } finally {
    await coord.close();
  }
}
