/**
 * Opens a coordinator from its command-line form.
 *
 * Role: the one place that turns `--coordinator` / LOCKSTEP_COORDINATOR
 * strings into a backend:
 * - `file:DIR`: the shared-storage backend (file.ts); DIR is created if it
 *   does not exist; a relative DIR is taken from the current directory.
 * - `etcd:HOST:PORT[,HOST:PORT…]`: the etcd v3 backend (etcd.ts); HOST is a
 *   host name, an IPv4 address or a bracketed IPv6 address.
 *
 * Invariants: a string that is not one of these forms is 'invalid' with a
 * message naming what is wrong, before any I/O; an unreachable store is
 * 'unavailable' within the time limit. The returned coordinator's
 * `description` is the string it was opened from.
 */
import {
  COORD_OP_TIMEOUT_MS_DEFAULT,
  coordError,
  type CoordResult,
  type Coordinator,
} from './coordinator.js';
import { openEtcdCoordinator } from './etcd.js';
import { openFileCoordinator } from './file.js';

export interface OpenCoordinatorOptions {
  /** Time limit of every call, opening included; COORD_OP_TIMEOUT_MS_DEFAULT if absent. */
  opTimeoutMs?: number;
}

export type CoordinatorSpec = { kind: 'file'; dir: string } | { kind: 'etcd'; endpoints: string[] };

const FORMS = 'expected file:DIR or etcd:HOST:PORT[,HOST:PORT...]';
/** Host names: dot-separated labels of letters, digits and inner hyphens. */
const HOSTNAME_RE =
  /^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;
const IPV6_RE = /^\[[0-9A-Fa-f:.]{2,45}\]$/;

/** Parses one "HOST:PORT" of an etcd spec, or explains why it is not one. */
function parseEndpoint(text: string): CoordResult<string> {
  const bad = (why: string) => coordError('invalid', `etcd endpoint ${JSON.stringify(text)}: ${why}`);
  if (text === '') return bad('empty (stray comma?)');
  if (/^[a-z]+:\/\//i.test(text)) return bad('give HOST:PORT, without a scheme such as http://');
  const colon = text.lastIndexOf(':');
  if (colon <= 0) return bad('expected HOST:PORT');
  const host = text.slice(0, colon);
  const portText = text.slice(colon + 1);
  if (!/^[0-9]{1,5}$/.test(portText) || Number(portText) < 1 || Number(portText) > 65535) {
    return bad(`the port ${JSON.stringify(portText)} is not a number from 1 to 65535`);
  }
  if (!HOSTNAME_RE.test(host) && !IPV6_RE.test(host)) {
    return bad(`${JSON.stringify(host)} is not a host name, an IPv4 address or a [bracketed] IPv6 address`);
  }
  return { ok: true, value: `${host}:${Number(portText)}` };
}

/** Parses a coordinator string without touching the store. */
export function parseCoordinatorSpec(spec: unknown): CoordResult<CoordinatorSpec> {
  if (typeof spec !== 'string' || spec === '') return coordError('invalid', `no coordinator given: ${FORMS}`);
  if (spec.startsWith('file:')) {
    const dir = spec.slice('file:'.length);
    if (dir === '')
      return coordError('invalid', `coordinator ${JSON.stringify(spec)}: the directory is missing`);
    if (dir.includes('\0'))
      return coordError('invalid', `coordinator ${JSON.stringify(spec)}: NUL in the directory`);
    return { ok: true, value: { kind: 'file', dir } };
  }
  if (spec.startsWith('etcd:')) {
    const endpoints: string[] = [];
    for (const part of spec.slice('etcd:'.length).split(',')) {
      const e = parseEndpoint(part);
      if (!e.ok) return coordError('invalid', `coordinator ${JSON.stringify(spec)}: ${e.error.message}`);
      if (!endpoints.includes(e.value)) endpoints.push(e.value);
    }
    return { ok: true, value: { kind: 'etcd', endpoints } };
  }
  const scheme = /^([A-Za-z][A-Za-z0-9+.-]*):/.exec(spec)?.[1];
  return coordError(
    'invalid',
    `coordinator ${JSON.stringify(spec)}: ${scheme ? `unknown kind "${scheme}:"` : 'no kind given'}; ${FORMS}`,
  );
}

/**
 * Opens the coordinator named by `spec`. The file backend creates its
 * directory if needed; the etcd backend checks that etcd answers.
 */
export async function openCoordinator(
  spec: string,
  opts: OpenCoordinatorOptions = {},
): Promise<CoordResult<Coordinator>> {
  const opTimeoutMs = opts.opTimeoutMs ?? COORD_OP_TIMEOUT_MS_DEFAULT;
  if (!Number.isSafeInteger(opTimeoutMs) || opTimeoutMs <= 0) {
    return coordError('invalid', `opTimeoutMs must be a positive integer, not ${String(opts.opTimeoutMs)}`);
  }
  const parsed = parseCoordinatorSpec(spec);
  if (!parsed.ok) return parsed;
  if (parsed.value.kind === 'file') {
    return openFileCoordinator(parsed.value.dir, { opTimeoutMs, description: spec });
  }
  return openEtcdCoordinator(parsed.value.endpoints, { opTimeoutMs, description: spec });
}
