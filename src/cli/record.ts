/**
 * `lockstep record`: run a VM on this machine like `run`, and write the event
 * log of every host call's effect (DESIGN.md §5).
 *
 * Exit status: as `run`, except that a stop by SIGINT or SIGTERM exits 0 once
 * the log is flushed and closed with its trailer. The summary JSON is the last
 * line of stdout whenever the guest stopped at a cut (exit, trap, limit,
 * budget, signal).
 */
import path from 'node:path';
import { arch } from 'node:process';
import { Command, Option } from 'commander';
import { CALL_DEPTH_MAX, PAGES_PER_MIB, type VmOutcome } from '../vm/vm.js';
import { StopReason } from '../vm/wasi/signals.js';
import { LogFileWriter } from '../io/log-file.js';
import { folderManifestSha256 } from '../io/manifest.js';
import type { LogHeader, Summary } from '../ft/log/format.js';
import {
  addVmOptions,
  describeOutcome,
  exitStatusFor,
  EXIT_REFUSED,
  loadVmForCli,
  printListening,
  type VmCliOptions,
} from './run.js';

interface RecordCliOptions extends VmCliOptions {
  log: string;
}

export function addRecordCommand(program: Command): void {
  addVmOptions(program.command('record'))
    .description('run a WASI module on this machine and record its event log')
    .addOption(
      new Option(
        '--log <file>',
        'where to write the event log (created with mode 0600)',
      ).makeOptionMandatory(),
    )
    .action(async (wasm: string, args: string[], opts: RecordCliOptions) => {
      process.exitCode = await recordCommand(wasm, args, opts);
    });
}

/** Prints the summary alone on the last line of stdout. */
export function printSummary(summary: Summary, stdoutOpenLine: boolean): void {
  process.stdout.write((stdoutOpenLine ? '\n' : '') + JSON.stringify(summary) + '\n');
}

async function recordCommand(wasm: string, args: string[], opts: RecordCliOptions): Promise<number> {
  const vmArgs = [path.basename(wasm).replace(/\.wasm$/, ''), ...args];
  // The log's descriptor is handed to the vCPU, which appends frames; it is opened after the
  // module is accepted, so a refused module leaves no log behind.
  const log: { mode: 'record'; fd: number } = { mode: 'record', fd: -1 };
  const vm = await loadVmForCli(wasm, vmArgs, opts, log);
  if (vm === null) return EXIT_REFUSED;

  // The log must stay out of the VM's reach: the guest could read its own secret log, and the
  // growing file would make the folder's manifest describe no real state.
  const logAbs = path.resolve(opts.log);
  for (const p of vm.preopens) {
    const rel = path.relative(p.hostPath, logAbs);
    if (rel === '' || (!rel.startsWith('..') && !path.isAbsolute(rel))) {
      process.stderr.write(
        `lockstep: the log ${opts.log} is inside ${p.hostPath}, which the VM sees as ${p.guestPath}; put it elsewhere\n`,
      );
      return EXIT_REFUSED;
    }
  }

  // The header: what the VM starts with. Folders are hashed before the guest can change them.
  let preopens: LogHeader['preopens'];
  try {
    preopens = vm.preopens.map((p) => ({
      guestPath: p.guestPath,
      manifestSha256: folderManifestSha256(p.hostPath),
    }));
  } catch (e) {
    process.stderr.write(`lockstep: cannot read the VM's folders: ${(e as Error).message}\n`);
    return EXIT_REFUSED;
  }
  const header: LogHeader = {
    moduleSha256: Buffer.from(vm.module.sha256, 'hex'),
    sourceSha256: Buffer.from(vm.module.sourceSha256, 'hex'),
    memoryMaxPages: opts.memoryMaxMib * PAGES_PER_MIB,
    callDepthMax: CALL_DEPTH_MAX,
    fuelBudget: opts.cpuBudget ?? null,
    args: vmArgs,
    env: opts.env,
    listeners: opts.listen.map((l) =>
      l.host.includes(':') ? `[${l.host}]:${l.port}` : `${l.host}:${l.port}`,
    ),
    preopens,
    stdin: true,
    nodeVersion: process.version,
    arch,
    createdAtMs: Date.now(),
  };
  let writer: LogFileWriter;
  try {
    writer = LogFileWriter.create(opts.log, header);
  } catch (e) {
    process.stderr.write(`lockstep: cannot create the log: ${(e as Error).message}\n`);
    return EXIT_REFUSED;
  }
  log.fd = writer.fd;
  let outcome: VmOutcome;
  try {
    const addresses = await vm.start();
    printListening(addresses);
    const onSigint = (): void => vm.stop(StopReason.SIGINT);
    const onSigterm = (): void => vm.stop(StopReason.SIGTERM);
    process.on('SIGINT', onSigint);
    process.on('SIGTERM', onSigterm);
    outcome = await vm.wait();
    process.off('SIGINT', onSigint);
    process.off('SIGTERM', onSigterm);
  } catch (e) {
    writer.close();
    process.stderr.write(`lockstep: cannot listen: ${(e as Error).message}\n`);
    return EXIT_REFUSED;
  }
  // The worker has ended: every frame it wrote is in the file; make it durable.
  const logBytes = writer.bytesWritten;
  try {
    writer.close();
  } catch (e) {
    process.stderr.write(`lockstep: cannot write the log: ${(e as Error).message}\n`);
    return EXIT_REFUSED;
  }
  const msg = describeOutcome(outcome);
  if (msg !== null && outcome.stop !== 'signal') process.stderr.write(msg + '\n');
  const summary = 'summary' in outcome ? outcome.summary : undefined;
  if (summary === undefined) {
    process.stderr.write(`lockstep: the log has no trailer (${logBytes} bytes): it is a prefix of the run\n`);
    return exitStatusFor(outcome);
  }
  process.stderr.write(`lockstep: log ${opts.log}: ${summary.events} events, ${logBytes} bytes\n`);
  printSummary(summary, 'stdoutOpenLine' in outcome && outcome.stdoutOpenLine === true);
  // A signal is a clean stop for record: the log is complete up to the cut.
  return outcome.stop === 'signal' ? 0 : exitStatusFor(outcome);
}
