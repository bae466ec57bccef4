/**
 * LocalVm: one VM that this host runs, at one generation.
 *
 * Role: prepare the VM's files in the host's data folder (its disk copy and
 * console log), load and start it with the VM core (src/vm), and report its
 * state changes. The daemon decides when to start and stop; this carries it
 * out.
 *
 * Layout under DATA/vms/NAME/:
 *   disk/            the VM's disk (preopened as /data)
 *   disk.generation  the generation that last ran on this disk, as text
 *   console.log      the guest's stdout and stderr, appended
 *
 * Invariants:
 * - The disk is reused only when this host ran this generation (the host
 *   restarted) or the directly preceding one (a stop and start on the same
 *   host); otherwise it is copied
 *   afresh from the VM's disk image, so a host never resumes from a disk it
 *   left behind before another host ran the VM.
 * - onState is called for every state change, in order, and 'stopped' or
 *   'failed' is the last call.
 * - stop() with discardOutputs holds every network output first: nothing the
 *   VM computed after losing its generation leaves the host.
 */
import { cp, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { closeSync, existsSync, openSync, writeSync } from 'node:fs';
import path from 'node:path';
import type { VmRunState, VmSpec } from '../coord/records.js';
import { Vm, type VmOutcome } from '../vm/vm.js';
import { StopReason } from '../vm/wasi/signals.js';
import { parseListen } from '../io/net-device.js';

export interface LocalVmEvent {
  state: VmRunState;
  message: string | null;
  exitCode: number | null;
}

export function vmDataDir(hostData: string, vmName: string): string {
  return path.join(hostData, 'vms', vmName);
}

export class LocalVm {
  state: VmRunState = 'starting';
  private vm: Vm | null = null;
  private stopRequested = false;

  constructor(
    readonly spec: VmSpec,
    readonly generation: number,
    private readonly hostData: string,
    private readonly cacheDir: string | undefined,
    private readonly onState: (e: LocalVmEvent) => void,
  ) {}

  get dir(): string {
    return vmDataDir(this.hostData, this.spec.name);
  }

  get consoleLog(): string {
    return path.join(this.dir, 'console.log');
  }

  /** Prepares the files and starts the VM; the outcome arrives through onState. */
  async start(): Promise<void> {
    this.onState({ state: 'starting', message: null, exitCode: null });
    let consoleFd = -1;
    try {
      await mkdir(this.dir, { recursive: true });
      const disk = await this.prepareDisk();
      consoleFd = openSync(this.consoleLog, 'a', 0o600);
      writeSync(consoleFd, `--- lockstep: ${this.spec.name} generation ${this.generation} starting\n`);
      const listen = parseListen(this.spec.listen);
      if (typeof listen === 'string')
        return this.finish('failed', `bad service address: ${listen}`, null, consoleFd);
      const loaded = await Vm.load({
        wasmPath: this.spec.wasmPath,
        args: this.spec.args,
        env: this.spec.env,
        listen: [listen],
        disk,
        dirs: [],
        memoryMaxMib: this.spec.memoryMaxMib,
        cpuBudget: null,
        stdioFds: { stdout: consoleFd, stderr: consoleFd },
        instrumentInWorker: true,
        ...(this.cacheDir !== undefined ? { cacheDir: this.cacheDir } : {}),
      });
      if (!loaded.ok) return this.finish('failed', loaded.error.message, null, consoleFd);
      if (this.stopRequested) return this.finish('stopped', 'stopped before it started', null, consoleFd);
      this.vm = loaded.vm;
      try {
        await loaded.vm.start();
      } catch (e) {
        return this.finish(
          'failed',
          `cannot bind ${this.spec.listen}: ${(e as Error).message}`,
          null,
          consoleFd,
        );
      }
      this.state = 'running';
      this.onState({ state: 'running', message: null, exitCode: null });
      const fd = consoleFd;
      void loaded.vm.wait().then((o) => this.finishWithOutcome(o, fd));
    } catch (e) {
      this.finish('failed', (e as Error).message, null, consoleFd);
    }
  }

  /** Asks the VM to stop; with discardOutputs, nothing it still holds or sends leaves the host. */
  stop(discardOutputs: boolean): void {
    this.stopRequested = true;
    if (discardOutputs) this.vm?.holdOutputs(true);
    this.vm?.stop(StopReason.HOST);
  }

  holdOutputs(held: boolean): void {
    this.vm?.holdOutputs(held);
  }

  /** Copies the disk image unless this host ran the previous generation on the disk it has. */
  private async prepareDisk(): Promise<string | null> {
    if (this.spec.disk === null) return null;
    const disk = path.join(this.dir, 'disk');
    const marker = path.join(this.dir, 'disk.generation');
    let last = -1;
    try {
      last = Number((await readFile(marker, 'utf8')).trim());
    } catch {
      last = -1;
    }
    // The same generation again is a restart of this host; the one before is a stop and start here.
    if (!(existsSync(disk) && (last === this.generation || last === this.generation - 1))) {
      await rm(disk, { recursive: true, force: true });
      await cp(this.spec.disk, disk, { recursive: true, errorOnExist: false, force: true });
    }
    await writeFile(marker, `${this.generation}\n`);
    return disk;
  }

  private finishWithOutcome(o: VmOutcome, consoleFd: number): void {
    switch (o.stop) {
      case 'exit':
        return this.finish(
          o.exitCode === 0 || this.stopRequested ? 'stopped' : 'failed',
          `guest exited with ${o.exitCode}`,
          o.exitCode,
          consoleFd,
        );
      case 'trap':
        return this.finish('failed', `guest trapped: ${o.message}`, null, consoleFd);
      case 'limit':
        return this.finish('failed', `stopped by a limit (${o.limit}): ${o.message}`, null, consoleFd);
      case 'signal':
      case 'killed':
        return this.finish('stopped', 'stopped', null, consoleFd);
      case 'host-error':
        return this.finish('failed', `host error: ${o.message}`, null, consoleFd);
      default:
        return this.finish('failed', `unexpected stop: ${o.stop}`, null, consoleFd);
    }
  }

  private finish(
    state: 'stopped' | 'failed',
    message: string,
    exitCode: number | null,
    consoleFd: number,
  ): void {
    if (consoleFd >= 0) {
      try {
        writeSync(consoleFd, `--- lockstep: ${this.spec.name} ${state}: ${message}\n`);
        closeSync(consoleFd);
      } catch {
        // The console log is for people; failing to write it must not hide the VM's state.
      }
    }
    this.state = state;
    this.vm = null;
    this.onState({ state, message, exitCode });
  }
}
