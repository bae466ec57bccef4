/**
 * Small TCP client helpers shared by the end-to-end tests that drive guests
 * over their own protocols (the test guests and the line-protocol examples).
 * Only 127.0.0.1 is ever dialled.
 */
import net from 'node:net';

/** Connects to a guest listening on 127.0.0.1:port. */
export function connect(port: number, allowHalfOpen = false): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ port, host: '127.0.0.1', allowHalfOpen });
    s.once('connect', () => resolve(s));
    s.once('error', reject);
  });
}

/** Reads exactly n bytes (or rejects on EOF first); `buffered` keeps bytes read past n. */
export function readExactly(s: net.Socket, n: number, buffered: { buf: Buffer }): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const check = (): boolean => {
      if (buffered.buf.length >= n) {
        const out = buffered.buf.subarray(0, n);
        buffered.buf = buffered.buf.subarray(n);
        s.off('data', onData);
        s.off('end', onEnd);
        resolve(out);
        return true;
      }
      return false;
    };
    const onData = (d: Buffer): void => {
      buffered.buf = Buffer.concat([buffered.buf, d]);
      check();
    };
    const onEnd = (): void => reject(new Error(`EOF after ${buffered.buf.length} of ${n} bytes`));
    if (check()) return;
    s.on('data', onData);
    s.once('end', onEnd);
  });
}
