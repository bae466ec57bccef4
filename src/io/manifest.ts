/**
 * Content manifests of preopened folders: one SHA-256 over names, types,
 * sizes and bytes, with no timestamps, permissions or inode numbers. A log's
 * header keeps one per folder, so replay can refuse folders that are not
 * what the recording started from, while a plain `cp -r` copy matches.
 *
 * The hash input (docs/LOG-FORMAT.md), entries in depth-first order with each
 * folder's names sorted bytewise:
 *   type u8 ('d' folder, 'f' file, 'l' symlink, 'o' other)
 *   pathLen u32 LE, path (bytes of the names relative to the root, '/'-joined)
 *   file:    size u64 LE, then the content
 *   symlink: targetLen u32 LE, target bytes
 *
 * This module reads the disk: it belongs to the I/O layer.
 */
import { closeSync, lstatSync, openSync, readSync, readdirSync, readlinkSync } from 'node:fs';
import { createHash, type Hash } from 'node:crypto';
import path from 'node:path';

/** Files are hashed in pieces of this size, so a large disk does not need its size in memory. */
const READ_CHUNK_BYTES = 1 << 20;

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n >>> 0);
  return b;
}

function u64(n: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(n));
  return b;
}

function entry(h: Hash, type: string, rel: Buffer): void {
  h.update(type);
  h.update(u32(rel.byteLength));
  h.update(rel);
}

function walk(h: Hash, abs: Buffer, rel: Buffer, chunk: Buffer): void {
  const names = readdirSync(abs, { encoding: 'buffer' }).sort(Buffer.compare);
  for (const name of names) {
    const childAbs = Buffer.concat([abs, Buffer.from('/'), name]);
    const childRel = rel.byteLength === 0 ? name : Buffer.concat([rel, Buffer.from('/'), name]);
    const st = lstatSync(childAbs);
    if (st.isDirectory()) {
      entry(h, 'd', childRel);
      walk(h, childAbs, childRel, chunk);
    } else if (st.isFile()) {
      entry(h, 'f', childRel);
      h.update(u64(st.size));
      const fd = openSync(childAbs, 'r');
      try {
        let total = 0;
        for (;;) {
          const n = readSync(fd, chunk, 0, chunk.byteLength, null);
          if (n === 0) break;
          h.update(chunk.subarray(0, n));
          total += n;
        }
        // A file that changed size while we read it would give a manifest of no real state.
        if (total !== st.size) throw new Error(`${childAbs.toString()} changed while its manifest was taken`);
      } finally {
        closeSync(fd);
      }
    } else if (st.isSymbolicLink()) {
      entry(h, 'l', childRel);
      const target = readlinkSync(childAbs, { encoding: 'buffer' });
      h.update(u32(target.byteLength));
      h.update(target);
    } else {
      entry(h, 'o', childRel);
    }
  }
}

/** The manifest hash of a folder's content. Throws on I/O errors (the caller reports them). */
export function folderManifestSha256(root: string): Uint8Array {
  const h = createHash('sha256');
  walk(h, Buffer.from(path.resolve(root)), Buffer.alloc(0), Buffer.allocUnsafe(READ_CHUNK_BYTES));
  return new Uint8Array(h.digest());
}
