/**
 * Copies into and out of a power-of-two byte ring at a running position,
 * wrapping at the end. Shared by the per-connection Channels and the log's
 * ByteRing; the callers own the head/tail bookkeeping and its memory ordering.
 */

/** Copies `src` into `ring` starting at running position `pos` (mod the ring's size). */
export function copyIntoRing(ring: Uint8Array, pos: number, src: Uint8Array): void {
  const cap = ring.byteLength;
  const at = pos & (cap - 1);
  const first = Math.min(src.byteLength, cap - at);
  ring.set(src.subarray(0, first), at);
  if (first < src.byteLength) ring.set(src.subarray(first), 0);
}

/** Fills `dst` from `ring` starting at running position `pos` (mod the ring's size). */
export function copyFromRing(ring: Uint8Array, pos: number, dst: Uint8Array): void {
  const cap = ring.byteLength;
  const at = pos & (cap - 1);
  const first = Math.min(dst.byteLength, cap - at);
  dst.set(ring.subarray(at, at + first), 0);
  if (first < dst.byteLength) dst.set(ring.subarray(0, dst.byteLength - first), first);
}
