/**
 * NetDevice: the I/O side of one VM's network and stdin, on the host's main
 * thread.
 *
 * Role: own the real listeners and connections (Node sockets), and move bytes
 * between them and the Channels the vCPU reads and writes. New connections are
 * offered to the vCPU as messages on its port; everything after that flows
 * through the channel rings and the control block.
 *
 * Invariants:
 * - Memory per connection is bounded: the two rings plus at most one pending
 *   chunk each way. A full rx ring pauses the socket (TCP backpressure reaches
 *   the client); a full Node write buffer stops draining the tx ring (the
 *   guest sees a full buffer).
 * - EOF is signalled to the vCPU only after every received byte is in the ring.
 * - This is the only module that touches the VM's sockets.
 */
import net from 'node:net';
import type { MessagePort } from 'node:worker_threads';
import type { Readable } from 'node:stream';
import { Channel, CtlSlot, type Ctl, RxFlag, TxFlag } from '../vm/channel.js';
import type { IoToVcpuMessage, VcpuToIoMessage } from '../vm/wasi/host.js';

export interface ListenSpec {
  host: string;
  port: number;
}

/** Connections one VM may hold open at once; beyond it, new clients are refused. */
export const CONNECTIONS_MAX = 1024;
/** How long a stopping VM waits for its last sent bytes to leave before cutting connections. */
export const CLOSE_FLUSH_MS = 2000;

interface Conn {
  id: number;
  socket: net.Socket;
  ch: Channel;
  /** Received bytes that did not fit in the rx ring yet. */
  rxLeftover: Buffer | null;
  eofPending: boolean;
  /** Waiting for 'drain' before taking more tx bytes. */
  writeBlocked: boolean;
  ended: boolean;
  socketClosed: boolean;
  vcpuClosed: boolean;
}

/** Parses "ADDR:PORT" (IPv6 in brackets); returns an error message on bad input. */
export function parseListen(s: string): ListenSpec | string {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(s);
  if (!m) return `expected ADDR:PORT, got "${s}"`;
  const host = m[1] ?? m[2]!;
  const port = Number(m[3]);
  if (port > 65535) return `port out of range in "${s}"`;
  return { host, port };
}

export class NetDevice {
  private readonly servers: net.Server[] = [];
  private readonly conns = new Map<number, Conn>();
  private nextConnId = 1;
  private running = false;
  private stdinStarted = false;

  constructor(
    private readonly ctl: Ctl,
    private readonly port: MessagePort,
    private readonly specs: readonly ListenSpec[],
    private readonly stdin: { ch: Channel; source: Readable | null },
    /** Seed for I/O chaos (testing only): random delays, short reads and writes, resets. Null: none. */
    private readonly chaosSeed: number | null = null,
  ) {}

  /** Binds every listener; resolves with the addresses actually bound (port 0 gets a real port). */
  async listen(): Promise<ListenSpec[]> {
    const out: ListenSpec[] = [];
    for (let i = 0; i < this.specs.length; i++) {
      const spec = this.specs[i]!;
      const server = net.createServer({ noDelay: true, allowHalfOpen: true });
      server.on('connection', (s) => this.onConnection(i, s));
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen({ host: spec.host, port: spec.port, exclusive: true, backlog: 511 }, () => {
          server.off('error', reject);
          resolve();
        });
      });
      // After listen, accept errors (EMFILE and the like) are transient: Node keeps listening.
      // Without a handler they would be uncaught exceptions on the host's main thread.
      server.on('error', () => {});
      this.servers.push(server);
      const addr = server.address() as net.AddressInfo;
      out.push({ host: addr.address, port: addr.port });
    }
    return out;
  }

  /** Starts moving bytes; runs until close(). */
  start(): void {
    this.running = true;
    void this.loop();
  }

  private async loop(): Promise<void> {
    const i32 = this.ctl.i32;
    while (this.running) {
      const seen = Atomics.load(i32, CtlSlot.IO);
      this.service();
      this.ctl.ioWaiting(true);
      const w = Atomics.waitAsync(i32, CtlSlot.IO, seen);
      if (w.async) await w.value;
      this.ctl.ioWaiting(false);
    }
  }

  /** Handles a control message from the vCPU. */
  onVcpuMessage(msg: VcpuToIoMessage): void {
    switch (msg.type) {
      case 'listener-closed':
        this.servers[msg.listener]?.close();
        break;
      case 'conn-dropped': {
        const c = this.conns.get(msg.connId);
        if (c) {
          c.vcpuClosed = true;
          c.socket.destroy();
          this.conns.delete(c.id);
        }
        break;
      }
      case 'stdin-wanted':
        this.startStdin();
        break;
    }
  }

  private offer(msg: IoToVcpuMessage): void {
    this.port.postMessage(msg);
    Atomics.add(this.ctl.i32, CtlSlot.MSG, 1);
    this.ctl.wakeVcpu();
  }

  private onConnection(listener: number, socket: net.Socket): void {
    if (!this.running || this.conns.size >= CONNECTIONS_MAX) {
      socket.destroy();
      return;
    }
    socket.setNoDelay(true);
    const c: Conn = {
      id: this.nextConnId++,
      socket,
      ch: Channel.create(),
      rxLeftover: null,
      eofPending: false,
      writeBlocked: false,
      ended: false,
      socketClosed: false,
      vcpuClosed: false,
    };
    this.conns.set(c.id, c);
    socket.on('data', (chunk: Buffer) => this.onData(c, chunk));
    socket.on('end', () => {
      if (c.rxLeftover !== null) c.eofPending = true;
      else c.ch.setRxFlag(RxFlag.EOF);
      this.ctl.wakeVcpu();
    });
    socket.on('error', () => {
      // ECONNRESET and friends: the vCPU sees a reset on read and a broken pipe on write.
      c.ch.setRxFlag(RxFlag.RESET);
      c.ch.setTxFlag(TxFlag.BROKEN);
      this.ctl.wakeVcpu();
    });
    socket.on('drain', () => {
      c.writeBlocked = false;
      this.serviceConn(c);
    });
    socket.on('close', () => {
      c.socketClosed = true;
      // EOF only after every received byte is in the ring.
      if (c.rxLeftover !== null) c.eofPending = true;
      else c.ch.setRxFlag(RxFlag.EOF);
      c.ch.setTxFlag(TxFlag.BROKEN);
      this.ctl.wakeVcpu();
      if (c.vcpuClosed) this.conns.delete(c.id);
    });
    this.offer({ type: 'conn', listener, connId: c.id, sab: c.ch.sab });
  }

  private onData(c: Conn, chunk: Buffer): void {
    if ((c.ch.txFlags() & TxFlag.SHUT_RD) !== 0) return; // the guest shut its read side: discard
    if ((c.ch.txFlags() & TxFlag.CLOSE) !== 0) return; // closed by the guest: nobody will read it
    if (c.rxLeftover !== null) {
      // Older bytes wait outside the ring: keep the order.
      c.rxLeftover = Buffer.concat([c.rxLeftover, chunk]);
      return;
    }
    let n = c.ch.rxPush(chunk);
    if (n < chunk.byteLength) {
      // Raise PAUSED before the second try: a vCPU that empties the ring after this point sees
      // the flag and pokes us, and one that emptied it before leaves room for the retry.
      c.ch.setRxFlag(RxFlag.PAUSED);
      n += c.ch.rxPush(chunk.subarray(n));
      if (n < chunk.byteLength) {
        c.rxLeftover = chunk.subarray(n);
        c.socket.pause();
      } else {
        c.ch.clearRxFlag(RxFlag.PAUSED);
      }
    }
    if (n > 0) this.ctl.wakeVcpu();
  }

  private service(): void {
    for (const c of this.conns.values()) this.serviceConn(c);
    if (this.stdinStarted) this.serviceStdin();
  }

  private serviceConn(c: Conn): void {
    const ch = c.ch;
    let woke = false;
    if (c.rxLeftover !== null) {
      const n = ch.rxPush(c.rxLeftover);
      if (n > 0) woke = true;
      c.rxLeftover = n < c.rxLeftover.byteLength ? c.rxLeftover.subarray(n) : null;
      if (c.rxLeftover === null) {
        ch.clearRxFlag(RxFlag.PAUSED);
        if (c.eofPending) ch.setRxFlag(RxFlag.EOF);
        else c.socket.resume();
      }
    }
    if (!c.writeBlocked && !c.socketClosed) {
      const data = ch.txTake();
      if (data !== null && !c.socket.write(data)) c.writeBlocked = true;
    }
    // Read the flags after draining: the vCPU raises WANT_SPACE before it checks for space,
    // and we free space before we look for WANT_SPACE, so one of us always sees the other.
    const txf = ch.txFlags();
    if ((txf & TxFlag.WANT_SPACE) !== 0 && ch.txSpace() > 0) {
      ch.clearTxFlag(TxFlag.WANT_SPACE);
      woke = true;
    }
    if ((txf & (TxFlag.SHUT_WR | TxFlag.CLOSE)) !== 0 && ch.txBuffered() === 0 && !c.ended) {
      c.ended = true;
      c.socket.end();
    }
    if ((txf & TxFlag.CLOSE) !== 0 && !c.vcpuClosed) {
      c.vcpuClosed = true;
      if (c.socketClosed) this.conns.delete(c.id);
      else if (ch.rxAvailable() > 0 || c.rxLeftover !== null) {
        // Closing with unread input resets the connection, as Linux does; it also frees the
        // entry at once instead of leaving a paused socket nobody will read.
        c.rxLeftover = null;
        c.socket.resetAndDestroy();
      } else {
        c.socket.resume(); // later input is discarded by onData
        // Once our FIN is out, a peer that never closes gets CLOSE_FLUSH_MS, not forever.
        c.socket.once('finish', () => setTimeout(() => c.socket.destroy(), CLOSE_FLUSH_MS).unref());
      }
    }
    if (woke) this.ctl.wakeVcpu();
  }

  private startStdin(): void {
    const src = this.stdin.source;
    const ch = this.stdin.ch;
    if (this.stdinStarted) return;
    this.stdinStarted = true;
    if (src === null) {
      ch.setRxFlag(RxFlag.EOF);
      this.ctl.wakeVcpu();
      return;
    }
    src.on('data', (chunk: Buffer | string) => {
      const buf = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
      const n = ch.rxPush(buf);
      if (n < buf.byteLength) {
        this.stdinLeftover = this.stdinLeftover
          ? Buffer.concat([this.stdinLeftover, buf.subarray(n)])
          : buf.subarray(n);
        ch.setRxFlag(RxFlag.PAUSED);
        src.pause();
      }
      this.ctl.wakeVcpu();
    });
    src.on('end', () => {
      if (this.stdinLeftover) this.stdinEofPending = true;
      else ch.setRxFlag(RxFlag.EOF);
      this.ctl.wakeVcpu();
    });
    src.on('error', () => {
      ch.setRxFlag(RxFlag.EOF);
      this.ctl.wakeVcpu();
    });
  }
  private stdinLeftover: Buffer | null = null;
  private stdinEofPending = false;

  private serviceStdin(): void {
    if (this.stdinLeftover === null) return;
    const ch = this.stdin.ch;
    const n = ch.rxPush(this.stdinLeftover);
    this.stdinLeftover = n < this.stdinLeftover.byteLength ? this.stdinLeftover.subarray(n) : null;
    if (this.stdinLeftover === null) {
      ch.clearRxFlag(RxFlag.PAUSED);
      if (this.stdinEofPending) ch.setRxFlag(RxFlag.EOF);
      else this.stdin.source?.resume();
    }
    if (n > 0) this.ctl.wakeVcpu();
  }

  /** Flushes what the guest sent, then closes every listener and connection. */
  async close(): Promise<void> {
    this.service();
    this.running = false;
    this.ctl.pokeIo();
    const flushed: Promise<void>[] = [];
    for (const c of this.conns.values()) {
      // Take what the guest sent even if Node's buffer is full: end() queues it behind the rest.
      if (!c.socketClosed) {
        const rest = c.ch.txTake();
        if (rest !== null) c.socket.write(rest);
      }
      if (!c.ended) c.socket.end();
      // Wait until what the guest sent has left (or the socket failed), so a guest's
      // last words before exiting reach its client; a peer that never reads gets
      // CLOSE_FLUSH_MS. Then the socket is destroyed: a client that keeps its end
      // open must not keep the host waiting.
      flushed.push(
        new Promise<void>((resolve) => {
          const done = (): void => {
            clearTimeout(t);
            c.socket.destroy();
            resolve();
          };
          const t = setTimeout(done, CLOSE_FLUSH_MS);
          if (c.socket.writableFinished || c.socket.destroyed) return done();
          c.socket.once('finish', done);
          c.socket.once('close', done);
        }),
      );
    }
    // server.close() stops accepting at once; its callback would wait for every connection.
    for (const s of this.servers) s.close();
    await Promise.all(flushed);
    this.conns.clear();
    if (this.stdinStarted) this.stdin.source?.pause();
  }
}
