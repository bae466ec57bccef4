/**
 * The web console in a real browser (headless Chromium through
 * playwright-core) against a real local cluster of three host processes:
 *
 * 1. the console of h3 (the host that is not killed), signed in by the URL
 *    fragment `#token=…`, shows the empty cluster;
 * 2. a KV VM is created from the page (the Create VM dialog, the module
 *    uploaded through the file input) on h1, without FT, and runs;
 * 3. ticking Fault Tolerance walks the progress indicator to "protected";
 * 4. a few hundred SETs give the charts data;
 * 5. "Simulate host failure" of h1 (the primary's host) from the cluster
 *    view: the VM page's timeline shows the go-live on the backup's host,
 *    and the VM is protected again on the two hosts left;
 * 6. the API agrees (running, protected, primary not h1) and every key
 *    written before the kill reads back through the service address;
 * 7. at phone width (390 px) the VM page has no horizontal scroll.
 *
 * Screenshots go to test-artifacts/console/ (LOCKSTEP_ARTIFACTS_DIR
 * overrides; the NN-*.png and failure.png of an earlier run there are
 * removed first); on failure also failure.png, the page's console errors and
 * the hosts' log tails. Chromium is /usr/bin/chromium, which `npm test`'s setup
 * installs; without it this test fails (it never skips).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import path from 'node:path';
import { Redis } from 'ioredis';
import { chromium, type Browser, type Locator, type Page } from 'playwright-core';
import type { VmStatus } from '../../src/api/backend.js';
import { KV, serviceIp, startCluster, type LocalCluster } from './cluster-harness.js';
import { readKeys } from './load-client.js';
import { repoPath } from './harness.js';

const CHROMIUM = '/usr/bin/chromium';
const ARTIFACTS = process.env['LOCKSTEP_ARTIFACTS_DIR'] ?? repoPath('test-artifacts', 'console');
const PORT = 6379;
const KEYS = 300;
/** Bounds of the waits (not expectations of speed: the test only fails when one runs out). */
const RUNNING_WAIT_MS = 30_000;
const PROTECTED_WAIT_MS = 60_000;
const FAILOVER_WAIT_MS = 60_000;

/** Polls `f` (on the page) every 100 ms until it returns a value, or fails after timeoutMs. */
async function poll<T>(what: string, f: () => Promise<T | undefined>, timeoutMs: number): Promise<T> {
  const deadline = performance.now() + timeoutMs;
  let last: unknown = null;
  for (;;) {
    try {
      const v = await f();
      if (v !== undefined) return v;
    } catch (e) {
      last = e;
    }
    if (performance.now() > deadline)
      throw new Error(
        `timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${String(last)}` : ''}`,
      );
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** The text of a Summary fact on the VM page ("Primary", "State", …). */
function fact(page: Page, label: string): Locator {
  return page.locator(`dl.facts dt:text-is("${label}") + dd`);
}

async function text(l: Locator): Promise<string> {
  return ((await l.textContent({ timeout: 2_000 })) ?? '').trim();
}

/**
 * Waits until the FT progress indicator reads exactly `want` while `also`
 * holds, recording each distinct text it showed on the way.
 */
async function waitFtProgress(
  page: Page,
  want: string,
  seen: string[],
  timeoutMs: number,
  also: () => Promise<boolean> = async () => true,
): Promise<void> {
  const progress = page.getByTestId('ft-progress');
  await poll(
    `the FT progress to read "${want}" (seen: ${seen.join(' → ')})`,
    async () => {
      const t = await text(progress);
      if (seen[seen.length - 1] !== t) seen.push(t);
      return t === want && (await also()) ? true : undefined;
    },
    timeoutMs,
  );
}

/** A poll step: true once the logging and throughput charts both draw data. */
function chartsDrawn(page: Page): () => Promise<true | undefined> {
  return async () => {
    const empty = await page
      .locator('[data-testid=chart-log], [data-testid=chart-throughput]')
      .locator('.chart-empty')
      .count();
    return empty === 0 ? true : undefined;
  };
}

async function apiVm(api: string, token: string, name: string): Promise<VmStatus> {
  const r = await fetch(`http://${api}/v1/vms/${name}`, { headers: { authorization: `Bearer ${token}` } });
  if (!r.ok) throw new Error(`GET /v1/vms/${name} from ${api}: ${r.status} ${await r.text()}`);
  return (await r.json()) as VmStatus;
}

test(
  'console: create a VM from the page, turn FT on, kill its host, watch the failover and re-protection',
  { timeout: 240_000 },
  async (t) => {
    assert.ok(
      existsSync(CHROMIUM),
      `${CHROMIUM} is missing: run \`npm test\` (its setup installs the Debian package chromium), or apt-get install -y chromium`,
    );
    assert.ok(
      existsSync(repoPath('console', 'dist', 'index.html')),
      'the console is not built: run `npm test` (or `npm run build`), which builds console/dist',
    );
    mkdirSync(ARTIFACTS, { recursive: true });
    for (const f of readdirSync(ARTIFACTS))
      if (/^(\d\d-.*|failure)\.png$/.test(f)) rmSync(path.join(ARTIFACTS, f), { force: true });
    const shots: string[] = [];
    let shotNo = 0;
    /** A screenshot of the whole page (or of the viewport only, or of one element), numbered in order. */
    const shot = async (
      target: Page | Locator,
      name: string,
      o: { viewportOnly?: boolean; style?: string } = {},
    ): Promise<void> => {
      const file = path.join(ARTIFACTS, `${String(++shotNo).padStart(2, '0')}-${name}.png`);
      const style = o.style !== undefined ? { style: o.style } : {};
      if ('goto' in target)
        await target.screenshot({ path: file, fullPage: o.viewportOnly !== true, ...style });
      else await target.screenshot({ path: file, ...style });
      shots.push(file);
    };

    let cluster: LocalCluster | null = null;
    let browser: Browser | null = null;
    let page: Page | null = null;
    const pageErrors: string[] = [];
    try {
      cluster = await startCluster({ hosts: 3, profile: 'default', prefix: 'console' });
      const c = cluster;
      const h3 = c.hosts[2]!;
      const ip = serviceIp(1);
      const tok = await c.cli(['cluster', 'token']);
      assert.equal(tok.code, 0, tok.stderr);
      const token = tok.stdout.trim().split('\n').pop()!.trim();
      assert.ok(token.length > 0, 'lockstep cluster token printed nothing');
      mkdirSync(path.join(c.dir, 'images'), { recursive: true });
      const disk = mkdtempSync(path.join(c.dir, 'images', 'kv-'));
      const consoleUrl = `http://${h3.api}/`;
      t.diagnostic(
        `setup: hosts ${c.hosts.map((h) => `${h.name} (pid ${h.pid}, api ${h.api})`).join(', ')}; ` +
          `cluster dir ${c.dir} (${c.coordinator}), default profile; KV at ${ip}:${PORT}, disk ${disk}; ` +
          `console ${consoleUrl}#token=… (token: lockstep cluster token); screenshots in ${ARTIFACTS}`,
      );

      browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox'] });
      const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
      const p = await context.newPage();
      page = p;
      p.on('console', (m) => {
        if (m.type() === 'error') pageErrors.push(`console: ${m.text()}`);
      });
      p.on('pageerror', (e) => pageErrors.push(`page error: ${e.message}`));

      // 1-2. Signed in by the fragment; the token leaves the URL; the empty cluster.
      await p.goto(`${consoleUrl}#token=${token}`);
      await p.getByRole('heading', { name: 'No VMs yet' }).waitFor({ timeout: 15_000 });
      assert.doesNotMatch(p.url(), /token=/, 'the token stays in the URL');
      await poll(
        'three hosts up in the cluster view',
        async () => ((await p.locator('.host-card.host-up').count()) === 3 ? true : undefined),
        15_000,
      );
      await p.getByTestId('live').filter({ hasText: 'live' }).waitFor({ timeout: 15_000 });
      await shot(p, 'empty-cluster');

      // 3. The Create VM dialog: upload, name, listen, disk, host h1, FT unticked.
      await p.locator('header').getByRole('button', { name: 'Create VM' }).click();
      const dialog = p.getByRole('dialog', { name: 'Create VM' });
      await dialog.getByLabel('Name', { exact: true }).fill('kv');
      await dialog.getByLabel('Module file').setInputFiles(KV);
      await dialog.getByLabel('Listen address').fill(`${ip}:${PORT}`);
      await dialog.getByLabel('Disk folder').fill(disk);
      await dialog.locator('select').selectOption('h1');
      const ftAtCreation = dialog.getByRole('checkbox');
      await ftAtCreation.uncheck();
      assert.equal(await ftAtCreation.isChecked(), false);
      await shot(p, 'create-vm-dialog');
      await dialog.getByRole('button', { name: 'Create VM' }).click();
      await p.waitForURL(/#\/vm\/kv$/, { timeout: 30_000 });
      await dialog.waitFor({ state: 'detached', timeout: 5_000 });
      await poll(
        'kv running on h1 (VM page)',
        async () =>
          (await text(fact(p, 'State'))) === 'running' && (await text(fact(p, 'Primary'))) === 'h1'
            ? true
            : undefined,
        RUNNING_WAIT_MS,
      );
      assert.equal(await text(p.getByTestId('ft-progress')), 'off');
      await shot(p, 'vm-running');

      // 4. Fault Tolerance on: off → cloning → catching up → protected.
      const ftBox = p.getByLabel('Fault Tolerance', { exact: true });
      await ftBox.check();
      const seenOn: string[] = [];
      await waitFtProgress(p, 'protected', seenOn, PROTECTED_WAIT_MS);
      const firstBackup = await text(fact(p, 'Backup'));
      t.diagnostic(`FT on: progress read ${seenOn.join(' → ')}; backup on ${firstBackup}`);
      assert.match(firstBackup, /^h[23]$/);
      await shot(p, 'vm-protected');

      // 5. Load: KEYS acknowledged SETs, then the charts have data.
      const written = new Map<string, string>();
      const redis = new Redis({ host: ip, port: PORT, maxRetriesPerRequest: 0, retryStrategy: () => null });
      redis.on('error', () => {});
      try {
        for (let i = 0; i < KEYS; i++) {
          const key = `console:${i}`;
          const value = `v${i}-${'x'.repeat(i % 64)}`;
          assert.equal(await redis.set(key, value), 'OK');
          written.set(key, value);
        }
      } finally {
        redis.disconnect();
      }
      for (const id of ['chart-lag', 'chart-log', 'chart-throughput'])
        await p.getByTestId(id).locator('canvas').first().waitFor({ timeout: 10_000 });
      // The lag chart draws from the first sample; the rates need two samples of the primary's
      // counters, which reach a host that is not the primary with the claim renewals.
      await poll('the logging and throughput charts to have data', chartsDrawn(p), 20_000);
      t.diagnostic(`${KEYS} SETs acknowledged; the charts have data`);
      await shot(p, 'vm-charts');
      const generationBefore = Number(await text(fact(p, 'Generation')));

      // 6. Simulate the failure of h1 from the cluster view.
      await p.getByRole('link', { name: 'Cluster', exact: true }).click();
      const h1Card = p.getByTestId('host-h1');
      await h1Card.getByRole('button', { name: 'Simulate host failure' }).click();
      const confirm = p.getByRole('dialog', { name: 'Simulate failure of h1' });
      await confirm.waitFor();
      await shot(p, 'kill-confirm');
      await confirm.getByRole('button', { name: 'Kill h1' }).click();
      await confirm.waitFor({ state: 'detached', timeout: 10_000 });
      const killed = await c.hosts[0]!.exited;
      assert.equal(killed.signal, 'SIGKILL');
      await shot(p, 'h1-killed');

      // 7. The VM page: the go-live on the backup's host, then protected again on h2 and h3.
      await p.getByTestId('vm-row-kv').getByRole('link', { name: 'kv', exact: true }).click();
      await p.waitForURL(/#\/vm\/kv$/);
      const timeline = p.getByTestId('timeline');
      // Relative, so that it also serves as the `has` of the group below.
      const goLiveRow = p
        .locator('.event-row[data-kind="go-live"]')
        .filter({ hasText: /live at generation \d+ on h[23]\b/ });
      const goLive = timeline.locator(goLiveRow);
      await goLive.first().waitFor({ timeout: FAILOVER_WAIT_MS });
      const goLiveText = await text(goLive.first().locator('.event-message'));
      const m = /live at generation (\d+) on (h\d+)/.exec(goLiveText);
      assert.ok(m, goLiveText);
      assert.ok(Number(m[1]) > generationBefore, `${goLiveText} (generation before: ${generationBefore})`);
      assert.equal(m[2], firstBackup, `the backup (${firstBackup}) goes live: ${goLiveText}`);
      await poll(
        'the VM page to show a primary other than h1',
        async () => (/^h[23]$/.test(await text(fact(p, 'Primary'))) ? true : undefined),
        FAILOVER_WAIT_MS,
      );
      const seenAfter: string[] = [];
      await waitFtProgress(p, 'protected', seenAfter, PROTECTED_WAIT_MS, async () => {
        const [primary, backup] = [await text(fact(p, 'Primary')), await text(fact(p, 'Backup'))];
        return /^h[23]$/.test(primary) && /^h[23]$/.test(backup) && primary !== backup;
      });
      t.diagnostic(
        `failover: "${goLiveText}"; then the progress read ${seenAfter.join(' → ')}; ` +
          `primary ${await text(fact(p, 'Primary'))}, backup ${await text(fact(p, 'Backup'))}`,
      );
      const group = timeline.locator('.event-group').filter({ has: goLiveRow }).first();
      const offsets = await group.locator('.event-offset').allTextContents();
      assert.ok(offsets.length > 0, 'the failover group shows its steps with +N ms offsets');
      for (const o of offsets) assert.match(o, /^\+\d+ ms$/);
      // The episode starts with the kill from the page and reads as one story.
      assert.match(await text(group.locator('.event-group-title')), /simulated failure of h1/);
      assert.equal(await group.locator('.event-row[data-kind="host-killed"]').count(), 1);
      await shot(p, 'vm-reprotected');
      // The sticky header and the toasts would cover part of the group in its own screenshot.
      await shot(group, 'failover-timeline', {
        style: '.topbar, .toasts { visibility: hidden !important; }',
      });

      // 8. The API agrees, and every acknowledged write is still there.
      const status = await apiVm(h3.api, token, 'kv');
      t.diagnostic(`GET /v1/vms/kv: ${JSON.stringify(status)}`);
      assert.equal(status.state, 'running');
      assert.equal(status.protection, 'protected');
      assert.ok(status.primary !== null && status.primary !== 'h1', `primary ${status.primary}`);
      assert.ok(status.backup !== null && status.backup !== 'h1', `backup ${status.backup}`);
      const read = await readKeys(ip, PORT, [...written.keys()], 20_000);
      const lost = [...written].filter(([k, v]) => read.get(k) !== v).map(([k]) => k);
      assert.deepEqual(lost, [], `acknowledged writes lost after the failover: ${lost.length}`);

      // The whole cluster's timeline too, with the host's failure.
      await p.getByRole('link', { name: 'Events', exact: true }).click();
      await p
        .getByTestId('timeline')
        .locator('.event-row[data-kind="host-killed"]')
        .first()
        .waitFor({ timeout: 10_000 });
      await shot(p, 'events');

      // 9. Phone width: the VM page fits without horizontal scroll.
      await p.setViewportSize({ width: 390, height: 844 });
      await p.evaluate("window.location.hash = '#/vm/kv'");
      await p.getByTestId('ft-progress').waitFor();
      // The page polls afresh after navigation: wait for its charts to draw again (and resize).
      await poll('the charts to have data again at phone width', chartsDrawn(p), 20_000);
      await p.waitForTimeout(500);
      const scrollWidth = (await p.evaluate('document.documentElement.scrollWidth')) as number;
      await shot(p, 'vm-phone', { viewportOnly: true });
      await shot(p, 'vm-phone-full');
      assert.ok(scrollWidth <= 391, `the VM page is ${scrollWidth} px wide at a 390 px viewport`);
      if (pageErrors.length > 0)
        t.diagnostic(`page console errors (not failures):\n${pageErrors.join('\n')}`);
    } catch (e) {
      if (page) {
        const file = path.join(ARTIFACTS, 'failure.png');
        await page.screenshot({ path: file, fullPage: true }).catch(() => {});
        shots.push(file);
        t.diagnostic(`page URL at failure: ${page.url().replace(/token=[^&]*/, 'token=…')}`);
      }
      t.diagnostic(`page console errors:\n${pageErrors.join('\n') || '(none)'}`);
      for (const h of cluster?.hosts ?? [])
        t.diagnostic(`${h.name} log tail:\n${h.log().trimEnd().split('\n').slice(-40).join('\n')}`);
      throw e;
    } finally {
      t.diagnostic(`screenshots:\n${shots.join('\n')}`);
      await browser?.close().catch(() => {});
      await cluster?.close();
    }
  },
);

test(
  'console: with one healthy host the Fault Tolerance checkbox says why it cannot protect',
  { timeout: 120_000 },
  async (t) => {
    assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing: run \`npm test\`, whose setup installs it`);
    mkdirSync(ARTIFACTS, { recursive: true });
    let cluster: LocalCluster | null = null;
    let browser: Browser | null = null;
    const ip = serviceIp(61);
    try {
      cluster = await startCluster({ hosts: 1, prefix: 'console-one' });
      t.diagnostic(`setup: one host (${cluster.hosts[0]!.api}), cluster ${cluster.dir}, VMs at ${ip}`);
      await cluster.createKv({ name: 'solo', ip });
      const token = (await cluster.cli(['cluster', 'token'])).stdout.trim();
      browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox'] });
      const p = await browser.newPage({ viewport: { width: 1280, height: 800 } });
      await p.goto(`http://${cluster.hosts[0]!.api}/#/vm/solo?token=${token}`);
      const box = p.getByLabel('Fault Tolerance');
      await poll(
        'the checkbox to be disabled',
        async () => ((await box.isDisabled()) ? true : undefined),
        30_000,
      );
      assert.equal(await box.isChecked(), false);
      await p
        .getByText(/Needs a second healthy host: only h1 is up/)
        .first()
        .waitFor({ timeout: 10_000 });
      const file = path.join(ARTIFACTS, 'one-host-ft-disabled.png');
      await p.screenshot({ path: file, fullPage: true });
      t.diagnostic(`screenshot: ${file}`);
      // An FT VM on this cluster says it is unprotected, and why, instead of failing silently.
      await cluster.cli(['vm', 'ft', 'solo', 'on', '--no-wait']);
      const progress = p.getByTestId('ft-progress');
      await poll(
        'the progress to say unprotected with the reason',
        async () => (/^unprotected: .*(no other host|backup)/.test(await text(progress)) ? true : undefined),
        30_000,
      );
      t.diagnostic(`with FT on: "${await text(progress)}"`);
    } finally {
      await browser?.close().catch(() => undefined);
      await cluster?.close();
    }
  },
);
