/**
 * The whole path, for real: the fake GitHub sends signed `queued` webhooks to the real
 * `jitrunner all` process, which queues demand in a real Redis, registers JIT runners with the
 * fake's REST API and launches real Docker-in-Docker runner containers (network none) that take
 * their job over a bind-mounted unix socket, run a nested `docker run`, and exit.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { dirname } from "node:path";
import { after, before, test } from "node:test";
import Docker from "dockerode";
import { FakeGitHub } from "../fakes/github/index.ts";
import { WEBHOOK_SECRET } from "../helpers/config.ts";
import { freePort } from "../helpers/ports.ts";
import { runJitrunner, waitFor, type JitrunnerProcess } from "../helpers/process.ts";
import { startRedis, type TestRedis } from "../helpers/redis.ts";
import { writeOperatorConfig } from "../helpers/operator-config.ts";
import { assertNoSecrets } from "../helpers/secrets.ts";
import { removeContainersOf } from "../helpers/system.ts";

const IMAGE = process.env.JITRUNNER_TEST_RUNNER_IMAGE ?? "jitrunner-test-runner:latest";
const JOBS = Number(process.env.JITRUNNER_E2E_JOBS ?? 10);
const docker = new Docker();
const hostId = `e2e-${randomBytes(3).toString("hex")}`;
const ours = { label: [`dev.jitrunner.managed-by=jitrunner`, `dev.jitrunner.host=${hostId}`] };

let redis: TestRedis;
let fake: FakeGitHub;
let jr: JitrunnerProcess;
let url: string;
/** Volumes our runner containers had, seen while they lived: each must be gone at the end. */
const ourVolumes = new Set<string>();
async function noteVolumes(): Promise<void> {
  for (const c of await docker.listContainers({ all: true, filters: ours })) {
    for (const m of c.Mounts ?? []) if (m.Type === "volume" && m.Name) ourVolumes.add(m.Name);
  }
}
async function volumesLeft(): Promise<string[]> {
  const existing = new Set(((await docker.listVolumes()).Volumes ?? []).map((v) => v.Name));
  return [...ourVolumes].filter((v) => existing.has(v));
}

before(async () => {
  await docker.getImage(IMAGE).inspect().catch(() => {
    throw new Error(`test image ${IMAGE} is missing: run 'npm run test:images' first`);
  });
  redis = await startRedis();
  fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const port = await freePort();
  url = `http://127.0.0.1:${port}`;
  fake.setWebhookUrl(`${url}/webhooks/github`);
  const file = writeOperatorConfig(fake, {
    redis: { url: redis.url, prefix: redis.prefix },
    server: { host: "127.0.0.1", port },
    worker: { hostId, capacity: 4, completedGraceSeconds: 5, reconcileIntervalSeconds: 5 },
    logLevel: "debug",
    pools: [
      {
        name: "default",
        labels: ["self-hosted", "linux", "x64"],
        image: IMAGE,
        isolation: "capabilities",
        networkMode: "none",
        resources: { memoryMb: 1024, pidsLimit: 2048 },
        mounts: [{ source: dirname(fake.socketPath), target: "/fake-github" }],
        env: { FAKE_GITHUB_SOCKET: "/fake-github/github.sock" },
      },
    ],
  });
  jr = runJitrunner(["all", "--config", file]);
  await waitFor(async () => (await fetch(`${url}/readyz`)).ok, 30_000, `jitrunner ready (output: ${jr.output().slice(-2000)})`);
});

after(async () => {
  const code = await jr?.stop();
  if (process.env.JITRUNNER_TEST_VERBOSE) process.stderr.write(jr?.output() ?? "");
  // Containers and their named /var/lib/docker volumes (`remove({ v: true })` removes only anonymous ones).
  await removeContainersOf(hostId);
  await fake?.close();
  await redis?.stop();
  assert.equal(code, 0, "jitrunner exits 0 on SIGTERM");
});

test(`${JOBS} queued jobs -> ${JOBS} runners -> ${JOBS} completed jobs -> nothing left behind`, async () => {
  const jobs = [];
  for (let i = 0; i < JOBS; i++) jobs.push(await fake.queueJob({ owner: "acme", repo: `app${i % 3}`, labels: ["self-hosted", "linux"] }));

  const done = await waitFor(
    async () => {
      await noteVolumes();
      const finished = fake.jobs().filter((j) => j.status === "completed");
      return finished.length === JOBS && finished;
    },
    300_000,
    `all ${JOBS} jobs completed (have: ${JSON.stringify(fake.jobs().map((j) => j.status))})`,
  );
  assert.deepEqual(
    done.map((j) => j.conclusion),
    Array(JOBS).fill("success"),
    "every job ran its nested docker run successfully",
  );
  const runnerNames = new Set(done.map((j) => j.runner_name));
  assert.equal(runnerNames.size, JOBS, "each job ran on its own runner");
  for (const n of runnerNames) assert.match(String(n), /^jitrunner-default-[0-9a-f]{10}$/);

  await waitFor(async () => (await docker.listContainers({ all: true, filters: ours })).length === 0, 60_000, "0 runner containers left");
  await waitFor(() => fake.runners().length === 0, 30_000, "0 runner registrations left");
  assert.ok(ourVolumes.size >= 1, "runner containers had their /var/lib/docker volumes");
  await waitFor(async () => (await volumesLeft()).length === 0, 30_000, "no volumes left behind");

  // A demand completes just after its runner's container and records are gone.
  const completed = new RegExp(`jitrunner_queue_jobs\\{pool="default",state="completed"\\} ${JOBS}`);
  const metrics = await waitFor(async () => {
    const text = await (await fetch(`${url}/metrics`)).text();
    return completed.test(text) && text;
  }, 30_000, "every demand completed in BullMQ");
  assert.match(metrics, new RegExp(`jitrunner_pickup_latency_seconds_count\\{pool="default"\\} ${JOBS}`));
  assert.match(metrics, new RegExp(`jitrunner_webhook_deliveries_total\\{event="workflow_job",action="queued",outcome="queued"\\} ${JOBS}`));
  assert.match(metrics, /jitrunner_demand_pending\{pool="default"\} 0/);
  assert.match(metrics, new RegExp(`jitrunner_job_queue_wait_seconds_count\\{pool="default"\\} ${JOBS}`));
  assert.match(metrics, new RegExp(`jitrunner_job_duration_seconds_count\\{pool="default",conclusion="success"\\} ${JOBS}`));
  assert.match(metrics, new RegExp(`jitrunner_host_capacity\\{host="${hostId}"\\} 4`));
  assert.match(metrics, /jitrunner_queue_jobs\{pool="default",state="(failed|active|waiting)"\} 0\n[\s\S]*state="(failed|active|waiting)"\} 0\n[\s\S]*state="(failed|active|waiting)"\} 0\n/);
  const beatAge = Number(new RegExp(`jitrunner_host_heartbeat_age_seconds\\{host="${hostId}"\\} (\\S+)`).exec(metrics)?.[1]);
  assert.ok(beatAge >= 0 && beatAge < 30, `heartbeat age of a live host: ${beatAge}`);
  assert.match(metrics, /jitrunner_runners\{pool="default",host="[^"]+",state="busy"\} 0/);

  // The happy path costs GitHub at most 2 calls per job (still-queued check + JIT config), plus
  // tokens and the worker's one App check at its start (GET /app).
  const perJob = fake.requests.filter((r) => r.route !== "/app" && !r.route.startsWith("/app/")).length / JOBS;
  assert.ok(perJob <= 2, `${perJob} GitHub calls per job`);

  const page = await fetch(`${url}/`);
  assert.equal(page.status, 200, "status page served");
  const html = await page.text();
  assert.match(html, /default/, "status page lists the pool");
  assert.ok(!html.includes(WEBHOOK_SECRET) && !html.includes(fake.privateKey.split("\n")[1]!), "no secret on the status page");
  assert.ok(!metrics.includes(WEBHOOK_SECRET), "no secret in metrics");

  const logs = jr.output();
  assert.ok(!logs.includes(WEBHOOK_SECRET), "webhook secret not in logs");
  assert.ok(!logs.includes(fake.privateKey.split("\n")[1]!), "private key not in logs");
  // Every token, JIT config (and the runner token inside), every line of the key: not in the
  // logs, /metrics or on the status page, whole or cut short.
  const checked = await assertNoSecrets(fake, { logs, sys: { url } });
  assert.ok(checked.tokens >= 1 && checked.jitConfigs >= JOBS, `the fake issued tokens and ${JOBS} JIT configs (${JSON.stringify(checked)})`);
  assert.deepEqual(checked.places, ["logs", "/metrics", "status page"]);
  assert.ok(!logs.includes("ACTIONS_RUNNER_INPUT_JITCONFIG="), "JIT config variable not in logs");
});
