/**
 * A real etcd server for tests: Debian's etcd-server (/usr/bin/etcd, v3.4),
 * one member on free loopback ports with a fresh data directory. Optionally it
 * listens on another address (`listenHost`) and runs under a command prefix
 * (`wrap`, such as `ip netns exec NS`), so that it can live in a network
 * namespace of its own and be partitioned like any other machine.
 *
 * Role: lets the coordinator conformance suite (and cluster tests) run the
 * etcd backend against the real thing, and break it on purpose: pause it
 * (SIGSTOP), kill it, restart it on the same ports and data.
 *
 * Invariants:
 * - Nothing outlives the test process. etcd runs under a tiny shell wrapper
 *   that holds the read end of a pipe from this process; when this process
 *   dies, even by SIGKILL, the pipe closes and the wrapper kills etcd. On a
 *   normal exit, an 'exit' handler kills every server still running and
 *   removes its data directory. stop() does both at once, and is idempotent.
 * - startEtcd() returns only once etcd answers its /health endpoint, and
 *   gives up after a bounded time with etcd's own log in the error.
 * - The ports are printed on stderr, so a failing run can be investigated.
 * - pid() is etcd's own pid, also under `wrap`, which must therefore exec the
 *   command it is given (as `ip netns exec` and `nsenter` do) rather than
 *   fork it: pause, resume, kill and stop signal that pid.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';

export const ETCD_BINARY = '/usr/bin/etcd';

/** Whether the etcd binary is installed, so suites can skip instead of failing on machines without it. */
export function etcdAvailable(binary = ETCD_BINARY): boolean {
  return existsSync(binary);
}

export interface EtcdOptions {
  /** How long start and restart wait for etcd to be healthy (default 20 s). */
  startTimeoutMs?: number;
  binary?: string;
  /** Where informational lines go (default: stderr). */
  log?: (line: string) => void;
  /**
   * The IPv4 address etcd listens on for clients and peers, and advertises
   * (default 127.0.0.1). The health checks of this process go there too, so it
   * must be reachable from here, as a host's address is through a bridged
   * network's root link.
   */
  listenHost?: string;
  /**
   * A command prefix that runs etcd elsewhere, such as `['ip', 'netns',
   * 'exec', NS]`. It must exec etcd (not fork it), so that the pid it reports
   * is etcd's. Default: none.
   */
  wrap?: readonly string[];
}

export interface EtcdServer {
  /** The member name, unique per server. */
  readonly name: string;
  readonly clientPort: number;
  readonly peerPort: number;
  readonly dataDir: string;
  /** The address it listens on and advertises, 127.0.0.1 unless `listenHost` said otherwise. */
  readonly listenHost: string;
  /** The command prefix it runs under, empty if none. */
  readonly wrap: readonly string[];
  /** "LISTENHOST:PORT", the client endpoint. */
  readonly endpoint: string;
  /** "etcd:LISTENHOST:PORT", the coordinator string. */
  readonly spec: string;
  /** The etcd process id while it runs, else null. */
  pid(): number | null;
  running(): boolean;
  /** SIGSTOP: etcd keeps its sockets open but answers nothing, like a paused or partitioned host. */
  pause(): void;
  /** SIGCONT after pause(). */
  resume(): void;
  /** SIGKILL and wait for the exit; keeps the data directory for restart(). */
  kill(): Promise<void>;
  /** Starts etcd again on the same ports and data directory and waits until it is healthy. */
  restart(): Promise<void>;
  /** SIGTERM (SIGKILL after a grace period), then removes the data directory. Idempotent. */
  stop(): Promise<void>;
  /** The last lines etcd wrote, for failure messages. */
  logTail(): string;
}

/** Servers that may still be running, for the exit handler. */
const live = new Set<EtcdInstance>();
let exitHandlerInstalled = false;

function installExitHandler(): void {
  if (exitHandlerInstalled) return;
  exitHandlerInstalled = true;
  process.on('exit', () => {
    for (const s of live) s.emergencyCleanup();
  });
}

/**
 * A free TCP port on `host`, found by binding port 0 (another process could
 * take it before etcd does; start retries).
 */
function freePort(host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, host, () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr !== null ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

/**
 * The wrapper: runs etcd in the background, reports its pid, and kills it
 * when its own stdin (a pipe from the test process) reaches end of file.
 * POSIX gives background jobs /dev/null as stdin, hence the copy on fd 3.
 */
const WRAPPER = `
exec 3<&0
"$@" </dev/null &
child=$!
echo "etcd-pid $child"
( read _line <&3; kill -TERM $child 2>/dev/null; sleep 5; kill -KILL $child 2>/dev/null ) &
watcher=$!
wait $child
status=$?
kill $watcher 2>/dev/null
echo "etcd-exit $status"
`;

const LOG_TAIL_BYTES = 16 * 1024;
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

class EtcdInstance implements EtcdServer {
  readonly endpoint: string;
  readonly spec: string;
  private wrapper: ChildProcess | null = null;
  private etcdPid: number | null = null;
  private exited: Promise<void> = Promise.resolve();
  private log = '';
  private removed = false;

  constructor(
    readonly name: string,
    readonly clientPort: number,
    readonly peerPort: number,
    readonly dataDir: string,
    readonly listenHost: string,
    readonly wrap: readonly string[],
    private readonly binary: string,
    private readonly startTimeoutMs: number,
  ) {
    this.endpoint = `${listenHost}:${clientPort}`;
    this.spec = `etcd:${this.endpoint}`;
  }

  pid(): number | null {
    return this.etcdPid;
  }

  running(): boolean {
    return this.etcdPid !== null;
  }

  logTail(): string {
    return this.log;
  }

  private args(): string[] {
    const client = `http://${this.listenHost}:${this.clientPort}`;
    const peer = `http://${this.listenHost}:${this.peerPort}`;
    return [
      `--name=${this.name}`,
      `--data-dir=${this.dataDir}`,
      `--listen-client-urls=${client}`,
      `--advertise-client-urls=${client}`,
      `--listen-peer-urls=${peer}`,
      `--initial-advertise-peer-urls=${peer}`,
      `--initial-cluster=${this.name}=${peer}`,
      '--initial-cluster-state=new',
      `--initial-cluster-token=${this.name}`,
      // A single member elects itself after one election timeout; short ones make start and restart quick.
      '--heartbeat-interval=50',
      '--election-timeout=300',
      '--logger=zap',
      '--log-level=warn',
    ];
  }

  private append(chunk: Buffer): void {
    this.log = (this.log + chunk.toString('utf8')).slice(-LOG_TAIL_BYTES);
  }

  /** Spawns the wrapper and waits for etcd's health endpoint. */
  async launch(): Promise<void> {
    if (this.wrapper !== null) throw new Error(`etcd ${this.name} is already running`);
    // The wrap prefix goes inside the shell wrapper, so the pid the wrapper reports
    // is the prefix's, which becomes etcd's when the prefix execs it.
    const argv = [...this.wrap, this.binary, ...this.args()];
    const child = spawn('/bin/sh', ['-c', WRAPPER, 'etcd-wrapper', ...argv], {
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    this.wrapper = child;
    live.add(this);
    let pidSeen: (pid: number) => void = () => undefined;
    const pidPromise = new Promise<number>((resolve) => (pidSeen = resolve));
    let out = '';
    child.stdout.on('data', (b: Buffer) => {
      out += b.toString('utf8');
      const m = /etcd-pid (\d+)/.exec(out);
      if (m) pidSeen(Number(m[1]));
    });
    child.stderr.on('data', (b: Buffer) => this.append(b));
    this.exited = new Promise<void>((resolve) => {
      child.on('exit', () => {
        this.etcdPid = null;
        this.wrapper = null;
        resolve();
      });
    });
    let gone = false;
    void this.exited.then(() => (gone = true));
    this.etcdPid = await Promise.race([pidPromise, this.exited.then(() => null)]);
    const deadline = performance.now() + this.startTimeoutMs;
    while (!gone && performance.now() < deadline) {
      if (await this.healthy()) return;
      await sleep(100);
    }
    const why = gone ? 'it exited' : `not healthy within ${this.startTimeoutMs} ms`;
    await this.kill();
    const where = this.wrap.length > 0 ? ` (under ${this.wrap.join(' ')})` : '';
    throw new Error(`etcd ${this.name} on ${this.endpoint}${where}: ${why}\n--- etcd log ---\n${this.log}`);
  }

  private async healthy(): Promise<boolean> {
    try {
      const res = await fetch(`http://${this.endpoint}/health`, { signal: AbortSignal.timeout(1000) });
      const body = (await res.json()) as { health?: unknown };
      return res.ok && body.health === 'true';
    } catch {
      return false;
    }
  }

  private signal(sig: NodeJS.Signals): void {
    if (this.etcdPid === null) return;
    try {
      process.kill(this.etcdPid, sig);
    } catch {
      // Already gone.
    }
  }

  pause(): void {
    this.signal('SIGSTOP');
    // SIGSTOP takes effect asynchronously; a call sent before every etcd thread has stopped could
    // still be answered. Wait (bounded) until the kernel reports the process as stopped.
    const pid = this.etcdPid;
    if (pid === null) return;
    const deadline = performance.now() + 2000;
    while (performance.now() < deadline) {
      let state = '';
      try {
        const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
        state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
      } catch {
        return; // gone: nothing answers either
      }
      if (state === 'T' || state === 't') return;
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 5);
    }
    throw new Error(`etcd ${this.name} (pid ${pid}) did not stop within 2 s of SIGSTOP`);
  }

  resume(): void {
    this.signal('SIGCONT');
  }

  async kill(): Promise<void> {
    this.signal('SIGKILL');
    this.wrapper?.stdin?.end();
    await this.exited;
  }

  async restart(): Promise<void> {
    if (this.running()) await this.kill();
    await this.launch();
  }

  async stop(): Promise<void> {
    if (this.running()) {
      this.signal('SIGTERM');
      // A paused etcd would hold the SIGTERM pending forever.
      this.signal('SIGCONT');
      const graceful = await Promise.race([this.exited.then(() => true), sleep(5000).then(() => false)]);
      if (!graceful) await this.kill();
    }
    this.wrapper?.stdin?.end();
    live.delete(this);
    if (!this.removed) {
      this.removed = true;
      rmSync(this.dataDir, { recursive: true, force: true });
    }
  }

  /** Synchronous last resort from the process 'exit' handler. */
  emergencyCleanup(): void {
    this.signal('SIGKILL');
    if (!this.removed) {
      this.removed = true;
      try {
        rmSync(this.dataDir, { recursive: true, force: true });
      } catch {
        // Nothing more can be done while exiting.
      }
    }
  }
}

/**
 * Starts a fresh single-member etcd and waits until it is healthy. Retries
 * with new ports if the first ones were taken in the meantime.
 */
export async function startEtcd(opts: EtcdOptions = {}): Promise<EtcdServer> {
  const binary = opts.binary ?? ETCD_BINARY;
  const log = opts.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  const listenHost = opts.listenHost ?? '127.0.0.1';
  if (!/^\d{1,3}(?:\.\d{1,3}){3}$/.test(listenHost))
    throw new Error(`listenHost must be an IPv4 address, got ${JSON.stringify(listenHost)}`);
  const wrap = [...(opts.wrap ?? [])];
  // Without a wrap the address is in this namespace, so its own free ports are
  // the ones that matter. Under a wrap etcd runs elsewhere (typically a fresh
  // namespace, where every port is free): a loopback port free here is as good
  // a guess as any, and a taken one is retried below.
  const probeHost = wrap.length === 0 ? listenHost : '127.0.0.1';
  installExitHandler();
  let lastError: unknown = null;
  for (let attempt = 0; attempt < 3; attempt++) {
    const clientPort = await freePort(probeHost);
    let peerPort = await freePort(probeHost);
    while (peerPort === clientPort) peerPort = await freePort(probeHost);
    const name = `lockstep-test-${process.pid}-${randomBytes(3).toString('hex')}`;
    const dataDir = mkdtempSync(path.join(tmpdir(), 'lockstep-etcd-'));
    const server = new EtcdInstance(
      name,
      clientPort,
      peerPort,
      dataDir,
      listenHost,
      wrap,
      binary,
      opts.startTimeoutMs ?? 20_000,
    );
    const under = wrap.length > 0 ? `, under ${wrap.join(' ')}` : '';
    log(
      `etcd ${name}: client ${listenHost}:${clientPort}, peer ${listenHost}:${peerPort}, data ${dataDir}${under}`,
    );
    try {
      await server.launch();
      return server;
    } catch (e) {
      lastError = e;
      await server.stop();
    }
  }
  throw lastError instanceof Error ? lastError : new Error(String(lastError));
}
