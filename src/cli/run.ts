/**
 * `lockstep run`: one VM on this machine, in the foreground (DESIGN.md §5).
 *
 * Exit status: the guest's exit code; 134 when it traps; 137 when a limit or
 * the CPU budget stops it; 125 when Lockstep refuses or fails (bad module,
 * unknown import, bad option value); 130/143 when stopped by SIGINT/SIGTERM;
 * 2 for usage errors.
 */
import path from 'node:path';
import { createReadStream, existsSync, mkdtempSync, readdirSync, renameSync, rmSync } from 'node:fs';
import os from 'node:os';
import { rename, writeFile } from 'node:fs/promises';
import { Command, InvalidArgumentError, Option } from 'commander';
import { Vm, MEMORY_MAX_MIB_DEFAULT, type VmLog, type VmOutcome, type VmSnapshot } from '../vm/vm.js';
import {
  readVmSnapshot,
  snapshotMismatch,
  writeVmSnapshot,
  type ReadVmSnapshotResult,
} from '../snapshot/vm-snapshot.js';
import { parseListen, type ListenSpec } from '../io/net-device.js';
import type { Preopen } from '../vm/fs/fs.js';
import { StopReason } from '../vm/wasi/signals.js';

export const EXIT_TRAP = 134;
export const EXIT_LIMIT = 137;
export const EXIT_REFUSED = 125;

function collect<T>(parse: (s: string) => T) {
  return (value: string, previous: T[] | undefined): T[] => [...(previous ?? []), parse(value)];
}

export function parseListenOption(s: string): ListenSpec {
  const r = parseListen(s);
  if (typeof r === 'string') throw new InvalidArgumentError(r);
  return r;
}

/** wasmtime's syntax: HOSTDIR::GUESTPATH, or a bare HOSTDIR mapped to the same path. */
export function parseDirOption(s: string): Preopen {
  const i = s.indexOf('::');
  const hostPath = i < 0 ? s : s.slice(0, i);
  const guestPath = i < 0 ? s : s.slice(i + 2);
  if (hostPath === '' || guestPath === '')
    throw new InvalidArgumentError(`expected HOSTDIR::GUESTPATH, got "${s}"`);
  return { hostPath, guestPath };
}

export function parseEnvOption(s: string): string {
  const i = s.indexOf('=');
  if (i <= 0) throw new InvalidArgumentError(`expected KEY=VALUE, got "${s}"`);
  return s;
}

function parsePositiveInt(name: string) {
  return (s: string): number => {
    const n = Number(s);
    if (!Number.isSafeInteger(n) || n <= 0)
      throw new InvalidArgumentError(`${name} must be a positive integer`);
    return n;
  };
}

function parseSeed(s: string): number {
  const n = Number(s);
  if (!/^\d+$/.test(s) || !Number.isSafeInteger(n))
    throw new InvalidArgumentError('the seed must be a non-negative integer');
  return n;
}

function parseBudget(s: string): bigint {
  if (!/^\d+$/.test(s) || BigInt(s) <= 0n)
    throw new InvalidArgumentError('the CPU budget must be a positive integer');
  return BigInt(s);
}

/** Options shared by run and record. */
export function addVmOptions(cmd: Command): Command {
  return cmd
    .argument('<app.wasm>', 'the WASI preview1 module to run')
    .argument('[args...]', 'arguments for the guest (after --)')
    .addOption(
      new Option('--listen <addr:port>', 'preopen a TCP listener as fd 3, 4, … (port 0 picks one)')
        .argParser(collect(parseListenOption))
        .default([]),
    )
    .option('--disk <dir>', 'the VM disk, preopened as /data')
    .addOption(
      new Option('--dir <hostdir::guestpath>', 'preopen another folder (wasmtime syntax)')
        .argParser(collect(parseDirOption))
        .default([]),
    )
    .addOption(
      new Option('--env <key=value>', 'set an environment variable')
        .argParser(collect(parseEnvOption))
        .default([]),
    )
    .addOption(
      new Option('--memory-max-mib <n>', 'memory limit in MiB')
        .argParser(parsePositiveInt('--memory-max-mib'))
        .default(MEMORY_MAX_MIB_DEFAULT),
    )
    .addOption(
      new Option('--trace-calls <file>', 'write per-function host-call counts as JSON (testing)').hideHelp(),
    )
    .addOption(
      new Option('--io-chaos <seed>', 'inject network delays, short reads/writes and resets (testing)')
        .argParser(parseSeed)
        .hideHelp(),
    )
    .addOption(
      new Option(
        '--cpu-budget <fuel>',
        'stop the guest after this much fuel (about one unit per instruction)',
      ).argParser(parseBudget),
    );
}

export interface VmCliOptions {
  listen: ListenSpec[];
  disk?: string;
  dir: Preopen[];
  env: string[];
  memoryMaxMib: number;
  cpuBudget?: bigint;
  traceCalls?: string;
  ioChaos?: number;
}

export function addRunCommand(program: Command): void {
  addVmOptions(program.command('run'))
    .description('run a WASI module as a VM on this machine, in the foreground')
    .option(
      '--from <file>',
      'start from a snapshot (lockstep vm snapshot, or --snapshot-file) instead of from the beginning; same module and options',
    )
    .option(
      '--snapshot-file <file>',
      'on SIGUSR2, write a snapshot of the running VM to this file (the guest pauses at its next host call for the copy)',
    )
    .action(async (wasm: string, args: string[], opts: RunCliOptions) => {
      process.exitCode = await runCommand(wasm, args, opts);
    });
}

interface RunCliOptions extends VmCliOptions {
  from?: string;
  snapshotFile?: string;
}

/** The exit status for a VM outcome (the table in DESIGN.md §5). */
export function exitStatusFor(outcome: VmOutcome): number {
  switch (outcome.stop) {
    case 'exit':
      // A process status holds 8 bits. A non-zero code whose low byte is 0 (256, 512, …)
      // would read as success, so it becomes 255 instead; other codes keep their low byte.
      return outcome.exitCode === 0 ? 0 : outcome.exitCode % 256 === 0 ? 255 : outcome.exitCode % 256;
    case 'trap':
      return EXIT_TRAP;
    case 'limit':
      return EXIT_LIMIT;
    case 'signal':
    case 'killed':
      return outcome.reason === StopReason.SIGTERM
        ? 143
        : outcome.reason === StopReason.SIGINT
          ? 130
          : EXIT_LIMIT;
    case 'host-error':
      return EXIT_REFUSED;
    // Only replay stops these ways; its own command maps them (src/cli/replay.ts).
    case 'end-of-log':
      return 0;
    case 'divergence':
      return 3;
    case 'replay-host-failure':
      return 1;
  }
}

export function describeOutcome(outcome: VmOutcome): string | null {
  switch (outcome.stop) {
    case 'exit':
      return null;
    case 'trap':
      return `lockstep: the guest trapped: ${outcome.message}`;
    case 'limit':
      return `lockstep: the guest was stopped: ${outcome.message}`;
    case 'signal':
      return 'lockstep: stopped by signal';
    case 'killed':
      return 'lockstep: stopped (the guest made no host call within the grace period, so it was terminated)';
    case 'host-error':
      return `lockstep: internal error in the host: ${outcome.message}`;
    case 'end-of-log':
      return null;
    case 'divergence':
      return `lockstep: divergence: ${outcome.divergence.detail}`;
    case 'replay-host-failure':
      return `lockstep: ${outcome.message}`;
  }
}

/** Loading longer than this prints a progress line: instrumenting a module takes seconds the first time. */
const SLOW_LOAD_NOTICE_MS = 400;

/** Loads and instruments the VM for run and record, with a progress line when that is slow. Prints refusals. */
export async function loadVmForCli(
  wasm: string,
  vmArgs: string[],
  opts: VmCliOptions,
  log: VmLog | null,
  restore: VmSnapshot | null = null,
): Promise<Vm | null> {
  const notice = setTimeout(() => {
    process.stderr.write(
      `lockstep: instrumenting ${path.basename(wasm)} (once per module; the result is cached)…\n`,
    );
  }, SLOW_LOAD_NOTICE_MS);
  const loaded = await Vm.load({
    wasmPath: wasm,
    args: vmArgs,
    env: opts.env,
    listen: opts.listen,
    disk: opts.disk ?? null,
    dirs: opts.dir,
    memoryMaxMib: opts.memoryMaxMib,
    cpuBudget: opts.cpuBudget ?? null,
    traceCallsPath: opts.traceCalls ?? null,
    stdin: process.stdin,
    log,
    ioChaosSeed: opts.ioChaos ?? null,
    restore,
  });
  clearTimeout(notice);
  if (!loaded.ok) {
    process.stderr.write(`lockstep: ${loaded.error.message}\n`);
    return null;
  }
  return loaded.vm;
}

export function printListening(addresses: ListenSpec[]): void {
  addresses.forEach((a, i) => {
    const shown = a.host.includes(':') ? `[${a.host}]:${a.port}` : `${a.host}:${a.port}`;
    process.stderr.write(`lockstep: listening on ${shown} (fd ${3 + i})\n`);
  });
}

async function runCommand(wasm: string, args: string[], opts: RunCliOptions): Promise<number> {
  let restore: ReadVmSnapshotResult | null = null;
  if (opts.from !== undefined) {
    // A snapshot's disk (from `vm snapshot`) is read into a staging folder beside --disk, then
    // moved in: --disk must be empty or absent, so nothing of the user's is overwritten.
    const stagingParent = opts.disk !== undefined ? path.dirname(path.resolve(opts.disk)) : os.tmpdir();
    const staging = mkdtempSync(path.join(stagingParent, '.lockstep-restore-'));
    try {
      try {
        restore = await readVmSnapshot(createReadStream(opts.from), { diskInto: staging });
      } catch (e) {
        process.stderr.write(`lockstep: cannot read the snapshot ${opts.from}: ${(e as Error).message}\n`);
        return EXIT_REFUSED;
      }
      if (!restore.ok) {
        process.stderr.write(
          `lockstep: snapshot ${opts.from} refused (${restore.code}): ${restore.message}\n`,
        );
        return EXIT_REFUSED;
      }
      if (restore.header.diskPreopens > 0) {
        const why = moveRestoredDisk(path.join(staging, '0'), opts.disk);
        if (why !== null) {
          process.stderr.write(`lockstep: snapshot ${opts.from}: ${why}\n`);
          return EXIT_REFUSED;
        }
      }
    } finally {
      rmSync(staging, { recursive: true, force: true });
    }
  }
  // A restored guest keeps the arguments and environment it started with (it may hold copies of
  // them in its memory); ones given here must be the same, or the snapshot is refused below.
  const given = args.length > 0 || opts.env.length > 0;
  const restored = restore?.ok === true && !given ? restore.header : null;
  const vm = await loadVmForCli(
    wasm,
    restored?.args ?? [path.basename(wasm).replace(/\.wasm$/, ''), ...args],
    restored === null ? opts : { ...opts, env: restored.env },
    null,
    restore?.ok === true ? restore.snapshot : null,
  );
  if (vm === null) return EXIT_REFUSED;
  if (restore?.ok === true) {
    const why = snapshotMismatch(restore.header, vm, restore.snapshot.capture.globals.length);
    if (why !== null) {
      process.stderr.write(`lockstep: snapshot ${opts.from} does not fit this VM: ${why}\n`);
      return EXIT_REFUSED;
    }
  }
  let addresses: ListenSpec[];
  try {
    addresses = await vm.start();
  } catch (e) {
    process.stderr.write(`lockstep: cannot listen: ${(e as Error).message}\n`);
    return EXIT_REFUSED;
  }
  printListening(addresses);
  const snapshotFile = opts.snapshotFile;
  const onSigusr2 = (): void => {
    if (snapshotFile === undefined) return;
    void writeSnapshotFile(vm, snapshotFile).then(
      (n) => process.stderr.write(`lockstep: snapshot written to ${snapshotFile} (${n} bytes)\n`),
      (e: Error) => process.stderr.write(`lockstep: cannot write the snapshot: ${e.message}\n`),
    );
  };
  if (snapshotFile !== undefined) process.on('SIGUSR2', onSigusr2);
  const onSigint = (): void => vm.stop(StopReason.SIGINT);
  const onSigterm = (): void => vm.stop(StopReason.SIGTERM);
  process.on('SIGINT', onSigint);
  process.on('SIGTERM', onSigterm);
  const outcome = await vm.wait();
  process.off('SIGINT', onSigint);
  process.off('SIGTERM', onSigterm);
  process.off('SIGUSR2', onSigusr2);
  const msg = describeOutcome(outcome);
  if (msg !== null) process.stderr.write(msg + '\n');
  return exitStatusFor(outcome);
}

/**
 * Moves a snapshot's restored /data folder to --disk, which must be given and
 * be empty or absent. Returns why not, or null.
 */
function moveRestoredDisk(from: string, disk: string | undefined): string | null {
  if (disk === undefined)
    return "it carries the VM's disk: give --disk DIR (an empty or absent folder) to restore it into";
  const to = path.resolve(disk);
  if (existsSync(to)) {
    if (readdirSync(to).length > 0) return `--disk ${disk} must be empty to receive the snapshot's disk`;
    rmSync(to, { recursive: true });
  }
  renameSync(from, to);
  return null;
}

/**
 * Takes a snapshot of `vm` and writes it to `file` (mode 0600, through a
 * temporary file renamed into place, so a reader never sees half of one).
 * Resolves with its size in bytes.
 */
async function writeSnapshotFile(vm: Vm, file: string): Promise<number> {
  const snap = await vm.snapshot();
  if (snap === null) throw new Error('the VM stopped first');
  const pieces: Buffer[] = [];
  // The writer hands out views of memory that the next snapshot may change: copy them now.
  await writeVmSnapshot(vm, snap, (p) => pieces.push(...p.map((x) => Buffer.from(x))), Date.now());
  const tmp = `${file}.tmp-${process.pid}`;
  await writeFile(tmp, Buffer.concat(pieces), { mode: 0o600 });
  await rename(tmp, file);
  return pieces.reduce((n, p) => n + p.byteLength, 0);
}
