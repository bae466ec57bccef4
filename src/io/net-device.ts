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
 *
 * I/O chaos (`--io-chaos SEED`, testing only): with a seed, a ChaosPolicy
 * (chaos.ts) makes the network hostile. Received chunks wait on timers and
 * reach the ring in pieces, tx drains are put off, rings are small, and some
 * connections are reset. The chaos path keeps the invariants above: held
 * received bytes stay in `rxLeftover` (so EOF still waits for them, and the
 * socket stays paused while they are held), order is kept, and nothing is
 * lost except on a connection the chaos resets. Without a seed, `chaos` is
 * null and every path is the plain one.
 */
import net from 'node:net';
import type { MessagePort } from 'node:worker_threads';
import type { Readable } from 'node:stream';
import { Channel, CtlSlot, type Ctl, RxFlag, TxFlag } from '../vm/channel.js';
import type { IoToVcpuMessage, VcpuToIoMessage } from '../vm/wasi/host.js';
import { ChaosPolicy, type ConnChaos, type RxPiece } from './chaos.js';
import type { OutputGate } from './output-gate.js';

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
  /** I/O chaos state; null when chaos is off. */
  chaos: ChaosState | null;
}

/** The chaos state of one connection (see ChaosPolicy). */
interface ChaosState {
  policy: ConnChaos;
  /** How the bytes in rxLeftover may enter the ring, beyond the released ones, in order. */
  pieces: RxPiece[];
  /** Bytes at the front of rxLeftover that may enter the ring now. */
  releasedBytes: number;
  /** Running while the next piece waits out its delay. */
  rxTimer: NodeJS.Timeout | null;
  /** Running while a tx stall lasts. */
  txTimer: NodeJS.Timeout | null;
  /** The stall just ended: the next drain happens without drawing another one. */
  txPass: boolean;
  resetTimer: NodeJS.Timeout | null;
  /** Running while the offer of this new connection to the guest is held back. */
  offerTimer: NodeJS.Timeout | null;
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
  /** While true, nothing leaves for the network: no sent bytes, no FIN, no reset. */
  private outputsHeld = false;
  /** The I/O chaos policy, decided once from the seed; null (the normal case) for a faithful network. */
  private readonly chaos: ChaosPolicy | null;
  /** An FT primary's Output Rule: what may leave, per connection; null for other VMs. */
  private gate: OutputGate | null = null;

  constructor(
    private readonly ctl: Ctl,
    private readonly port: MessagePort,
    private readonly specs: readonly ListenSpec[],
    private readonly stdin: { ch: Channel; source: Readable | null },
    /** Seed for I/O chaos (testing only): random delays, short reads and writes, resets. Null: none. */
    chaosSeed: number | null = null,
  ) {
    this.chaos = chaosSeed === null ? null : new ChaosPolicy(chaosSeed);
    // Every chaotic run names its seed, so that a failure it provokes can be looked for again.
    if (chaosSeed !== null) process.stderr.write(`lockstep: io chaos on (seed ${chaosSeed})\n`);
  }

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
          if (c.chaos !== null) clearChaosTimers(c.chaos);
          c.socket.destroy();
          this.dropConn(c);
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
    const id = this.nextConnId++;
    const chaos: ChaosState | null =
      this.chaos === null
        ? null
        : {
            policy: this.chaos.forConnection(id),
            pieces: [],
            releasedBytes: 0,
            rxTimer: null,
            txTimer: null,
            txPass: false,
            resetTimer: null,
            offerTimer: null,
          };
    const c: Conn = {
      id,
      socket,
      ch:
        chaos === null ? Channel.create() : Channel.create(chaos.policy.rxCapBytes, chaos.policy.txCapBytes),
      rxLeftover: null,
      eofPending: false,
      writeBlocked: false,
      ended: false,
      socketClosed: false,
      vcpuClosed: false,
      chaos,
    };
    this.conns.set(c.id, c);
    if (chaos !== null && chaos.policy.resetAfterMs !== null) {
      chaos.resetTimer = setTimeout(() => {
        chaos.resetTimer = null;
        this.chaosReset(c);
      }, chaos.policy.resetAfterMs);
    }
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
      // Held received bytes still go to the ring (as in the plain path); only the tx stall and
      // the planned reset are moot now.
      if (c.chaos !== null) clearChaosTxAndReset(c.chaos);
      // EOF only after every received byte is in the ring.
      if (c.rxLeftover !== null) c.eofPending = true;
      else c.ch.setRxFlag(RxFlag.EOF);
      c.ch.setTxFlag(TxFlag.BROKEN);
      this.ctl.wakeVcpu();
      if (c.vcpuClosed) this.dropConn(c);
    });
    const offer: IoToVcpuMessage = { type: 'conn', listener, connId: c.id, sab: c.ch.sab };
    const holdMs = chaos === null ? 0 : chaos.policy.acceptDelayMs();
    if (chaos === null || holdMs === 0) this.offer(offer);
    else {
      // Bytes and EOF still go to the ring meanwhile; the guest just learns of the connection later.
      chaos.offerTimer = setTimeout(() => {
        chaos.offerTimer = null;
        if (this.running) this.offer(offer);
      }, holdMs);
    }
  }

  private onData(c: Conn, chunk: Buffer): void {
    if ((c.ch.txFlags() & TxFlag.SHUT_RD) !== 0) return; // the guest shut its read side: discard
    if ((c.ch.txFlags() & TxFlag.CLOSE) !== 0) return; // closed by the guest: nobody will read it
    if (c.chaos !== null) {
      this.chaosOnData(c, c.chaos, chunk);
      return;
    }
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

  /**
   * Puts the VM's outputs under an FT primary's Output Rule: from now on a
   * connection's bytes, FIN and close leave only as far as the gate allows.
   */
  setGate(gate: OutputGate): void {
    this.gate = gate;
    gate.onRelease = () => {
      if (this.running) this.service();
    };
  }

  /** Forgets a connection that is closed on both sides (its gate state goes with it). */
  private dropConn(c: Conn): void {
    this.conns.delete(c.id);
    this.gate?.forget(c.id);
  }

  /** Holds or releases every network output of the VM; releasing flushes what waited, in order. */
  holdOutputs(held: boolean): void {
    if (this.outputsHeld === held) return;
    this.outputsHeld = held;
    if (!held && this.running) this.service();
  }

  private service(): void {
    // New marks first: without a backup (an open gate) they release at once.
    if (this.gate !== null && this.gate.open) this.gate.poll();
    for (const c of this.conns.values()) this.serviceConn(c);
    if (this.stdinStarted) this.serviceStdin();
  }

  private serviceConn(c: Conn): void {
    const ch = c.ch;
    let woke = false;
    if (c.chaos !== null) {
      if (c.rxLeftover !== null) woke = this.chaosPumpRx(c, c.chaos);
    } else if (c.rxLeftover !== null) {
      const n = ch.rxPush(c.rxLeftover);
      if (n > 0) woke = true;
      c.rxLeftover = n < c.rxLeftover.byteLength ? c.rxLeftover.subarray(n) : null;
      if (c.rxLeftover === null) {
        ch.clearRxFlag(RxFlag.PAUSED);
        if (c.eofPending) ch.setRxFlag(RxFlag.EOF);
        else c.socket.resume();
      }
    }
    if (this.outputsHeld) {
      // Every output waits, including the FIN or reset of a close: it is released in order later.
      if (woke) this.ctl.wakeVcpu();
      return;
    }
    const gate = this.gate;
    if (!c.writeBlocked && !c.socketClosed) {
      if (c.chaos !== null) this.chaosDrainTx(c, c.chaos);
      else {
        const data = ch.txTake(gate === null ? Infinity : gate.allowance(c.id, ch));
        if (data !== null && !c.socket.write(data)) c.writeBlocked = true;
      }
    }
    // Read the flags after draining: the vCPU raises WANT_SPACE before it checks for space,
    // and we free space before we look for WANT_SPACE, so one of us always sees the other.
    // Under the Output Rule a FIN or close takes effect only once released, like bytes.
    const OUTPUT_FLAGS = TxFlag.SHUT_WR | TxFlag.CLOSE;
    const rawTxf = ch.txFlags();
    const txf = gate === null ? rawTxf : (rawTxf & ~OUTPUT_FLAGS) | (gate.releasedFlags(c.id) & OUTPUT_FLAGS);
    if ((txf & TxFlag.WANT_SPACE) !== 0 && ch.txSpace() > 0) {
      ch.clearTxFlag(TxFlag.WANT_SPACE);
      woke = true;
    }
    // Closing with unread input resets the connection, as Linux does, without a FIN first:
    // libuv cannot reset a socket whose shutdown is still pending (see resetSocket).
    const resetOnClose =
      (txf & TxFlag.CLOSE) !== 0 &&
      !c.vcpuClosed &&
      !c.socketClosed &&
      (ch.rxAvailable() > 0 || c.rxLeftover !== null);
    if ((txf & (TxFlag.SHUT_WR | TxFlag.CLOSE)) !== 0 && ch.txBuffered() === 0 && !c.ended && !resetOnClose) {
      c.ended = true;
      c.socket.end();
    }
    if ((txf & TxFlag.CLOSE) !== 0 && !c.vcpuClosed) {
      c.vcpuClosed = true;
      if (c.socketClosed) this.dropConn(c);
      else if (resetOnClose) {
        // The reset also frees the entry at once instead of leaving a paused socket nobody will read.
        c.rxLeftover = null;
        if (c.chaos !== null) dropHeldRx(c.chaos);
        resetSocket(c.socket);
      } else {
        c.socket.resume(); // later input is discarded by onData
        // Once our FIN is out, a peer that never closes gets CLOSE_FLUSH_MS, not forever.
        c.socket.once('finish', () => setTimeout(() => c.socket.destroy(), CLOSE_FLUSH_MS).unref());
      }
    }
    if (woke) this.ctl.wakeVcpu();
  }

  // ---- I/O chaos (only with a seed) ----

  /** Chaos: holds a received chunk and cuts it into the pieces the policy chose, then pumps. */
  private chaosOnData(c: Conn, cc: ChaosState, chunk: Buffer): void {
    c.rxLeftover = c.rxLeftover === null ? chunk : Buffer.concat([c.rxLeftover, chunk]);
    for (const p of cc.policy.rxPieces(chunk.byteLength)) cc.pieces.push(p);
    // While bytes are held the socket stays paused, so at most about one chunk waits here;
    // the pump resumes it once everything held is in the ring.
    c.socket.pause();
    if (this.chaosPumpRx(c, cc)) this.ctl.wakeVcpu();
  }

  /**
   * Chaos: moves held bytes into the rx ring, piece by piece, each piece after its
   * delay. Returns whether bytes went in. Invariant: the released bytes plus the
   * pieces' lengths equal the length of rxLeftover.
   */
  private chaosPumpRx(c: Conn, cc: ChaosState): boolean {
    const ch = c.ch;
    let woke = false;
    while (c.rxLeftover !== null) {
      if (cc.releasedBytes === 0) {
        if (cc.rxTimer !== null) break;
        const next = cc.pieces[0]!;
        if (next.delayMs > 0) {
          const ms = next.delayMs;
          next.delayMs = 0;
          cc.rxTimer = setTimeout(() => {
            cc.rxTimer = null;
            if (this.running && this.conns.get(c.id) === c) this.serviceConn(c);
          }, ms);
          break;
        }
        cc.pieces.shift();
        cc.releasedBytes = next.bytes;
      }
      const want = cc.releasedBytes;
      let n = ch.rxPush(c.rxLeftover.subarray(0, want));
      if (n < want) {
        // As in onData: PAUSED goes up before the second try, so no consumption is missed.
        ch.setRxFlag(RxFlag.PAUSED);
        n += ch.rxPush(c.rxLeftover.subarray(n, want));
      }
      if (n > 0) woke = true;
      cc.releasedBytes -= n;
      c.rxLeftover = n < c.rxLeftover.byteLength ? c.rxLeftover.subarray(n) : null;
      if (cc.releasedBytes > 0) break; // the ring is full: the vCPU pokes us after reading (PAUSED)
    }
    if (c.rxLeftover === null) {
      ch.clearRxFlag(RxFlag.PAUSED);
      if (c.eofPending) ch.setRxFlag(RxFlag.EOF);
      else c.socket.resume();
    }
    return woke;
  }

  /** Chaos: drains the tx ring now, or after a stall, and puts the bytes on the wire in pieces. */
  private chaosDrainTx(c: Conn, cc: ChaosState): void {
    if (cc.txTimer !== null || c.ch.txBuffered() === 0) return;
    if (!cc.txPass) {
      const ms = cc.policy.txStallMs(performance.now());
      if (ms > 0) {
        // The guest keeps writing into a ring nobody empties: short sends, then EAGAIN.
        cc.txTimer = setTimeout(() => {
          cc.txTimer = null;
          cc.txPass = true;
          if (this.running && this.conns.get(c.id) === c) this.serviceConn(c);
        }, ms);
        return;
      }
    }
    cc.txPass = false;
    const data = c.ch.txTake()!;
    let at = 0;
    let ok = true;
    for (const cut of [...cc.policy.wireCuts(data.byteLength), data.byteLength]) {
      ok = c.socket.write(data.subarray(at, cut)) && ok;
      at = cut;
    }
    if (!ok) c.writeBlocked = true;
  }

  /** Chaos: resets the connection as a peer's RST would, unless it is already gone. */
  private chaosReset(c: Conn): void {
    const cc = c.chaos!;
    if (!this.running || this.conns.get(c.id) !== c || c.socketClosed || c.vcpuClosed) return;
    // A peer cannot be sent an RST while our FIN is still on its way (see resetSocket): no reset then.
    if (c.socket.writableEnded && !c.socket.writableFinished) return;
    cc.policy.noteReset();
    // Not the offer timer: the guest must still learn of the connection, and then find it reset.
    clearChaosTxAndReset(cc);
    // Bytes still on their way are lost with the connection, as with a real reset.
    c.rxLeftover = null;
    c.eofPending = false;
    dropHeldRx(cc);
    c.ch.clearRxFlag(RxFlag.PAUSED);
    // What the 'error' handler does for a real reset: reads fail with CONNRESET, writes with PIPE.
    c.ch.setRxFlag(RxFlag.RESET);
    c.ch.setTxFlag(TxFlag.BROKEN);
    resetSocket(c.socket); // the client sees ECONNRESET too
    this.ctl.wakeVcpu();
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
    if (this.gate !== null && !this.gate.open) {
      // An FT primary that stops never releases what its backup has not acknowledged: the backup
      // may be taking over without those calls. What was released still leaves; the rest is
      // dropped with the connections.
      this.gate.poll();
      this.service();
      this.outputsHeld = true;
    }
    if (this.outputsHeld) {
      // Held outputs are never released by a stop: a VM whose host lost its claim may have been
      // taken over, and what it computed since must not reach anyone. Its connections are reset.
      this.running = false;
      this.ctl.pokeIo();
      for (const c of this.conns.values()) if (!c.socketClosed) resetSocket(c.socket);
      this.conns.clear();
      for (const s of this.servers) s.close();
      return;
    }
    this.service();
    this.running = false;
    this.ctl.pokeIo();
    if (this.chaos !== null) {
      for (const c of this.conns.values()) if (c.chaos !== null) clearChaosTimers(c.chaos);
      process.stderr.write(`lockstep: ${this.chaos.describeStats()}\n`);
    }
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

/**
 * Destroys a socket with an RST. libuv refuses to reset a socket whose
 * shutdown (our FIN) is still pending: Node then reports EINVAL, drops the
 * handle without closing it (the fd leaks, and 'close' never comes) and the
 * peer sees a clean end. Such a socket is therefore only destroyed.
 */
function resetSocket(s: net.Socket): void {
  if (s.writableEnded && !s.writableFinished) s.destroy();
  else s.resetAndDestroy();
}

function clearChaosTxAndReset(cc: ChaosState): void {
  if (cc.txTimer !== null) clearTimeout(cc.txTimer);
  if (cc.resetTimer !== null) clearTimeout(cc.resetTimer);
  cc.txTimer = null;
  cc.resetTimer = null;
}

function clearChaosTimers(cc: ChaosState): void {
  clearChaosTxAndReset(cc);
  if (cc.rxTimer !== null) clearTimeout(cc.rxTimer);
  if (cc.offerTimer !== null) clearTimeout(cc.offerTimer);
  cc.rxTimer = null;
  cc.offerTimer = null;
}

/** Forgets the pieces of held received bytes (the caller drops rxLeftover with them). */
function dropHeldRx(cc: ChaosState): void {
  if (cc.rxTimer !== null) clearTimeout(cc.rxTimer);
  cc.rxTimer = null;
  cc.pieces = [];
  cc.releasedBytes = 0;
}
