/**
 * The one table from Node's system error codes to WASI errnos, and the
 * FsResult helpers built on it.
 *
 * Invariants:
 * - Any error that carries a string `code` (a system error from `fs`) becomes
 *   an errno value: a known code maps through the table, an unknown one to IO.
 *   Such errors are never thrown on to the guest.
 * - An error without a code is a bug in Lockstep (a TypeError, a failed
 *   assertion) and is rethrown, so that it stops the VM loudly.
 * - Only the errno crosses to the guest; the message, which names host paths,
 *   never does.
 */

import { Errno } from '../../wasi/abi.js';

export type FsResult<T> = { ok: true; value: T } | { ok: false; errno: number };

export function ok<T>(value: T): FsResult<T> {
  return { ok: true, value };
}

export function fail<T = never>(errno: number): FsResult<T> {
  return { ok: false, errno };
}

export const OK_VOID: FsResult<void> = Object.freeze({ ok: true, value: undefined }) as FsResult<void>;

/** Node (libuv) error code to WASI errno. Aliases (EWOULDBLOCK, EOPNOTSUPP) map like their twins. */
export const NODE_CODE_TO_ERRNO: ReadonlyMap<string, number> = new Map<string, number>([
  ['E2BIG', Errno.TOOBIG],
  ['EACCES', Errno.ACCES],
  ['EADDRINUSE', Errno.ADDRINUSE],
  ['EADDRNOTAVAIL', Errno.ADDRNOTAVAIL],
  ['EAFNOSUPPORT', Errno.AFNOSUPPORT],
  ['EAGAIN', Errno.AGAIN],
  ['EWOULDBLOCK', Errno.AGAIN],
  ['EALREADY', Errno.ALREADY],
  ['EBADF', Errno.BADF],
  ['EBADMSG', Errno.BADMSG],
  ['EBUSY', Errno.BUSY],
  ['ECANCELED', Errno.CANCELED],
  ['ECHILD', Errno.CHILD],
  ['ECONNABORTED', Errno.CONNABORTED],
  ['ECONNREFUSED', Errno.CONNREFUSED],
  ['ECONNRESET', Errno.CONNRESET],
  ['EDEADLK', Errno.DEADLK],
  ['EDESTADDRREQ', Errno.DESTADDRREQ],
  ['EDOM', Errno.DOM],
  ['EDQUOT', Errno.DQUOT],
  ['EEXIST', Errno.EXIST],
  ['EFAULT', Errno.FAULT],
  ['EFBIG', Errno.FBIG],
  ['ERR_FS_FILE_TOO_LARGE', Errno.FBIG],
  ['EHOSTUNREACH', Errno.HOSTUNREACH],
  ['EIDRM', Errno.IDRM],
  ['EILSEQ', Errno.ILSEQ],
  ['EINPROGRESS', Errno.INPROGRESS],
  ['EINTR', Errno.INTR],
  ['EINVAL', Errno.INVAL],
  ['EIO', Errno.IO],
  ['EISCONN', Errno.ISCONN],
  ['EISDIR', Errno.ISDIR],
  ['ELOOP', Errno.LOOP],
  ['EMFILE', Errno.MFILE],
  ['EMLINK', Errno.MLINK],
  ['EMSGSIZE', Errno.MSGSIZE],
  ['EMULTIHOP', Errno.MULTIHOP],
  ['ENAMETOOLONG', Errno.NAMETOOLONG],
  ['ENETDOWN', Errno.NETDOWN],
  ['ENETRESET', Errno.NETRESET],
  ['ENETUNREACH', Errno.NETUNREACH],
  ['ENFILE', Errno.NFILE],
  ['ENOBUFS', Errno.NOBUFS],
  ['ENODEV', Errno.NODEV],
  ['ENOENT', Errno.NOENT],
  ['ENOEXEC', Errno.NOEXEC],
  ['ENOLCK', Errno.NOLCK],
  ['ENOLINK', Errno.NOLINK],
  ['ENOMEM', Errno.NOMEM],
  ['ENOMSG', Errno.NOMSG],
  ['ENOPROTOOPT', Errno.NOPROTOOPT],
  ['ENOSPC', Errno.NOSPC],
  ['ENOSYS', Errno.NOSYS],
  ['ENOTCONN', Errno.NOTCONN],
  ['ENOTDIR', Errno.NOTDIR],
  ['ENOTEMPTY', Errno.NOTEMPTY],
  ['ENOTRECOVERABLE', Errno.NOTRECOVERABLE],
  ['ENOTSOCK', Errno.NOTSOCK],
  ['ENOTSUP', Errno.NOTSUP],
  ['EOPNOTSUPP', Errno.NOTSUP],
  ['ENOTTY', Errno.NOTTY],
  ['ENXIO', Errno.NXIO],
  ['EOVERFLOW', Errno.OVERFLOW],
  ['EOWNERDEAD', Errno.OWNERDEAD],
  ['EPERM', Errno.PERM],
  ['EPIPE', Errno.PIPE],
  ['EPROTO', Errno.PROTO],
  ['EPROTONOSUPPORT', Errno.PROTONOSUPPORT],
  ['EPROTOTYPE', Errno.PROTOTYPE],
  ['ERANGE', Errno.RANGE],
  ['EROFS', Errno.ROFS],
  ['ESPIPE', Errno.SPIPE],
  ['ESRCH', Errno.SRCH],
  ['ESTALE', Errno.STALE],
  ['ETIMEDOUT', Errno.TIMEDOUT],
  ['ETXTBSY', Errno.TXTBSY],
  ['EXDEV', Errno.XDEV],
]);

/** The system error code of `err`, or null when `err` is not a system error. */
export function systemErrorCode(err: unknown): string | null {
  if (typeof err !== 'object' || err === null) return null;
  const code = (err as { code?: unknown }).code;
  return typeof code === 'string' ? code : null;
}

/** The errno for a caught error; rethrows errors that are not system errors (they are bugs). */
export function errnoFromError(err: unknown): number {
  const code = systemErrorCode(err);
  if (code === null) throw err;
  return NODE_CODE_TO_ERRNO.get(code) ?? Errno.IO;
}

/** Runs one host operation, turning a system error into a failed FsResult. */
export function attempt<T>(operation: () => T): FsResult<T> {
  try {
    return ok(operation());
  } catch (err) {
    return fail(errnoFromError(err));
  }
}
