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
import { MEMBERSHIP_PROFILES, type MembershipConfig } from '../cluster/membership.js';

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
  if (t.claimRenewMs + t.coordOpTimeoutMs >= t.claimTtlMs - t.claimHoldMarginMs)
    return 'claimRenewMs + coordOpTimeoutMs must be below claimTtlMs - claimHoldMarginMs';
  if (t.claimHoldMarginMs <= 0 || t.claimExpiryMarginMs <= 0) return 'claim margins must be positive';
  return null;
}
