/**
 * The module store: every host keeps the modules it runs (and those uploaded
 * to it) under its data folder, named by their SHA-256, and finds the module
 * of a VM by that hash rather than by the path the VM was created from.
 *
 * Role: a VM's spec names its module twice, by the path given at creation
 * (`wasmPath`, read by the host that took the request) and by the SHA-256 of
 * what was there (`wasmSha256`). A host on another machine may not have that
 * path at all (an upload lands on one host; a path on one machine's disk),
 * and a file at that path may have changed since. resolve() therefore looks,
 * in order, in this host's store, at the path (used only if its hash still
 * matches, and then copied into the store), and at its peers' stores
 * (GET /v1/modules/SHA256 with the cluster's token). What it answers is
 * always a file in this host's store, so this host can serve it on to the
 * next host that needs it.
 *
 * Invariants:
 * - A file in the store holds exactly the bytes its name hashes to: it is
 *   written under a temporary name and renamed after its hash was checked,
 *   so a reader never sees half a module or a wrong one; and resolve()
 *   checks it again before answering it, so damage on disk is never run.
 * - A module is fetched at most once at a time per hash on one host;
 *   concurrent resolves of the same hash share the fetch.
 * - Every failure is a value whose message says where it looked.
 * - The network and the peers are capabilities (`fetchFromPeer`, `peers`),
 *   so the order of the search and the checks are tested without a cluster.
 */
import { createHash } from 'node:crypto';
import { mkdir, readFile, readdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';

/** A SHA-256 in the store's spelling: 64 lowercase hex digits. */
export const SHA256_RE = /^[0-9a-f]{64}$/;

/** Store files no VM refers to are deleted after this long (an upload waiting for its create). */
export const MODULE_UNUSED_KEEP_MS = 60 * 60 * 1000;

export type PeerFetch = { ok: true; bytes: Buffer } | { ok: false; message: string };

export interface ModuleStoreOptions {
  /** The store's folder (created on first use). */
  dir: string;
  /** The peers to ask, best first (those that are up). */
  peers: () => { name: string; api: string }[];
  /** Asks one peer for the module with this hash. */
  fetchFromPeer: (api: string, sha256: string) => Promise<PeerFetch>;
  /** A unique suffix for temporary files (the host's incarnation). */
  tmpSuffix: string;
}

export type Resolved =
  { ok: true; path: string; source: 'store' | 'path' | { peer: string } } | { ok: false; message: string };

export class ModuleStore {
  private readonly inflight = new Map<string, Promise<Resolved>>();

  constructor(private readonly o: ModuleStoreOptions) {}

  /** Where the module with this hash is (or would be) kept. */
  fileOf(sha256: string): string {
    if (!SHA256_RE.test(sha256)) throw new Error(`assertion failed: bad module hash ${sha256}`);
    return path.join(this.o.dir, `${sha256}.wasm`);
  }

  /** The module's size when this host holds it, else null. */
  async has(sha256: string): Promise<number | null> {
    if (!SHA256_RE.test(sha256)) return null;
    const st = await stat(this.fileOf(sha256)).catch(() => null);
    return st?.isFile() === true ? st.size : null;
  }

  /** Stores bytes already in hand (an upload); answers the hash and the file. */
  async put(bytes: Buffer): Promise<{ sha256: string; path: string }> {
    const sha256 = sha256Of(bytes);
    const file = this.fileOf(sha256);
    if ((await this.has(sha256)) === null) await this.write(file, bytes);
    return { sha256, path: file };
  }

  /** Finds the module `sha256`, created from `createdFrom`; see the module header for the order. */
  resolve(createdFrom: string, sha256: string): Promise<Resolved> {
    const running = this.inflight.get(sha256);
    if (running !== undefined) return running;
    const p = this.search(createdFrom, sha256)
      .catch((e: unknown): Resolved => ({
        ok: false,
        message: `cannot keep module ${sha256.slice(0, 12)}… in ${this.o.dir}: ${(e as Error).message}`,
      }))
      .finally(() => this.inflight.delete(sha256));
    this.inflight.set(sha256, p);
    return p;
  }

  /**
   * Deletes store files whose hash is not in `inUse` and that are older than
   * MODULE_UNUSED_KEEP_MS (by modification time); answers how many went.
   */
  async prune(inUse: ReadonlySet<string>, nowEpochMs: number): Promise<number> {
    const names = await readdir(this.o.dir).catch(() => [] as string[]);
    let removed = 0;
    for (const name of names) {
      const m = /^([0-9a-f]{64})\.wasm$/.exec(name);
      // Temporary files of a fetch cut short by a crash are named after it and go the same way.
      const tmp = /^([0-9a-f]{64})\.wasm\..+\.tmp$/.exec(name);
      const sha = m?.[1] ?? tmp?.[1];
      if (sha === undefined || (m !== null && inUse.has(sha))) continue;
      const file = path.join(this.o.dir, name);
      const st = await stat(file).catch(() => null);
      if (st === null || nowEpochMs - st.mtimeMs < MODULE_UNUSED_KEEP_MS) continue;
      await rm(file, { force: true });
      removed++;
    }
    return removed;
  }

  private async search(createdFrom: string, sha256: string): Promise<Resolved> {
    if (!SHA256_RE.test(sha256)) return { ok: false, message: `bad module hash ${JSON.stringify(sha256)}` };
    const file = this.fileOf(sha256);
    const tried: string[] = [];
    // The stored copy is checked too (a few ms for a large module, once per start): a file damaged
    // on this host's disk is dropped and fetched again rather than run.
    const stored = await readFile(file).catch(() => null);
    if (stored !== null) {
      if (sha256Of(stored) === sha256) return { ok: true, path: file, source: 'store' };
      await rm(file, { force: true });
      tried.push('the stored copy was damaged (removed)');
    }
    const fromPath = await readFile(createdFrom).catch((e: NodeJS.ErrnoException) => e);
    if (Buffer.isBuffer(fromPath)) {
      if (sha256Of(fromPath) === sha256) {
        await this.write(file, fromPath);
        return { ok: true, path: file, source: 'path' };
      }
      tried.push(`${createdFrom} has changed since the VM was created`);
    } else
      tried.push(`${createdFrom}: ${fromPath.code === 'ENOENT' ? 'not on this host' : fromPath.message}`);
    for (const peer of this.o.peers()) {
      const got = await this.o.fetchFromPeer(peer.api, sha256);
      if (!got.ok) {
        tried.push(`${peer.name}: ${got.message}`);
        continue;
      }
      // A peer's answer is checked like any input: only the bytes the spec hashed may run.
      if (sha256Of(got.bytes) !== sha256) {
        tried.push(`${peer.name}: answered other bytes`);
        continue;
      }
      await this.write(file, got.bytes);
      return { ok: true, path: file, source: { peer: peer.name } };
    }
    if (this.o.peers().length === 0) tried.push('no other host is up to ask');
    return { ok: false, message: `module ${sha256.slice(0, 12)}… not found (${tried.join('; ')})` };
  }

  private async write(file: string, bytes: Buffer): Promise<void> {
    await mkdir(this.o.dir, { recursive: true });
    const tmp = `${file}.${this.o.tmpSuffix}.tmp`;
    await writeFile(tmp, bytes, { mode: 0o644 });
    await rename(tmp, file);
  }
}

export function sha256Of(bytes: Buffer): string {
  return createHash('sha256').update(bytes).digest('hex');
}
