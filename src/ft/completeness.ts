/**
 * The record/replay completeness table: for every WASI preview1 function,
 * how `lockstep record` logs a call, how `lockstep replay` reproduces it,
 * which outputs it makes, and which guests exercise it in a record→replay
 * round trip (test/e2e/record-replay.test.ts).
 *
 * Every record holds the function, a 16-bit hash of its arguments (and of
 * the bytes they point at: paths, written data, poll subscriptions) and its
 * errno (src/ft/tape.ts; the encodings are in docs/LOG-FORMAT.md). Beyond
 * that a call is one of two kinds:
 * - performed: it consumed no nondeterministic input. Replay executes it for
 *   real, on the copy of the folders or on the descriptor table, and checks
 *   its errno and a hash of the guest memory it wrote (the effect hash).
 * - fed: it consumed input from the world, and the record holds those items
 *   in the order the host consumed them. Replay takes them from the log
 *   instead of the world and checks the errno; the memory the call writes
 *   follows from the items, and the final memory hash covers it.
 *
 * Which one a call is depends on where it lands (a read from a file is
 * performed, a read from a socket is fed), so a row lists its cases. A call
 * of a fed function whose arguments are refused before it reaches its input
 * (a bad descriptor, a bad pointer, an invalid clock) consumes no item and is
 * performed. A performed call that fails on the replaying host with a disk
 * error (NOSPC, IO, DQUOT) where the recording succeeded is that host's
 * failure (replay exits 1), not a divergence.
 *
 * Tests hold this table to the truth: src/ft/completeness.test.ts checks that
 * it lists exactly WASI_FUNCTIONS and that each case is fed or performed as
 * it says, by calling the host in record mode; the record→replay suite checks
 * that every guest named in a row called that function in a recording whose
 * replay matched.
 */
import type { WasiFunctionName } from '../wasi/abi.js';

/** The guests of the record→replay suite: test/guests/NAME.wasm, or examples/NAME/NAME.wasm. */
export const ROUND_TRIP_GUESTS = [
  'args_env',
  'clocks_random',
  'deep_recursion',
  'endless_loop',
  'exit_code',
  'files',
  'idle_poll',
  'memory_bomb',
  'poll',
  'prestat',
  'proc_exit_direct',
  'rust_fs_net',
  'sandbox',
  'send_and_exit',
  'sockets',
  'stdio',
  'trap',
  'wasi_direct',
  'yes',
  'yield',
  'kv',
  'rust-kv',
  'sessions',
] as const;

export type RoundTripGuest = (typeof ROUND_TRIP_GUESTS)[number];

/** The guests that live in examples/ rather than test/guests/. */
export const EXAMPLE_GUESTS: readonly RoundTripGuest[] = ['kv', 'rust-kv', 'sessions'];

/** How one case of a call is logged. */
export interface RecordingCase {
  /** Where the case applies: a descriptor kind or a condition. */
  on: string;
  how: 'performed' | 'fed';
  /** For a fed case: the input items the record holds, in the order the host consumes them. */
  items?: readonly string[];
}

/** What a call adds to the output ledger (src/ft/outputs.ts), whose hash is the summary's outputSha256. */
export type OutputKind = 'data' | 'shutdown' | 'close';

export interface CompletenessRow {
  recorded: readonly RecordingCase[];
  replayed: string;
  outputs: readonly OutputKind[];
  /** Guests whose recording calls the function in a round trip that matches. */
  guests: readonly RoundTripGuest[];
}

const EXECUTED = 'executed again; errno and effect hash checked';
const ON_FILES = 'executed again on the copy of the folders; errno and effect hash checked';
const ON_TABLE = 'executed again on the descriptor table; errno and effect hash checked';

const performed = (on: string): RecordingCase => ({ on, how: 'performed' });

/** A stream call's result item (one varint in the log). */
const RESULT = 'result: the byte count, or the errno';

const refused = performed('arguments refused before the input is taken (BADF, FAULT, INVAL, …)');

export const RECORD_REPLAY_COMPLETENESS: Record<WasiFunctionName, CompletenessRow> = {
  args_get: {
    recorded: [performed('always')],
    replayed: `${EXECUTED}; the arguments come from the log header`,
    outputs: [],
    guests: ['args_env', 'exit_code', 'kv', 'sessions'],
  },
  args_sizes_get: {
    recorded: [performed('always')],
    replayed: `${EXECUTED}; the arguments come from the log header`,
    outputs: [],
    guests: ['args_env', 'exit_code', 'kv', 'sessions'],
  },
  environ_get: {
    recorded: [performed('always')],
    replayed: `${EXECUTED}; the environment comes from the log header`,
    outputs: [],
    guests: ['args_env'],
  },
  environ_sizes_get: {
    recorded: [performed('always')],
    replayed: `${EXECUTED}; the environment comes from the log header`,
    outputs: [],
    guests: ['args_env', 'kv', 'rust-kv', 'sessions'],
  },
  clock_res_get: {
    recorded: [performed('always (fixed resolutions)')],
    replayed: EXECUTED,
    outputs: [],
    guests: ['clocks_random', 'wasi_direct'],
  },
  clock_time_get: {
    recorded: [
      {
        on: 'a valid clock id',
        how: 'fed',
        items: [
          "the clock's change since the value it last gave the guest (monotonic: ns, never negative; the others: signed, in µs when whole)",
        ],
      },
      performed('an invalid clock id (INVAL) or a bad pointer (FAULT)'),
    ],
    replayed: "the clock's previous value plus the logged delta; errno checked",
    outputs: [],
    guests: ['clocks_random', 'wasi_direct', 'poll', 'kv', 'sessions'],
  },
  fd_advise: { recorded: [performed('files')], replayed: ON_FILES, outputs: [], guests: ['wasi_direct'] },
  fd_allocate: { recorded: [performed('files')], replayed: ON_FILES, outputs: [], guests: ['files'] },
  fd_close: {
    recorded: [performed('every descriptor; closing a socket is also an output')],
    replayed: `${ON_TABLE}; files and folders are closed for real, a socket is a phantom whose close enters the output ledger`,
    outputs: ['close'],
    guests: ['files', 'sockets', 'wasi_direct', 'kv', 'rust-kv', 'sessions'],
  },
  fd_datasync: {
    recorded: [performed('files and folders')],
    replayed: ON_FILES,
    outputs: [],
    guests: ['files', 'rust-kv'],
  },
  fd_fdstat_get: {
    recorded: [performed('every descriptor')],
    replayed: ON_TABLE,
    outputs: [],
    guests: ['files', 'stdio', 'sockets', 'wasi_direct', 'kv'],
  },
  fd_fdstat_set_flags: {
    recorded: [performed('every descriptor (NONBLOCK on streams, APPEND/SYNC on files)')],
    replayed: `${ON_TABLE}; a phantom stream keeps its flags`,
    outputs: [],
    guests: ['sockets', 'wasi_direct', 'kv', 'sessions'],
  },
  fd_fdstat_set_rights: {
    recorded: [performed('every descriptor')],
    replayed: ON_TABLE,
    outputs: [],
    guests: ['wasi_direct'],
  },
  fd_filestat_get: {
    recorded: [performed('every descriptor (virtual metadata)')],
    replayed: ON_FILES,
    outputs: [],
    guests: ['files', 'rust_fs_net', 'wasi_direct', 'kv', 'rust-kv'],
  },
  fd_filestat_set_size: {
    recorded: [performed('files')],
    replayed: ON_FILES,
    outputs: [],
    guests: ['files'],
  },
  fd_filestat_set_times: {
    recorded: [performed('files and folders (NOTSUP: timestamps are virtual)')],
    replayed: ON_FILES,
    outputs: [],
    guests: ['wasi_direct'],
  },
  fd_pread: { recorded: [performed('files')], replayed: ON_FILES, outputs: [], guests: ['files'] },
  fd_prestat_get: {
    recorded: [performed('preopened folders and listeners')],
    replayed: ON_TABLE,
    outputs: [],
    guests: ['prestat', 'files', 'sandbox', 'wasi_direct', 'kv', 'rust-kv'],
  },
  fd_prestat_dir_name: {
    recorded: [performed('preopened folders')],
    replayed: ON_TABLE,
    outputs: [],
    guests: ['prestat', 'sandbox', 'wasi_direct', 'kv', 'rust-kv'],
  },
  fd_pwrite: { recorded: [performed('files')], replayed: ON_FILES, outputs: [], guests: ['files'] },
  fd_read: {
    recorded: [
      performed('files'),
      { on: 'stdin and sockets', how: 'fed', items: [RESULT, 'the bytes read'] },
      refused,
    ],
    replayed:
      'files: read again from the copy, errno and effect hash checked; streams: the result and the bytes come from the log, errno checked',
    outputs: [],
    guests: ['files', 'stdio', 'sockets', 'rust_fs_net', 'kv', 'rust-kv'],
  },
  fd_readdir: {
    recorded: [performed('folders (sorted listings)')],
    replayed: ON_FILES,
    outputs: [],
    guests: ['files', 'rust_fs_net', 'wasi_direct'],
  },
  fd_renumber: {
    recorded: [performed('every descriptor; replacing a socket closes it, which is an output')],
    replayed: ON_TABLE,
    outputs: ['close'],
    guests: ['wasi_direct'],
  },
  fd_seek: {
    recorded: [performed('files')],
    replayed: ON_FILES,
    outputs: [],
    guests: ['files', 'rust_fs_net', 'rust-kv'],
  },
  fd_sync: {
    recorded: [performed('files and folders')],
    replayed: ON_FILES,
    outputs: [],
    guests: ['files', 'rust_fs_net', 'kv'],
  },
  fd_tell: { recorded: [performed('files')], replayed: ON_FILES, outputs: [], guests: ['files'] },
  fd_write: {
    recorded: [
      performed('files'),
      {
        on: 'stdout and stderr',
        how: 'fed',
        items: [`${RESULT}: how much the host took (PIPE when its reader left)`],
      },
      {
        on: 'sockets',
        how: 'fed',
        items: [`${RESULT}: how much the bounded send buffer accepted`],
      },
      refused,
    ],
    replayed:
      'files: written again to the copy, errno and effect hash checked; streams: the result comes from the log, errno checked, and the accepted bytes enter the output ledger (emitted only with --show-output)',
    outputs: ['data'],
    guests: ['files', 'stdio', 'yes', 'sockets', 'rust_fs_net', 'kv', 'rust-kv', 'sessions'],
  },
  path_create_directory: {
    recorded: [performed('folders')],
    replayed: ON_FILES,
    outputs: [],
    guests: ['files', 'rust_fs_net', 'sandbox'],
  },
  path_filestat_get: {
    recorded: [performed('folders')],
    replayed: ON_FILES,
    outputs: [],
    guests: ['files', 'rust_fs_net', 'sandbox'],
  },
  path_filestat_set_times: {
    recorded: [performed('folders (NOTSUP: timestamps are virtual)')],
    replayed: ON_FILES,
    outputs: [],
    guests: ['wasi_direct'],
  },
  path_link: {
    recorded: [performed('folders')],
    replayed: ON_FILES,
    outputs: [],
    guests: ['files', 'sandbox'],
  },
  path_open: {
    recorded: [performed('folders; the new descriptor is the lowest free one')],
    replayed: ON_FILES,
    outputs: [],
    guests: ['files', 'sandbox', 'rust_fs_net', 'prestat', 'wasi_direct', 'kv', 'rust-kv'],
  },
  path_readlink: { recorded: [performed('folders')], replayed: ON_FILES, outputs: [], guests: ['files'] },
  path_remove_directory: {
    recorded: [performed('folders')],
    replayed: ON_FILES,
    outputs: [],
    guests: ['files', 'rust_fs_net'],
  },
  path_rename: {
    recorded: [performed('folders')],
    replayed: ON_FILES,
    outputs: [],
    guests: ['files', 'rust_fs_net', 'sandbox'],
  },
  path_symlink: {
    recorded: [performed('folders')],
    replayed: ON_FILES,
    outputs: [],
    guests: ['files', 'sandbox'],
  },
  path_unlink_file: {
    recorded: [performed('folders')],
    replayed: ON_FILES,
    outputs: [],
    guests: ['files', 'rust_fs_net'],
  },
  poll_oneoff: {
    recorded: [
      {
        on: 'valid subscriptions (clocks and descriptors)',
        how: 'fed',
        items: [
          'the number of events',
          'per event: which subscription fired (the gap since the previous one)',
          'per descriptor event: nbytes, HANGUP, and the errno if any',
        ],
      },
      performed('no subscriptions, an unknown tag or a bad pointer (INVAL, FAULT)'),
    ],
    replayed:
      'the events are rebuilt from the subscriptions and the logged items, without waiting; errno checked',
    outputs: [],
    // Not 'sockets': it polls only when its 1 MiB send meets a full buffer, which depends on timing.
    guests: ['clocks_random', 'poll', 'wasi_direct', 'kv', 'sessions'],
  },
  proc_exit: {
    recorded: [performed('always; the record has no errno, the exit code is an argument')],
    replayed: 'executed again: the argument hash checks the exit code, and the replay ends there',
    outputs: [],
    guests: ['exit_code', 'proc_exit_direct', 'yes', 'rust_fs_net'],
  },
  proc_raise: {
    recorded: [performed('always (ENOSYS on purpose)')],
    replayed: EXECUTED,
    outputs: [],
    guests: ['wasi_direct'],
  },
  sched_yield: {
    recorded: [performed('always')],
    replayed: EXECUTED,
    outputs: [],
    guests: ['yield', 'wasi_direct'],
  },
  random_get: {
    recorded: [
      { on: 'a valid buffer of at most 16 MiB', how: 'fed', items: ['the random bytes'] },
      performed('a larger request (INVAL) or a bad pointer (FAULT)'),
    ],
    replayed: 'the bytes come from the log; errno checked',
    outputs: [],
    guests: ['clocks_random', 'wasi_direct', 'sessions'],
  },
  sock_accept: {
    recorded: [
      {
        on: 'listeners',
        how: 'fed',
        items: ['0 when a connection was there, else the errno (AGAIN on a non-blocking listener)'],
      },
      performed('not a listener, or bad flags'),
    ],
    replayed:
      'a phantom socket (no network) gets the same lowest free descriptor; errno checked; a blocking accept does not wait',
    outputs: [],
    guests: ['poll', 'sockets', 'send_and_exit', 'rust_fs_net', 'wasi_direct', 'kv', 'rust-kv', 'sessions'],
  },
  sock_recv: {
    recorded: [{ on: 'sockets', how: 'fed', items: [RESULT, 'the bytes received'] }, refused],
    replayed:
      'the result and the bytes come from the log, errno checked (PEEK and WAITALL need no special case)',
    outputs: [],
    guests: ['poll', 'sockets', 'kv', 'sessions'],
  },
  sock_send: {
    recorded: [
      { on: 'sockets', how: 'fed', items: [`${RESULT}: how much the bounded send buffer accepted`] },
      refused,
    ],
    replayed:
      'the result comes from the log, errno checked; the accepted bytes enter the output ledger (described on stderr with --show-output)',
    outputs: ['data'],
    guests: ['poll', 'sockets', 'send_and_exit', 'kv', 'sessions'],
  },
  sock_shutdown: {
    recorded: [performed('sockets; the shutdown is also an output')],
    replayed: `${ON_TABLE}; the phantom socket is shut, and the shutdown enters the output ledger`,
    outputs: ['shutdown'],
    guests: ['sockets', 'wasi_direct'],
  },
};
