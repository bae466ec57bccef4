/**
 * How cluster commands find the cluster: the coordinator string, the API
 * token, and the hosts to talk to.
 *
 * Role: turn `--coordinator`/LOCKSTEP_COORDINATOR and `--token`/LOCKSTEP_TOKEN
 * into an ApiClient that tries the registered hosts in turn, and keep the
 * coordinator open for commands that can answer from it directly when no host
 * does (the CLI works while hosts are dead).
 *
 * Invariants: no call here waits on a dead host for longer than the client's
 * per-attempt timeout; every failure is a message, never a stack trace.
 */
import { Option, type Command } from 'commander';
import type { Coordinator } from '../coord/coordinator.js';
import { openCoordinator } from '../coord/open.js';
import { HOSTS_PREFIX, KEY_CLUSTER, type ClusterRecord, type HostRecord } from '../coord/records.js';
import { ApiClient } from '../api/client.js';

/** Per-attempt time limit of a read from the CLI: short, so dead or paused hosts cost little. */
export const CLI_API_TIMEOUT_MS = 1500;
/**
 * Per-attempt time limit of a change (create, start, stop, rm). Longer: a change makes several
 * durable coordinator writes, and one that times out may or may not have taken effect.
 */
export const CLI_API_CHANGE_TIMEOUT_MS = 8000;
/** Time limit of one coordinator call from the CLI. */
export const CLI_COORD_TIMEOUT_MS = 3000;

export interface AccessOptions {
  coordinator?: string;
  token?: string;
}

export interface ClusterAccess {
  coord: Coordinator;
  client: ApiClient;
  hosts: HostRecord[];
  token: string;
}

export function addAccessOptions(cmd: Command): Command {
  return cmd
    .addOption(
      new Option('--coordinator <spec>', 'the cluster: file:DIR or etcd:HOST:PORT[,…]').env(
        'LOCKSTEP_COORDINATOR',
      ),
    )
    .addOption(
      new Option('--token <hex>', 'the API token (default: read from the coordinator)').env('LOCKSTEP_TOKEN'),
    );
}

export class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode = 1,
  ) {
    super(message);
  }
}

export async function openCoordinatorForCli(spec: string | undefined): Promise<Coordinator> {
  if (spec === undefined || spec === '')
    throw new CliError(
      'no cluster given: pass --coordinator file:DIR|etcd:HOST:PORT or set LOCKSTEP_COORDINATOR',
      2,
    );
  const r = await openCoordinator(spec, { opTimeoutMs: CLI_COORD_TIMEOUT_MS });
  if (!r.ok)
    throw new CliError(`coordinator ${spec}: ${r.error.message}`, r.error.code === 'invalid' ? 2 : 1);
  return r.value;
}

export async function readClusterRecord(coord: Coordinator): Promise<ClusterRecord> {
  const r = await coord.get<ClusterRecord>(KEY_CLUSTER);
  if (!r.ok) throw new CliError(`coordinator ${coord.description}: ${r.error.message}`);
  if (r.value === null) throw new CliError(`no cluster at ${coord.description}: start a host there first`);
  return r.value.value;
}

export async function connect(opts: AccessOptions, timeoutMs = CLI_API_TIMEOUT_MS): Promise<ClusterAccess> {
  const coord = await openCoordinatorForCli(opts.coordinator);
  try {
    const cluster = await readClusterRecord(coord);
    const token = opts.token ?? cluster.tokenHex;
    const hosts = await coord.list<HostRecord>(HOSTS_PREFIX);
    if (!hosts.ok) throw new CliError(`coordinator ${coord.description}: ${hosts.error.message}`);
    const records = hosts.value.map((h) => h.value).filter((h) => h?.v === 1);
    // Hosts that said they left come last: they are unlikely to answer.
    const ordered = [...records.filter((h) => h.state === 'up'), ...records.filter((h) => h.state !== 'up')];
    const client = new ApiClient({ endpoints: ordered.map((h) => h.api), token, timeoutMs });
    return { coord, client, hosts: records, token };
  } catch (e) {
    await coord.close();
    throw e;
  }
}

/** Runs a command body, turning CliErrors into a message and an exit status. */
export async function runCli(body: () => Promise<void>): Promise<void> {
  try {
    await body();
  } catch (e) {
    if (e instanceof CliError) {
      process.stderr.write(`lockstep: ${e.message}\n`);
      process.exitCode = e.exitCode;
      return;
    }
    throw e;
  }
}
