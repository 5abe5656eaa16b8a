/**
 * The status page as a person sees it: a real server listening on loopback (real Redis, runner
 * records written through the real RunnerStore, a job fed through the real signed-webhook
 * ingress), opened in headless Chromium (Debian's, driven by playwright-core). Checks the visible
 * content, that the stylesheet passed the page's CSP, that a hostile job name stays text, and
 * that the screenshot is a real rendering (decoded PNG: size, not blank, styled header).
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { inflateSync } from "node:zlib";
import { after, before, test } from "node:test";
import type { FastifyInstance } from "fastify";
import type { Redis } from "ioredis";
import { pino } from "pino";
import { chromium, type BrowserContext } from "playwright-core";
import { Secret } from "../../src/config/secret.ts";
import { buildApp } from "../../src/http/app.ts";
import { Ingress } from "../../src/ingress/ingress.ts";
import { Metrics } from "../../src/metrics/metrics.ts";
import { DemandQueues, redisConnection } from "../../src/queue/demand-queue.ts";
import { ActivityLog } from "../../src/state/activity.ts";
import { DeliveryLog } from "../../src/state/deliveries.ts";
import { HostStore } from "../../src/state/hosts.ts";
import { RunnerStore } from "../../src/state/runners.ts";
import { collectStatus } from "../../src/state/status.ts";
import { testConfig, WEBHOOK_SECRET } from "../helpers/config.ts";
import { startRedis, type TestRedis } from "../helpers/redis.ts";
import { queuedPayload, signedHeaders } from "../helpers/webhooks.ts";

const CHROMIUM = process.env.JITRUNNER_TEST_CHROMIUM ?? "/usr/bin/chromium";
const ADMIN_TOKEN = "browser-admin-token-4f1c9a7e";
const HOSTILE = `<img src=x onerror="document.title='pwned'">build & test`;
const VIEWPORT = { width: 1280, height: 900 };

let redis: TestRedis;
let conn: Redis;
let app: FastifyInstance;
let queues: DemandQueues;
let baseUrl: string;
let context: BrowserContext;
let profile: string;

before(async () => {
  assert.ok(existsSync(CHROMIUM), `Chromium not found at ${CHROMIUM}: apt-get install chromium (or set JITRUNNER_TEST_CHROMIUM)`);
  redis = await startRedis();
  conn = redisConnection(redis.url);
  const config = testConfig({
    pools: [
      { name: "default", labels: ["self-hosted", "linux", "x64"], image: "jitrunner-runner:latest", isolation: "capabilities" },
      { name: "gpu", labels: ["self-hosted", "linux", "gpu"], image: "jitrunner-runner-cuda:12", isolation: "sysbox", scope: "organization" },
    ],
  });
  queues = new DemandQueues({ redisUrl: redis.url, prefix: redis.prefix, attempts: 3 }, conn);
  const runners = new RunnerStore(conn, redis.prefix);
  const hosts = new HostStore(conn, redis.prefix);
  const activity = new ActivityLog(conn, redis.prefix);
  const metrics = new Metrics({ processMetrics: false });
  const logger = pino({ level: "silent" });
  const ingress = new Ingress({ config, demand: queues, runners, deliveries: new DeliveryLog(conn, redis.prefix), metrics, logger, activity });
  app = await buildApp({
    logger,
    metrics,
    webhooks: { secret: config.secrets.webhookSecret, bodyLimit: config.server.bodyLimitBytes, ingress },
    readiness: async () => [],
    status: {
      snapshot: () => collectStatus({ pools: config.pools, runners, hosts, activity, pending: (p) => queues.pending(p) }),
      adminToken: new Secret(ADMIN_TOKEN),
    },
  });
  baseUrl = await app.listen({ host: "127.0.0.1", port: 0 });

  // Two worker hosts as their heartbeats show them: one up, one whose heartbeat expired (gone).
  await hosts.heartbeat({ id: "dockerhost-1", capacity: 4, used: 1, pools: ["default"] }, 600_000);
  await hosts.heartbeat({ id: "dockerhost-2", capacity: 2, used: 1, pools: ["gpu"] }, 1);
  // Two runners through the real store, as a worker writes them.
  const now = Date.now();
  await runners.put({ name: "jitrunner-default-1a2b3c4d5e", pool: "default", host: "dockerhost-1", state: "starting", installationId: 1, owner: "acme", repo: "app", demandId: "901-1", createdAt: now - 42_000 });
  await runners.update("jitrunner-default-1a2b3c4d5e", { containerId: "0123456789abcdef0123456789abcdef", runnerId: 77 });
  await runners.put({ name: "jitrunner-gpu-9f8e7d6c5b", pool: "gpu", host: "dockerhost-2", state: "starting", installationId: 1, owner: "acme", repo: "", demandId: "902-1", createdAt: now - 7 * 60_000 });
  await runners.mark("jitrunner-gpu-9f8e7d6c5b", "busy", 902);

  // A queued job through the real webhook route: one demand waiting, one entry in recent jobs.
  const payload = queuedPayload({ jobId: 903, labels: ["self-hosted", "x64"] });
  payload.workflow_job.name = HOSTILE;
  const body = JSON.stringify(payload);
  const res = await fetch(`${baseUrl}/webhooks/github`, { method: "POST", body, headers: signedHeaders("workflow_job", body, WEBHOOK_SECRET) });
  assert.equal(res.status, 202);
  await activity.launchFailure({ pool: "gpu", jobId: 904, owner: "acme", repo: "app" }, 2, Object.assign(new Error("pull access denied for jitrunner-runner-cuda"), { code: "E_DOCKER" }), false);

  profile = await mkdtemp(join(tmpdir(), "jitrunner-chromium-"));
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    // Network rule: every name resolves to nothing but loopback, and no proxy is used; the
    // requests the page makes are checked below as well.
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-proxy-server",
      "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    ],
    viewport: VIEWPORT,
    deviceScaleFactor: 1,
    extraHTTPHeaders: { authorization: `Bearer ${ADMIN_TOKEN}` },
  });
});

after(async () => {
  await context?.close();
  if (profile) await rm(profile, { recursive: true, force: true });
  await app?.close();
  await queues?.close();
  conn?.disconnect();
  await redis?.stop();
});

test("without the admin token the browser gets 401 and no page", async () => {
  const res = await fetch(`${baseUrl}/`);
  assert.equal(res.status, 401);
  assert.ok(!(await res.text()).includes("jitrunner-default"));
});

test("the status page shows pools, hosts, runners, queue depth, jobs and failures, styled, scripts impossible", async (t) => {
  const page = await context.newPage();
  const offLoopback: string[] = [];
  page.on("request", (req) => {
    const url = new URL(req.url());
    if (url.protocol !== "data:" && url.hostname !== "127.0.0.1") offLoopback.push(req.url());
  });
  t.after(() => assert.deepEqual(offLoopback, [], "the page asked for nothing but loopback"));
  const cspViolations: string[] = [];
  page.on("console", (msg) => {
    if (/Content Security Policy/i.test(msg.text())) cspViolations.push(msg.text());
  });
  const response = await page.goto(`${baseUrl}/`);
  assert.equal(response?.status(), 200);
  assert.equal(await page.title(), "jitrunner status", "the hostile job name did not run as script");

  assert.deepEqual(await page.locator("h2").allInnerTexts(), ["Pools", "Hosts", "Runners", "Recent jobs", "Recent launch failures"]);
  const card = async (id: string) => (await page.locator(`[data-card="${id}"] .n`).innerText()).trim();
  assert.equal(await card("runners"), "2");
  assert.equal(await card("busy"), "1");
  assert.equal(await card("pending"), "1");
  assert.equal(await card("hosts"), "2");

  const poolRow = page.locator("#pools tbody tr", { hasText: "jitrunner-runner-cuda:12" });
  assert.match(await poolRow.innerText(), /gpu\s+self-hosted\s*linux\s*gpu\s+jitrunner-runner-cuda:12\s+sysbox\s+organization\s+0\s+1 busy/);
  assert.match(await page.locator("#pools tbody tr", { hasText: "capabilities" }).innerText(), /default[\s\S]*repository\s+1\s+1 starting/);

  const busyRunner = page.locator('tr[data-runner="jitrunner-gpu-9f8e7d6c5b"]');
  assert.ok(await busyRunner.isVisible());
  assert.match(await busyRunner.innerText(), /gpu\s+dockerhost-2\s+busy\s+7m \d\ds\s+acme\s+902/);
  assert.match(await page.locator('tr[data-runner="jitrunner-default-1a2b3c4d5e"]').innerText(), /starting\s+(4\d|5\d|1m \d\d)s\s+acme\/app\s+0123456789ab/);
  assert.match(await page.locator("#hosts").innerText(), /dockerhost-1\s+up\s+1 \/ 4\s+\d+s ago\s+1 starting\s+default[\s\S]*dockerhost-2\s+gone\s+0 \/ 0\s+\d+s ago\s+1 busy\s+gpu/);
  assert.equal(await page.locator('tr[data-host="dockerhost-2"] .state-gone').evaluate((el) => getComputedStyle(el).color), "rgb(207, 34, 46)", "a gone host is shown red");

  const jobRow = page.locator("#jobs tbody tr", { hasText: "903" });
  assert.ok((await jobRow.innerText()).includes(HOSTILE), "the job name shows as text");
  assert.match(await jobRow.innerText(), /default\s+waiting for a runner/);
  assert.equal(await page.locator("img, script").count(), 0);
  assert.match(await page.locator("#failures").innerText(), /gpu\s+904\s+acme\/app\s+2\s+E_DOCKER\s+pull access denied/);

  // The stylesheet applied (its CSP hash matched): the header is dark, state badges coloured.
  assert.equal(await page.locator("header").evaluate((el) => getComputedStyle(el).backgroundColor), "rgb(36, 41, 47)");
  assert.equal(await page.locator(".state-busy").first().evaluate((el) => getComputedStyle(el).backgroundColor), "rgb(218, 251, 225)");
  assert.deepEqual(cspViolations, []);

  const shot = await page.screenshot({ fullPage: true });
  const path = join(process.env.JITRUNNER_SCREENSHOT_DIR ?? tmpdir(), "jitrunner-status-page.png");
  await writeFile(path, shot);
  t.diagnostic(`screenshot: ${path}`);

  const png = decodePng(shot);
  assert.equal(png.width, VIEWPORT.width);
  assert.ok(png.height >= VIEWPORT.height, `full page at least the viewport high (${png.height})`);
  const at = (x: number, y: number) => png.pixel(x, y).slice(0, 3);
  assert.deepEqual(at(5, 5), [36, 41, 47], "the header band is rendered");
  // Not blank: many colours, and a good share of the page is not the background.
  const colours = new Set<string>();
  let ink = 0;
  let total = 0;
  const background = at(png.width - 2, png.height - 2).join(",");
  for (let y = 0; y < png.height; y += 3) {
    for (let x = 0; x < png.width; x += 3) {
      const c = at(x, y).join(",");
      colours.add(c);
      total++;
      if (c !== background) ink++;
    }
  }
  assert.ok(colours.size > 50, `a rendered page has many colours (${colours.size})`);
  assert.ok(ink / total > 0.2, `content covers the page (${((100 * ink) / total).toFixed(1)}% not background)`);
  await page.close();
});

/** A minimal PNG decoder (8-bit RGB/RGBA, not interlaced: what Chromium writes). */
function decodePng(buf: Buffer): { width: number; height: number; pixel(x: number, y: number): number[] } {
  assert.deepEqual([...buf.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a], "PNG signature");
  let offset = 8;
  let width = 0;
  let height = 0;
  let channels = 0;
  const idat: Buffer[] = [];
  while (offset < buf.length) {
    const length = buf.readUInt32BE(offset);
    const type = buf.toString("latin1", offset + 4, offset + 8);
    const data = buf.subarray(offset + 8, offset + 8 + length);
    if (type === "IHDR") {
      width = data.readUInt32BE(0);
      height = data.readUInt32BE(4);
      assert.equal(data[8], 8, "bit depth 8");
      assert.equal(data[12], 0, "not interlaced");
      channels = data[9] === 6 ? 4 : data[9] === 2 ? 3 : 0;
      assert.ok(channels, `colour type ${data[9]}`);
    } else if (type === "IDAT") idat.push(data);
    else if (type === "IEND") break;
    offset += 12 + length;
  }
  const raw = inflateSync(Buffer.concat(idat));
  const stride = width * channels;
  const out = Buffer.alloc(stride * height);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)]!;
    const line = raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1));
    for (let i = 0; i < stride; i++) {
      const a = i >= channels ? out[y * stride + i - channels]! : 0;
      const b = y > 0 ? out[(y - 1) * stride + i]! : 0;
      const c = i >= channels && y > 0 ? out[(y - 1) * stride + i - channels]! : 0;
      const x = line[i]!;
      let v: number;
      if (filter === 0) v = x;
      else if (filter === 1) v = x + a;
      else if (filter === 2) v = x + b;
      else if (filter === 3) v = x + ((a + b) >> 1);
      else {
        const p = a + b - c;
        const pa = Math.abs(p - a);
        const pb = Math.abs(p - b);
        const pc = Math.abs(p - c);
        v = x + (pa <= pb && pa <= pc ? a : pb <= pc ? b : c);
      }
      out[y * stride + i] = v & 0xff;
    }
  }
  return { width, height, pixel: (x, y) => [...out.subarray(y * stride + x * channels, y * stride + (x + 1) * channels)] };
}
