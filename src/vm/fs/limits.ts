/**
 * The limits of the guest filesystem layer, in one place.
 *
 * Every limit here is checked by Lockstep itself, before the host kernel sees
 * the request, so that the guest gets the same answer on every host: a limit
 * that the kernel or the filesystem enforced instead (ext4's maximum file
 * size, the process's fd ulimit, the length of the host folder's own path)
 * would differ between a primary and its backup and break replay.
 */

/**
 * Handles a VM may hold open through path_open at once; one more is MFILE.
 * Each file handle holds a host file descriptor, and each directory handle a
 * cached listing, so this bounds what one guest can take from the host
 * process that it shares with other VMs. 1024 matches the usual `ulimit -n`.
 */
export const OPEN_HANDLES_MAX = 1024;

/**
 * The longest path, in UTF-8 bytes, that the guest may pass to a path_*
 * function or use as a symlink target; longer is NAMETOOLONG. It is Linux's
 * PATH_MAX, which wasi-libc also assumes.
 */
export const PATH_BYTES_MAX = 4096;

/** The longest single path component in UTF-8 bytes (Linux NAME_MAX, and ext4's, xfs's and tmpfs's). */
export const NAME_BYTES_MAX = 255;

/**
 * The longest path, relative to its preopen root, that a resolution may reach
 * (in UTF-8 bytes); longer is NAMETOOLONG. Together with HOST_ROOT_BYTES_MAX it
 * keeps every host path below Linux's PATH_MAX, so the kernel never answers
 * ENAMETOOLONG for a path that would fit under a shorter host folder.
 */
export const RESOLVED_PATH_BYTES_MAX = 3072;

/**
 * The longest host folder path a preopen may have, in UTF-8 bytes. The
 * constructor refuses longer ones; see RESOLVED_PATH_BYTES_MAX.
 * 3072 + 1020 + 2 separators + NUL = 4095 < 4096.
 */
export const HOST_ROOT_BYTES_MAX = 1020;

/** Symlinks followed in one path resolution before LOOP; Linux's MAXSYMLINKS. */
export const SYMLINK_FOLLOWS_MAX = 40;

/**
 * The most bytes one read or write call transfers, Linux's MAX_RW_COUNT
 * (0x7ffff000). The iovecs already bound a call; this also keeps the count
 * inside the u32 `size` the guest receives even when iovecs overlap.
 */
export const IO_BYTES_MAX = 0x7ffff000;

/**
 * The largest file size and file offset, in bytes (8 TiB). Below ext4's
 * 16 TiB limit, so FBIG (writes, set_size, allocate) and INVAL (seek) come
 * from here, at the same size on every filesystem a backup might use.
 */
export const FILE_SIZE_MAX_BYTES = 1n << 43n;
