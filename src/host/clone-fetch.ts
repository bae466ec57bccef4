/**
 * The backup host's side of a live clone's transfer: asks the primary's host
 * (POST /v1/vms/NAME/clone, with the cluster's token) for a snapshot of the
 * running primary, and hands back the stream and the log position it
 * matches.
 *
 * Invariants: every failure is a value with a message (the daemon tries the
 * backup again later); the answer is a stream, never held whole in memory
 * here; a request that gets no answer within its time limit is abandoned.
 */
import http from 'node:http';
import type { StreamPosition } from '../ft/channel.js';
import { CLONE_START_HEADER } from '../api/server.js';
import type { CloneRequest } from '../api/backend.js';

export type CloneFetch =
  { ok: true; start: StreamPosition; body: AsyncIterable<Uint8Array> } | { ok: false; message: string };

/** A POST with a JSON body whose 200 answer is streamed back; any other answer is a message. */
export function postForStream(
  api: string,
  token: string,
  pathname: string,
  body: unknown,
  timeoutMs: number,
): Promise<{ ok: true; res: http.IncomingMessage } | { ok: false; message: string }> {
  const m = /^(.*):(\d+)$/.exec(api);
  if (m === null)
    return Promise.resolve({ ok: false, message: `API address ${JSON.stringify(api)} is not HOST:PORT` });
  const payload = Buffer.from(JSON.stringify(body ?? {}));
  return new Promise((resolve) => {
    const r = http.request(
      {
        host: m[1]!.replace(/^\[|\]$/g, ''),
        port: Number(m[2]),
        method: 'POST',
        path: pathname,
        headers: {
          authorization: `Bearer ${token}`,
          'content-type': 'application/json',
          'content-length': payload.byteLength,
          connection: 'close',
        },
        timeout: timeoutMs,
      },
      (res) => {
        if (res.statusCode === 200) {
          resolve({ ok: true, res });
          return;
        }
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => {
          if (text.length < 2000) text += c;
        });
        res.on('end', () => {
          let message = text.slice(0, 500);
          try {
            message = (JSON.parse(text) as { error: { message: string } }).error.message;
          } catch {
            // Not the API's error body: keep the text.
          }
          resolve({ ok: false, message: `${api} answered ${res.statusCode}: ${message}` });
        });
      },
    );
    r.on('timeout', () => r.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    r.on('error', (e) => resolve({ ok: false, message: `${api}: ${e.message}` }));
    r.end(payload);
  });
}

export async function fetchClone(
  api: string,
  token: string,
  vm: string,
  req: CloneRequest,
  timeoutMs: number,
): Promise<CloneFetch> {
  const r = await postForStream(api, token, `/v1/vms/${encodeURIComponent(vm)}/clone`, req, timeoutMs);
  if (!r.ok) return r;
  const header = String(r.res.headers[CLONE_START_HEADER] ?? '');
  const sm = /^(\d+),(\d+)$/.exec(header);
  if (sm === null) {
    r.res.destroy();
    return {
      ok: false,
      message: `the primary's host sent no valid ${CLONE_START_HEADER} (${JSON.stringify(header)})`,
    };
  }
  return { ok: true, start: { offset: Number(sm[1]), events: Number(sm[2]) }, body: r.res };
}
