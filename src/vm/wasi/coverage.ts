/**
 * The WASI preview1 coverage table: for every function in the spec's list,
 * whether the host implements it or answers ENOSYS on purpose, and why.
 *
 * Tests hold this table to the truth: a unit test checks that every function
 * is listed and that the ENOSYS ones really answer ENOSYS, and the guest
 * suite (test/e2e/guests.test.ts) checks that real guests call every
 * implemented function successfully. docs/WASI.md is the prose version.
 */
import type { WasiFunctionName } from '../../wasi/abi.js';

export interface CoverageRow {
  status: 'implemented' | 'enosys';
  note: string;
}

export const WASI_COVERAGE: Record<WasiFunctionName, CoverageRow> = {
  args_get: { status: 'implemented', note: 'UTF-8, one encoder for sizes and bytes' },
  args_sizes_get: { status: 'implemented', note: 'same encoder as args_get' },
  environ_get: { status: 'implemented', note: 'only the --env variables; never the host environment' },
  environ_sizes_get: { status: 'implemented', note: 'same encoder as environ_get' },
  clock_res_get: { status: 'implemented', note: 'realtime 1 µs, monotonic 1 ns, CPU time 1 µs' },
  clock_time_get: { status: 'implemented', note: 'through the Clock capability' },
  fd_advise: { status: 'implemented', note: 'validated, advisory only' },
  fd_allocate: { status: 'implemented', note: 'posix_fallocate semantics: grows the file' },
  fd_close: { status: 'implemented', note: 'files, directories, sockets (FIN after flushing), listeners' },
  fd_datasync: { status: 'implemented', note: 'fdatasync' },
  fd_fdstat_get: { status: 'implemented', note: 'stdio is a character device without seek rights' },
  fd_fdstat_set_flags: { status: 'implemented', note: 'APPEND/SYNC/DSYNC on files, NONBLOCK on streams' },
  fd_fdstat_set_rights: {
    status: 'implemented',
    note: 'files and directories can only drop rights; streams have fixed rights (asking for no more succeeds)',
  },
  fd_filestat_get: { status: 'implemented', note: 'virtual dev/ino, zero timestamps' },
  fd_filestat_set_size: { status: 'implemented', note: 'ftruncate' },
  fd_filestat_set_times: {
    status: 'implemented',
    note: 'timestamps are virtual (always 0) for determinism; setting one answers NOTSUP',
  },
  fd_pread: { status: 'implemented', note: 'does not move the offset' },
  fd_prestat_get: { status: 'implemented', note: 'directories, and listeners with a non-directory tag' },
  fd_prestat_dir_name: { status: 'implemented', note: 'NAMETOOLONG when the buffer is short' },
  fd_pwrite: { status: 'implemented', note: 'does not move the offset' },
  fd_read: { status: 'implemented', note: 'files, stdin and sockets (as Rust std reads sockets)' },
  fd_readdir: { status: 'implemented', note: 'sorted by name, stable cookies, virtual inodes' },
  fd_renumber: { status: 'implemented', note: 'closes the target first' },
  fd_seek: { status: 'implemented', note: 'offset kept by the host' },
  fd_sync: { status: 'implemented', note: 'fsync' },
  fd_tell: { status: 'implemented', note: 'offset kept by the host' },
  fd_write: { status: 'implemented', note: 'files, stdout/stderr and sockets' },
  path_create_directory: { status: 'implemented', note: 'inside the preopen only' },
  path_filestat_get: { status: 'implemented', note: 'follows the last symlink only when asked' },
  path_filestat_set_times: {
    status: 'implemented',
    note: 'timestamps are virtual (always 0) for determinism; setting one answers NOTSUP',
  },
  path_link: { status: 'implemented', note: 'both ends inside the same preopen' },
  path_open: { status: 'implemented', note: 'sandboxed resolution, O_NOFOLLOW on the final open' },
  path_readlink: { status: 'implemented', note: 'truncates to the buffer like readlink(2)' },
  path_remove_directory: { status: 'implemented', note: 'rmdir' },
  path_rename: { status: 'implemented', note: 'within one preopen' },
  path_symlink: { status: 'implemented', note: 'relative targets only' },
  path_unlink_file: { status: 'implemented', note: 'unlink' },
  poll_oneoff: {
    status: 'implemented',
    note: 'clock subscriptions and fd readiness; blocks in Atomics.wait',
  },
  proc_exit: { status: 'implemented', note: 'ends the VM with the code' },
  proc_raise: { status: 'enosys', note: 'no portable meaning; removed from later WASI versions' },
  sched_yield: { status: 'implemented', note: 'the vCPU has its own thread: a no-op that succeeds' },
  random_get: { status: 'implemented', note: 'through the Entropy capability' },
  sock_accept: { status: 'implemented', note: 'blocking and NONBLOCK' },
  sock_recv: { status: 'implemented', note: 'PEEK and WAITALL' },
  sock_send: { status: 'implemented', note: 'bytes accepted from a bounded per-socket buffer' },
  sock_shutdown: { status: 'implemented', note: 'RD, WR or both' },
};
