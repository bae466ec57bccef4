/**
 * The `file:DIR` coordinator: test-and-set on shared storage, the way VMware
 * FT arbitrates on a shared datastore.
 *
 * Role: the embedded default for clusters on one machine (and usable on any
 * shared POSIX file system with atomic link(2), such as NFSv3/v4). The design,
 * its on-disk layout byte by byte, and the proof of the garbage collector are
 * in docs/COORDINATOR.md; the comments here point at the rules they keep.
 *
 * How it works, in one paragraph: each key is a directory holding one file
 * per version (`@v<16 digits>`). A write creates version u+1 of a key whose
 * current version is u. It writes the whole record to a private temporary
 * file, fsyncs it, then link(2)s it to the version's name. link fails with
 * EEXIST if the name exists, atomically, exactly like open(…, 'wx'), so among
 * writers that race for the same version exactly one succeeds; and the name
 * appears with its content already complete and durable, so no reader ever
 * sees a torn record. The directory is fsynced before the write returns.
 *
 * Invariants:
 * - Mutual exclusion comes only from the exclusive link of a version name.
 *   Nothing depends on time, file ages, pids or locks, so a writer paused for
 *   any length of time still loses every race it should lose.
 * - Version numbers of a key only grow, and delete writes a tombstone version
 *   instead of removing files, so a key deleted and created again gets
 *   versions it never had.
 * - Old versions are garbage-collected, and a deleted version name could be
 *   created again by a writer that was paused since before the deletion. Such
 *   a write never reports success: every deletion is preceded by a durable
 *   marker file (`@f<level>.<value>`) that "covers" the deleted number, the
 *   markers follow the rules in docs/COORDINATOR.md §"Garbage collection",
 *   and every writer checks for a covering marker after its link. A writer
 *   that finds one removes its file and reports 'conflict' (if its view was
 *   stale before it linked) or 'unavailable' (if it cannot tell whether it had
 *   won before it paused).
 * - A read returns version v only after checking that v+1 does not exist and
 *   is not covered, which makes it the current version at that instant even
 *   if the directory listing raced with writers and the garbage collector.
 * - The store is recognised by its `@format` file. A missing `@format` (DIR
 *   unmounted, removed) makes every call 'unavailable'; the backend never
 *   re-creates DIR itself after opening, so an empty mount point is never
 *   mistaken for an empty store.
 * - Expected failures are returned as values; the only throws are internal
 *   and are turned into CoordResult at each public method.
 */
import { constants as fsConstants, type Dirent } from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { crc32 } from 'node:zlib';
import {
  COORD_OP_TIMEOUT_MS_DEFAULT,
  coordError,
  type CoordErrorCode,
  type CoordResult,
  type Coordinator,
  type Expect,
  type Versioned,
} from './coordinator.js';
import { Deadline, checkExpect, checkKey, encodeValue, sleep, withDeadline } from './common.js';

// ---------------------------------------------------------------------------
// The record file format (docs/COORDINATOR.md draws it).

/** The first four bytes of every record file: "LSCR", Lockstep Coordinator Record. */
export const RECORD_MAGIC = Buffer.from('LSCR', 'latin1');
/** The record format version; a reader refuses any other. */
export const RECORD_FORMAT_VERSION = 1;
/** magic(4) + format(1) + kind(1) + reserved(2) + payload length(4). */
export const RECORD_HEADER_BYTES = 12;
/** The CRC-32 after the payload. */
export const RECORD_TRAILER_BYTES = 4;

export enum RecordKind {
  /** A key's value: payload {"key":…,"value":…}. */
  Value = 1,
  /** A deletion: payload {"key":…}. The key reads as absent. */
  Tombstone = 2,
  /** The store's own parameters, in DIR/@format: payload {"key":"@format","format":…}. */
  StoreFormat = 3,
}

export interface DecodedRecord {
  kind: RecordKind;
  key: string;
  /** The parsed payload object (value records carry `value`). */
  payload: Record<string, unknown>;
}

/** Builds a record: header, UTF-8 JSON payload, CRC-32 of everything before it. */
export function encodeRecord(kind: RecordKind, payloadJson: string): Buffer {
  const payload = Buffer.from(payloadJson, 'utf8');
  const buf = Buffer.alloc(RECORD_HEADER_BYTES + payload.length + RECORD_TRAILER_BYTES);
  RECORD_MAGIC.copy(buf, 0);
  buf.writeUInt8(RECORD_FORMAT_VERSION, 4);
  buf.writeUInt8(kind, 5);
  buf.writeUInt16BE(0, 6);
  buf.writeUInt32BE(payload.length, 8);
  payload.copy(buf, RECORD_HEADER_BYTES);
  const end = RECORD_HEADER_BYTES + payload.length;
  buf.writeUInt32BE(crc32(buf.subarray(0, end)), end);
  return buf;
}

/** An internal failure that becomes a CoordResult error at the public boundary. */
class CoordFailure extends Error {
  constructor(
    readonly code: CoordErrorCode,
    message: string,
  ) {
    super(message);
  }
}

/**
 * Parses and checks a record read from `where` (named in errors). A record
 * that is short, long, has another magic or format, or fails its checksum is
 * 'corrupt': records appear only by link(2) of a complete, fsynced file, so a
 * damaged one means the storage damaged it.
 */
export function decodeRecord(buf: Buffer, where: string): CoordResult<DecodedRecord> {
  const bad = (why: string) => coordError('corrupt', `damaged record ${where}: ${why}`);
  if (buf.length < RECORD_HEADER_BYTES + RECORD_TRAILER_BYTES) return bad(`only ${buf.length} bytes`);
  if (!buf.subarray(0, 4).equals(RECORD_MAGIC)) return bad('bad magic');
  const format = buf.readUInt8(4);
  if (format !== RECORD_FORMAT_VERSION) return bad(`record format ${format}, this build reads only 1`);
  const kind = buf.readUInt8(5);
  if (kind !== RecordKind.Value && kind !== RecordKind.Tombstone && kind !== RecordKind.StoreFormat) {
    return bad(`unknown record kind ${kind}`);
  }
  if (buf.readUInt16BE(6) !== 0) return bad('reserved bytes are not zero');
  const length = buf.readUInt32BE(8);
  if (buf.length !== RECORD_HEADER_BYTES + length + RECORD_TRAILER_BYTES) {
    return bad(`payload length ${length} does not match the file size ${buf.length}`);
  }
  const end = RECORD_HEADER_BYTES + length;
  if (crc32(buf.subarray(0, end)) !== buf.readUInt32BE(end)) return bad('checksum mismatch');
  let payload: unknown;
  try {
    payload = JSON.parse(buf.subarray(RECORD_HEADER_BYTES, end).toString('utf8'));
  } catch {
    return bad('the payload is not JSON');
  }
  if (typeof payload !== 'object' || payload === null || Array.isArray(payload)) {
    return bad('the payload is not an object');
  }
  const p = payload as Record<string, unknown>;
  if (typeof p.key !== 'string') return bad('the payload names no key');
  if (kind === RecordKind.Value && !('value' in p)) return bad('a value record without a value');
  return { ok: true, value: { kind, key: p.key, payload: p } };
}

// ---------------------------------------------------------------------------
// Names inside the store.

/** Digits of a version or marker number in a file name; Number.MAX_SAFE_INTEGER has 16. */
const NUMBER_DIGITS = 16;
const FORMAT_FILE = '@format';
const TEMP_DIR = '@tmp';
const VERSION_NAME_RE = /^@v(\d{16})$/;
const MARKER_NAME_RE = /^@f(\d)\.(\d{16})$/;

const pad = (n: number): string => String(n).padStart(NUMBER_DIGITS, '0');
/** The file of version `u` of a key. '@' never starts a key segment, so it never names a child key. */
export const versionFileName = (u: number): string => `@v${pad(u)}`;
/** The marker that says "every version below `value` is dead", at GC level `level`. */
export const markerFileName = (level: number, value: number): string => `@f${level}.${pad(value)}`;

/** The store's parameters, fixed when the store is created (in @format), the same for every process. */
export interface FileStoreParams {
  /** K: the garbage collector keeps at least this many newest versions of a key; markers step by K^level. */
  keep: number;
  /** L: the number of marker levels; top-level markers are never deleted (one per K^L versions). */
  levels: number;
  /** Random id of the store, for people and logs. */
  storeId: string;
}

export const FILE_STORE_FORMAT = 1;
export const FILE_KEEP_DEFAULT = 32;
export const FILE_LEVELS_DEFAULT = 7;

// ---------------------------------------------------------------------------
// Small I/O helpers. Every one of them lets unexpected errors propagate; the
// public methods turn them into 'unavailable'.

function errno(e: unknown): string | undefined {
  return (e as NodeJS.ErrnoException | null)?.code;
}

async function pathExists(p: string): Promise<boolean> {
  try {
    await fs.lstat(p);
    return true;
  } catch (e) {
    if (errno(e) === 'ENOENT') return false;
    throw e;
  }
}

/** fsyncs a directory, so the names created or removed in it survive a crash. */
async function fsyncDir(dir: string): Promise<void> {
  const fh = await fs.open(dir, fsConstants.O_RDONLY | fsConstants.O_DIRECTORY);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

async function unlinkQuiet(p: string): Promise<void> {
  try {
    await fs.unlink(p);
  } catch {
    // Removing a file that is already gone, or cannot be removed, only leaves garbage behind.
  }
}

/** Reads /proc/PID/stat field 22, the process start time in clock ticks, or null if there is no such process. */
async function processStartTicks(pid: number | 'self'): Promise<string | null> {
  try {
    const stat = await fs.readFile(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return fields[19] ?? null;
  } catch {
    return null;
  }
}

const NO_BOOT_ID = 'noboot';

async function bootId(): Promise<string> {
  try {
    return (await fs.readFile('/proc/sys/kernel/random/boot_id', 'utf8')).trim().replace(/[^0-9a-f]/g, '');
  } catch {
    return NO_BOOT_ID;
  }
}

const hostTag = (): string =>
  os
    .hostname()
    .replace(/[^A-Za-z0-9-]/g, '-')
    .slice(0, 64) || 'host';

// ---------------------------------------------------------------------------

/** Test-only hooks that let unit tests stage a pause at the two moments that matter. */
export interface FileTestHooks {
  /** Called just before the exclusive link of version `version` of the key directory `keyDir`. */
  beforeLink?(keyDir: string, version: number): Promise<void>;
  /** Called just after a successful link, before the writer checks for covering markers. */
  afterLink?(keyDir: string, version: number): Promise<void>;
}

export interface FileCoordinatorOptions {
  /** Time limit of every call; COORD_OP_TIMEOUT_MS_DEFAULT if absent. */
  opTimeoutMs?: number;
  /** K for a store this call creates (ignored for an existing store, whose @format rules). */
  keep?: number;
  /** L for a store this call creates (ignored for an existing store). */
  levels?: number;
  /** The text `description` shows; "file:" + the directory if absent. */
  description?: string;
  testHooks?: FileTestHooks;
}

/** The state of a key as read by the read protocol: the current version number (0: none) and its record. */
interface KeyState {
  top: number;
  record: DecodedRecord | null;
}

type WriteOutcome = { ok: true; version: number } | { ok: false; code: CoordErrorCode; message: string };

/**
 * Opens (creating if needed) the store in `dir`. Creates `dir` if it does not
 * exist; refuses a directory that is neither empty nor a store.
 */
export async function openFileCoordinator(
  dir: string,
  opts: FileCoordinatorOptions = {},
): Promise<CoordResult<FileCoordinator>> {
  const opTimeoutMs = opts.opTimeoutMs ?? COORD_OP_TIMEOUT_MS_DEFAULT;
  const description = opts.description ?? `file:${dir}`;
  const root = path.resolve(dir);
  const keep = opts.keep ?? FILE_KEEP_DEFAULT;
  const levels = opts.levels ?? FILE_LEVELS_DEFAULT;
  if (!Number.isSafeInteger(keep) || keep < 2 || keep > 1024) {
    return coordError('invalid', `keep must be an integer from 2 to 1024, not ${keep}`);
  }
  if (!Number.isSafeInteger(levels) || levels < 1 || levels > 9 || keep ** levels > Number.MAX_SAFE_INTEGER) {
    return coordError('invalid', `levels must be an integer from 1 to 9 with keep^levels a safe integer`);
  }
  const tempPrefix = `t.${hostTag()}.${await bootId()}.${process.pid}.${(await processStartTicks('self')) ?? '0'}`;
  return withDeadline(`open ${description}`, opTimeoutMs, async () => {
    try {
      const params = await initStore(root, tempPrefix, {
        keep,
        levels,
        storeId: randomBytes(8).toString('hex'),
      });
      if (!params.ok) return params;
      const coord = new FileCoordinator(
        root,
        description,
        params.value,
        opTimeoutMs,
        tempPrefix,
        opts.testHooks,
      );
      await coord.sweepTempFiles();
      return { ok: true, value: coord };
    } catch (e) {
      return failureResult(e, `open ${description}`);
    }
  });
}

function failureResult(
  e: unknown,
  what: string,
): { ok: false; error: { code: CoordErrorCode; message: string } } {
  if (e instanceof CoordFailure) return coordError(e.code, `${what}: ${e.message}`);
  // Node's I/O errors name their code and path (e.g. "EROFS: read-only file system, link …"); anything
  // else is a bug, and is still reported as a value rather than thrown at the caller.
  const message = e instanceof Error ? e.message : String(e);
  return coordError('unavailable', `${what}: ${errno(e) ? message : `unexpected error: ${message}`}`);
}

async function readStoreFormat(root: string): Promise<CoordResult<FileStoreParams>> {
  const where = path.join(root, FORMAT_FILE);
  const decoded = decodeRecord(await fs.readFile(where), where);
  if (!decoded.ok) return decoded;
  const p = decoded.value.payload;
  if (decoded.value.kind !== RecordKind.StoreFormat || p.format !== FILE_STORE_FORMAT) {
    return coordError('corrupt', `${where} is not a format ${FILE_STORE_FORMAT} store description`);
  }
  const { keep, levels, storeId } = p;
  if (
    typeof keep !== 'number' ||
    typeof levels !== 'number' ||
    typeof storeId !== 'string' ||
    !Number.isSafeInteger(keep) ||
    !Number.isSafeInteger(levels) ||
    keep < 2 ||
    levels < 1 ||
    keep ** levels > Number.MAX_SAFE_INTEGER
  ) {
    return coordError('corrupt', `${where} has bad parameters`);
  }
  return { ok: true, value: { keep, levels, storeId } };
}

/**
 * Creates DIR, DIR/@tmp and DIR/@format if missing, and returns the store's
 * parameters. Two processes that create the same store at once agree: the
 * @format file is published with the same exclusive link as any record, and
 * the loser reads the winner's.
 */
async function initStore(
  root: string,
  tempPrefix: string,
  fresh: FileStoreParams,
): Promise<CoordResult<FileStoreParams>> {
  try {
    await fs.mkdir(root, { recursive: true });
  } catch (e) {
    if (errno(e) === 'ENOTDIR' || errno(e) === 'EEXIST') {
      return coordError('invalid', `${root} is not a directory (or lies under a file)`);
    }
    throw e;
  }
  const st = await fs.stat(root);
  if (!st.isDirectory()) return coordError('invalid', `${root} is not a directory`);
  const names = await fs.readdir(root);
  if (names.includes(FORMAT_FILE)) return readStoreFormat(root);
  if (names.some((n) => n !== TEMP_DIR)) {
    return coordError(
      'invalid',
      `${root} is not empty and holds no ${FORMAT_FILE} file: it is not a Lockstep coordinator store`,
    );
  }
  const tmpDir = path.join(root, TEMP_DIR);
  await fs.mkdir(tmpDir).catch((e: unknown) => {
    if (errno(e) !== 'EEXIST') throw e;
  });
  const temp = path.join(tmpDir, `${tempPrefix}.${randomBytes(6).toString('hex')}`);
  const payload = JSON.stringify({ key: FORMAT_FILE, format: FILE_STORE_FORMAT, ...fresh });
  const fh = await fs.open(temp, 'wx', 0o644);
  try {
    await fh.writeFile(encodeRecord(RecordKind.StoreFormat, payload));
    await fh.sync();
  } finally {
    await fh.close();
  }
  try {
    await fs.link(temp, path.join(root, FORMAT_FILE));
  } catch (e) {
    if (errno(e) !== 'EEXIST') throw e;
  } finally {
    await unlinkQuiet(temp);
  }
  await fsyncDir(root);
  await fsyncDir(path.dirname(root)).catch(() => undefined);
  return readStoreFormat(root);
}

export class FileCoordinator implements Coordinator {
  private closed = false;
  /** Garbage collections running in the background, awaited (boundedly) by close(). */
  private readonly pendingGc = new Set<Promise<void>>();
  /** S_i = K^i for i = 0..L: the step of the level-i marker lattice. */
  private readonly steps: number[];

  /** Use openFileCoordinator(); the constructor does no I/O. */
  constructor(
    readonly root: string,
    readonly description: string,
    readonly params: FileStoreParams,
    private readonly opTimeoutMs: number,
    private readonly tempPrefix: string,
    private readonly hooks: FileTestHooks = {},
  ) {
    this.steps = [];
    for (let i = 0; i <= params.levels; i++) this.steps.push(params.keep ** i);
  }

  // -- public API --------------------------------------------------------------------------------

  async get<T = unknown>(key: string): Promise<CoordResult<Versioned<T> | null>> {
    const bad = checkKey(key);
    if (bad) return { ok: false, error: bad };
    return this.run(`get ${key}`, async (dl) => {
      const state = await this.readState(key, this.keyDir(key), dl);
      if (state.record === null || state.record.kind !== RecordKind.Value) return { ok: true, value: null };
      return { ok: true, value: { key, value: state.record.payload.value as T, version: String(state.top) } };
    });
  }

  async list<T = unknown>(prefix: string): Promise<CoordResult<Versioned<T>[]>> {
    const bad = checkKey(prefix, 'prefix');
    if (bad) return { ok: false, error: bad };
    return this.run(`list ${prefix}`, async (dl) => {
      const keys: string[] = [];
      await this.collectKeys(prefix, this.keyDir(prefix), false, keys, dl);
      if (keys.length === 0) await this.checkStore();
      keys.sort();
      const out: Versioned<T>[] = [];
      for (const key of keys) {
        const state = await this.readState(key, this.keyDir(key), dl);
        if (state.record !== null && state.record.kind === RecordKind.Value) {
          out.push({ key, value: state.record.payload.value as T, version: String(state.top) });
        }
      }
      return { ok: true, value: out };
    });
  }

  async put(key: string, value: unknown, expect: Expect): Promise<CoordResult<{ version: string }>> {
    const bad = checkKey(key) ?? checkExpect(expect, true);
    if (bad) return { ok: false, error: bad };
    const text = encodeValue(value);
    if (!text.ok) return text;
    const record = encodeRecord(RecordKind.Value, `{"key":${JSON.stringify(key)},"value":${text.value}}`);
    return this.run(`put ${key}`, async (dl) => {
      const r = await this.write(key, record, expect, false, dl);
      return r.ok
        ? { ok: true, value: { version: String(r.version) } }
        : coordError(r.code, `put ${key}: ${r.message}`);
    });
  }

  async delete(key: string, expect: Exclude<Expect, 'absent'>): Promise<CoordResult<void>> {
    const bad = checkKey(key) ?? checkExpect(expect, false);
    if (bad) return { ok: false, error: bad };
    const record = encodeRecord(RecordKind.Tombstone, `{"key":${JSON.stringify(key)}}`);
    return this.run(`delete ${key}`, async (dl) => {
      const r = await this.write(key, record, expect, true, dl);
      return r.ok ? { ok: true, value: undefined } : coordError(r.code, `delete ${key}: ${r.message}`);
    });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    // A collection is only cleanup; waiting for it is a courtesy, bounded so close() cannot hang.
    const pending = [...this.pendingGc];
    if (pending.length > 0) {
      await Promise.race([Promise.allSettled(pending), sleep(this.opTimeoutMs)]);
    }
  }

  /**
   * Removes temporary files that writers on this machine left behind when
   * they died (a crash between write and link). A file is removed only if its
   * name says it comes from this host and either an earlier boot or a process
   * (pid and start time) that no longer exists. Removing a live writer's file
   * would be harmless anyway: its link fails with ENOENT and it retries.
   */
  async sweepTempFiles(): Promise<void> {
    const tmpDir = path.join(this.root, TEMP_DIR);
    let names: string[];
    try {
      names = await fs.readdir(tmpDir);
    } catch {
      return;
    }
    const [, host, boot] = this.tempPrefix.split('.');
    // Without /proc there is no telling a dead writer from a live one: leave everything.
    if (boot === NO_BOOT_ID) return;
    for (const name of names) {
      const parts = name.split('.');
      if (parts.length !== 6 || parts[0] !== 't' || parts[1] !== host) continue;
      const pid = Number(parts[3]);
      let dead = parts[2] !== boot;
      if (!dead && Number.isSafeInteger(pid)) dead = (await processStartTicks(pid)) !== parts[4];
      if (dead) await unlinkQuiet(path.join(tmpDir, name));
    }
  }

  // -- the protocol ------------------------------------------------------------------------------

  private keyDir(key: string): string {
    return path.join(this.root, ...key.split('/'));
  }

  private run<T>(what: string, body: (dl: Deadline) => Promise<CoordResult<T>>): Promise<CoordResult<T>> {
    if (this.closed) return Promise.resolve(coordError('unavailable', `${what}: the coordinator is closed`));
    return withDeadline(what, this.opTimeoutMs, async (dl) => {
      try {
        return await body(dl);
      } catch (e) {
        return failureResult(e, what);
      }
    });
  }

  private checkTime(dl: Deadline): void {
    if (dl.expired()) throw new CoordFailure('unavailable', `no answer within ${dl.budgetMs} ms`);
  }

  /** Throws 'unavailable' unless DIR still holds the store: an unmounted or removed DIR must not read as empty. */
  private async checkStore(): Promise<void> {
    let ok = false;
    try {
      ok = (await fs.stat(path.join(this.root, FORMAT_FILE))).isFile();
    } catch (e) {
      if (errno(e) !== 'ENOENT') throw e;
    }
    if (!ok) {
      throw new CoordFailure(
        'unavailable',
        `${this.root} holds no ${FORMAT_FILE} file any more (unmounted or removed?); refusing to treat it as empty`,
      );
    }
  }

  /** Reads version `u` of `key`, or returns null if that version's file does not exist. */
  private async readVersion(dir: string, key: string, u: number): Promise<DecodedRecord | null> {
    const where = path.join(dir, versionFileName(u));
    let buf: Buffer;
    try {
      buf = await fs.readFile(where);
    } catch (e) {
      if (errno(e) === 'ENOENT') return null;
      throw e;
    }
    const decoded = decodeRecord(buf, where);
    if (!decoded.ok) throw new CoordFailure('corrupt', decoded.error.message);
    const rec = decoded.value;
    if (rec.kind === RecordKind.StoreFormat || rec.key !== key) {
      throw new CoordFailure('corrupt', `damaged record ${where}: it belongs to ${JSON.stringify(rec.key)}`);
    }
    return rec;
  }

  /** next_i(x): the smallest multiple of S_i strictly greater than x. */
  private next(level: number, x: number): number {
    const step = this.steps[level] as number;
    return (Math.floor(x / step) + 1) * step;
  }

  /**
   * Whether version number `x` of the key in `dir` is covered by a marker,
   * i.e. may have existed and been collected. Checking the levels in
   * ascending order is what makes the answer reliable while collectors run:
   * the highest level holding a covering marker never goes down (see the
   * proof in docs/COORDINATOR.md).
   */
  private async covered(dir: string, x: number): Promise<boolean> {
    for (let level = 1; level <= this.params.levels; level++) {
      if (await pathExists(path.join(dir, markerFileName(level, this.next(level, x))))) return true;
    }
    return false;
  }

  /**
   * The read protocol. Lists the key's directory and takes the highest
   * version v; reads it; then checks that v+1 neither exists nor is covered.
   * Those two checks make v the current version at the moment of the first
   * one, whatever the listing missed. Retries (bounded by the deadline) when
   * a check fails, which happens only while writers or the collector run.
   */
  private async readState(key: string, dir: string, dl: Deadline): Promise<KeyState> {
    for (let attempt = 0; ; attempt++) {
      this.checkTime(dl);
      if (attempt > 1) await sleep(Math.min(attempt, 10) * Math.random());
      let names: string[];
      try {
        names = await fs.readdir(dir);
      } catch (e) {
        if (errno(e) !== 'ENOENT') throw e;
        names = [];
      }
      let top = 0;
      for (const name of names) {
        const m = VERSION_NAME_RE.exec(name);
        if (m) top = Math.max(top, Number(m[1]));
      }
      let record: DecodedRecord | null = null;
      if (top > 0) {
        record = await this.readVersion(dir, key, top);
        if (record === null) continue;
      }
      if (await pathExists(path.join(dir, versionFileName(top + 1)))) continue;
      if (await this.covered(dir, top + 1)) continue;
      if (top === 0) await this.checkStore();
      return { top, record };
    }
  }

  /** Creates the key's directory and any missing parents below DIR (never DIR itself), fsyncing each parent. */
  private async ensureKeyDir(key: string): Promise<void> {
    let dir = this.root;
    for (const segment of key.split('/')) {
      const child = path.join(dir, segment);
      try {
        await fs.mkdir(child);
        await fsyncDir(dir);
      } catch (e) {
        if (errno(e) !== 'EEXIST') throw e;
      }
      dir = child;
    }
  }

  /** Writes `record` to a new private file in DIR/@tmp and fsyncs it; returns its path. */
  private async writeTemp(record: Buffer): Promise<string> {
    const temp = path.join(this.root, TEMP_DIR, `${this.tempPrefix}.${randomBytes(6).toString('hex')}`);
    const fh = await fs.open(temp, 'wx', 0o644);
    try {
      await fh.writeFile(record);
      await fh.sync();
    } finally {
      await fh.close();
    }
    return temp;
  }

  /**
   * The exclusive step: link(2) the complete temp file to version `u`'s name.
   * 'exists': another writer holds that version. 'missing': the temp file or
   * the key directory vanished (a sweeper, or the store went away). The
   * directory is not fsynced here: the caller checks coverage first, as soon
   * as possible after the link, and fsyncs before it answers 'ok'.
   */
  private async link(temp: string, dir: string, u: number): Promise<'linked' | 'exists' | 'missing'> {
    await this.hooks.beforeLink?.(dir, u);
    const target = path.join(dir, versionFileName(u));
    try {
      await fs.link(temp, target);
    } catch (e) {
      if (errno(e) === 'ENOENT') return 'missing';
      if (errno(e) !== 'EEXIST') throw e;
      // On NFS a retransmitted LINK can answer EEXIST for a link that succeeded the first time; the
      // name then points at this writer's own inode, which no other writer could have linked.
      if (!(await this.sameFile(temp, target))) return 'exists';
    }
    await this.hooks.afterLink?.(dir, u);
    return 'linked';
  }

  /**
   * Removes version `u` if it is still the file this writer linked. Only
   * called for a covered number, which the rules allow anyone to remove.
   */
  private async removeOwn(temp: string, dir: string, u: number): Promise<void> {
    const target = path.join(dir, versionFileName(u));
    try {
      if (await this.sameFile(temp, target)) await fs.unlink(target);
    } catch {
      // Already removed (by a collector): nothing to do.
    }
  }

  /** Whether two names are links to one inode. */
  private async sameFile(a: string, b: string): Promise<boolean> {
    try {
      const [sa, sb] = await Promise.all([fs.stat(a), fs.stat(b)]);
      return sa.ino === sb.ino && sa.dev === sb.dev;
    } catch (e) {
      if (errno(e) === 'ENOENT') return false;
      throw e;
    }
  }

  /**
   * Every write: put (a value record) or delete (a tombstone record), under
   * any `expect`. Returns the version created, or why none was.
   */
  private async write(
    key: string,
    record: Buffer,
    expect: Expect,
    isDelete: boolean,
    dl: Deadline,
  ): Promise<WriteOutcome> {
    const dir = this.keyDir(key);
    const temps: string[] = [];
    const freshTemp = async (): Promise<string> => {
      const t = await this.writeTemp(record);
      temps.push(t);
      return t;
    };
    try {
      if (typeof expect === 'object')
        return await this.writeAfter(key, dir, Number(expect.version), freshTemp, dl);
      return await this.writeOnTop(key, dir, expect, isDelete, freshTemp, dl);
    } finally {
      for (const t of temps) await unlinkQuiet(t);
    }
  }

  /** Test-and-set: creates version n+1 if and only if n is the key's current version and not a tombstone. */
  private async writeAfter(
    key: string,
    dir: string,
    n: number,
    freshTemp: () => Promise<string>,
    dl: Deadline,
  ): Promise<WriteOutcome> {
    const stale = (why: string): WriteOutcome => ({
      ok: false,
      code: 'conflict',
      message: `version ${n} is not the current version of ${key}${why}`,
    });
    if (!Number.isSafeInteger(n + 1)) return stale(' (never issued)');
    // Cheap checks first, so a caller holding an old version learns so without writing anything.
    const expected = await this.readVersion(dir, key, n);
    if (expected === null) {
      await this.checkStore();
      return stale('');
    }
    if (expected.kind === RecordKind.Tombstone) return stale(` (it is the deletion of ${key})`);
    const u = n + 1;
    if (await pathExists(path.join(dir, versionFileName(u)))) return stale('');
    if (await this.covered(dir, u)) return stale('');
    let temp = await freshTemp();
    for (;;) {
      this.checkTime(dl);
      // Writing the temp file took an fsync: check again right before the link. The shorter the time
      // from these checks to the coverage check after the link, the rarer an ambiguous answer.
      if (await pathExists(path.join(dir, versionFileName(u)))) return stale('');
      if (await this.covered(dir, u)) return stale('');
      const r = await this.link(temp, dir, u);
      if (r === 'exists') return stale('');
      if (r === 'missing') {
        await this.checkStore();
        temp = await freshTemp();
        continue;
      }
      return this.confirm(key, dir, temp, u);
    }
  }

  /**
   * After a successful link of version u: if u is covered, this writer may be
   * re-creating a collected version (a stale writer), or may have won long
   * ago and been paused across a collection; it cannot tell which, so it
   * removes its file and reports 'unavailable' (outcome unknown), never 'ok'.
   */
  private async confirm(key: string, dir: string, temp: string, u: number): Promise<WriteOutcome> {
    if (await this.covered(dir, u)) {
      await this.removeOwn(temp, dir, u);
      return {
        ok: false,
        code: 'unavailable',
        message: `version ${u} is covered by a collection marker: this writer was paused across a collection and cannot tell whether it won; outcome unknown`,
      };
    }
    await fsyncDir(dir);
    this.scheduleGc(dir, u);
    return { ok: true, version: u };
  }

  /** Writes on top of whatever is current: expect 'absent' (if it is absent) or 'any'. */
  private async writeOnTop(
    key: string,
    dir: string,
    expect: 'absent' | 'any',
    isDelete: boolean,
    freshTemp: () => Promise<string>,
    dl: Deadline,
  ): Promise<WriteOutcome> {
    let temp: string | null = null;
    for (let attempt = 0; ; attempt++) {
      this.checkTime(dl);
      if (attempt > 1) await sleep(Math.min(attempt, 20) * Math.random());
      const state = await this.readState(key, dir, dl);
      const present = state.record !== null && state.record.kind === RecordKind.Value;
      if (expect === 'absent' && present) {
        return { ok: false, code: 'conflict', message: `${key} exists (version ${state.top})` };
      }
      // Deleting what is absent changes nothing and needs no version.
      if (isDelete && !present) return { ok: true, version: state.top };
      if (state.top === 0) await this.ensureKeyDir(key);
      if (temp === null) {
        // Writing the temp file takes an fsync: read the state again after it, so the time from the
        // read to the link (and the coverage check after it) stays short.
        temp = await freshTemp();
        continue;
      }
      const u = state.top + 1;
      const r = await this.link(temp, dir, u);
      if (r === 'exists') continue;
      if (r === 'missing') {
        temp = null;
        continue;
      }
      if (expect === 'any' && (await this.covered(dir, u))) {
        // Last-writer-wins needs no certainty about a lost race: remove the dead file and write again.
        await this.removeOwn(temp, dir, u);
        continue;
      }
      return this.confirm(key, dir, temp, u);
    }
  }

  // -- garbage collection ------------------------------------------------------------------------

  /** Runs a collection in the background after the K-th write, so a write's latency and result never depend on it. */
  private scheduleGc(dir: string, m: number): void {
    const keep = this.params.keep;
    if (m % keep !== 0 || m < 2 * keep || this.closed) return;
    const p: Promise<void> = this.collect(dir, m)
      .catch(() => undefined)
      .finally(() => this.pendingGc.delete(p));
    this.pendingGc.add(p);
  }

  /**
   * Collects the versions of a key below F = m - K, where m is a version this
   * process just created and confirmed. The rules (docs/COORDINATOR.md):
   * 1. a version u is removed only after a marker C_i(u) is durably present;
   * 2. a level-i marker X is removed only after the level-(i+1) marker
   *    ceil(X / S_{i+1}) * S_{i+1} is durably present; top-level markers stay;
   * 3. a marker of value X is created only if every version below X is at
   *    least K behind a confirmed version (X <= m - K), or if a marker of the
   *    same value exists at a lower level.
   * A marker seen in a listing counts as present: rule 2 guarantees that
   * coverage it gave never goes away.
   */
  private async collect(dir: string, m: number): Promise<void> {
    const { keep, levels } = this.params;
    const floor = m - keep;
    const names: Dirent[] = await fs.readdir(dir, { withFileTypes: true });
    const versions: number[] = [];
    const markers: Set<number>[] = [];
    for (let i = 0; i <= levels; i++) markers.push(new Set());
    for (const entry of names) {
      const v = VERSION_NAME_RE.exec(entry.name);
      if (v) versions.push(Number(v[1]));
      const f = MARKER_NAME_RE.exec(entry.name);
      if (f && Number(f[1]) >= 1 && Number(f[1]) <= levels) markers[Number(f[1])]?.add(Number(f[2]));
    }
    const created: Array<[number, number]> = [];
    const want = (level: number, value: number): void => {
      const set = markers[level] as Set<number>;
      if (!set.has(value)) {
        set.add(value);
        created.push([level, value]);
      }
    };
    const doomed = versions.filter((u) => u < floor).sort((a, b) => a - b);
    want(1, floor);
    for (const u of doomed) want(1, this.next(1, u));
    for (let i = 1; i < levels; i++) {
      const step = this.steps[i + 1] as number;
      for (const x of [...(markers[i] as Set<number>)]) if (x % step === 0) want(i + 1, x);
    }
    for (const [level, value] of created) {
      try {
        await (await fs.open(path.join(dir, markerFileName(level, value)), 'wx', 0o644)).close();
      } catch (e) {
        if (errno(e) !== 'EEXIST') throw e;
      }
    }
    if (created.length > 0) await fsyncDir(dir);
    // Ascending order matters: the read protocol relies on v being gone before v+1 is.
    for (const u of doomed) await unlinkQuiet(path.join(dir, versionFileName(u)));
    for (let i = 1; i < levels; i++) {
      const step = this.steps[i + 1] as number;
      for (const x of [...(markers[i] as Set<number>)].sort((a, b) => a - b)) {
        if ((markers[i + 1] as Set<number>).has(Math.ceil(x / step) * step)) {
          await unlinkQuiet(path.join(dir, markerFileName(i, x)));
        }
      }
    }
    await fsyncDir(dir);
  }

  /**
   * Finds every key strictly below `key` (whose directory is `dir`),
   * depth-first, into `out`. A directory is a key if it holds version or
   * marker files; one that holds only child directories is a mere prefix.
   */
  private async collectKeys(
    key: string,
    dir: string,
    isKey: boolean,
    out: string[],
    dl: Deadline,
  ): Promise<void> {
    this.checkTime(dl);
    let entries: Dirent[];
    try {
      entries = await fs.readdir(dir, { withFileTypes: true });
    } catch (e) {
      if (errno(e) === 'ENOENT') return;
      throw e;
    }
    if (isKey && entries.some((e) => VERSION_NAME_RE.test(e.name) || MARKER_NAME_RE.test(e.name)))
      out.push(key);
    for (const entry of entries) {
      if (!entry.isDirectory() || entry.name.startsWith('@')) continue;
      const child = `${key}/${entry.name}`;
      if (checkKey(child) !== null) continue;
      await this.collectKeys(child, path.join(dir, entry.name), true, out, dl);
    }
  }
}
