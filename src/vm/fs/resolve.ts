/**
 * Sandboxed path resolution: turns a guest path, relative to a directory
 * handle, into a host path that is certainly inside the handle's preopened
 * folder. This module is the sandbox; everything else in src/vm/fs trusts it.
 *
 * How it works. The guest path is never handed to the kernel as it is. It is
 * split into components and walked one at a time from the preopen root,
 * starting with the directory handle's own components (which are walked again
 * each time, so a directory renamed and replaced by a symlink since the handle
 * was opened cannot redirect it). Each component is lstat'ed:
 * - `.` is skipped and `..` pops the stack of components walked so far. A `..`
 *   with nothing to pop would leave the preopen: NOTCAPABLE.
 * - A symlink is read and its target spliced in place of the component. An
 *   absolute target is NOTCAPABLE, and a relative one is walked like any other
 *   components, so it can climb no higher than the root either. More than
 *   SYMLINK_FOLLOWS_MAX follows in one resolution is LOOP.
 * - A directory is pushed. A non-directory followed by more components is
 *   NOTDIR, a missing one NOENT.
 * The last component is followed only when the caller asks (lookupflags
 * SYMLINK_FOLLOW) or when the guest path ends in `/` (POSIX follows then and
 * requires a directory). The resulting host path is therefore made of real
 * directories and, at most, a final symlink the caller chose not to follow;
 * callers open it with O_NOFOLLOW.
 *
 * We answer NOTCAPABLE, not PERM, for every escape attempt (absolute guest
 * paths, `..` above the root, absolute symlink targets): wasi-libc turns it
 * into ENOTCAPABLE, which says "outside your capabilities" precisely.
 *
 * TOCTOU stance. The host folder belongs to this VM alone, and the guest is
 * single-threaded and calls the host synchronously, so nothing changes the
 * folder between our lstat of a component and the kernel's use of the path.
 * Races with other host processes writing into a VM's folder are outside the
 * threat model. O_NOFOLLOW on the final open is defence in depth, not the
 * mechanism.
 */

import { lstatSync, readlinkSync } from 'node:fs';
import { Errno } from '../../wasi/abi.js';
import { errnoFromError, fail, ok, systemErrorCode, type FsResult } from './errors.js';
import { NAME_BYTES_MAX, PATH_BYTES_MAX, RESOLVED_PATH_BYTES_MAX, SYMLINK_FOLLOWS_MAX } from './limits.js';

/** What the last component of a resolved path was. Only 'name' denotes a directory entry that can be created, removed or renamed. */
export type LastKind = 'name' | 'dot' | 'dotdot';

export interface Resolved {
  /** The canonical components from the preopen root: no `.`, `..` or symlinks, except perhaps an unfollowed final symlink. */
  components: string[];
  /** The host path of `components`, with a trailing '/' when the guest demanded a directory. */
  hostPath: string;
  last: LastKind;
}

/** One component waiting to be walked; `slash` says a '/' followed it, so it must be a directory and is followed if a symlink. */
interface Pending {
  name: string;
  slash: boolean;
}

const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

/** The host path of `components` under `hostRoot`. Components never contain '/', '.', '..' or NUL, so the result stays under the root. */
export function hostPathOf(hostRoot: string, components: readonly string[]): string {
  if (components.length === 0) return hostRoot;
  return hostRoot.endsWith('/') ? hostRoot + components.join('/') : hostRoot + '/' + components.join('/');
}

/** Checks a guest-supplied path or symlink target before it is used; null when acceptable. */
export function checkGuestPath(path: string): number | null {
  if (path.includes('\0')) return Errno.INVAL;
  if (Buffer.byteLength(path, 'utf8') > PATH_BYTES_MAX) return Errno.NAMETOOLONG;
  if (path.length === 0) return Errno.NOENT;
  if (path.startsWith('/')) return Errno.NOTCAPABLE;
  return null;
}

/** Pushes the components of `path` onto `pending` so that they pop in order; the last one takes `lastSlash`. */
function pushComponents(pending: Pending[], path: string, lastSlash: boolean): void {
  const names = path.split('/').filter((name) => name.length > 0);
  for (let i = names.length - 1; i >= 0; i--) {
    pending.push({ name: names[i]!, slash: i === names.length - 1 ? lastSlash : true });
  }
}

/**
 * Resolves `path` relative to the directory at `baseComponents` of the preopen
 * at `hostRoot`. `followLast` is lookupflags & SYMLINK_FOLLOW for the last
 * component.
 */
export function resolvePath(
  hostRoot: string,
  baseComponents: readonly string[],
  path: string,
  followLast: boolean,
): FsResult<Resolved> {
  const pathError = checkGuestPath(path);
  if (pathError !== null) return fail(pathError);

  const pending: Pending[] = [];
  pushComponents(pending, path, path.endsWith('/'));
  for (let i = baseComponents.length - 1; i >= 0; i--)
    pending.push({ name: baseComponents[i]!, slash: true });

  const stack: string[] = [];
  // Bytes of stack.join('/'), kept as we go so the length check is O(1).
  let stackBytes = 0;
  let follows = 0;
  let last: LastKind = 'dot';
  let lastSlash = false;

  while (pending.length > 0) {
    const item = pending.pop()!;
    const isLast = pending.length === 0;
    if (item.name === '.') {
      last = 'dot';
      continue;
    }
    if (item.name === '..') {
      const popped = stack.pop();
      if (popped === undefined) return fail(Errno.NOTCAPABLE);
      stackBytes -= Buffer.byteLength(popped, 'utf8') + (stack.length > 0 ? 1 : 0);
      last = 'dotdot';
      continue;
    }

    const nameBytes = Buffer.byteLength(item.name, 'utf8');
    if (nameBytes > NAME_BYTES_MAX) return fail(Errno.NAMETOOLONG);
    const nextBytes = stackBytes + nameBytes + (stack.length > 0 ? 1 : 0);
    if (nextBytes > RESOLVED_PATH_BYTES_MAX) return fail(Errno.NAMETOOLONG);
    last = 'name';
    lastSlash = item.slash;

    const follow = !isLast || followLast || item.slash;
    if (!follow) {
      stack.push(item.name);
      stackBytes = nextBytes;
      break;
    }

    const childHostPath = hostPathOf(hostRoot, [...stack, item.name]);
    let isDirectory: boolean;
    let isSymlink: boolean;
    try {
      const st = lstatSync(childHostPath);
      isDirectory = st.isDirectory();
      isSymlink = st.isSymbolicLink();
    } catch (err) {
      if (systemErrorCode(err) === 'ENOENT' && isLast) {
        // A missing last component is fine: the caller may be about to create it.
        stack.push(item.name);
        stackBytes = nextBytes;
        break;
      }
      return fail(errnoFromError(err));
    }

    if (isSymlink) {
      follows += 1;
      if (follows > SYMLINK_FOLLOWS_MAX) return fail(Errno.LOOP);
      let target: string;
      try {
        const targetBytes = readlinkSync(childHostPath, { encoding: 'buffer' });
        target = strictUtf8.decode(targetBytes);
      } catch (err) {
        if (err instanceof TypeError) return fail(Errno.ILSEQ);
        return fail(errnoFromError(err));
      }
      if (target.length === 0) return fail(Errno.NOENT);
      if (target.startsWith('/')) return fail(Errno.NOTCAPABLE);
      pushComponents(pending, target, item.slash || target.endsWith('/'));
      // A target of only slashes and dots still stands for a directory: keep walking.
      continue;
    }

    if (!isDirectory && (!isLast || item.slash)) return fail(Errno.NOTDIR);
    stack.push(item.name);
    stackBytes = nextBytes;
  }

  const trailing = last === 'name' && lastSlash ? '/' : '';
  return ok({ components: stack, hostPath: hostPathOf(hostRoot, stack) + trailing, last });
}
