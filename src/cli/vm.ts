/**
 * `lockstep vm create|ls|show|start|stop|rm|logs`: VMs on a cluster, through
 * the host API's typed client.
 *
 * Role: commands only. Reads (`ls`, `show`) fall back to the coordinator's
 * records when no host answers, so the CLI works while hosts are dead; the
 * status is then derived by the same function the hosts use (vmView).
 *
 * Output: `--json` prints exactly the API's objects on stdout (DESIGN.md §5);
 * without it, `ls` and `show` print a table or fields on stdout, and the
 * other commands a one-line account on stderr.
 */
import { Argument, Option, type Command } from 'commander';
import net from 'node:net';
import path from 'node:path';
import { createWriteStream } from 'node:fs';
import { rename, rm, stat } from 'node:fs/promises';
import { pipeline } from 'node:stream/promises';
import { postForStream } from '../host/clone-fetch.js';
import type { ApiResult, VmStatus } from '../api/backend.js';
import { VMS_PREFIX } from '../coord/records.js';
import { vmView } from '../cluster/vm-view.js';
import {
  addAccessOptions,
  CLI_API_CHANGE_TIMEOUT_MS,
  CLI_API_TIMEOUT_MS,
  CliError,
  connect,
  runCli,
  type AccessOptions,
  type ClusterAccess,
} from './access.js';

/** How long `vm create` and `vm start` wait for the VM to serve, by default. */
const WAIT_TIMEOUT_MS_DEFAULT = 60_000;
const WAIT_POLL_MS = 200;

interface CreateOptions extends AccessOptions {
  wasm: string;
  listen: string;
  disk?: string;
  env: string[];
  memoryMaxMib?: string;
  host?: string;
  ft?: boolean;
  wait: boolean;
  timeoutMs: string;
  json?: boolean;
}

export function addVmCommands(program: Command): void {
  const vm = program.command('vm').description('VMs on a cluster');
  addAccessOptions(
    vm
      .command('create')
      .description('create a VM and place it on a host; returns once it serves at its address')
      .argument('<name>', 'the VM name (a-z, 0-9, - and _)')
      .argument('[args...]', 'arguments for the guest (after --)')
      .requiredOption('--wasm <file>', 'the WebAssembly module (a path the hosts can read)')
      .requiredOption('--listen <addr:port>', 'the service address, e.g. 127.0.0.2:6379')
      .option('--disk <dir>', "the VM's initial disk image (a folder), copied to the host that runs it")
      .option('--env <K=V>', 'an environment variable for the guest (repeatable)', collect, [])
      .option('--memory-max-mib <n>', 'the memory limit in MiB')
      .option('--host <name>', 'place it on this host')
      .option('--ft', 'fault tolerance (primary and backup in lockstep)')
      .option('--no-wait', 'return at once')
      .option('--timeout-ms <ms>', 'how long to wait for the VM to serve', String(WAIT_TIMEOUT_MS_DEFAULT))
      .option('--json', 'print the VM status as JSON'),
  ).action((name: string, args: string[], o: CreateOptions) => runCli(() => vmCreate(name, args, o)));

  addAccessOptions(
    vm.command('ls').description('list the VMs').option('--json', 'print a JSON array'),
  ).action((o: AccessOptions & { json?: boolean }) => runCli(() => vmList(o)));
  addAccessOptions(
    vm.command('show').description("show one VM's status").argument('<name>').option('--json', 'print JSON'),
  ).action((name: string, o: AccessOptions & { json?: boolean }) => runCli(() => vmShow(name, o)));
  for (const verb of ['start', 'stop'] as const) {
    addAccessOptions(
      vm
        .command(verb)
        .description(verb === 'start' ? 'start a stopped or failed VM' : 'stop a VM (it keeps its disk)')
        .argument('<name>')
        .option('--no-wait', 'return at once')
        .option('--timeout-ms <ms>', 'how long to wait', String(WAIT_TIMEOUT_MS_DEFAULT))
        .option('--json', 'print the VM status as JSON'),
    ).action((name: string, o: AccessOptions & { wait: boolean; timeoutMs: string; json?: boolean }) =>
      runCli(() => vmStartStop(verb, name, o)),
    );
  }
  addAccessOptions(
    vm
      .command('failover')
      .description("test failover of an FT VM: the primary's copy stops and the backup takes over")
      .argument('<name>')
      .option('--no-wait', 'return at once')
      .option(
        '--timeout-ms <ms>',
        'how long to wait for the backup to serve',
        String(WAIT_TIMEOUT_MS_DEFAULT),
      )
      .option('--json', 'print the VM status as JSON'),
  ).action((name: string, o: AccessOptions & { wait: boolean; timeoutMs: string; json?: boolean }) =>
    runCli(() => vmFailover(name, o)),
  );
  addAccessOptions(
    vm
      .command('ft')
      .description(
        'switch fault tolerance on or off on a VM while it runs (on: a backup is cloned from it; off: the backup is dropped)',
      )
      .argument('<name>')
      .addArgument(new Argument('<state>', 'on or off').choices(['on', 'off']))
      .option('--no-wait', 'return at once')
      .option(
        '--timeout-ms <ms>',
        'how long to wait for protected (on) or for the backup to go (off)',
        String(WAIT_TIMEOUT_MS_DEFAULT),
      )
      .option('--json', 'print the VM status as JSON'),
  ).action(
    (
      name: string,
      state: 'on' | 'off',
      o: AccessOptions & { wait: boolean; timeoutMs: string; json?: boolean },
    ) => runCli(() => vmFt(name, state, o)),
  );
  addAccessOptions(
    vm
      .command('migrate')
      .description(
        'move a running VM to another host with its memory, disk and service address; connections open at the switch are reset',
      )
      .argument('<name>')
      .requiredOption('--to <host>', 'the host to move it to')
      .option('--no-wait', 'return at once')
      .option(
        '--timeout-ms <ms>',
        'how long to wait for the VM to serve on the new host',
        String(WAIT_TIMEOUT_MS_DEFAULT),
      )
      .option('--json', 'print the VM status as JSON'),
  ).action(
    (name: string, o: AccessOptions & { to: string; wait: boolean; timeoutMs: string; json?: boolean }) =>
      runCli(() => vmMigrate(name, o)),
  );
  addAccessOptions(
    vm
      .command('snapshot')
      .description(
        'write a snapshot of the running VM to a file: memory, stack, descriptors and its disk at one host call (restore it with lockstep run --from)',
      )
      .argument('<name>')
      .requiredOption('--out <file>', 'where to write it (mode 0600; replaced atomically)')
      .option('--json', 'print {"name": …, "file": …, "bytes": …}'),
  ).action((name: string, o: AccessOptions & { out: string; json?: boolean }) =>
    runCli(() => vmSnapshot(name, o)),
  );
  addAccessOptions(
    vm
      .command('rm')
      .description('remove a VM (it stops, and its disks are deleted)')
      .argument('<name>')
      .option('--json', 'print {"removed": name}'),
  ).action((name: string, o: AccessOptions & { json?: boolean }) => runCli(() => vmRemove(name, o)));
  addAccessOptions(
    vm
      .command('logs')
      .description("print the end of the VM's console log (its stdout and stderr)")
      .argument('<name>')
      .addOption(new Option('--bytes <n>', 'at most this many bytes from the end').default('65536'))
      .option('--json', 'print {"name": …, "log": …}'),
  ).action((name: string, o: AccessOptions & { bytes: string; json?: boolean }) =>
    runCli(() => vmLogs(name, o)),
  );
}

function collect(v: string, acc: string[]): string[] {
  return [...acc, v];
}

function positiveInt(s: string, what: string): number {
  const n = Number(s);
  if (!Number.isSafeInteger(n) || n <= 0)
    throw new CliError(`${what}: a positive integer, got ${JSON.stringify(s)}`, 2);
  return n;
}

function unwrap<T>(r: ApiResult<T>): T {
  if (r.ok) return r.value;
  throw new CliError(r.error.message, r.error.code === 'invalid' ? 1 : 1);
}

async function withAccess(
  o: AccessOptions,
  body: (a: ClusterAccess) => Promise<void>,
  timeoutMs = CLI_API_TIMEOUT_MS,
): Promise<void> {
  const a = await connect(o, timeoutMs);
  try {
    await body(a);
  } finally {
    await a.coord.close();
  }
}

function printStatus(s: VmStatus, json: boolean | undefined): void {
  if (json) process.stdout.write(`${JSON.stringify(s)}\n`);
  else
    process.stderr.write(
      `vm ${s.name}: ${s.state}${s.primary ? ` on ${s.primary}` : ''} at ${s.address}${s.reason ? ` (${s.reason})` : ''}\n`,
    );
}

async function vmCreate(name: string, args: string[], o: CreateOptions): Promise<void> {
  const timeoutMs = positiveInt(o.timeoutMs, '--timeout-ms');
  const memoryMaxMib =
    o.memoryMaxMib === undefined ? undefined : positiveInt(o.memoryMaxMib, '--memory-max-mib');
  await withAccess(
    o,
    async (a) => {
      const created = unwrap(
        await a.client.createVm({
          name,
          wasm: path.resolve(o.wasm),
          listen: o.listen,
          disk: o.disk === undefined ? null : path.resolve(o.disk),
          env: o.env,
          args,
          ...(memoryMaxMib !== undefined ? { memoryMaxMib } : {}),
          ft: o.ft === true,
          host: o.host ?? null,
        }),
      );
      // With --ft, create returns once the backup is attached (DESIGN.md §5).
      const attached =
        o.ft === true
          ? {
              what: 'its backup attached',
              holds: (v: VmStatus) => v.protection === 'syncing' || v.protection === 'protected',
            }
          : null;
      const s = o.wait ? await waitFor(a, name, 'running', timeoutMs, attached) : created;
      printStatus(s, o.json);
    },
    CLI_API_CHANGE_TIMEOUT_MS,
  );
}

async function vmStartStop(
  verb: 'start' | 'stop',
  name: string,
  o: AccessOptions & { wait: boolean; timeoutMs: string; json?: boolean },
): Promise<void> {
  const timeoutMs = positiveInt(o.timeoutMs, '--timeout-ms');
  await withAccess(
    o,
    async (a) => {
      const r = unwrap(verb === 'start' ? await a.client.startVm(name) : await a.client.stopVm(name));
      const s = o.wait ? await waitFor(a, name, verb === 'start' ? 'running' : 'stopped', timeoutMs) : r;
      printStatus(s, o.json);
    },
    CLI_API_CHANGE_TIMEOUT_MS,
  );
}

async function vmFailover(
  name: string,
  o: AccessOptions & { wait: boolean; timeoutMs: string; json?: boolean },
): Promise<void> {
  const timeoutMs = positiveInt(o.timeoutMs, '--timeout-ms');
  await withAccess(
    o,
    async (a) => {
      const before = unwrap(await a.client.getVm(name));
      const r = unwrap(await a.client.failoverVm(name));
      const moved = {
        what: `a new primary after ${before.primary ?? 'none'}`,
        holds: (v: VmStatus) => v.generation > before.generation && v.primary !== before.primary,
      };
      const s = o.wait ? await waitFor(a, name, 'running', timeoutMs, moved) : r;
      printStatus(s, o.json);
    },
    CLI_API_CHANGE_TIMEOUT_MS,
  );
}

async function vmFt(
  name: string,
  state: 'on' | 'off',
  o: AccessOptions & { wait: boolean; timeoutMs: string; json?: boolean },
): Promise<void> {
  const timeoutMs = positiveInt(o.timeoutMs, '--timeout-ms');
  await withAccess(
    o,
    async (a) => {
      const r = unwrap(await a.client.setFt(name, state === 'on'));
      if (!o.wait || r.state !== 'running') return printStatus(r, o.json);
      const done =
        state === 'on'
          ? { what: 'protection', holds: (v: VmStatus) => v.protection === 'protected' }
          : {
              what: 'its backup dropped',
              holds: (v: VmStatus) => v.protection === 'off' && v.backup === null,
            };
      printStatus(await waitFor(a, name, 'running', timeoutMs, done, progress(o.json)), o.json);
    },
    CLI_API_CHANGE_TIMEOUT_MS,
  );
}

async function vmMigrate(
  name: string,
  o: AccessOptions & { to: string; wait: boolean; timeoutMs: string; json?: boolean },
): Promise<void> {
  const timeoutMs = positiveInt(o.timeoutMs, '--timeout-ms');
  await withAccess(
    o,
    async (a) => {
      // Read before asking: the move can be over by the time the answer comes.
      const before = unwrap(await a.client.getVm(name));
      const asked = unwrap(await a.client.migrateVm(name, o.to));
      if (!o.wait) return printStatus(asked, o.json);
      const moved = {
        what: `its primary on ${o.to}`,
        holds: (v: VmStatus) => {
          if (v.generation <= before.generation) return false;
          if (v.primary !== o.to)
            throw new CliError(
              `vm ${name} failed over to ${v.primary ?? 'no host'} during the migration; it was not moved to ${o.to}`,
            );
          return true;
        },
      };
      printStatus(await waitFor(a, name, 'running', timeoutMs, moved, progress(o.json)), o.json);
    },
    CLI_API_CHANGE_TIMEOUT_MS,
  );
}

/** A progress printer for long waits: one line on stderr whenever what people see changes. */
function progress(json: boolean | undefined): (v: VmStatus) => void {
  let last = '';
  return (v) => {
    if (json) return;
    const line =
      `${v.state}${v.primary ? ` on ${v.primary}` : ''}` +
      (v.protection !== 'off' || v.backup !== null
        ? `, ${v.protection === 'off' ? 'backup' : v.protection}${v.backup ? ` (backup ${v.backup})` : ''}`
        : '') +
      (v.reason ? `: ${v.reason}` : '');
    if (line !== last) process.stderr.write(`  ${v.name}: ${line}\n`);
    last = line;
  };
}

/**
 * Polls until the VM reaches `want` (and, for 'running', accepts connections
 * at its address) and `also` holds (an FT backup attached, a failover done).
 */
async function waitFor(
  a: ClusterAccess,
  name: string,
  want: 'running' | 'stopped',
  timeoutMs: number,
  also: { what: string; holds: (s: VmStatus) => boolean } | null = null,
  onStatus: ((s: VmStatus) => void) | null = null,
): Promise<VmStatus> {
  const deadline = performance.now() + timeoutMs;
  let last: VmStatus | null = null;
  while (performance.now() < deadline) {
    const r = await a.client.getVm(name);
    if (r.ok) {
      last = r.value;
      onStatus?.(last);
      if (last.state === 'failed')
        throw new CliError(`vm ${name} failed: ${last.reason ?? 'no reason given'}`);
      if (want === 'stopped' && last.state === 'stopped') return last;
      if (
        want === 'running' &&
        last.state === 'running' &&
        (also === null || also.holds(last)) &&
        (await canConnect(last.address))
      )
        return last;
      if (
        want === 'running' &&
        last.state === 'stopped' &&
        last.desired === 'running' &&
        last.exitCode !== null
      )
        throw new CliError(`vm ${name} exited with ${last.exitCode} before it served`);
    } else if (r.error.code === 'not-found') throw new CliError(r.error.message);
    await new Promise((res) => setTimeout(res, WAIT_POLL_MS));
  }
  throw new CliError(
    `vm ${name} is not ${want}${also !== null ? ` with ${also.what}` : ''} after ${timeoutMs} ms (state: ${last?.state ?? 'unknown'}${last !== null && last.ft ? `, protection: ${last.protection}` : ''}${last?.reason ? `, ${last.reason}` : ''})`,
  );
}

function canConnect(address: string): Promise<boolean> {
  const i = address.lastIndexOf(':');
  return new Promise((resolve) => {
    const s = net.connect({ host: address.slice(0, i), port: Number(address.slice(i + 1)) });
    const done = (ok: boolean): void => {
      s.destroy();
      resolve(ok);
    };
    s.setTimeout(1000, () => done(false));
    s.once('connect', () => done(true));
    s.once('error', () => done(false));
  });
}

/** The VMs from a host, or from the coordinator's records when no host answers. */
async function listFromAnywhere(a: ClusterAccess): Promise<VmStatus[]> {
  const r = await a.client.listVms();
  if (r.ok) return r.value;
  if (r.error.code !== 'unavailable') throw new CliError(r.error.message);
  process.stderr.write('lockstep: no host answers; reading the coordinator directly\n');
  const recs = await a.coord.list(VMS_PREFIX);
  if (!recs.ok)
    throw new CliError(`no host answers and the coordinator cannot be read: ${recs.error.message}`);
  const byVm = new Map<string, Record<string, unknown>>();
  for (const rec of recs.value) {
    const [, vm, part] = rec.key.split('/');
    if (vm === undefined || part === undefined) continue;
    const m = byVm.get(vm) ?? {};
    m[part] = rec.value;
    byVm.set(vm, m);
  }
  const out: VmStatus[] = [];
  for (const m of [...byVm.values()]) {
    if (m['spec'] === undefined) continue;
    out.push(
      vmView(
        {
          spec: m['spec'] as never,
          placement: (m['placement'] as never) ?? null,
          status: (m['status'] as never) ?? null,
          claim: (m['claim'] as never) ?? null,
        },
        null,
      ),
    );
  }
  return out.sort((x, y) => (x.name < y.name ? -1 : 1));
}

async function vmList(o: AccessOptions & { json?: boolean }): Promise<void> {
  await withAccess(o, async (a) => {
    const vms = await listFromAnywhere(a);
    if (o.json) {
      process.stdout.write(`${JSON.stringify(vms)}\n`);
      return;
    }
    if (vms.length === 0) {
      process.stdout.write(
        'no VMs; create one with `lockstep vm create NAME --wasm FILE --listen IP:PORT`\n',
      );
      return;
    }
    const rows = [
      ['NAME', 'STATE', 'PROTECTION', 'PRIMARY', 'BACKUP', 'ADDRESS'],
      ...vms.map((v) => [v.name, v.state, v.protection, v.primary ?? '-', v.backup ?? '-', v.address]),
    ];
    const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
    for (const r of rows)
      process.stdout.write(
        `${r
          .map((c, i) => c.padEnd(widths[i]!))
          .join('  ')
          .trimEnd()}\n`,
      );
  });
}

async function vmShow(name: string, o: AccessOptions & { json?: boolean }): Promise<void> {
  await withAccess(o, async (a) => {
    let s: VmStatus;
    const r = await a.client.getVm(name);
    if (r.ok) s = r.value;
    else if (r.error.code === 'unavailable') {
      const found = (await listFromAnywhere(a)).find((v) => v.name === name);
      if (found === undefined) throw new CliError(`no VM named ${name}`);
      s = found;
    } else throw new CliError(r.error.message);
    if (o.json) {
      process.stdout.write(`${JSON.stringify(s)}\n`);
      return;
    }
    for (const [k, v] of Object.entries(s))
      process.stdout.write(`${k.padEnd(11)} ${v === null ? '-' : String(v)}\n`);
  });
}

/** How long `vm snapshot` waits for the primary's host to send the file. */
const SNAPSHOT_TIMEOUT_MS = 120_000;

async function vmSnapshot(name: string, o: AccessOptions & { out: string; json?: boolean }): Promise<void> {
  await withAccess(
    o,
    async (a) => {
      const s = unwrap(await a.client.getVm(name));
      if (s.primary === null || s.state !== 'running')
        throw new CliError(`vm ${name} is not running (${s.state}), so there is nothing to snapshot`);
      const host = a.hosts.find((h) => h.name === s.primary);
      if (host === undefined) throw new CliError(`vm ${name}'s primary host ${s.primary} is not registered`);
      const r = await postForStream(
        host.api,
        a.token,
        `/v1/vms/${encodeURIComponent(name)}/snapshot`,
        {},
        SNAPSHOT_TIMEOUT_MS,
      );
      if (!r.ok) throw new CliError(`cannot snapshot ${name}: ${r.message}`);
      const out = path.resolve(o.out);
      const tmp = `${out}.tmp-${process.pid}`;
      try {
        await pipeline(r.res, createWriteStream(tmp, { mode: 0o600 }));
        await rename(tmp, out);
      } catch (e) {
        await rm(tmp, { force: true });
        throw new CliError(`cannot write ${out}: ${(e as Error).message}`);
      }
      const bytes = (await stat(out)).size;
      if (o.json) process.stdout.write(`${JSON.stringify({ name, file: out, bytes })}\n`);
      else
        process.stderr.write(
          `vm ${name}: snapshot of ${s.primary}'s copy written to ${out} (${bytes} bytes)\n`,
        );
    },
    SNAPSHOT_TIMEOUT_MS,
  );
}

async function vmRemove(name: string, o: AccessOptions & { json?: boolean }): Promise<void> {
  await withAccess(
    o,
    async (a) => {
      unwrap(await a.client.removeVm(name));
      if (o.json) process.stdout.write(`${JSON.stringify({ removed: name })}\n`);
      else process.stderr.write(`vm ${name} removed\n`);
    },
    CLI_API_CHANGE_TIMEOUT_MS,
  );
}

async function vmLogs(name: string, o: AccessOptions & { bytes: string; json?: boolean }): Promise<void> {
  const bytes = positiveInt(o.bytes, '--bytes');
  await withAccess(o, async (a) => {
    const log = unwrap(await a.client.vmLogs(name, bytes));
    process.stdout.write(o.json ? `${JSON.stringify({ name, log })}\n` : log);
  });
}
