/**
 * Virtual metadata: what the guest sees of files instead of the host's
 * inode numbers, device numbers, timestamps and directory order, which differ
 * between a primary and its backup even when their folders hold the same bytes
 * (DESIGN.md §2, "Disk metadata").
 *
 * Invariants:
 * - Every value returned here is a function of the folder's content and of
 *   the path used to reach it, never of host state such as inode numbers,
 *   times, or the order in which the kernel lists a directory.
 * - `dev` is the preopen index + 1 (0 is left unused, so no file looks like
 *   it lives on "no device").
 * - `ino` is the first 8 bytes of SHA-256 over (preopen index as u32 LE, the
 *   normalised relative path in UTF-8), never 0. Known limits: renaming a file
 *   changes its ino, and two hard links to one file have different inos.
 *   Programs that detect hard links by (dev, ino) therefore see none.
 * - Timestamps are all 0.
 * - `nlink` and `size` are real for files and symlinks (a symlink's size is
 *   its target's length, the same on every Linux filesystem). For directories
 *   they are virtual: nlink 1 and size 0, because the real values depend on
 *   the filesystem (btrfs always says nlink 1 and sizes directories by name
 *   bytes; ext4 counts subdirectories and sizes in 4 KiB blocks). nlink 1 is
 *   the conventional "unknown" that find and fts already honour.
 */

import { createHash } from 'node:crypto';
import type { BigIntStats, Dirent } from 'node:fs';
import { Filetype, Layout } from '../../wasi/abi.js';

export interface FileStat {
  dev: bigint;
  ino: bigint;
  filetype: number;
  nlink: bigint;
  size: bigint;
  atimNs: bigint;
  mtimNs: bigint;
  ctimNs: bigint;
}

const utf8 = new TextEncoder();

/** The normalised relative path of `components`, as UTF-8 bytes ('' for a preopen root). */
export function relativePathBytes(components: readonly string[]): Uint8Array {
  return utf8.encode(components.join('/'));
}

/** The virtual inode number of the file at `relPathBytes` inside preopen `preopenIndex`. */
export function virtualIno(preopenIndex: number, relPathBytes: Uint8Array): bigint {
  const indexBytes = Buffer.alloc(4);
  indexBytes.writeUInt32LE(preopenIndex);
  const digest = createHash('sha256').update(indexBytes).update(relPathBytes).digest();
  const ino = digest.readBigUInt64LE(0);
  // Some C libraries skip directory entries whose d_ino is 0.
  return ino === 0n ? 1n : ino;
}

/** The virtual inode number of the child `name` of the directory at `parentRelBytes`. */
export function virtualChildIno(preopenIndex: number, parentRelBytes: Uint8Array, name: Uint8Array): bigint {
  if (parentRelBytes.byteLength === 0) return virtualIno(preopenIndex, name);
  const joined = new Uint8Array(parentRelBytes.byteLength + 1 + name.byteLength);
  joined.set(parentRelBytes, 0);
  joined[parentRelBytes.byteLength] = 0x2f; // '/'
  joined.set(name, parentRelBytes.byteLength + 1);
  return virtualIno(preopenIndex, joined);
}

/** The WASI filetype of host stats. FIFOs and anything else unusual are UNKNOWN. */
export function filetypeOfStats(st: BigIntStats): number {
  if (st.isFile()) return Filetype.REGULAR_FILE;
  if (st.isDirectory()) return Filetype.DIRECTORY;
  if (st.isSymbolicLink()) return Filetype.SYMBOLIC_LINK;
  if (st.isBlockDevice()) return Filetype.BLOCK_DEVICE;
  if (st.isCharacterDevice()) return Filetype.CHARACTER_DEVICE;
  if (st.isSocket()) return Filetype.SOCKET_STREAM;
  return Filetype.UNKNOWN;
}

/** The WASI filetype of a directory entry (Node resolves DT_UNKNOWN with lstat itself). */
export function filetypeOfDirent(entry: Dirent<Buffer>): number {
  if (entry.isFile()) return Filetype.REGULAR_FILE;
  if (entry.isDirectory()) return Filetype.DIRECTORY;
  if (entry.isSymbolicLink()) return Filetype.SYMBOLIC_LINK;
  if (entry.isBlockDevice()) return Filetype.BLOCK_DEVICE;
  if (entry.isCharacterDevice()) return Filetype.CHARACTER_DEVICE;
  if (entry.isSocket()) return Filetype.SOCKET_STREAM;
  return Filetype.UNKNOWN;
}

/** The guest's view of `st`, for the file at `components` inside preopen `preopenIndex`. */
export function virtualStat(preopenIndex: number, components: readonly string[], st: BigIntStats): FileStat {
  const filetype = filetypeOfStats(st);
  const isDirectory = filetype === Filetype.DIRECTORY;
  return {
    dev: BigInt(preopenIndex + 1),
    ino: virtualIno(preopenIndex, relativePathBytes(components)),
    filetype,
    nlink: isDirectory ? 1n : st.nlink,
    size: isDirectory ? 0n : st.size,
    atimNs: 0n,
    mtimNs: 0n,
    ctimNs: 0n,
  };
}

/** One entry of a directory listing as the guest sees it. */
export interface ListingEntry {
  name: Uint8Array;
  ino: bigint;
  filetype: number;
}

/** Byte order of names (memcmp), the order of every listing. */
export function compareNameBytes(a: Uint8Array, b: Uint8Array): number {
  return Buffer.compare(a, b);
}

/**
 * Packs entries[cookie..] as WASI dirents, at most `bufLen` bytes. Each
 * dirent's d_next is the cookie of the entry after it, its position in the
 * listing. The last entry is cut off when it does not fit, as the spec
 * requires; the guest sees a full buffer and asks again with a bigger one.
 */
export function encodeDirents(entries: readonly ListingEntry[], cookie: bigint, bufLen: number): Uint8Array {
  if (cookie >= BigInt(entries.length) || bufLen <= 0) return new Uint8Array(0);
  const start = Number(cookie);
  let needed = 0;
  for (let i = start; i < entries.length && needed < bufLen; i++) {
    needed += Layout.dirent.size + entries[i]!.name.byteLength;
  }
  const full = new Uint8Array(needed);
  const view = new DataView(full.buffer);
  let at = 0;
  for (let i = start; i < entries.length && at < needed; i++) {
    const entry = entries[i]!;
    view.setBigUint64(at + Layout.dirent.next, BigInt(i + 1), true);
    view.setBigUint64(at + Layout.dirent.ino, entry.ino, true);
    view.setUint32(at + Layout.dirent.namlen, entry.name.byteLength, true);
    view.setUint8(at + Layout.dirent.type, entry.filetype);
    full.set(entry.name, at + Layout.dirent.size);
    at += Layout.dirent.size + entry.name.byteLength;
  }
  return needed > bufLen ? full.subarray(0, bufLen) : full;
}
