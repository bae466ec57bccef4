/**
 * The host's timing settings, by profile.
 *
 * Role: every interval and timeout of a host in one place, with the reasons
 * for their values. `lockstep host start --profile fast` picks FAST.
 *
 * Invariants (checked by checkTimings, and relied on for safety):
 * - A claim holder holds its outputs `claimHoldMarginMs` before its TTL ends,
 *   and an observer waits `claimExpiryMarginMs` after it: the two margins
 *   absorb clock-rate differences and the time a renewal takes to land, so
 *   the holder has gone quiet before anyone may take over. Fencing then
 *   removes the holder for good, whatever its clock did.
 * - A renewal attempt ends (by the coordinator's op timeout) well before the
 *   holder would have to hold: claimRenewMs + coordOpTimeoutMs < TTL − margin.
 */
import { MEMBERSHIP_PROFILES, timingsProblem, type MembershipConfig } from '../cluster/membership.js';

export interface HostTimings {
  membership: MembershipConfig;
  /** How often the host re-reads the registry of hosts from the coordinator. */
  registryRefreshMs: number;
  /** How often the host reconciles every VM's desired state (also at once after a change it sees). */
  reconcileIntervalMs: number;
  /** How often a host renews its claim on each VM it runs. */
  claimRenewMs: number;
  /** How long a claim stays valid without renewal. */
  claimTtlMs: number;
  /** The holder holds outputs this long before the TTL runs out. */
  claimHoldMarginMs: number;
  /** Observers wait this long after the TTL before they count a claim as expired. */
  claimExpiryMarginMs: number;
  /** The time limit of one coordinator call. */
  coordOpTimeoutMs: number;
  /** How long fencing waits for a killed process to be gone. */
  fenceWaitMs: number;
}

export const HOST_PROFILES: Record<'default' | 'fast', HostTimings> = {
  // Failure detection 2.5 s (membership's DEFAULT); a takeover of an unprotected VM also waits
  // for its claim: 5 s TTL + 1 s margin after the last renewal the taker saw.
  default: {
    membership: MEMBERSHIP_PROFILES.default,
    registryRefreshMs: 1000,
    reconcileIntervalMs: 500,
    claimRenewMs: 1000,
    claimTtlMs: 5000,
    claimHoldMarginMs: 1000,
    claimExpiryMarginMs: 1000,
    coordOpTimeoutMs: 2000,
    fenceWaitMs: 5000,
  },
  // For benchmarks on a quiet machine: sub-second detection; flaps under heavy load.
  fast: {
    membership: MEMBERSHIP_PROFILES.fast,
    registryRefreshMs: 250,
    reconcileIntervalMs: 100,
    claimRenewMs: 200,
    claimTtlMs: 1200,
    claimHoldMarginMs: 300,
    claimExpiryMarginMs: 300,
    coordOpTimeoutMs: 500,
    fenceWaitMs: 3000,
  },
};

/** Returns a message naming the first broken rule, or null when the timings are consistent. */
export function checkTimings(t: HostTimings): string | null {
  const m = timingsProblem(t.membership);
  if (m !== null) return m;
  if (t.claimRenewMs + t.coordOpTimeoutMs >= t.claimTtlMs - t.claimHoldMarginMs)
    return 'claimRenewMs + coordOpTimeoutMs must be below claimTtlMs - claimHoldMarginMs';
  if (t.claimHoldMarginMs <= 0 || t.claimExpiryMarginMs <= 0) return 'claim margins must be positive';
  return null;
}

const MEMBERSHIP_KEYS = ['heartbeatIntervalMs', 'suspectAfterMs', 'failAfterMs'] as const;
const HOST_KEYS = [
  'registryRefreshMs',
  'reconcileIntervalMs',
  'claimRenewMs',
  'claimTtlMs',
  'claimHoldMarginMs',
  'claimExpiryMarginMs',
  'coordOpTimeoutMs',
  'fenceWaitMs',
] as const;
/** Every setting `--timing KEY=MS` may change. */
export const TIMING_KEYS: readonly string[] = [...MEMBERSHIP_KEYS, ...HOST_KEYS];
/** No timing may exceed this: a typo of a few zeros should not make a host wait for days. */
export const TIMING_MS_MAX = 600_000;

/**
 * Applies `KEY=MS` overrides to a profile. Returns the new timings, or a message naming the bad
 * override or the rule the result breaks.
 */
export function applyTimingOverrides(base: HostTimings, overrides: readonly string[]): HostTimings | string {
  const t: HostTimings = { ...base, membership: { ...base.membership } };
  for (const o of overrides) {
    const m = /^([A-Za-z]+)=(\d+)$/.exec(o);
    if (m === null) return `--timing ${JSON.stringify(o)}: expected KEY=MS`;
    const [, key, value] = m as unknown as [string, string, string];
    const ms = Number(value);
    if (!(ms >= 1 && ms <= TIMING_MS_MAX)) return `--timing ${key}: ${ms} is outside 1..${TIMING_MS_MAX} ms`;
    if ((MEMBERSHIP_KEYS as readonly string[]).includes(key))
      t.membership[key as (typeof MEMBERSHIP_KEYS)[number]] = ms;
    else if ((HOST_KEYS as readonly string[]).includes(key)) t[key as (typeof HOST_KEYS)[number]] = ms;
    else return `--timing ${key}: unknown; one of ${TIMING_KEYS.join(', ')}`;
  }
  return checkTimings(t) ?? t;
}
