/**
 * Control-flow signals thrown through the guest's stack by host functions.
 * They are not errors: the vCPU catches them around `_start` and turns them
 * into the VM's stop reason.
 */

/** The guest called proc_exit. */
export class ProcExit {
  constructor(readonly code: number) {}
}

/** The host asked the vCPU to stop (a signal, a stop command) at this host call. */
export class StopRequested {
  constructor(readonly reason: number) {}
}

/**
 * A snapshot was asked for while a call was blocked, before the call took any
 * effect: the call is abandoned (a logged call is not recorded), the stack is
 * unwound at its entry, and after the snapshot the call runs again from the
 * start.
 */
export class SnapshotHere {}

/** Stop reasons carried in the control block's STOP word. */
export const StopReason = { NONE: 0, SIGINT: 1, SIGTERM: 2, HOST: 3 } as const;
