/**
 * Log files: the main thread's side of recording and replaying.
 *
 * - LogFileWriter creates a log (mode 0600: it carries the guest's random
 *   bytes) and writes the preamble and header; the vCPU appends whole frames
 *   to the same descriptor (its frame buffer is the bounded buffer: a slow
 *   disk slows the guest, it never drops records).
 * - scanLogFile checks a whole log before replay (every CRC, the structure,
 *   truncation), and feedLogFile streams its RECORDS frames into a replay ring.
 *
 * Only this module touches log files.
 */
import { closeSync, fchmodSync, fstatSync, fsyncSync, openSync, writeSync, writevSync } from 'node:fs';
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
  private constructor(readonly fd: number) {}

  /**
   * Creates (or replaces) the log and writes its preamble and header. The vCPU
   * then appends frames to `fd` itself: the frames are complete when written,
   * so the file is always a valid prefix, and the main thread (which serves
   * the guest's sockets) does no log I/O.
   */
  static create(path: string, header: LogHeader): LogFileWriter {
    const fd = openSync(path, 'w', LOG_FILE_MODE);
    try {
      // An existing file keeps its old mode on open; the log must not stay readable by others.
      fchmodSync(fd, LOG_FILE_MODE);
      writeAllSync(fd, preamble());
      writeAllSync(fd, encodeFrame(FrameKind.HEADER, encodeHeader(header)));
      return new LogFileWriter(fd);
    } catch (e) {
      closeSync(fd);
      throw e;
    }
  }

  get bytesWritten(): number {
    return fstatSync(this.fd).size;
  }

  /** Makes the log durable and closes it. */
  close(): void {
    try {
      fsyncSync(this.fd);
    } finally {
      closeSync(this.fd);
    }
  }
}

/** Writes the pieces in order with one writev when it takes them all, as it does for regular files. */
export function writevAllSync(fd: number, pieces: readonly Uint8Array[]): void {
  let total = 0;
  for (const p of pieces) total += p.byteLength;
  let done = writevSync(fd, pieces as Uint8Array[]);
  if (done === total) return;
  // A short write: finish piece by piece from where it stopped.
  for (const p of pieces) {
    if (done >= p.byteLength) {
      done -= p.byteLength;
      continue;
    }
    writeAllSync(fd, done > 0 ? p.subarray(done) : p);
    done = 0;
  }
}

/** Writes every byte (a short write to a regular file is retried, not lost). */
export function writeAllSync(fd: number, b: Uint8Array): void {
  let off = 0;
  while (off < b.byteLength) off += writeSync(fd, b, off, b.byteLength - off);
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
  progress: { bytesRead: number } = { bytesRead: 0 },
): Promise<ScannedLog> {
  let fh: FileHandle;
  try {
    fh = await open(path, 'r');
  } catch (e) {
    throw new LogError('io', `cannot open the log: ${(e as Error).message}`, 0);
  }
  const scanner = new LogScanner();
  let header: LogHeader | null = null;
  let trailer: Trailer | null = null;
  let fileBytes = 0;
  try {
    const buf = Buffer.allocUnsafe(READ_CHUNK_BYTES);
    for (;;) {
      let bytesRead: number;
      try {
        ({ bytesRead } = await fh.read(buf, 0, buf.byteLength, null));
      } catch (e) {
        throw new LogError('io', `cannot read the log: ${(e as Error).message}`, fileBytes);
      }
      if (bytesRead === 0) break;
      fileBytes += bytesRead;
      progress.bytesRead = fileBytes;
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
export async function feedLogFile(
  path: string,
  ring: ByteRing,
  cancelled: () => boolean,
  progress: { bytesRead: number } = { bytesRead: 0 },
): Promise<void> {
  const len = new Uint8Array(4);
  try {
    await readLog(
      path,
      async (body) => {
        if (cancelled()) return;
        new DataView(len.buffer).setUint32(0, body.byteLength, true);
        await writeOrCancel(ring, len, cancelled);
        await writeOrCancel(ring, body, cancelled);
      },
      progress,
    );
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
