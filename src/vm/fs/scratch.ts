/**
 * Test support for src/vm/fs: real temporary folders under os.tmpdir(),
 * removed when the test ends, and small helpers to unwrap FsResults. Only the
 * colocated tests import this module.
 *
 * Each scratch folder holds `disk/` (the preopened folder) and `outside/`
 * with `secret.txt`, the host file that sandbox tests try to reach.
 */

import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { strict as assert } from 'node:assert';
import type { TestContext } from 'node:test';
import { Oflags, Rights, RIGHTS_FILE, Lookupflags, Fdflags } from '../../wasi/abi.js';
import { FileSystem, type DirHandle, type FileHandle, type FsResult } from './fs.js';

export const SECRET_BYTES = 'host secret, never for the guest\n';

export interface Scratch {
  top: string;
  disk: string;
  outside: string;
  secretPath: string;
  /** Checks to run when the test ends, before the folder is removed. */
  atEnd: Array<() => void>;
}

/** A fresh scratch folder, removed after the test `t`. */
export function scratch(t: TestContext): Scratch {
  const top = mkdtempSync(join(tmpdir(), 'lockstep-fs-'));
  const atEnd: Array<() => void> = [];
  t.after(() => {
    try {
      for (const check of atEnd) check();
    } finally {
      rmSync(top, { recursive: true, force: true });
    }
  });
  const disk = join(top, 'disk');
  const outside = join(top, 'outside');
  mkdirSync(disk);
  mkdirSync(outside);
  const secretPath = join(outside, 'secret.txt');
  writeFileSync(secretPath, SECRET_BYTES);
  return { top, disk, outside, secretPath, atEnd };
}

/** A FileSystem with `disk` preopened as /data, its root handle, and closeAll after the test. */
export function mount(t: TestContext, s: Scratch): { fs: FileSystem; root: DirHandle } {
  const fs = new FileSystem([{ guestPath: '/data', hostPath: s.disk }]);
  t.after(() => fs.closeAll());
  return { fs, root: fs.openPreopen(0) };
}

export function value<T>(r: FsResult<T>): T {
  if (!r.ok) assert.fail(`expected success, got errno ${r.errno}`);
  return r.value;
}

export function errno<T>(r: FsResult<T>): number {
  if (r.ok) assert.fail('expected an errno, got success');
  return r.errno;
}

export const READ_RIGHTS =
  RIGHTS_FILE & ~(Rights.FD_WRITE | Rights.FD_DATASYNC | Rights.FD_ALLOCATE | Rights.FD_FILESTAT_SET_SIZE);

export interface OpenOptions {
  create?: boolean;
  exclusive?: boolean;
  truncate?: boolean;
  write?: boolean;
  append?: boolean;
  follow?: boolean;
  rights?: bigint;
}

/** path_open the way wasi-libc's open() does for a regular file. */
export function openFile(
  fs: FileSystem,
  dir: DirHandle,
  path: string,
  o: OpenOptions = {},
): FsResult<FileHandle> {
  const oflags =
    (o.create ? Oflags.CREAT : 0) | (o.exclusive ? Oflags.EXCL : 0) | (o.truncate ? Oflags.TRUNC : 0);
  const rights = o.rights ?? (o.write ? RIGHTS_FILE : READ_RIGHTS);
  const r = fs.pathOpen(
    dir,
    o.follow === false ? 0 : Lookupflags.SYMLINK_FOLLOW,
    path,
    oflags,
    rights,
    0n,
    o.append ? Fdflags.APPEND : 0,
  );
  if (!r.ok) return r;
  assert.equal(r.value.kind, 'file');
  return r as FsResult<FileHandle>;
}

/** path_open of a directory the way wasi-libc's opendir() does: every right but the writing ones, and the parent's inheriting rights. */
export function openDir(fs: FileSystem, dir: DirHandle, path: string): FsResult<DirHandle> {
  const writing = Rights.FD_DATASYNC | Rights.FD_WRITE | Rights.FD_ALLOCATE | Rights.FD_FILESTAT_SET_SIZE;
  const base = ((1n << 64n) - 1n) & ~writing;
  const r = fs.pathOpen(
    dir,
    Lookupflags.SYMLINK_FOLLOW,
    path,
    Oflags.DIRECTORY,
    base,
    dir.rightsInheriting,
    0,
  );
  if (!r.ok) return r;
  assert.equal(r.value.kind, 'dir');
  return r as FsResult<DirHandle>;
}

const utf8 = new TextEncoder();
const utf8Decoder = new TextDecoder();

export function bytes(s: string): Uint8Array {
  return utf8.encode(s);
}

export function text(b: Uint8Array): string {
  return utf8Decoder.decode(b);
}

/** Writes `s` through the handle and returns the count. */
export function put(fs: FileSystem, h: FileHandle, s: string): number {
  return value(fs.writev(h, [bytes(s)]));
}

/** Reads up to `maxBytes` through the handle's offset. */
export function get(fs: FileSystem, h: FileHandle, maxBytes = 4096): string {
  const buf = new Uint8Array(maxBytes);
  const n = value(fs.readv(h, [buf]));
  return text(buf.subarray(0, n));
}

export interface DecodedDirent {
  next: bigint;
  ino: bigint;
  type: number;
  name: string;
  /** False when the name was cut off by the end of the buffer. */
  whole: boolean;
}

/** Decodes packed dirents as a guest would; a header cut short ends the list. */
export function decodeDirents(buf: Uint8Array): DecodedDirent[] {
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const out: DecodedDirent[] = [];
  let at = 0;
  while (at + 24 <= buf.byteLength) {
    const namlen = view.getUint32(at + 16, true);
    const nameEnd = Math.min(at + 24 + namlen, buf.byteLength);
    out.push({
      next: view.getBigUint64(at, true),
      ino: view.getBigUint64(at + 8, true),
      type: view.getUint8(at + 20),
      name: text(buf.subarray(at + 24, nameEnd)),
      whole: nameEnd === at + 24 + namlen,
    });
    at += 24 + namlen;
  }
  return out;
}

/** The names of a whole listing, read in pages of `pageBytes` as wasi-libc does. */
export function listAll(fs: FileSystem, dir: DirHandle, pageBytes = 4096): string[] {
  const names: string[] = [];
  let cookie = 0n;
  for (;;) {
    const page = value(fs.readdir(dir, cookie, pageBytes));
    const entries = decodeDirents(page);
    const whole = entries.filter((e) => e.whole);
    if (whole.length === 0 && page.byteLength === pageBytes) assert.fail('page too small for one entry');
    for (const e of whole) {
      names.push(e.name);
      cookie = e.next;
    }
    if (page.byteLength < pageBytes) return names;
  }
}

export function writeHostFile(path: string, content: string): void {
  writeFileSync(path, content);
}
