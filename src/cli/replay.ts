/**
 * `lockstep replay`: re-execute a recorded VM from its event log, offline,
 * without touching the network, and check that it does exactly what the
 * recording did (DESIGN.md §3.1, §5).
 *
 * Exit status: 0 for a faithful replay to the log's end (a log without a
 * trailer is a truncated prefix, and says so); 3 for a divergence (report on
 * stderr); 4 for a corrupt log; 5 for refused input (a log of another module,
 * folders that do not match the manifest, an unsupported version); 1 for
 * other failures, including the replaying host's own disk failing; 2 for
 * usage errors.
 */
import path from 'node:path';
import { Command, Option } from 'commander';
import { Vm, CALL_DEPTH_MAX, PAGES_PER_MIB, type VmOutcome } from '../vm/vm.js';
import { StopReason } from '../vm/wasi/signals.js';
import { ByteRing } from '../ft/ring.js';
import { feedLogFile, scanLogFile, type ScannedLog } from '../io/log-file.js';
import { folderManifestSha256 } from '../io/manifest.js';
import { LogError } from '../ft/log/scanner.js';
import type { Summary } from '../ft/log/format.js';
import { parseDirOption } from './run.js';
import type { Preopen } from '../vm/fs/fs.js';
import { printSummary } from './record.js';

export const EXIT_DIVERGENCE = 3;
export const EXIT_CORRUPT = 4;
export const EXIT_REFUSED_INPUT = 5;
const EXIT_FAILURE = 1;
/** How often a long replay reports its progress on stderr. */
const PROGRESS_INTERVAL_MS = 5000;

interface ReplayCliOptions {
  log: string;
  disk?: string;
  dir: Preopen[];
  showOutput?: boolean;
  ignoreModuleHash?: boolean;
}

function collect<T>(parse: (s: string) => T) {
  return (value: string, previous: T[] | undefined): T[] => [...(previous ?? []), parse(value)];
}

export function addReplayCommand(program: Command): void {
  program
    .command('replay')
    .description('replay a recorded event log offline and check that it reproduces the recording')
    .argument('<app.wasm>', 'the module that was recorded')
    .addOption(new Option('--log <file>', 'the event log to replay').makeOptionMandatory())
    .option('--disk <dir>', 'a copy of the VM disk as it was before recording (preopened as /data)')
    .addOption(
      new Option('--dir <hostdir::guestpath>', 'copies of the other folders, as they were before recording')
        .argParser(collect(parseDirOption))
        .default([]),
    )
    .option('--show-output', "emit the guest's outputs (stdout, stderr; socket outputs described on stderr)")
    .option(
      '--ignore-module-hash',
      'replay with a module other than the recorded one, to find where it behaves differently (forensics)',
    )
    .action(async (wasm: string, opts: ReplayCliOptions) => {
      process.exitCode = await replayCommand(wasm, opts);
    });
}

function fail(code: number, message: string): number {
  process.stderr.write(`lockstep: ${message}\n`);
  return code;
}

async function replayCommand(wasm: string, opts: ReplayCliOptions): Promise<number> {
  // 1. The whole log is checked before anything runs: a corrupt log replays nothing.
  let scanned: ScannedLog;
  try {
    scanned = await scanLogFile(opts.log);
  } catch (e) {
    if (e instanceof LogError) {
      const code =
        e.kind === 'corrupt' ? EXIT_CORRUPT : e.kind === 'refused' ? EXIT_REFUSED_INPUT : EXIT_FAILURE;
      return fail(code, `${opts.log}: ${e.message}`);
    }
    throw e;
  }
  const h = scanned.header;
  if (h.callDepthMax !== CALL_DEPTH_MAX) {
    return fail(
      EXIT_REFUSED_INPUT,
      `the log was recorded with call-depth limit ${h.callDepthMax}; this Lockstep uses ${CALL_DEPTH_MAX}`,
    );
  }
  if (h.memoryMaxPages % PAGES_PER_MIB !== 0) {
    return fail(
      EXIT_REFUSED_INPUT,
      `the log's memory limit (${h.memoryMaxPages} pages) is not a whole number of MiB`,
    );
  }

  // 2. The folders: same guest paths in the same order, same content as when recording began.
  const given: Preopen[] = [];
  if (opts.disk !== undefined) given.push({ guestPath: '/data', hostPath: path.resolve(opts.disk) });
  for (const d of opts.dir) given.push({ guestPath: d.guestPath, hostPath: path.resolve(d.hostPath) });
  const want = h.preopens.map((p) => p.guestPath);
  const got = given.map((p) => p.guestPath);
  if (want.join('\0') !== got.join('\0')) {
    const show = (l: string[]): string => (l.length === 0 ? 'none' : l.join(', '));
    return fail(
      EXIT_REFUSED_INPUT,
      `the recorded VM had folders ${show(want)}; replay was given ${show(got)} (use --disk for /data and --dir HOSTDIR::GUESTPATH for the others)`,
    );
  }
  for (let i = 0; i < given.length; i++) {
    let sha: Uint8Array;
    try {
      sha = folderManifestSha256(given[i]!.hostPath);
    } catch (e) {
      return fail(EXIT_REFUSED_INPUT, `cannot read ${given[i]!.hostPath}: ${(e as Error).message}`);
    }
    if (Buffer.compare(Buffer.from(sha), Buffer.from(h.preopens[i]!.manifestSha256)) !== 0) {
      return fail(
        EXIT_REFUSED_INPUT,
        `${given[i]!.hostPath} does not match the folder ${want[i]} as it was when recording began (names, types, sizes or bytes differ); replay needs a copy taken before recording`,
      );
    }
  }

  // 3. The module: instrumented as when recording, it must be the very module that ran.
  const ring = ByteRing.create();
  const loaded = await Vm.load({
    wasmPath: wasm,
    args: h.args,
    env: h.env,
    listen: [],
    disk: opts.disk ?? null,
    dirs: opts.dir,
    memoryMaxMib: h.memoryMaxPages / PAGES_PER_MIB,
    cpuBudget: h.fuelBudget,
    log: { mode: 'replay', ring, showOutput: opts.showOutput === true, listenerCount: h.listeners.length },
  });
  if (!loaded.ok) {
    return fail(loaded.error.code === 'instrument' ? EXIT_REFUSED_INPUT : EXIT_FAILURE, loaded.error.message);
  }
  const vm = loaded.vm;
  const logModule = Buffer.from(h.moduleSha256).toString('hex');
  if (vm.module.sha256 !== logModule && opts.ignoreModuleHash === true) {
    process.stderr.write(
      'lockstep: warning: this module is not the one recorded; replaying anyway (--ignore-module-hash)\n',
    );
  } else if (vm.module.sha256 !== logModule) {
    return fail(
      EXIT_REFUSED_INPUT,
      `the log was recorded from another module: it ran ${Buffer.from(h.sourceSha256).toString('hex').slice(0, 16)}… ` +
        `(instrumented ${logModule.slice(0, 16)}…), and ${wasm} is ${vm.module.sourceSha256.slice(0, 16)}… ` +
        `(instrumented ${vm.module.sha256.slice(0, 16)}…)`,
    );
  }

  // 4. Run, feeding the log as the vCPU consumes it.
  let stopped = false;
  await vm.start();
  const progress = { bytesRead: 0 };
  const fed = feedLogFile(opts.log, ring, () => stopped, progress);
  // A long replay says how far it is (the feeder runs at most one ring, 8 MiB, ahead of the guest).
  const ticker = setInterval(() => {
    const pct = scanned.fileBytes > 0 ? Math.floor((100 * progress.bytesRead) / scanned.fileBytes) : 100;
    process.stderr.write(`lockstep: replaying… ${pct}% of the log read\n`);
  }, PROGRESS_INTERVAL_MS);
  ticker.unref();
  const onSigint = (): void => vm.stop(StopReason.SIGINT);
  const onSigterm = (): void => vm.stop(StopReason.SIGTERM);
  process.on('SIGINT', onSigint);
  process.on('SIGTERM', onSigterm);
  const outcome = await vm.wait();
  clearInterval(ticker);
  stopped = true;
  process.off('SIGINT', onSigint);
  process.off('SIGTERM', onSigterm);
  await fed.catch(() => {});
  return finish(outcome, scanned);
}

/** Compares what replay reached with the recording's trailer, reports, and picks the exit status. */
function finish(outcome: VmOutcome, scanned: ScannedLog): number {
  const summary: Summary | undefined = 'summary' in outcome ? outcome.summary : undefined;
  const openLine = 'stdoutOpenLine' in outcome && outcome.stdoutOpenLine === true;
  switch (outcome.stop) {
    case 'host-error':
      return fail(EXIT_FAILURE, `internal error in the host: ${outcome.message}`);
    case 'killed':
      return fail(EXIT_FAILURE, 'replay was stopped (the guest made no host call within the grace period)');
    case 'replay-host-failure':
      if (summary) printSummary(summary, openLine);
      return fail(EXIT_FAILURE, outcome.message);
    case 'divergence': {
      if (summary) printSummary(summary, openLine);
      const d = outcome.divergence;
      const found = d.found.args ? `${d.found.fn}(${d.found.args.join(', ')})` : d.found.fn;
      process.stderr.write(
        `lockstep: divergence at call ${d.seq}: ${d.detail}\n` +
          `  expected: ${d.expected.fn} (argument hash ${hex4(d.expected.argHash)})\n` +
          `  found:    ${found} (argument hash ${hex4(d.found.argHash)})\n`,
      );
      return EXIT_DIVERGENCE;
    }
    default:
      break;
  }
  if (summary === undefined) return fail(EXIT_FAILURE, 'replay ended without a summary');
  printSummary(summary, openLine);
  if (outcome.stop === 'signal') {
    process.stderr.write(`lockstep: replay interrupted after ${summary.events} events\n`);
    return outcome.reason === StopReason.SIGTERM ? 143 : 130;
  }
  const t = scanned.trailer;
  if (t === null) {
    process.stderr.write(
      `lockstep: the log is a truncated prefix (${scanned.end.note ?? 'no trailer'}); replayed its ${summary.events} events\n`,
    );
    return 0;
  }
  // The recording stopped at a signal cut, which replay reaches as the end of the log.
  const stopMatches = t.stop === summary.stop || (t.stop === 'signal' && summary.stop === 'end-of-log');
  const diffs: string[] = [];
  if (t.events !== summary.events) diffs.push(`events: recorded ${t.events}, replayed ${summary.events}`);
  if (!stopMatches) diffs.push(`stop: recorded ${t.stop}, replayed ${summary.stop}`);
  if (t.exitCode !== summary.exitCode)
    diffs.push(`exit code: recorded ${t.exitCode}, replayed ${summary.exitCode}`);
  if (t.outputSha256 !== summary.outputSha256) diffs.push('outputs differ (outputSha256)');
  if (t.memorySha256 !== summary.memorySha256) diffs.push('final memory differs (memorySha256)');
  if (diffs.length > 0) {
    process.stderr.write(
      `lockstep: divergence at the end of the log (call ${summary.events}):\n  ${diffs.join('\n  ')}\n`,
    );
    return EXIT_DIVERGENCE;
  }
  process.stderr.write(`lockstep: replay matches the recording (${summary.events} events)\n`);
  return 0;
}

function hex4(n: number): string {
  return '0x' + n.toString(16).padStart(4, '0');
}
