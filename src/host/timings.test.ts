import { test } from 'node:test';
import assert from 'node:assert/strict';
import { HOST_PROFILES, applyTimingOverrides, checkTimings } from './timings.js';

test('both profiles keep the safety rules', () => {
  assert.equal(checkTimings(HOST_PROFILES.default), null);
  assert.equal(checkTimings(HOST_PROFILES.fast), null);
  // The defaults promise a 2.5 s failure detection (the README and docs/CLUSTER.md say so).
  assert.equal(HOST_PROFILES.default.membership.failAfterMs, 2500);
});

test('--timing overrides change one setting and leave the profile itself alone', () => {
  const t = applyTimingOverrides(HOST_PROFILES.default, ['failAfterMs=4000', 'claimTtlMs=8000']);
  assert.ok(typeof t !== 'string', String(t));
  assert.equal(t.membership.failAfterMs, 4000);
  assert.equal(t.claimTtlMs, 8000);
  assert.equal(t.claimRenewMs, HOST_PROFILES.default.claimRenewMs);
  assert.equal(HOST_PROFILES.default.membership.failAfterMs, 2500);
});

test('--timing refuses unknown keys, bad values and unsafe combinations, naming them', () => {
  const bad = (o: string[]): string => {
    const r = applyTimingOverrides(HOST_PROFILES.default, o);
    assert.equal(typeof r, 'string', `${o.join(' ')} was accepted`);
    return r as string;
  };
  assert.match(bad(['nope=5']), /unknown/);
  assert.match(bad(['failAfterMs']), /KEY=MS/);
  assert.match(bad(['failAfterMs=0']), /outside/);
  assert.match(bad(['failAfterMs=900']), /failAfterMs/); // below suspectAfterMs
  // A renewal that could still be running when the holder must already hold its outputs.
  assert.match(bad(['claimTtlMs=3000']), /claimRenewMs \+ coordOpTimeoutMs/);
});
