/**
 * The guest's filesystem: everything behind WASI's fd_* and path_* functions
 * for files and directories on preopened folders. The WASI host dispatch
 * (src/vm/wasi/host.ts) owns the fd table, decodes guest memory and calls in
 * here with plain values; this layer does the file operations right there on
 * the vCPU thread with Node's synchronous `fs` API.
 *
 * Invariants:
 * - Sandbox. The guest reaches nothing outside its preopened folders. Every
 *   path goes through resolve.ts (see its header for the algorithm and the
 *   TOCTOU stance: the folder belongs to this VM alone). Operations that join
 *   two paths (link, rename) require both ends in the same preopen, so nothing
 *   can be linked or moved across the boundary.
 * - Determinism. A backup that replays the same calls on its own copy of the
 *   folder gets byte-identical results: sorted listings with positional
 *   cookies, virtual inodes, devices and timestamps (metadata.ts), limits
 *   checked here rather than by the host (limits.ts), APPEND and the file
 *   offset kept here rather than in the kernel. Host paths never reach the
 *   guest: results carry errnos only.
 * - Expected failures are FsResult values, never exceptions. A throw is a bug in
 *   Lockstep or in its caller (for instance a handle that belongs to another
 *   FileSystem), and it stops the VM.
 * - Rights are checked on every call, as wasi-libc expects (NOTCAPABLE when
 *   missing). A handle's rights only ever shrink. path_open grants the rights
 *   asked for, intersected with the directory's inheriting rights and with
 *   what the file type allows (RIGHTS_FILE or RIGHTS_DIR); asking for more is
 *   not an error, because wasi-libc and Rust std ask for broad masks.
 *
 * Decisions a reader should know:
 * - Directory handles hold no host descriptor. They name their directory by
 *   its path inside the preopen, walked again on each use. Renaming a
 *   directory therefore detaches handles opened on it (they see NOENT), where
 *   POSIX would follow the inode.
 * - File handles hold a host descriptor opened without O_APPEND. The offset is
 *   ours (Node has no lseek), and APPEND is emulated: each write goes to the
 *   size reported by fstat, which is exact because nothing else writes the
 *   folder. This lets fd_fdstat_set_flags toggle APPEND, which Node cannot do
 *   on an open descriptor. pwrite ignores APPEND, as POSIX specifies (Linux's
 *   own pwrite appends, a documented deviation of Linux).
 * - SYNC and DSYNC fdflags are emulated with fsync and fdatasync after each
 *   write, so the guest's durability requests hold (DESIGN.md §3, item 7).
 *   RSYNC and NONBLOCK have no effect on regular files.
 * - fd_filestat_set_times and path_filestat_set_times answer NOTSUP on purpose
 *   when asked to set any time: timestamps are virtual and always 0, and a
 *   stored table would need snapshotting and would still disagree with the 0
 *   reported for every other file. Rights, flags and the path are checked
 *   first, and a call that sets nothing succeeds.
 * - Only regular files and directories can be opened; a FIFO or device that
 *   the host put in the folder is NOTSUP (opening a FIFO would block the vCPU).
 * - fd_advise is validated and then ignored: Node has no posix_fadvise, and
 *   advice never changes results.
 * - fd_allocate grows the file with ftruncate; it does not reserve blocks, so
 *   NOSPC can still come on a later write.
 */

import * as nodeFs from 'node:fs';
import { strict as assert } from 'node:assert';
import { resolve as resolveHostPath } from 'node:path';
import {
  Advice,
  Errno,
  Fdflags,
  Filetype,
  Fstflags,
  Lookupflags,
  Oflags,
  RIGHTS_DIR,
  RIGHTS_FILE,
  Rights,
  Whence,
} from '../../wasi/abi.js';
import { attempt, errnoFromError, fail, ok, OK_VOID, systemErrorCode, type FsResult } from './errors.js';
import { FILE_SIZE_MAX_BYTES, HOST_ROOT_BYTES_MAX, IO_BYTES_MAX, OPEN_HANDLES_MAX } from './limits.js';
import {
  compareNameBytes,
  filetypeOfDirent,
  relativePathBytes,
  virtualChildIno,
  virtualIno,
  virtualStat,
  encodeDirents,
  type FileStat,
  type ListingEntry,
} from './metadata.js';
import { checkGuestPath, resolvePath, type Resolved } from './resolve.js';

export type { FsResult } from './errors.js';
export type { FileStat } from './metadata.js';

/** A file or directory handle as a snapshot keeps it (FileSystem.exportHandle); bigints as decimal strings. */
export type HandleState = {
  preopenIndex: number;
  components: string[];
  fdflags: number;
  rightsBase: string;
  rightsInheriting: string;
  open: boolean;
} & ({ kind: 'dir'; guestPath: string | null } | { kind: 'file'; offsetBytes: string });

export interface Preopen {
  guestPath: string;
  hostPath: string;
}

export interface FileHandle {
  readonly kind: 'file';
  fdflags: number;
  rightsBase: bigint;
  rightsInheriting: bigint;
}

export interface DirHandle {
  readonly kind: 'dir';
  fdflags: number;
  rightsBase: bigint;
  rightsInheriting: bigint;
}

/** The rights a preopen root starts with: its own directory rights, and everything to hand down. */
export const PREOPEN_RIGHTS_BASE = RIGHTS_DIR;
export const PREOPEN_RIGHTS_INHERITING = RIGHTS_DIR | RIGHTS_FILE;

/** Rights that need the host file opened for writing (wasi-libc and Rust std both group them so). */
const WRITE_RIGHTS = Rights.FD_WRITE | Rights.FD_DATASYNC | Rights.FD_ALLOCATE | Rights.FD_FILESTAT_SET_SIZE;
const FDFLAGS_ALL = Fdflags.APPEND | Fdflags.DSYNC | Fdflags.NONBLOCK | Fdflags.RSYNC | Fdflags.SYNC;
const OFLAGS_ALL = Oflags.CREAT | Oflags.DIRECTORY | Oflags.EXCL | Oflags.TRUNC;
const FSTFLAGS_ALL = Fstflags.ATIM | Fstflags.ATIM_NOW | Fstflags.MTIM | Fstflags.MTIM_NOW;
/** Offsets and lengths arrive as u64; at or above 2^63 they are negative to a C program, and INVAL. */
const I64_LIMIT = 1n << 63n;
/** Permissions for new files and directories, before the umask. WASI has no modes, so the guest never sees them. */
const NEW_FILE_MODE = 0o666;
const NEW_DIRECTORY_MODE = 0o777;

const { O_RDONLY, O_WRONLY, O_RDWR, O_CREAT, O_EXCL, O_TRUNC, O_NOFOLLOW, O_DIRECTORY } = nodeFs.constants;

class FileHandleImpl implements FileHandle {
  readonly kind = 'file' as const;
  /** The host descriptor, or null once closed. */
  hostFd: number | null;
  offsetBytes = 0n;

  constructor(
    readonly owner: FileSystem,
    hostFd: number,
    readonly preopenIndex: number,
    /** The canonical components the file was opened at; its ino comes from them. */
    readonly components: readonly string[],
    public fdflags: number,
    public rightsBase: bigint,
    public rightsInheriting: bigint,
  ) {
    this.hostFd = hostFd;
  }
}

class DirHandleImpl implements DirHandle {
  readonly kind = 'dir' as const;
  open = true;
  /** The sorted listing taken at the last readdir from cookie 0; cookies index into it. */
  listing: ListingEntry[] | null = null;

  constructor(
    readonly owner: FileSystem,
    readonly preopenIndex: number,
    readonly components: readonly string[],
    /** The guest path of a preopen root, null for directories opened with path_open. */
    readonly guestPath: string | null,
    public fdflags: number,
    public rightsBase: bigint,
    public rightsInheriting: bigint,
  ) {}
}

type AnyHandle = FileHandleImpl | DirHandleImpl;

interface PreopenRoot {
  guestPath: string;
  hostRoot: string;
}

export class FileSystem {
  private readonly roots: readonly PreopenRoot[];
  /** Handles opened by pathOpen and not yet closed; OPEN_HANDLES_MAX bounds it. */
  private readonly live = new Set<AnyHandle>();
  /** Preopen roots handed out and not yet closed. They do not count against the limit. */
  private readonly liveRoots = new Set<DirHandleImpl>();
  /** While frozen (see freeze()): the frozen tree, and its entries still sharing an inode, by dev:ino. */
  private frozen: { dir: string; shared: Map<string, string[]> } | null = null;
  private unshared = 0;

  constructor(preopens: readonly Preopen[]) {
    this.roots = preopens.map((preopen) => {
      const hostRoot = resolveHostPath(preopen.hostPath);
      let isDirectory: boolean;
      try {
        isDirectory = nodeFs.statSync(hostRoot).isDirectory();
      } catch (err) {
        throw new Error(
          `preopened folder ${preopen.hostPath} cannot be used: ${systemErrorCode(err) ?? String(err)}`,
        );
      }
      if (!isDirectory) throw new Error(`preopened folder ${preopen.hostPath} is not a directory`);
      if (Buffer.byteLength(hostRoot, 'utf8') > HOST_ROOT_BYTES_MAX) {
        throw new Error(
          `preopened folder ${preopen.hostPath} has a path longer than ${HOST_ROOT_BYTES_MAX} bytes; use a shorter one`,
        );
      }
      if (preopen.guestPath.length === 0) {
        throw new Error(`preopened folder ${preopen.hostPath} needs a non-empty guest path`);
      }
      return { guestPath: preopen.guestPath, hostRoot };
    });
  }

  preopenCount(): number {
    return this.roots.length;
  }

  /** A new root handle on preopen `index`, with the full directory rights. */
  openPreopen(index: number): DirHandle {
    const root = this.roots[index];
    assert(root !== undefined, `no preopen ${index}`);
    const handle = new DirHandleImpl(
      this,
      index,
      [],
      root.guestPath,
      0,
      PREOPEN_RIGHTS_BASE,
      PREOPEN_RIGHTS_INHERITING,
    );
    this.liveRoots.add(handle);
    return handle;
  }

  /** The guest path of a preopen root (what fd_prestat_dir_name returns), or null for other directories. */
  preopenGuestPath(h: DirHandle): string | null {
    return this.dirImpl(h).guestPath;
  }

  // ---------------------------------------------------------------- fd_* on files

  readv(h: FileHandle, bufs: Uint8Array[]): FsResult<number> {
    const f = this.openFile(h, Rights.FD_READ);
    if (!f.ok) return f;
    const result = this.readAt(f.value, bufs, f.value.offsetBytes);
    if (result.ok) f.value.offsetBytes += BigInt(result.value);
    return result;
  }

  preadv(h: FileHandle, bufs: Uint8Array[], offset: bigint): FsResult<number> {
    const f = this.openFile(h, Rights.FD_READ | Rights.FD_SEEK);
    if (!f.ok) return f;
    if (offset < 0n || offset >= I64_LIMIT) return fail(Errno.INVAL);
    return this.readAt(f.value, bufs, offset);
  }

  writev(h: FileHandle, bufs: Uint8Array[]): FsResult<number> {
    const f = this.openFile(h, Rights.FD_WRITE);
    if (!f.ok) return f;
    const file = f.value;
    let position = file.offsetBytes;
    if ((file.fdflags & Fdflags.APPEND) !== 0) {
      const size = this.fileSize(file);
      if (!size.ok) return size;
      position = size.value;
    }
    const result = this.writeAt(file, bufs, position);
    if (result.ok && (result.value > 0 || (file.fdflags & Fdflags.APPEND) === 0)) {
      file.offsetBytes = position + BigInt(result.value);
    }
    return result;
  }

  pwritev(h: FileHandle, bufs: Uint8Array[], offset: bigint): FsResult<number> {
    const f = this.openFile(h, Rights.FD_WRITE | Rights.FD_SEEK);
    if (!f.ok) return f;
    if (offset < 0n || offset >= I64_LIMIT) return fail(Errno.INVAL);
    return this.writeAt(f.value, bufs, offset);
  }

  seek(h: FileHandle, delta: bigint, whence: number): FsResult<bigint> {
    // lseek(fd, 0, SEEK_CUR) is how C asks for the offset: it needs only the right to tell.
    const needed = delta === 0n && whence === Whence.CUR ? Rights.FD_TELL : Rights.FD_SEEK;
    const f = this.openFile(h, needed);
    if (!f.ok) return f;
    const file = f.value;
    // The delta is an s64 that the caller may pass as its u64 bit pattern.
    const signedDelta = BigInt.asIntN(64, delta);
    let base: bigint;
    if (whence === Whence.SET) base = 0n;
    else if (whence === Whence.CUR) base = file.offsetBytes;
    else if (whence === Whence.END) {
      const size = this.fileSize(file);
      if (!size.ok) return size;
      base = size.value;
    } else return fail(Errno.INVAL);
    const target = base + signedDelta;
    if (target < 0n || target > FILE_SIZE_MAX_BYTES) return fail(Errno.INVAL);
    file.offsetBytes = target;
    return ok(target);
  }

  tell(h: FileHandle): FsResult<bigint> {
    const f = this.openFile(h, Rights.FD_TELL);
    if (!f.ok) return f;
    return ok(f.value.offsetBytes);
  }

  fdFilestatGet(h: FileHandle | DirHandle): FsResult<FileStat> {
    const handle = this.openHandle(h, Rights.FD_FILESTAT_GET);
    if (!handle.ok) return handle;
    const target = handle.value;
    if (target instanceof FileHandleImpl) {
      const fd = target.hostFd!;
      return attempt(() =>
        virtualStat(target.preopenIndex, target.components, nodeFs.fstatSync(fd, { bigint: true })),
      );
    }
    const dir = this.resolveDir(target);
    if (!dir.ok) return dir;
    return attempt(() =>
      virtualStat(
        target.preopenIndex,
        dir.value.components,
        nodeFs.lstatSync(dir.value.hostPath, { bigint: true }),
      ),
    );
  }

  setSize(h: FileHandle, size: bigint): FsResult<void> {
    const f = this.openFile(h, Rights.FD_FILESTAT_SET_SIZE);
    if (!f.ok) return f;
    if (size >= I64_LIMIT) return fail(Errno.INVAL);
    if (size > FILE_SIZE_MAX_BYTES) return fail(Errno.FBIG);
    const fd = f.value.hostFd!;
    if (this.frozen !== null) this.unshare(fd, null);
    return attempt(() => nodeFs.ftruncateSync(fd, Number(size)));
  }

  allocate(h: FileHandle, offset: bigint, len: bigint): FsResult<void> {
    const f = this.openFile(h, Rights.FD_ALLOCATE);
    if (!f.ok) return f;
    // posix_fallocate: a negative offset or a length <= 0 is EINVAL.
    if (offset >= I64_LIMIT || len >= I64_LIMIT || len === 0n) return fail(Errno.INVAL);
    const end = offset + len;
    if (end > FILE_SIZE_MAX_BYTES) return fail(Errno.FBIG);
    const size = this.fileSize(f.value);
    if (!size.ok) return size;
    if (size.value >= end) return OK_VOID;
    const fd = f.value.hostFd!;
    if (this.frozen !== null) this.unshare(fd, null);
    return attempt(() => nodeFs.ftruncateSync(fd, Number(end)));
  }

  sync(h: FileHandle | DirHandle): FsResult<void> {
    return this.flush(h, Rights.FD_SYNC, (fd) => nodeFs.fsyncSync(fd));
  }

  datasync(h: FileHandle | DirHandle): FsResult<void> {
    return this.flush(h, Rights.FD_DATASYNC, (fd) => nodeFs.fdatasyncSync(fd));
  }

  advise(h: FileHandle, offset: bigint, len: bigint, advice: number): FsResult<void> {
    const f = this.openFile(h, Rights.FD_ADVISE);
    if (!f.ok) return f;
    if (offset >= I64_LIMIT || len >= I64_LIMIT) return fail(Errno.INVAL);
    if (!Number.isInteger(advice) || advice < Advice.NORMAL || advice > Advice.NOREUSE)
      return fail(Errno.INVAL);
    return OK_VOID;
  }

  setFdflags(h: FileHandle | DirHandle, fdflags: number): FsResult<void> {
    const handle = this.openHandle(h, Rights.FD_FDSTAT_SET_FLAGS);
    if (!handle.ok) return handle;
    if ((fdflags & ~FDFLAGS_ALL) !== 0) return fail(Errno.INVAL);
    handle.value.fdflags = fdflags;
    return OK_VOID;
  }

  setRights(h: FileHandle | DirHandle, base: bigint, inheriting: bigint): FsResult<void> {
    const handle = this.openHandle(h, 0n);
    if (!handle.ok) return handle;
    const target = handle.value;
    if ((base & ~target.rightsBase) !== 0n || (inheriting & ~target.rightsInheriting) !== 0n) {
      return fail(Errno.NOTCAPABLE);
    }
    target.rightsBase = base;
    target.rightsInheriting = inheriting;
    return OK_VOID;
  }

  /**
   * Packed dirents from `cookie` on, at most `bufLen` bytes. The listing is
   * "." and ".." and then the entries sorted by name bytes; it is taken again
   * whenever the guest starts from cookie 0 and otherwise kept, so cookies stay
   * stable for the handle while the guest pages through it.
   */
  readdir(h: DirHandle, cookie: bigint, bufLen: number): FsResult<Uint8Array> {
    const handle = this.openHandle(h, Rights.FD_READDIR);
    if (!handle.ok) return handle;
    const dir = handle.value;
    assert(dir instanceof DirHandleImpl, 'readdir on a file handle');
    if (cookie === 0n || dir.listing === null) {
      const listing = this.takeListing(dir);
      if (!listing.ok) return listing;
      dir.listing = listing.value;
    }
    return ok(encodeDirents(dir.listing, cookie, bufLen));
  }

  close(h: FileHandle | DirHandle): FsResult<void> {
    const handle = this.openHandle(h, 0n);
    if (!handle.ok) return handle;
    return this.release(handle.value);
  }

  /** Closes every handle, at VM stop. Errors closing are ignored: nothing is left to report them to. */
  closeAll(): void {
    for (const handle of [...this.live, ...this.liveRoots]) this.release(handle);
  }

  /**
   * A handle as a snapshot keeps it: where it is (preopen and canonical
   * components), its rights and flags, and a file's offset. A directory's
   * cached listing is not kept: a restored guest that goes on reading a
   * directory with an old cookie reads from a fresh listing.
   */
  exportHandle(h: FileHandle | DirHandle): HandleState {
    const handle = this.impl(h);
    const common = {
      preopenIndex: handle.preopenIndex,
      components: [...handle.components],
      fdflags: handle.fdflags,
      rightsBase: handle.rightsBase.toString(),
      rightsInheriting: handle.rightsInheriting.toString(),
    };
    if (handle instanceof DirHandleImpl)
      return { kind: 'dir', ...common, guestPath: handle.guestPath, open: handle.open };
    return {
      kind: 'file',
      ...common,
      offsetBytes: handle.offsetBytes.toString(),
      open: handle.hostFd !== null,
    };
  }

  /**
   * Rebuilds a handle from exportHandle's description, on this file system
   * (a disk with the same content, restored with the snapshot). A file that
   * is gone, or is now something else, is an error naming it.
   */
  importHandle(s: HandleState): FsResult<FileHandle | DirHandle> | string {
    const root = this.roots[s.preopenIndex];
    if (root === undefined) return `the snapshot names preopen ${s.preopenIndex}, which this VM lacks`;
    const rightsBase = BigInt(s.rightsBase);
    const rightsInheriting = BigInt(s.rightsInheriting);
    if (s.kind === 'dir') {
      const handle = new DirHandleImpl(
        this,
        s.preopenIndex,
        s.components,
        s.guestPath,
        s.fdflags,
        rightsBase,
        rightsInheriting,
      );
      handle.open = s.open;
      if (s.open) (s.guestPath !== null ? this.liveRoots : this.live).add(handle);
      return ok(handle);
    }
    const hostPath = [root.hostRoot, ...s.components].join('/');
    const wantsRead = (rightsBase & Rights.FD_READ) !== 0n;
    const wantsWrite = (rightsBase & WRITE_RIGHTS) !== 0n;
    const access = wantsWrite ? (wantsRead ? O_RDWR : O_WRONLY) : O_RDONLY;
    let hostFd: number | null = null;
    if (s.open) {
      try {
        hostFd = nodeFs.openSync(hostPath, access | O_NOFOLLOW);
      } catch (e) {
        return `cannot reopen ${root.guestPath}/${s.components.join('/')}: ${systemErrorCode(e) ?? String(e)}`;
      }
    }
    const handle = new FileHandleImpl(
      this,
      hostFd ?? -1,
      s.preopenIndex,
      s.components,
      s.fdflags,
      rightsBase,
      rightsInheriting,
    );
    handle.hostFd = hostFd;
    handle.offsetBytes = BigInt(s.offsetBytes);
    if (s.open) this.live.add(handle);
    return ok(handle);
  }

  /**
   * Freezes the folders as they are now into `intoDir` (one subfolder per
   * preopen, by index), cheaply: directories and symlinks are recreated,
   * regular files are hard links to the live ones (copied only when `intoDir`
   * is on another file system). From then on, the first change to a file's
   * content (a write, a truncation, an allocation, an open with O_TRUNC)
   * first gives the frozen tree its own copy of that file: copy-on-write at
   * file granularity, so the frozen tree stays exactly as it was at the freeze
   * while the guest goes on. Renames, unlinks and new files touch only the
   * live tree. Used for the disk of a snapshot (a live clone streams it while
   * the primary runs on). Returns a message if the tree cannot be made.
   */
  freeze(intoDir: string): { files: number; bytes: number } | string {
    if (this.frozen !== null) return 'the folders are already frozen';
    const shared = new Map<string, string[]>();
    let files = 0;
    let bytes = 0;
    const copyTree = (src: string, dst: string): void => {
      nodeFs.mkdirSync(dst, { recursive: true, mode: 0o700 });
      for (const entry of nodeFs.readdirSync(src, { withFileTypes: true })) {
        const from = `${src}/${entry.name}`;
        const to = `${dst}/${entry.name}`;
        if (entry.isDirectory()) copyTree(from, to);
        else if (entry.isSymbolicLink()) nodeFs.symlinkSync(nodeFs.readlinkSync(from), to);
        else if (entry.isFile()) {
          const st = nodeFs.lstatSync(from, { bigint: true });
          try {
            nodeFs.linkSync(from, to);
            const key = `${st.dev}:${st.ino}`;
            shared.set(key, [...(shared.get(key) ?? []), to]);
          } catch (e) {
            if (systemErrorCode(e) !== 'EXDEV') throw e;
            nodeFs.copyFileSync(from, to);
          }
          files++;
          bytes += Number(st.size);
        }
      }
    };
    try {
      this.roots.forEach((root, i) => copyTree(root.hostRoot, `${intoDir}/${i}`));
    } catch (e) {
      nodeFs.rmSync(intoDir, { recursive: true, force: true });
      return `cannot freeze the folders into ${intoDir}: ${(e as Error).message}`;
    }
    this.frozen = { dir: intoDir, shared };
    return { files, bytes };
  }

  /**
   * Copies a frozen tree (one preopen's, `freeze`'s `intoDir/N`) to `dst`
   * while the guest may still be writing to the live files. Without a lock:
   * a file is copied, and copied again if its frozen entry was replaced
   * meanwhile (unshare renames the private copy over the entry before the
   * live write, so an entry that still has the same inode after the copy was
   * not written during it).
   */
  static copyFrozenTree(src: string, dst: string): void {
    nodeFs.mkdirSync(dst, { recursive: true, mode: 0o700 });
    for (const entry of nodeFs.readdirSync(src, { withFileTypes: true })) {
      const from = `${src}/${entry.name}`;
      const to = `${dst}/${entry.name}`;
      if (entry.isDirectory()) FileSystem.copyFrozenTree(from, to);
      else if (entry.isSymbolicLink()) nodeFs.symlinkSync(nodeFs.readlinkSync(from), to);
      else if (entry.isFile()) {
        for (;;) {
          const before = nodeFs.lstatSync(from, { bigint: true }).ino;
          nodeFs.copyFileSync(from, to);
          if (nodeFs.lstatSync(from, { bigint: true }).ino === before) break;
        }
      }
    }
  }

  /** Ends the freeze: the frozen tree is deleted and writes stop copying. */
  thaw(): void {
    if (this.frozen === null) return;
    nodeFs.rmSync(this.frozen.dir, { recursive: true, force: true });
    this.frozen = null;
  }

  /** Files the frozen tree has had to copy since the freeze (for tests). */
  get unsharedFiles(): number {
    return this.unshared;
  }

  /**
   * Before the content of a file changes while frozen: if the frozen tree
   * shares its inode, the frozen entry becomes a private copy first (copied,
   * then renamed over the link, so the frozen tree never holds half a file).
   */
  private unshare(fd: number | null, hostPath: string | null): void {
    const frozen = this.frozen!;
    let key: string;
    try {
      const st =
        fd !== null ? nodeFs.fstatSync(fd, { bigint: true }) : nodeFs.lstatSync(hostPath!, { bigint: true });
      key = `${st.dev}:${st.ino}`;
    } catch {
      return; // nothing there to protect
    }
    const paths = frozen.shared.get(key);
    if (paths === undefined) return;
    // Files hard-linked to each other in the live tree stay so in the frozen one.
    const first = paths[0]!;
    // The copy is made beside the tree, not in it: a reader walking the tree never meets it.
    const tmp = `${frozen.dir}/.lockstep-cow`;
    nodeFs.copyFileSync(first, tmp);
    nodeFs.renameSync(tmp, first);
    for (const other of paths.slice(1)) {
      // Linked beside, then renamed over: a reader walking the tree never finds the entry missing.
      nodeFs.linkSync(first, tmp);
      nodeFs.renameSync(tmp, other);
    }
    frozen.shared.delete(key);
    this.unshared++;
  }

  /** How many handles count against OPEN_HANDLES_MAX now (for tests and the VM's status). */
  openHandleCount(): number {
    return this.live.size;
  }

  // ---------------------------------------------------------------- fd/path_filestat_set_times

  /** NOTSUP for any time to set, after the rights and flags checks; see the module header. */
  fdFilestatSetTimes(
    h: FileHandle | DirHandle,
    atimNs: bigint,
    mtimNs: bigint,
    fstflags: number,
  ): FsResult<void> {
    void atimNs;
    void mtimNs;
    const handle = this.openHandle(h, Rights.FD_FILESTAT_SET_TIMES);
    if (!handle.ok) return handle;
    return checkSetTimes(fstflags);
  }

  pathFilestatSetTimes(
    dir: DirHandle,
    lookupflags: number,
    path: string,
    atimNs: bigint,
    mtimNs: bigint,
    fstflags: number,
  ): FsResult<void> {
    void atimNs;
    void mtimNs;
    const r = this.resolveAt(dir, Rights.PATH_FILESTAT_SET_TIMES, path, followOf(lookupflags));
    if (!r.ok) return r;
    const exists = attempt(() => nodeFs.lstatSync(r.value.resolved.hostPath));
    if (!exists.ok) return exists;
    return checkSetTimes(fstflags);
  }

  // ---------------------------------------------------------------- path_*

  pathOpen(
    dir: DirHandle,
    lookupflags: number,
    path: string,
    oflags: number,
    rightsBase: bigint,
    rightsInheriting: bigint,
    fdflags: number,
  ): FsResult<FileHandle | DirHandle> {
    const d = this.openDir(dir, Rights.PATH_OPEN);
    if (!d.ok) return d;
    const parent = d.value;
    if ((oflags & ~OFLAGS_ALL) !== 0 || (fdflags & ~FDFLAGS_ALL) !== 0) return fail(Errno.INVAL);
    const create = (oflags & Oflags.CREAT) !== 0;
    const exclusive = create && (oflags & Oflags.EXCL) !== 0;
    const truncate = (oflags & Oflags.TRUNC) !== 0;
    const directory = (oflags & Oflags.DIRECTORY) !== 0;
    if (create && (parent.rightsBase & Rights.PATH_CREATE_FILE) === 0n) return fail(Errno.NOTCAPABLE);
    if (truncate && (parent.rightsBase & Rights.PATH_FILESTAT_SET_SIZE) === 0n) return fail(Errno.NOTCAPABLE);
    if (this.live.size >= OPEN_HANDLES_MAX) return fail(Errno.MFILE);

    // O_CREAT|O_EXCL never follows a final symlink: a dangling one must fail with EXIST, not create its target.
    const follow = followOf(lookupflags) && !exclusive;
    const r = resolvePath(this.rootOf(parent).hostRoot, parent.components, path, follow);
    if (!r.ok) return r;
    const resolved = r.value;

    // New handles get what they asked for, within what the directory hands down and the file type allows.
    const offeredBase = rightsBase & parent.rightsInheriting;
    const inheriting = rightsInheriting & parent.rightsInheriting;

    let existing: nodeFs.Stats | null;
    try {
      existing = nodeFs.lstatSync(resolved.hostPath);
    } catch (err) {
      if (systemErrorCode(err) !== 'ENOENT') return fail(errnoFromError(err));
      existing = null;
    }

    if (existing === null) {
      if (!create) return fail(Errno.NOENT);
      if (directory) return fail(Errno.INVAL);
      assert(resolved.last === 'name', 'a missing path ends in a name');
      return this.openFileAt(parent, resolved, offeredBase, inheriting, fdflags, O_CREAT | O_EXCL);
    }
    if (exclusive) return fail(Errno.EXIST);
    // An unfollowed final symlink: Linux answers ELOOP for O_NOFOLLOW, and ENOTDIR when O_DIRECTORY is also set.
    if (existing.isSymbolicLink()) return fail(directory ? Errno.NOTDIR : Errno.LOOP);
    if (existing.isDirectory()) {
      if (truncate || (offeredBase & Rights.FD_WRITE) !== 0n) return fail(Errno.ISDIR);
      const handle = new DirHandleImpl(
        this,
        parent.preopenIndex,
        resolved.components,
        null,
        fdflags,
        offeredBase & RIGHTS_DIR,
        inheriting,
      );
      this.live.add(handle);
      return ok(handle);
    }
    if (directory) return fail(Errno.NOTDIR);
    if (!existing.isFile()) return fail(Errno.NOTSUP);
    if (truncate && this.frozen !== null) this.unshare(null, resolved.hostPath);
    return this.openFileAt(parent, resolved, offeredBase, inheriting, fdflags, truncate ? O_TRUNC : 0);
  }

  pathCreateDirectory(dir: DirHandle, path: string): FsResult<void> {
    const r = this.resolveAt(dir, Rights.PATH_CREATE_DIRECTORY, path, false);
    if (!r.ok) return r;
    const { resolved } = r.value;
    // Linux answers EEXIST for mkdir(".") and mkdir("..").
    if (resolved.last !== 'name') return fail(Errno.EXIST);
    return attempt(() => nodeFs.mkdirSync(resolved.hostPath, { mode: NEW_DIRECTORY_MODE }));
  }

  pathFilestatGet(dir: DirHandle, lookupflags: number, path: string): FsResult<FileStat> {
    const r = this.resolveAt(dir, Rights.PATH_FILESTAT_GET, path, followOf(lookupflags));
    if (!r.ok) return r;
    const { resolved, preopenIndex } = r.value;
    // lstat is right both ways: when following, the resolution already replaced every symlink.
    return attempt(() =>
      virtualStat(preopenIndex, resolved.components, nodeFs.lstatSync(resolved.hostPath, { bigint: true })),
    );
  }

  pathLink(
    oldDir: DirHandle,
    oldLookupflags: number,
    oldPath: string,
    newDir: DirHandle,
    newPath: string,
  ): FsResult<void> {
    const from = this.resolveAt(oldDir, Rights.PATH_LINK_SOURCE, oldPath, followOf(oldLookupflags));
    if (!from.ok) return from;
    const to = this.resolveAt(newDir, Rights.PATH_LINK_TARGET, newPath, false);
    if (!to.ok) return to;
    // Each preopen is its own device to the guest, whatever the host's mounts are.
    if (from.value.preopenIndex !== to.value.preopenIndex) return fail(Errno.XDEV);
    if (to.value.resolved.last !== 'name') return fail(Errno.EXIST);
    // A hard link to "." or ".." would be a link to a directory, which Linux refuses with EPERM.
    if (from.value.resolved.last !== 'name') return fail(Errno.PERM);
    // link(2) does not follow a final symlink in its source: linking an unfollowed symlink links the symlink itself.
    return attempt(() => nodeFs.linkSync(from.value.resolved.hostPath, to.value.resolved.hostPath));
  }

  /** The target of a symlink as UTF-8 bytes, whole: the caller truncates it to the guest's buffer. */
  pathReadlink(dir: DirHandle, path: string): FsResult<Uint8Array> {
    const r = this.resolveAt(dir, Rights.PATH_READLINK, path, false);
    if (!r.ok) return r;
    const { resolved } = r.value;
    if (resolved.last !== 'name') return fail(Errno.INVAL);
    return attempt(() => new Uint8Array(nodeFs.readlinkSync(resolved.hostPath, { encoding: 'buffer' })));
  }

  pathRemoveDirectory(dir: DirHandle, path: string): FsResult<void> {
    const r = this.resolveAt(dir, Rights.PATH_REMOVE_DIRECTORY, path, false);
    if (!r.ok) return r;
    const { resolved } = r.value;
    // Linux: rmdir(".") is EINVAL and rmdir("..") ENOTEMPTY. This also keeps preopen roots from being removed.
    if (resolved.last === 'dot') return fail(Errno.INVAL);
    if (resolved.last === 'dotdot') return fail(Errno.NOTEMPTY);
    return attempt(() => nodeFs.rmdirSync(resolved.hostPath));
  }

  pathRename(oldDir: DirHandle, oldPath: string, newDir: DirHandle, newPath: string): FsResult<void> {
    const from = this.resolveAt(oldDir, Rights.PATH_RENAME_SOURCE, oldPath, false);
    if (!from.ok) return from;
    const to = this.resolveAt(newDir, Rights.PATH_RENAME_TARGET, newPath, false);
    if (!to.ok) return to;
    if (from.value.preopenIndex !== to.value.preopenIndex) return fail(Errno.XDEV);
    // Linux answers EBUSY when either end is "." or "..".
    if (from.value.resolved.last !== 'name' || to.value.resolved.last !== 'name') return fail(Errno.BUSY);
    return attempt(() => nodeFs.renameSync(from.value.resolved.hostPath, to.value.resolved.hostPath));
  }

  /**
   * Creates a symlink holding `target` verbatim. An absolute target is
   * refused with NOTCAPABLE: it could never be followed (resolve.ts refuses
   * absolute targets), and the folder is also read by host tools (manifests,
   * copies), which should not find links to host files in it.
   */
  pathSymlink(target: string, dir: DirHandle, newPath: string): FsResult<void> {
    const r = this.resolveAt(dir, Rights.PATH_SYMLINK, newPath, false);
    if (!r.ok) return r;
    const targetError = checkGuestPath(target);
    if (targetError !== null) return fail(targetError);
    const { resolved } = r.value;
    if (resolved.last !== 'name') return fail(Errno.EXIST);
    return attempt(() => nodeFs.symlinkSync(target, resolved.hostPath));
  }

  pathUnlinkFile(dir: DirHandle, path: string): FsResult<void> {
    const r = this.resolveAt(dir, Rights.PATH_UNLINK_FILE, path, false);
    if (!r.ok) return r;
    const { resolved } = r.value;
    // Linux answers EISDIR for unlink(".") and unlink("..").
    if (resolved.last !== 'name') return fail(Errno.ISDIR);
    return attempt(() => nodeFs.unlinkSync(resolved.hostPath));
  }

  // ---------------------------------------------------------------- internals

  private rootOf(handle: AnyHandle): PreopenRoot {
    const root = this.roots[handle.preopenIndex];
    assert(root !== undefined, 'handle of an unknown preopen');
    return root;
  }

  private impl(h: FileHandle | DirHandle): AnyHandle {
    assert(h instanceof FileHandleImpl || h instanceof DirHandleImpl, 'not a handle made by FileSystem');
    assert(h.owner === this, 'a handle of another FileSystem');
    return h;
  }

  private dirImpl(h: DirHandle): DirHandleImpl {
    const handle = this.impl(h);
    assert(handle instanceof DirHandleImpl, 'a file handle where a directory handle was expected');
    return handle;
  }

  /** The handle if it is open and holds `rights`: BADF when closed, NOTCAPABLE when a right is missing. */
  private openHandle(h: FileHandle | DirHandle, rights: bigint): FsResult<AnyHandle> {
    const handle = this.impl(h);
    const isOpen = handle instanceof FileHandleImpl ? handle.hostFd !== null : handle.open;
    if (!isOpen) return fail(Errno.BADF);
    if ((handle.rightsBase & rights) !== rights) return fail(Errno.NOTCAPABLE);
    return ok(handle);
  }

  private openFile(h: FileHandle, rights: bigint): FsResult<FileHandleImpl> {
    const handle = this.openHandle(h, rights);
    if (!handle.ok) return handle;
    assert(handle.value instanceof FileHandleImpl, 'a directory handle where a file handle was expected');
    return ok(handle.value);
  }

  private openDir(h: DirHandle, rights: bigint): FsResult<DirHandleImpl> {
    const handle = this.openHandle(h, rights);
    if (!handle.ok) return handle;
    assert(handle.value instanceof DirHandleImpl, 'a file handle where a directory handle was expected');
    return ok(handle.value);
  }

  /** Checks `rights` on `dir` and resolves `path` inside its preopen. */
  private resolveAt(
    dir: DirHandle,
    rights: bigint,
    path: string,
    followLast: boolean,
  ): FsResult<{ resolved: Resolved; preopenIndex: number }> {
    const d = this.openDir(dir, rights);
    if (!d.ok) return d;
    const r = resolvePath(this.rootOf(d.value).hostRoot, d.value.components, path, followLast);
    if (!r.ok) return r;
    return ok({ resolved: r.value, preopenIndex: d.value.preopenIndex });
  }

  /** Where a directory handle's directory is now; NOENT or NOTDIR once it has gone. */
  private resolveDir(dir: DirHandleImpl): FsResult<Resolved> {
    const r = resolvePath(this.rootOf(dir).hostRoot, dir.components, '.', true);
    if (!r.ok) return r;
    const st = attempt(() => nodeFs.lstatSync(r.value.hostPath));
    if (!st.ok) return st;
    if (!st.value.isDirectory()) return fail(Errno.NOTDIR);
    return r;
  }

  private openFileAt(
    parent: DirHandleImpl,
    resolved: Resolved,
    offeredBase: bigint,
    inheriting: bigint,
    fdflags: number,
    extraFlags: number,
  ): FsResult<FileHandle> {
    const base = offeredBase & RIGHTS_FILE;
    const wantsRead = (base & Rights.FD_READ) !== 0n;
    const wantsWrite = (base & WRITE_RIGHTS) !== 0n;
    const access = wantsWrite ? (wantsRead ? O_RDWR : O_WRONLY) : O_RDONLY;
    const opened = attempt(() =>
      nodeFs.openSync(resolved.hostPath, access | extraFlags | O_NOFOLLOW, NEW_FILE_MODE),
    );
    if (!opened.ok) return opened;
    const handle = new FileHandleImpl(
      this,
      opened.value,
      parent.preopenIndex,
      resolved.components,
      fdflags,
      base,
      inheriting,
    );
    this.live.add(handle);
    return ok(handle);
  }

  private fileSize(file: FileHandleImpl): FsResult<bigint> {
    const fd = file.hostFd!;
    return attempt(() => nodeFs.fstatSync(fd, { bigint: true }).size);
  }

  /** Fills `bufs` in order from `position` until one comes back short (end of file). */
  private readAt(file: FileHandleImpl, bufs: Uint8Array[], position: bigint): FsResult<number> {
    const fd = file.hostFd!;
    let totalBytes = 0;
    let at = position;
    try {
      for (const buf of bufs) {
        const wantBytes = Math.min(buf.byteLength, IO_BYTES_MAX - totalBytes);
        let gotBytes = 0;
        while (gotBytes < wantBytes && at < FILE_SIZE_MAX_BYTES) {
          const n = nodeFs.readSync(fd, buf, gotBytes, wantBytes - gotBytes, Number(at));
          if (n === 0) break;
          gotBytes += n;
          at += BigInt(n);
        }
        totalBytes += gotBytes;
        if (gotBytes < buf.byteLength) break;
      }
    } catch (err) {
      // Like read(2): bytes already transferred are reported, and the error comes with the next call.
      if (totalBytes > 0) return ok(totalBytes);
      return fail(errnoFromError(err));
    }
    return ok(totalBytes);
  }

  /** Writes `bufs` in order at `position`; honours the SYNC and DSYNC fdflags. */
  private writeAt(file: FileHandleImpl, bufs: Uint8Array[], position: bigint): FsResult<number> {
    const fd = file.hostFd!;
    if (this.frozen !== null) this.unshare(fd, null);
    let totalBytes = 0;
    let at = position;
    let requestedBytes = 0;
    for (const buf of bufs) requestedBytes += buf.byteLength;
    if (requestedBytes > 0 && at >= FILE_SIZE_MAX_BYTES) return fail(Errno.FBIG);
    try {
      for (const buf of bufs) {
        const roomBytes = Number(FILE_SIZE_MAX_BYTES - at);
        const wantBytes = Math.min(buf.byteLength, IO_BYTES_MAX - totalBytes, roomBytes);
        let putBytes = 0;
        while (putBytes < wantBytes) {
          putBytes += nodeFs.writeSync(fd, buf, putBytes, wantBytes - putBytes, Number(at) + putBytes);
        }
        totalBytes += putBytes;
        at += BigInt(putBytes);
        if (putBytes < buf.byteLength) break;
      }
      if (totalBytes > 0 && (file.fdflags & Fdflags.SYNC) !== 0) nodeFs.fsyncSync(fd);
      else if (totalBytes > 0 && (file.fdflags & Fdflags.DSYNC) !== 0) nodeFs.fdatasyncSync(fd);
    } catch (err) {
      if (totalBytes > 0) return ok(totalBytes);
      return fail(errnoFromError(err));
    }
    return ok(totalBytes);
  }

  private flush(h: FileHandle | DirHandle, rights: bigint, flushFd: (fd: number) => void): FsResult<void> {
    const handle = this.openHandle(h, rights);
    if (!handle.ok) return handle;
    const target = handle.value;
    if (target instanceof FileHandleImpl) {
      const fd = target.hostFd!;
      return attempt(() => flushFd(fd));
    }
    // Directory handles hold no descriptor: open one just for the flush.
    const dir = this.resolveDir(target);
    if (!dir.ok) return dir;
    const opened = attempt(() => nodeFs.openSync(dir.value.hostPath, O_RDONLY | O_DIRECTORY | O_NOFOLLOW));
    if (!opened.ok) return opened;
    try {
      return attempt(() => flushFd(opened.value));
    } finally {
      nodeFs.closeSync(opened.value);
    }
  }

  private takeListing(dir: DirHandleImpl): FsResult<ListingEntry[]> {
    const r = this.resolveDir(dir);
    if (!r.ok) return r;
    const components = r.value.components;
    const entries = attempt(() =>
      nodeFs.readdirSync(r.value.hostPath, { withFileTypes: true, encoding: 'buffer' }),
    );
    if (!entries.ok) return entries;
    const selfBytes = relativePathBytes(components);
    // The root's ".." is the root itself, as in a chroot: the guest must not learn about the folder above.
    const parentBytes = relativePathBytes(components.slice(0, Math.max(0, components.length - 1)));
    const index = dir.preopenIndex;
    const children: ListingEntry[] = entries.value.map((entry) => ({
      name: new Uint8Array(entry.name),
      ino: virtualChildIno(index, selfBytes, entry.name),
      filetype: filetypeOfDirent(entry),
    }));
    children.sort((a, b) => compareNameBytes(a.name, b.name));
    return ok([
      { name: new Uint8Array([0x2e]), ino: virtualIno(index, selfBytes), filetype: Filetype.DIRECTORY },
      {
        name: new Uint8Array([0x2e, 0x2e]),
        ino: virtualIno(index, parentBytes),
        filetype: Filetype.DIRECTORY,
      },
      ...children,
    ]);
  }

  private release(handle: AnyHandle): FsResult<void> {
    if (handle instanceof DirHandleImpl) {
      handle.open = false;
      handle.listing = null;
      this.live.delete(handle);
      this.liveRoots.delete(handle);
      return OK_VOID;
    }
    const fd = handle.hostFd!;
    handle.hostFd = null;
    this.live.delete(handle);
    return attempt(() => nodeFs.closeSync(fd));
  }
}

function followOf(lookupflags: number): boolean {
  return (lookupflags & Lookupflags.SYMLINK_FOLLOW) !== 0;
}

/** Validates set_times flags; NOTSUP unless there is nothing to set. */
function checkSetTimes(fstflags: number): FsResult<void> {
  if ((fstflags & ~FSTFLAGS_ALL) !== 0) return fail(Errno.INVAL);
  if ((fstflags & Fstflags.ATIM) !== 0 && (fstflags & Fstflags.ATIM_NOW) !== 0) return fail(Errno.INVAL);
  if ((fstflags & Fstflags.MTIM) !== 0 && (fstflags & Fstflags.MTIM_NOW) !== 0) return fail(Errno.INVAL);
  if (fstflags === 0) return OK_VOID;
  return fail(Errno.NOTSUP);
}

/** The virtual filetype of an open handle, for fd_fdstat_get. */
export function handleFiletype(h: FileHandle | DirHandle): number {
  return h.kind === 'file' ? Filetype.REGULAR_FILE : Filetype.DIRECTORY;
}
