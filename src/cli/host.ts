/**
 * `lockstep host start` and `lockstep host kill`.
 *
 * `host start` is the host itself, in this process (DESIGN.md §5): it prints
 * one JSON line on stdout when ready, logs JSON lines (pino) on stderr, and
 * stops cleanly on SIGINT or SIGTERM (its VMs stop, it is marked as left).
 * `host kill` simulates a host failure: kill -9 of the recorded process,
 * verified by its start time so a reused pid is never hit.
 */
import { Option, type Command } from 'commander';
import path from 'node:path';
import { pino } from 'pino';
import { HostDaemon } from '../host/daemon.js';
import { HOST_PROFILES, TIMING_KEYS, applyTimingOverrides } from '../host/timings.js';
import { hostKey, type HostRecord } from '../coord/records.js';
import { killVerified } from '../host/proc.js';
import { parseFenceSpec } from '../host/fence.js';
import { addAccessOptions, CliError, openCoordinatorForCli, runCli, type AccessOptions } from './access.js';

interface HostStartOptions {
  name: string;
  data: string;
  coordinator?: string;
  address?: string;
  api: string;
  profile: 'default' | 'fast';
  logLevel: string;
  clusterSecretOverride?: string;
  timing: string[];
  fence: string;
  vipInterface?: string;
  ftLagBoundMs: string;
}

function collect(v: string, acc: string[]): string[] {
  return [...acc, v];
}

export function addHostCommands(program: Command): void {
  const host = program.command('host').description('run or act on one host of a cluster');
  host
    .command('start')
    .description('run a host of a cluster in this process (prints one JSON line when ready)')
    .requiredOption('--name <name>', 'the host name (a-z, 0-9, - and _)')
    .requiredOption('--data <dir>', "the host's data folder (VM disks, console logs)")
    .addOption(
      new Option('--coordinator <spec>', 'file:DIR or etcd:HOST:PORT[,…]')
        .env('LOCKSTEP_COORDINATOR')
        .makeOptionMandatory(),
    )
    .option('--address <ip>', 'the IP this host uses for heartbeats (default: 127.0.0.1)')
    .option('--api <host:port>', 'where the host API listens', '127.0.0.1:0')
    .addOption(
      new Option('--profile <profile>', 'timing profile').choices(['default', 'fast']).default('default'),
    )
    .addOption(
      new Option('--log-level <level>', 'log level on stderr')
        .choices(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'])
        .default('info'),
    )
    .option(
      '--timing <key=ms>',
      `override one timing setting of the profile (repeatable); keys: ${TIMING_KEYS.join(', ')}`,
      collect,
      [],
    )
    .option(
      '--fence <agent>',
      "how a host taking over from this one fences it: local (kill -9 on this machine), vip (remove the VM's virtual IP from this host; needs --vip-interface) or command:/PATH",
      'local',
    )
    .option(
      '--ft-lag-bound-ms <ms>',
      "FT: above this lag (ms the backup's acknowledgements trail the log) the primary waits at its host calls; also while a new backup catches up, so catch-up always ends",
      '500',
    )
    .option(
      '--vip-interface <iface>',
      "put each VM's service address on this interface as a virtual IP (ip addr + gratuitous ARP) while this host is its primary",
    )
    .addOption(new Option('--cluster-secret-override <hex>', 'testing only: use a wrong secret').hideHelp())
    .action((o: HostStartOptions) => runCli(() => hostStart(o)));

  addAccessOptions(
    host
      .command('kill')
      .description('simulate a host failure: kill -9 the host process (on this machine)')
      .argument('<name>', 'the host to kill')
      .option('--json', 'print the result as JSON'),
  ).action((name: string, o: AccessOptions & { json?: boolean }) => runCli(() => hostKill(name, o)));
}

function parseHostPort(s: string, what: string): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(s);
  const port = m ? Number(m[3]) : NaN;
  if (!m || !(port >= 0 && port <= 65535))
    throw new CliError(`${what}: expected HOST:PORT, got ${JSON.stringify(s)}`, 2);
  return { host: (m[1] ?? m[2])!, port };
}

async function hostStart(o: HostStartOptions): Promise<void> {
  const api = parseHostPort(o.api, '--api');
  if (o.clusterSecretOverride !== undefined && !/^[0-9a-f]{64}$/.test(o.clusterSecretOverride))
    throw new CliError('--cluster-secret-override: 64 hex digits', 2);
  const timings = applyTimingOverrides(HOST_PROFILES[o.profile], o.timing);
  if (typeof timings === 'string') throw new CliError(timings, 2);
  const fence = parseFenceSpec(o.fence);
  if (typeof fence === 'string') throw new CliError(fence, 2);
  const ftLagBoundMs = Number(o.ftLagBoundMs);
  if (!/^\d+$/.test(o.ftLagBoundMs) || ftLagBoundMs < 1 || ftLagBoundMs > 600_000)
    throw new CliError(
      `--ft-lag-bound-ms: an integer from 1 to 600000, got ${JSON.stringify(o.ftLagBoundMs)}`,
      2,
    );
  const logger = pino(
    { level: o.logLevel, base: { host: o.name }, timestamp: pino.stdTimeFunctions.isoTime },
    pino.destination({ fd: 2, sync: true }),
  );
  const started = await HostDaemon.start({
    name: o.name,
    dataDir: path.resolve(o.data),
    coordinator: o.coordinator!,
    address: o.address ?? null,
    api,
    timings,
    logger,
    secretOverrideHex: o.clusterSecretOverride ?? null,
    fence,
    vipInterface: o.vipInterface ?? null,
    ftLagBoundMs,
    // A planted bug for the partition and pause suites; never set outside tests.
    plantSkipGenerationCompare: process.env['LOCKSTEP_TEST_PLANT'] === 'skip-generation-compare',
    ...(process.env['LOCKSTEP_CACHE_DIR'] ? { cacheDir: process.env['LOCKSTEP_CACHE_DIR'] } : {}),
  });
  if (!started.ok) throw new CliError(started.error.message, started.error.code === 'usage' ? 2 : 1);
  const h = started.host;
  const info = h.info();
  process.stdout.write(`${JSON.stringify({ name: info.name, pid: info.pid, api: info.api })}\n`);
  await new Promise<void>((resolve) => {
    let stopping = false;
    const stop = (sig: string): void => {
      if (stopping) {
        // A second signal does not wait for the VMs.
        process.exit(1);
      }
      stopping = true;
      logger.info({ signal: sig }, `stopping on ${sig}`);
      void h.shutdown().then(resolve, resolve);
    };
    process.on('SIGINT', () => stop('SIGINT'));
    process.on('SIGTERM', () => stop('SIGTERM'));
  });
  process.exitCode = 0;
}

async function hostKill(name: string, o: AccessOptions & { json?: boolean }): Promise<void> {
  const coord = await openCoordinatorForCli(o.coordinator);
  try {
    const r = await coord.get<HostRecord>(hostKey(name));
    if (!r.ok) throw new CliError(`coordinator ${coord.description}: ${r.error.message}`);
    if (r.value === null) throw new CliError(`no host named ${name}`);
    const rec = r.value.value;
    const k = await killVerified({ pid: rec.pid, startTicks: rec.pidStartTicks, bootId: rec.bootId }, 5000);
    if (!k.ok) throw new CliError(`cannot kill ${name}: ${k.message}`);
    if (o.json) process.stdout.write(`${JSON.stringify({ name, pid: rec.pid, killed: k.killed })}\n`);
    else process.stderr.write(k.killed ? `killed ${name} (pid ${rec.pid})\n` : `${name} was not running\n`);
  } finally {
    await coord.close();
  }
}
