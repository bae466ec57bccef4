/**
 * PeerUdp: the UDP socket heartbeats travel on.
 *
 * Role: a thin adapter over node:dgram with no protocol in it. Frames are
 * built and checked by src/cluster/frame.ts; what to send and when is decided
 * by src/cluster/membership.ts; this file only moves datagrams.
 *
 * Invariants:
 * - Sending never throws and never rejects: a heartbeat that cannot be sent
 *   is a lost heartbeat, which the protocol expects. Failures are counted
 *   (with the last error kept for logs).
 * - A datagram longer than datagramBytesMax (FRAME_BYTES_MAX by default) is
 *   dropped unread and counted.
 * - The socket's 'error' events are counted too, so a bad datagram or a
 *   transient socket error cannot crash the host.
 */
import dgram from 'node:dgram';
import { isIP } from 'node:net';
import { FRAME_BYTES_MAX } from '../cluster/frame.js';

export interface DatagramInfo {
  address: string;
  port: number;
  family: 'IPv4' | 'IPv6';
  size: number;
}

export interface PeerUdpStats {
  datagramsSent: number;
  sendErrors: number;
  datagramsReceived: number;
  /** Received datagrams dropped because they were longer than datagramBytesMax. */
  datagramsTooBig: number;
  /** 'error' events of the socket itself. */
  socketErrors: number;
  /** The last send or socket error, for logs. */
  lastError: string | null;
}

export interface PeerUdpOptions {
  /** The longest datagram accepted (default FRAME_BYTES_MAX). */
  datagramBytesMax?: number;
}

/** Splits "HOST:PORT" (IPv6 as "[ADDR]:PORT") into its parts, or null if it is not that. */
export function parseHostPort(s: string): { host: string; port: number } | null {
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(s);
  if (m === null) return null;
  const port = Number(m[3]);
  if (port < 1 || port > 65535) return null;
  const host = m[1] ?? m[2]!;
  if (m[1] !== undefined && isIP(host) !== 6) return null;
  return { host, port };
}

export class PeerUdp {
  private handler: ((buf: Buffer, rinfo: DatagramInfo) => void) | null = null;
  private closed = false;
  private readonly counters: PeerUdpStats = {
    datagramsSent: 0,
    sendErrors: 0,
    datagramsReceived: 0,
    datagramsTooBig: 0,
    socketErrors: 0,
    lastError: null,
  };

  private constructor(
    private readonly socket: dgram.Socket,
    private readonly datagramBytesMax: number,
  ) {
    socket.on('message', (buf, rinfo) => {
      if (buf.byteLength > this.datagramBytesMax) {
        this.counters.datagramsTooBig++;
        return;
      }
      this.counters.datagramsReceived++;
      this.handler?.(buf, {
        address: rinfo.address,
        port: rinfo.port,
        family: rinfo.family === 'IPv6' ? 'IPv6' : 'IPv4',
        size: rinfo.size,
      });
    });
  }

  /**
   * Binds a socket on host:port (port 0 picks a free one). The socket family
   * follows the address: udp6 for an IPv6 address, udp4 otherwise. Rejects if
   * the bind fails (the address is taken or not local).
   */
  static bind(host: string, port: number, options: PeerUdpOptions = {}): Promise<PeerUdp> {
    const datagramBytesMax = options.datagramBytesMax ?? FRAME_BYTES_MAX;
    const socket = dgram.createSocket({ type: isIP(host) === 6 ? 'udp6' : 'udp4' });
    return new Promise((resolve, reject) => {
      const onBindError = (err: Error): void => {
        try {
          socket.close();
        } catch {
          // Already closed by the failed bind: nothing to release.
        }
        reject(err);
      };
      socket.once('error', onBindError);
      socket.bind(port, host, () => {
        socket.off('error', onBindError);
        const p = new PeerUdp(socket, datagramBytesMax);
        socket.on('error', (err) => {
          p.counters.socketErrors++;
          p.counters.lastError = err.message;
        });
        resolve(p);
      });
    });
  }

  /** The bound address (useful after binding port 0). */
  address(): { host: string; port: number } {
    const a = this.socket.address();
    return { host: a.address, port: a.port };
  }

  /** Sends one datagram. Never throws: failures (closed socket, bad address, EMSGSIZE, …) are counted. */
  send(buf: Uint8Array, host: string, port: number): void {
    if (this.closed) {
      this.countSendError('socket closed');
      return;
    }
    try {
      this.socket.send(buf, port, host, (err) => {
        if (err) this.countSendError(err.message);
        else this.counters.datagramsSent++;
      });
    } catch (e) {
      // dgram throws synchronously on some argument errors (a bad port, say).
      this.countSendError(e instanceof Error ? e.message : String(e));
    }
  }

  /** Sets the one receiver of datagrams (a second call replaces the first). */
  onDatagram(cb: (buf: Buffer, rinfo: DatagramInfo) => void): void {
    this.handler = cb;
  }

  stats(): PeerUdpStats {
    return { ...this.counters };
  }

  /** Closes the socket; later sends are counted as errors. Idempotent. */
  close(): Promise<void> {
    if (this.closed) return Promise.resolve();
    this.closed = true;
    this.handler = null;
    return new Promise((resolve) => this.socket.close(() => resolve()));
  }

  private countSendError(message: string): void {
    this.counters.sendErrors++;
    this.counters.lastError = message;
  }
}
