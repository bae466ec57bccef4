/**
 * Log files: the main thread's side of recording and replaying.
 *
 * - LogFileWriter creates a log (mode 0600: it carries the guest's random
 *   bytes), writes the preamble and header, then stores what the vCPU puts in
 *   its ring, in order, until the ring closes. The ring is the bounded buffer:
 *   a slow disk slows the guest, it never drops records.
 * - scanLogFile checks a whole log before replay (every CRC, the structure,
 *   truncation), and feedLogFile streams its RECORDS frames into a replay ring.
 *
 * Only this module touches log files.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { ByteRing } from '../ft/ring.js';
import {
  FrameKind,
  encodeFrame,
  encodeHeader,
  preamble,
  recordsPrefix,
  type LogHeader,
  type Trailer,
} from '../ft/log/format.js';
import { LogError, LogScanner, type ScanEnd } from '../ft/log/scanner.js';

/** Log files are secret: only their owner may read them. */
export const LOG_FILE_MODE = 0o600;
const READ_CHUNK_BYTES = 1 << 20;

export class LogFileWriter {
  private bytes = 0;

  private constructor(private readonly fh: FileHandle) {}

  /** Creates (or replaces) the log and writes its preamble and header. */
  static async create(path: string, header: LogHeader): Promise<LogFileWriter> {
    const fh = await open(path, 'w', LOG_FILE_MODE);
    try {
      // An existing file keeps its old mode on open; the log must not stay readable by others.
      await fh.chmod(LOG_FILE_MODE);
      const w = new LogFileWriter(fh);
      await w.write(preamble());
      await w.write(encodeFrame(FrameKind.HEADER, encodeHeader(header)));
      return w;
    } catch (e) {
      await fh.close();
      throw e;
    }
  }

  get bytesWritten(): number {
    return this.bytes;
  }

  private async write(b: Uint8Array): Promise<void> {
    let off = 0;
    while (off < b.byteLength) {
      const { bytesWritten } = await this.fh.write(b, off, b.byteLength - off);
      off += bytesWritten;
    }
    this.bytes += b.byteLength;
  }

  /** Stores the ring's bytes until it is closed and empty. */
  async drain(ring: ByteRing): Promise<void> {
    for (;;) {
      const b = ring.take();
      if (b !== null) {
        await this.write(b);
        continue;
      }
      if (ring.closed()) {
        const last = ring.take();
        if (last !== null) await this.write(last);
        return;
      }
      await ring.waitReadable(1000);
    }
  }

  /** Makes the log durable and closes it. */
  async close(): Promise<void> {
    try {
      await this.fh.sync();
    } finally {
      await this.fh.close();
    }
  }
}

export interface ScannedLog {
  header: LogHeader;
  trailer: Trailer | null;
  end: ScanEnd;
  fileBytes: number;
}

/** Reads a log through the scanner; `onFrame` sees RECORDS frames. Throws LogError. */
async function readLog(
  path: string,
  onRecords: ((body: Uint8Array) => Promise<void>) | null,
): Promise<ScannedLog> {
  let fh: FileHandle;
  try {
    fh = await open(path, 'r');
  } catch (e) {
    throw new LogError('refused', `cannot open the log: ${(e as Error).message}`, 0);
  }
  const scanner = new LogScanner();
  let header: LogHeader | null = null;
  let trailer: Trailer | null = null;
  let fileBytes = 0;
  try {
    const buf = Buffer.allocUnsafe(READ_CHUNK_BYTES);
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, buf.byteLength, null);
      if (bytesRead === 0) break;
      fileBytes += bytesRead;
      for (const f of scanner.push(buf.subarray(0, bytesRead))) {
        if (f.type === 'header') header = f.header;
        else if (f.type === 'trailer') trailer = f.trailer;
        else if (onRecords !== null) {
          const prefix = recordsPrefix(f.firstSeq, f.count);
          const body = new Uint8Array(prefix.byteLength + f.records.byteLength);
          body.set(prefix, 0);
          body.set(f.records, prefix.byteLength);
          await onRecords(body);
        }
      }
    }
  } finally {
    await fh.close();
  }
  const end = scanner.end();
  if (header === null) throw new LogError('corrupt', 'the log has no header', 0);
  return { header, trailer, end, fileBytes };
}

/** Checks a whole log: every checksum and the structure. Throws LogError. */
export function scanLogFile(path: string): Promise<ScannedLog> {
  return readLog(path, null);
}

/**
 * Streams a log's RECORDS frame bodies into a replay ring (each as a u32 length
 * and the body), then closes the ring. Stops early, without error, once
 * `cancelled()` holds (the replayer stopped).
 */
export async function feedLogFile(path: string, ring: ByteRing, cancelled: () => boolean): Promise<void> {
  const len = new Uint8Array(4);
  try {
    await readLog(path, async (body) => {
      if (cancelled()) return;
      new DataView(len.buffer).setUint32(0, body.byteLength, true);
      await writeOrCancel(ring, len, cancelled);
      await writeOrCancel(ring, body, cancelled);
    });
  } finally {
    ring.close();
  }
}

async function writeOrCancel(ring: ByteRing, b: Uint8Array, cancelled: () => boolean): Promise<void> {
  let off = 0;
  while (off < b.byteLength) {
    if (cancelled()) return;
    off += ring.tryWrite(b.subarray(off));
    if (off < b.byteLength) await ring.waitWritable(100);
  }
}
