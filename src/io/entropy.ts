/**
 * The real entropy source: the only place Lockstep draws host randomness for a
 * guest. The bytes it yields are secret; a recorded log carries them.
 */
import { randomFillSync } from 'node:crypto';

export interface Entropy {
  fill(dst: Uint8Array): void;
}

export const realEntropy: Entropy = {
  fill: (dst) => {
    // randomFillSync is limited to 2^31-1 bytes per call; guests ask for far less, but stay safe.
    const chunkBytesMax = 1 << 16;
    for (let off = 0; off < dst.byteLength; off += chunkBytesMax) {
      randomFillSync(dst.subarray(off, Math.min(dst.byteLength, off + chunkBytesMax)));
    }
  },
};
