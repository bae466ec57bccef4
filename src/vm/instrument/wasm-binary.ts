// Minimal WebAssembly binary reader and writer for the instrumentation passes.
//
// Role: decode the module structure (sections, types, imports, memories, globals, exports,
// function bodies) and encode the few sections the passes rewrite. Everything else is copied
// byte for byte, so the passes only ever append types, locals, globals and exports and never
// renumber an existing index; the name section therefore stays valid.
//
// Invariants: every read is bounds-checked and a violation throws DecodeError, which the
// pipeline turns into a `malformed` result; no decoder path indexes past `end`. Features the
// pipeline refuses are reported through FeatureError with the feature's human name, so the
// caller can say exactly what is unsupported.

export class DecodeError extends Error {
  override name = 'DecodeError';
}

/** A feature Lockstep refuses; `feature` is the human name used in the error message. */
export class FeatureError extends Error {
  override name = 'FeatureError';
  constructor(
    readonly feature: string,
    detail: string,
  ) {
    super(`${feature}: ${detail}`);
  }
}

export function assert(condition: unknown, message: string): asserts condition {
  if (!condition) throw new Error(`assertion failed: ${message}`);
}

const utf8 = new TextDecoder('utf-8', { fatal: true });
const utf8Encoder = new TextEncoder();

export class Reader {
  pos: number;
  constructor(
    readonly bytes: Uint8Array,
    pos = 0,
    readonly end = bytes.length,
  ) {
    this.pos = pos;
  }

  get done(): boolean {
    return this.pos >= this.end;
  }

  u8(): number {
    if (this.pos >= this.end) throw new DecodeError(`unexpected end of data at byte ${this.pos}`);
    return this.bytes[this.pos++] as number;
  }

  peek(): number {
    if (this.pos >= this.end) throw new DecodeError(`unexpected end of data at byte ${this.pos}`);
    return this.bytes[this.pos] as number;
  }

  /** Unsigned 32-bit LEB128. */
  u32(): number {
    let result = 0;
    let shift = 0;
    for (let i = 0; i < 5; i++) {
      const byte = this.u8();
      result += (byte & 0x7f) * 2 ** shift;
      if ((byte & 0x80) === 0) {
        if (result > 0xffffffff) throw new DecodeError(`u32 out of range at byte ${this.pos}`);
        return result;
      }
      shift += 7;
    }
    throw new DecodeError(`u32 LEB128 too long at byte ${this.pos}`);
  }

  /** Skips a signed LEB128 of at most `maxBytes` bytes (s33 block types, s64 constants). */
  skipLeb(maxBytes: number): void {
    for (let i = 0; i < maxBytes; i++) {
      if ((this.u8() & 0x80) === 0) return;
    }
    throw new DecodeError(`LEB128 too long at byte ${this.pos}`);
  }

  /** Signed 33-bit LEB128 as used by block types; returns a non-negative type index or a negative code. */
  s33(): number {
    let result = 0;
    let shift = 0;
    let byte: number;
    let count = 0;
    do {
      if (++count > 5) throw new DecodeError(`s33 LEB128 too long at byte ${this.pos}`);
      byte = this.u8();
      result += (byte & 0x7f) * 2 ** shift;
      shift += 7;
    } while (byte & 0x80);
    if (byte & 0x40) result -= 2 ** shift;
    return result;
  }

  skip(n: number): void {
    if (n < 0 || this.pos + n > this.end) throw new DecodeError(`unexpected end of data at byte ${this.pos}`);
    this.pos += n;
  }

  take(n: number): Uint8Array {
    const start = this.pos;
    this.skip(n);
    return this.bytes.subarray(start, start + n);
  }

  name(): string {
    const length = this.u32();
    try {
      return utf8.decode(this.take(length));
    } catch (e) {
      if (e instanceof DecodeError) throw e;
      throw new DecodeError(`invalid UTF-8 name at byte ${this.pos}`);
    }
  }
}

/** Growable byte buffer with the LEB128 encoders the passes need. */
export class Writer {
  private buf = new Uint8Array(1024);
  length = 0;

  private reserve(extra: number): void {
    if (this.length + extra <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.length + extra) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.length));
    this.buf = next;
  }

  u8(byte: number): this {
    this.reserve(1);
    this.buf[this.length++] = byte & 0xff;
    return this;
  }

  u32(value: number): this {
    assert(Number.isInteger(value) && value >= 0 && value <= 0xffffffff, `u32 out of range: ${value}`);
    do {
      let byte = value % 128;
      value = Math.floor(value / 128);
      if (value !== 0) byte |= 0x80;
      this.u8(byte);
    } while (value !== 0);
    return this;
  }

  s32(value: number): this {
    assert(Number.isInteger(value) && value >= -(2 ** 31) && value < 2 ** 31, `s32 out of range: ${value}`);
    return this.s64(BigInt(value));
  }

  s64(value: bigint): this {
    for (;;) {
      const byte = Number(value & 0x7fn);
      value >>= 7n;
      const signBitSet = (byte & 0x40) !== 0;
      if ((value === 0n && !signBitSet) || (value === -1n && signBitSet)) {
        this.u8(byte);
        return this;
      }
      this.u8(byte | 0x80);
    }
  }

  bytes(data: Uint8Array | readonly number[]): this {
    this.reserve(data.length);
    this.buf.set(data, this.length);
    this.length += data.length;
    return this;
  }

  name(text: string): this {
    const encoded = utf8Encoder.encode(text);
    return this.u32(encoded.length).bytes(encoded);
  }

  finish(): Uint8Array {
    return this.buf.slice(0, this.length);
  }
}

export const SectionId = {
  custom: 0,
  type: 1,
  import: 2,
  function: 3,
  table: 4,
  memory: 5,
  global: 6,
  export: 7,
  start: 8,
  element: 9,
  code: 10,
  data: 11,
  dataCount: 12,
  tag: 13,
} as const;

/** The order non-custom sections must appear in (the tag section sits between memory and global). */
export const SECTION_ORDER: readonly number[] = [1, 2, 3, 4, 5, 13, 6, 7, 8, 9, 12, 10, 11];

export const ValType = {
  i32: 0x7f,
  i64: 0x7e,
  f32: 0x7d,
  f64: 0x7c,
  v128: 0x7b,
  funcref: 0x70,
  externref: 0x6f,
} as const;

const VALTYPES = new Set<number>(Object.values(ValType));

export function isValType(byte: number): boolean {
  return VALTYPES.has(byte);
}

export interface Section {
  id: number;
  /** Offset of the section's id byte in the module. */
  start: number;
  /** Offset of the first payload byte. */
  payloadStart: number;
  /** Offset one past the last payload byte. */
  end: number;
  /** The custom section's name, for custom sections only. */
  customName?: string;
}

export interface FuncType {
  params: number[];
  results: number[];
}

export interface Import {
  module: string;
  name: string;
  /** 0 function, 1 table, 2 memory, 3 global, 4 tag. */
  kind: number;
  typeIndex: number;
}

export interface Limits {
  flags: number;
  min: number;
  max: number | undefined;
}

export interface GlobalDecl {
  valType: number;
  mutable: boolean;
}

export interface Export {
  name: string;
  kind: number;
  index: number;
}

export interface FuncBody {
  /** Offset of the body's locals vector (just after its size prefix). */
  start: number;
  /** Offset one past the body's final `end`. */
  end: number;
  /** Offset of the first instruction. */
  codeStart: number;
  /** Local declarations as (count, type) runs, excluding parameters. */
  localRuns: Array<[number, number]>;
  localCount: number;
}

export interface ParsedModule {
  bytes: Uint8Array;
  sections: Section[];
  types: FuncType[];
  imports: Import[];
  importedFuncCount: number;
  /** Type index of every defined function, in order. */
  funcTypes: number[];
  tableCount: number;
  memories: Limits[];
  importedGlobalCount: number;
  globals: GlobalDecl[];
  exports: Export[];
  hasStart: boolean;
  bodies: FuncBody[];
  hasDataCount: boolean;
}

export function readLimits(r: Reader, what: 'memory' | 'table'): Limits {
  const flags = r.u8();
  if (what === 'memory') {
    if (flags & 0x02) throw new FeatureError('threads', 'shared memory is not supported');
    if (flags & 0x04) throw new FeatureError('memory64', '64-bit memories are not supported');
    if (flags & ~0x07)
      throw new FeatureError('custom page sizes', `unsupported memory limits flags 0x${flags.toString(16)}`);
  } else if (flags & ~0x01) {
    throw new FeatureError('table64', `unsupported table limits flags 0x${flags.toString(16)}`);
  }
  const min = r.u32();
  const max = flags & 0x01 ? r.u32() : undefined;
  return { flags, min, max };
}

export function writeLimits(w: Writer, limits: Limits): void {
  w.u8(limits.max === undefined ? 0x00 : 0x01).u32(limits.min);
  if (limits.max !== undefined) w.u32(limits.max);
}

function readValType(r: Reader): number {
  const byte = r.u8();
  if (isValType(byte)) return byte;
  if (byte === 0x64 || byte === 0x63) {
    throw new FeatureError(
      'typed function references / GC',
      'reference types with heap types are not supported',
    );
  }
  throw new DecodeError(`invalid value type 0x${byte.toString(16)} at byte ${r.pos - 1}`);
}

function readTable(r: Reader): void {
  const first = r.peek();
  if (first === 0x40)
    throw new FeatureError('typed function references / GC', 'tables with initialisers are not supported');
  readValType(r);
  readLimits(r, 'table');
}

/**
 * Parses the module structure. Function bodies are located but not decoded; `code.ts` walks
 * their instructions. Constant expressions are skipped with the instruction decoder passed in,
 * which keeps this file independent of the opcode table.
 */
export function parseModule(bytes: Uint8Array, skipConstExpr: (r: Reader) => void): ParsedModule {
  const r = new Reader(bytes);
  if (bytes.length < 8) throw new DecodeError('too short to be a WebAssembly module');
  const magic = r.take(4);
  if (magic[0] !== 0x00 || magic[1] !== 0x61 || magic[2] !== 0x73 || magic[3] !== 0x6d) {
    throw new DecodeError('not a WebAssembly module (bad magic number)');
  }
  const version = r.take(4);
  if (version[0] === 0x0d && version[2] === 0x01) {
    throw new DecodeError('this is a WebAssembly component, not a core module');
  }
  if (version[0] !== 0x01 || version[1] !== 0 || version[2] !== 0 || version[3] !== 0) {
    throw new DecodeError('unsupported WebAssembly binary version');
  }
  const m: ParsedModule = {
    bytes,
    sections: [],
    types: [],
    imports: [],
    importedFuncCount: 0,
    funcTypes: [],
    tableCount: 0,
    memories: [],
    importedGlobalCount: 0,
    globals: [],
    exports: [],
    hasStart: false,
    bodies: [],
    hasDataCount: false,
  };
  let lastOrder = -1;
  while (!r.done) {
    const start = r.pos;
    const id = r.u8();
    const size = r.u32();
    const payloadStart = r.pos;
    r.skip(size);
    const end = r.pos;
    const section: Section = { id, start, payloadStart, end };
    const s = new Reader(bytes, payloadStart, end);
    if (id === SectionId.custom) {
      section.customName = s.name();
      m.sections.push(section);
      continue;
    }
    const order = SECTION_ORDER.indexOf(id);
    if (order < 0) throw new DecodeError(`unknown section id ${id} at byte ${start}`);
    if (order <= lastOrder)
      throw new DecodeError(`section ${id} out of order or duplicated at byte ${start}`);
    lastOrder = order;
    m.sections.push(section);
    switch (id) {
      case SectionId.type: {
        const count = s.u32();
        for (let i = 0; i < count; i++) {
          const form = s.u8();
          if (form !== 0x60) {
            throw new FeatureError(
              'GC',
              `type form 0x${form.toString(16)} (only function types are supported)`,
            );
          }
          const params: number[] = [];
          for (let n = s.u32(); n > 0; n--) params.push(readValType(s));
          const results: number[] = [];
          for (let n = s.u32(); n > 0; n--) results.push(readValType(s));
          m.types.push({ params, results });
        }
        break;
      }
      case SectionId.import: {
        const count = s.u32();
        for (let i = 0; i < count; i++) {
          const module = s.name();
          const name = s.name();
          const kind = s.u8();
          let typeIndex = -1;
          switch (kind) {
            case 0:
              typeIndex = s.u32();
              m.importedFuncCount++;
              break;
            case 1:
              readTable(s);
              m.tableCount++;
              break;
            case 2:
              readLimits(s, 'memory');
              break;
            case 3:
              readValType(s);
              s.u8();
              m.importedGlobalCount++;
              break;
            case 4:
              throw new FeatureError('exception handling', `imported tag ${module}.${name}`);
            default:
              throw new DecodeError(`invalid import kind ${kind}`);
          }
          m.imports.push({ module, name, kind, typeIndex });
        }
        break;
      }
      case SectionId.function: {
        for (let n = s.u32(); n > 0; n--) m.funcTypes.push(s.u32());
        break;
      }
      case SectionId.table: {
        for (let n = s.u32(); n > 0; n--) {
          readTable(s);
          m.tableCount++;
        }
        break;
      }
      case SectionId.memory: {
        for (let n = s.u32(); n > 0; n--) m.memories.push(readLimits(s, 'memory'));
        break;
      }
      case SectionId.tag:
        throw new FeatureError('exception handling', 'the module declares exception tags');
      case SectionId.global: {
        for (let n = s.u32(); n > 0; n--) {
          const valType = readValType(s);
          const mut = s.u8();
          if (mut > 1) throw new DecodeError(`invalid global mutability ${mut}`);
          skipConstExpr(s);
          m.globals.push({ valType, mutable: mut === 1 });
        }
        break;
      }
      case SectionId.export: {
        for (let n = s.u32(); n > 0; n--) {
          const name = s.name();
          const kind = s.u8();
          const index = s.u32();
          m.exports.push({ name, kind, index });
        }
        break;
      }
      case SectionId.start:
        s.u32();
        m.hasStart = true;
        break;
      case SectionId.dataCount:
        s.u32();
        m.hasDataCount = true;
        break;
      case SectionId.code: {
        const count = s.u32();
        for (let i = 0; i < count; i++) {
          const bodySize = s.u32();
          const bodyStart = s.pos;
          s.skip(bodySize);
          const b = new Reader(bytes, bodyStart, s.pos);
          const localRuns: Array<[number, number]> = [];
          let localCount = 0;
          for (let n = b.u32(); n > 0; n--) {
            const runCount = b.u32();
            const type = readValType(b);
            localCount += runCount;
            if (localCount > 50_000) throw new DecodeError(`function ${i} declares too many locals`);
            localRuns.push([runCount, type]);
          }
          m.bodies.push({ start: bodyStart, end: s.pos, codeStart: b.pos, localRuns, localCount });
        }
        break;
      }
      default:
        // Element and data sections are copied verbatim; nothing in them needs decoding.
        s.pos = end;
    }
    if (id !== SectionId.element && id !== SectionId.data && !s.done) {
      throw new DecodeError(`section ${id} has ${end - s.pos} trailing bytes`);
    }
  }
  if (m.funcTypes.length !== m.bodies.length) {
    throw new DecodeError(
      `function and code sections disagree (${m.funcTypes.length} functions, ${m.bodies.length} bodies)`,
    );
  }
  for (const typeIndex of m.funcTypes) {
    if (typeIndex >= m.types.length) throw new DecodeError(`function type index ${typeIndex} out of range`);
  }
  return m;
}

/** The raw payload of a section, as a subarray of the module. */
export function sectionPayload(m: ParsedModule, section: Section): Uint8Array {
  return m.bytes.subarray(section.payloadStart, section.end);
}

/**
 * Reassembles a module from section payloads in canonical order. `replaced` supplies new
 * payloads by section id (an entry for an absent section adds it); custom sections listed in
 * `keepCustom` are kept after all others, the rest are dropped.
 */
export function assembleModule(
  m: ParsedModule,
  replaced: ReadonlyMap<number, Uint8Array>,
  keepCustom: (name: string) => boolean,
): Uint8Array {
  const w = new Writer();
  w.bytes([0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00]);
  const present = new Map<number, Section>();
  for (const section of m.sections) if (section.id !== SectionId.custom) present.set(section.id, section);
  for (const id of SECTION_ORDER) {
    const payload =
      replaced.get(id) ?? (present.has(id) ? sectionPayload(m, present.get(id) as Section) : undefined);
    if (payload === undefined) continue;
    w.u8(id).u32(payload.length).bytes(payload);
  }
  for (const section of m.sections) {
    if (section.id === SectionId.custom && keepCustom(section.customName ?? '')) {
      const payload = sectionPayload(m, section);
      w.u8(0).u32(payload.length).bytes(payload);
    }
  }
  return w.finish();
}
