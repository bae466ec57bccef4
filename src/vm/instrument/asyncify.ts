// Snapshot mechanics for instrumented modules: unwind the guest stack at a host call, capture
// the machine, and rewind it, in the same instance or in a fresh one.
//
// Role: the host, inside an import call, asks for an unwind; when the export it called returns,
// the stack lives in linear memory and `finishUnwind` captures memory plus every mutable global.
// `startRewind` loads a capture into an instance (the same one or a fresh one) and the host calls
// the same export again; asyncify replays the call chain down to the import, which calls
// `finishRewind` and returns the value the original call would have returned.
//
// The asyncify data region sits in the top bytes of current linear memory, which may belong to
// the guest (the heap grows up to there). The region's original bytes are saved before the
// unwind and put back the moment the rewind completes, so the guest never sees them changed.
// The captured image holds the original bytes as well, so a memory hash of the image is the
// guest's own memory; asyncify's stack travels separately in `Capture.stack`.
//
// Invariants: the state machine is normal -> unwinding -> (export returns) -> normal (captured)
// -> rewinding -> (import re-entered) -> normal; any other order is a host bug and asserts.
// While unwinding or rewinding no guest code runs, only asyncify's own save/restore code (our
// counters are skipped by asyncify in those states, see passes.ts).

import { ASYNCIFY_EXPORTS } from './pipeline.js';
import { assert } from './wasm-binary.js';

export type AsyncifyState = 'normal' | 'unwinding' | 'rewinding';

/**
 * Default size of the asyncify data region (capped at the memory's size). It must hold the
 * live locals of every frame on the stack: 1 MiB covers the default call-depth limit at about
 * 100 bytes per frame. If it is too small, asyncify traps during the unwind; the host sees the
 * export throw while `state` is still 'unwinding' and must not classify that as a guest trap.
 */
export const ASYNCIFY_DATA_BYTES_DEFAULT = 1024 * 1024;

/** asyncify's data header: i32 current position, i32 end, then the saved stack. */
const HEADER_BYTES = 8;

export interface Capture {
  /** The guest's whole linear memory, with the guest's own bytes in the asyncify region. */
  memory: Uint8Array;
  /** Values of every mutable global, in `globalExports` order. */
  globals: Array<number | bigint>;
  /** The unwound call stack as asyncify wrote it. */
  stack: Uint8Array;
  /** Where the region lay; the rewind puts the stack back at the same place. */
  regionStart: number;
  regionEnd: number;
  /** What the interrupted import returns once the rewind reaches it. */
  resumeValue: number | bigint;
}

interface AsyncifyExports {
  asyncify_start_unwind(dataAddress: number): void;
  asyncify_stop_unwind(): void;
  asyncify_start_rewind(dataAddress: number): void;
  asyncify_stop_rewind(): void;
  asyncify_get_state(): number;
}

const STATES: readonly AsyncifyState[] = ['normal', 'unwinding', 'rewinding'];

export class AsyncifyController {
  private readonly exports: AsyncifyExports;
  private readonly memory: WebAssembly.Memory;
  private readonly globals: WebAssembly.Global[];
  private readonly dataBytes: number;
  /** Guest bytes hidden under the region while it is in use, with where they came from. */
  private saved: { start: number; bytes: Uint8Array } | undefined;
  private resumeValue: number | bigint = 0;

  constructor(
    instance: WebAssembly.Instance,
    globalExports: readonly string[],
    options: { dataBytes?: number } = {},
  ) {
    const e = instance.exports;
    for (const name of ASYNCIFY_EXPORTS) assert(typeof e[name] === 'function', `instance exports ${name}`);
    assert(e.memory instanceof WebAssembly.Memory, 'instance exports memory');
    this.exports = e as unknown as AsyncifyExports;
    this.memory = e.memory;
    this.globals = globalExports.map((name) => {
      const g = e[name];
      assert(g instanceof WebAssembly.Global, `instance exports global ${name}`);
      return g;
    });
    this.dataBytes = options.dataBytes ?? ASYNCIFY_DATA_BYTES_DEFAULT;
    assert(
      this.dataBytes >= 1024 && this.dataBytes % 16 === 0,
      'data region is at least 1 KiB, 16-byte multiple',
    );
  }

  get state(): AsyncifyState {
    const state = STATES[this.exports.asyncify_get_state()];
    assert(state !== undefined, 'known asyncify state');
    return state;
  }

  /**
   * Called inside an import: begins unwinding. The import must then return (any value; it is
   * ignored), and the export the host called returns once the stack is saved.
   * `resumeValue` is what the import will return when the stack is rewound.
   */
  startUnwind(resumeValue: number | bigint): void {
    assert(this.state === 'normal' && this.saved === undefined, 'unwind starts from the normal state');
    const end = this.memory.buffer.byteLength;
    const start = Math.max(0, end - this.dataBytes);
    assert(end - start > HEADER_BYTES, 'memory can hold the data region');
    this.saved = { start, bytes: new Uint8Array(this.memory.buffer, start, end - start).slice() };
    const view = new DataView(this.memory.buffer);
    view.setUint32(start, start + HEADER_BYTES, true);
    view.setUint32(start + 4, end, true);
    this.resumeValue = resumeValue;
    this.exports.asyncify_start_unwind(start);
  }

  /**
   * Called after the export returned while unwinding: stops the unwind, puts the guest's own
   * bytes back under the region and returns the capture.
   */
  /**
   * `into`, when it is big enough, receives the copy of memory (a buffer whose
   * pages were touched ahead of time copies several times faster than fresh
   * memory, and the copy is what the guest waits for); otherwise a new buffer.
   */
  finishUnwind(into: ArrayBuffer | null = null): Capture {
    assert(this.state === 'unwinding' && this.saved !== undefined, 'finishUnwind follows startUnwind');
    this.exports.asyncify_stop_unwind();
    const { start, bytes } = this.saved;
    this.saved = undefined;
    const live = new Uint8Array(this.memory.buffer);
    const stackEnd = new DataView(this.memory.buffer).getUint32(start, true);
    assert(
      stackEnd >= start + HEADER_BYTES && stackEnd <= start + bytes.length,
      'asyncify stack inside region',
    );
    const stack = live.slice(start + HEADER_BYTES, stackEnd);
    live.set(bytes, start);
    const memory =
      into !== null && into.byteLength >= live.byteLength ? new Uint8Array(into, 0, live.byteLength) : null;
    memory?.set(live);
    return {
      memory: memory ?? live.slice(),
      globals: this.globals.map((g) => g.value as number | bigint),
      stack,
      regionStart: start,
      regionEnd: start + bytes.length,
      resumeValue: this.resumeValue,
    };
  }

  /**
   * Loads `capture` into this instance (memory grown to size, every mutable global restored)
   * and begins rewinding. The host then calls the same export it called originally.
   */
  startRewind(capture: Capture): void {
    assert(this.state === 'normal' && this.saved === undefined, 'rewind starts from the normal state');
    assert(capture.globals.length === this.globals.length, 'capture has one value per mutable global');
    const pageBytes = 65536;
    const current = this.memory.buffer.byteLength;
    assert(
      capture.memory.length % pageBytes === 0 && capture.memory.length >= current,
      'memory can be restored',
    );
    if (capture.memory.length > current) this.memory.grow((capture.memory.length - current) / pageBytes);
    new Uint8Array(this.memory.buffer).set(capture.memory);
    this.globals.forEach((g, i) => {
      g.value = capture.globals[i];
    });
    this.rewindStack(capture);
  }

  /**
   * Resumes the instance that was just unwound, without copying its memory
   * back: memory and globals are still what the capture holds (finishUnwind
   * put the guest's bytes back under the region). The host then calls the
   * same export again.
   */
  resumeInPlace(capture: Capture): void {
    assert(this.state === 'normal' && this.saved === undefined, 'rewind starts from the normal state');
    assert(this.memory.buffer.byteLength === capture.memory.length, 'resumes the instance it captured');
    this.rewindStack(capture);
  }

  private rewindStack(capture: Capture): void {
    const live = new Uint8Array(this.memory.buffer);
    const { regionStart: start, regionEnd: end } = capture;
    assert(end - start >= HEADER_BYTES + capture.stack.length, 'stack fits the region');
    this.saved = { start, bytes: live.slice(start, end) };
    live.set(capture.stack, start + HEADER_BYTES);
    const view = new DataView(this.memory.buffer);
    // Asyncify rewinds by reading its stack back from the top, so `current` is the stack's end.
    view.setUint32(start, start + HEADER_BYTES + capture.stack.length, true);
    view.setUint32(start + 4, end, true);
    this.resumeValue = capture.resumeValue;
    this.exports.asyncify_start_rewind(start);
  }

  /**
   * Called inside the import that was interrupted, when the rewind re-enters it: stops the
   * rewind, restores the guest's bytes under the region and returns what the import returns.
   */
  finishRewind(): number | bigint {
    assert(this.state === 'rewinding' && this.saved !== undefined, 'finishRewind follows startRewind');
    this.exports.asyncify_stop_rewind();
    const { start, bytes } = this.saved;
    this.saved = undefined;
    const consumed = new DataView(this.memory.buffer).getUint32(start, true);
    assert(consumed === start + HEADER_BYTES, 'asyncify consumed the whole saved stack');
    new Uint8Array(this.memory.buffer).set(bytes, start);
    return this.resumeValue;
  }
}
