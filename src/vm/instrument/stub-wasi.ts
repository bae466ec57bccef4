// A deliberately tiny WASI preview1 host for the instrumentation tests and the cost benchmark.
//
// Role: just enough of WASI for wasi-libc and Rust std programs that print and sleep: fd_write
// into a buffer, poll_oneoff that returns at once, proc_exit that throws, empty args and
// environment, and deterministic clocks and randomness. It is not the real host (src/wasi/),
// which this folder must not import; it exists so these tests can run real compiled guests.
//
// Invariants: fully deterministic (no clocks, no randomness from the world), so an instrumented
// and an uninstrumented run of the same guest must print exactly the same bytes.

const ERRNO_SUCCESS = 0;
const ERRNO_BADF = 8;
const ERRNO_SPIPE = 70;
const FILETYPE_CHARACTER_DEVICE = 2;

/** Thrown by proc_exit to leave the guest; carries the exit code. */
export class ExitSignal extends Error {
  override name = 'ExitSignal';
  constructor(readonly code: number) {
    super(`proc_exit(${code})`);
  }
}

export type ImportFunction = (...args: never[]) => number | void;

export class StubWasi {
  private memory: WebAssembly.Memory | undefined;
  private readonly chunks: Uint8Array[] = [];
  private clockNs = 1_000_000_000n;
  private randomState = 0x12345678;
  /** How many times poll_oneoff ran to completion. */
  polls = 0;

  constructor(private readonly args: readonly string[] = ['guest']) {}

  /** Binds the stub to an instance's exported memory; call right after instantiation. */
  bind(instance: WebAssembly.Instance): void {
    const memory = instance.exports.memory;
    if (!(memory instanceof WebAssembly.Memory)) throw new Error('guest exports no memory');
    this.memory = memory;
  }

  get output(): string {
    return Buffer.concat(this.chunks).toString('utf8');
  }

  private view(): DataView {
    if (this.memory === undefined) throw new Error('StubWasi used before bind()');
    return new DataView(this.memory.buffer);
  }

  private bytes(): Uint8Array {
    if (this.memory === undefined) throw new Error('StubWasi used before bind()');
    return new Uint8Array(this.memory.buffer);
  }

  private encodedArgs(): Uint8Array[] {
    return this.args.map((a) => Buffer.from(`${a}\0`, 'utf8'));
  }

  /** The import object; `overrides` replace individual functions (tests wrap poll_oneoff). */
  imports(overrides: Record<string, ImportFunction> = {}): WebAssembly.Imports {
    const fns: Record<string, ImportFunction> = {
      args_sizes_get: (argcPtr: number, bufSizePtr: number) => {
        const args = this.encodedArgs();
        this.view().setUint32(argcPtr, args.length, true);
        this.view().setUint32(
          bufSizePtr,
          args.reduce((n, a) => n + a.length, 0),
          true,
        );
        return ERRNO_SUCCESS;
      },
      args_get: (argvPtr: number, bufPtr: number) => {
        let at = bufPtr;
        this.encodedArgs().forEach((arg, i) => {
          this.view().setUint32(argvPtr + 4 * i, at, true);
          this.bytes().set(arg, at);
          at += arg.length;
        });
        return ERRNO_SUCCESS;
      },
      environ_sizes_get: (countPtr: number, sizePtr: number) => {
        this.view().setUint32(countPtr, 0, true);
        this.view().setUint32(sizePtr, 0, true);
        return ERRNO_SUCCESS;
      },
      environ_get: () => ERRNO_SUCCESS,
      fd_write: (fd: number, iovs: number, iovsLen: number, nwrittenPtr: number) => {
        if (fd !== 1 && fd !== 2) return ERRNO_BADF;
        const view = this.view();
        let written = 0;
        for (let i = 0; i < iovsLen; i++) {
          const ptr = view.getUint32(iovs + 8 * i, true);
          const len = view.getUint32(iovs + 8 * i + 4, true);
          this.chunks.push(this.bytes().slice(ptr, ptr + len));
          written += len;
        }
        view.setUint32(nwrittenPtr, written, true);
        return ERRNO_SUCCESS;
      },
      fd_read: (_fd: number, _iovs: number, _iovsLen: number, nreadPtr: number) => {
        this.view().setUint32(nreadPtr, 0, true);
        return ERRNO_SUCCESS;
      },
      fd_close: () => ERRNO_SUCCESS,
      fd_seek: () => ERRNO_SPIPE,
      fd_fdstat_get: (fd: number, statPtr: number) => {
        if (fd > 2) return ERRNO_BADF;
        const view = this.view();
        view.setUint8(statPtr, FILETYPE_CHARACTER_DEVICE);
        view.setUint16(statPtr + 2, 0, true);
        view.setBigUint64(statPtr + 8, 0xffff_ffffn, true);
        view.setBigUint64(statPtr + 16, 0xffff_ffffn, true);
        return ERRNO_SUCCESS;
      },
      fd_prestat_get: () => ERRNO_BADF,
      fd_prestat_dir_name: () => ERRNO_BADF,
      poll_oneoff: (inPtr: number, outPtr: number, subscriptions: number, neventsPtr: number) => {
        // Every subscription fires at once: a clock wait returns immediately.
        const view = this.view();
        for (let i = 0; i < subscriptions; i++) {
          const userdata = view.getBigUint64(inPtr + 48 * i, true);
          const tag = view.getUint8(inPtr + 48 * i + 8);
          const event = outPtr + 32 * i;
          view.setBigUint64(event, userdata, true);
          view.setUint16(event + 8, 0, true);
          view.setUint8(event + 10, tag);
          view.setBigUint64(event + 16, 0n, true);
          view.setUint16(event + 24, 0, true);
        }
        view.setUint32(neventsPtr, subscriptions, true);
        this.polls++;
        return ERRNO_SUCCESS;
      },
      clock_time_get: (_id: number, _precision: bigint, timePtr: number) => {
        this.clockNs += 1_000_000n;
        this.view().setBigUint64(timePtr, this.clockNs, true);
        return ERRNO_SUCCESS;
      },
      random_get: (bufPtr: number, len: number) => {
        const bytes = this.bytes();
        for (let i = 0; i < len; i++) {
          // xorshift32: deterministic filler, good enough for hash-map seeds in tests.
          let x = this.randomState;
          x ^= x << 13;
          x ^= x >>> 17;
          x ^= x << 5;
          this.randomState = x >>> 0;
          bytes[bufPtr + i] = x & 0xff;
        }
        return ERRNO_SUCCESS;
      },
      sched_yield: () => ERRNO_SUCCESS,
      proc_exit: (code: number) => {
        throw new ExitSignal(code);
      },
      ...overrides,
    };
    return { wasi_snapshot_preview1: fns as unknown as WebAssembly.Imports[string] };
  }
}

/** Every import name the stub provides, in the "module.name" form `instrument` expects. */
export const STUB_WASI_IMPORTS: ReadonlySet<string> = new Set(
  Object.keys(new StubWasi().imports().wasi_snapshot_preview1 as object).map(
    (n) => `wasi_snapshot_preview1.${n}`,
  ),
);

export type RunOutcome =
  { kind: 'exit'; code: number } | { kind: 'trap'; error: Error; limit: number | undefined };

/** Runs `_start` of an instance bound to `wasi`; a trap reports the `lockstep_limit` value if any. */
export function runStart(instance: WebAssembly.Instance): RunOutcome {
  const start = instance.exports._start;
  if (typeof start !== 'function') throw new Error('guest exports no _start');
  try {
    start();
    return { kind: 'exit', code: 0 };
  } catch (e) {
    if (e instanceof ExitSignal) return { kind: 'exit', code: e.code };
    if (e instanceof WebAssembly.RuntimeError || e instanceof RangeError) {
      const limit = instance.exports.lockstep_limit;
      return {
        kind: 'trap',
        error: e,
        limit: limit instanceof WebAssembly.Global ? (limit.value as number) : undefined,
      };
    }
    throw e;
  }
}

/** Instantiates `bytes` with a fresh stub and runs it to the end. */
export function runWithStub(
  bytes: Uint8Array,
  args?: readonly string[],
): { outcome: RunOutcome; output: string; instance: WebAssembly.Instance } {
  const wasi = new StubWasi(args);
  const instance = new WebAssembly.Instance(new WebAssembly.Module(bytes), wasi.imports());
  wasi.bind(instance);
  const outcome = runStart(instance);
  return { outcome, output: wasi.output, instance };
}
