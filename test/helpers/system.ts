import { randomBytes } from "node:crypto";
import { dirname } from "node:path";
import { Writable } from "node:stream";
import { Queue } from "bullmq";
import Docker from "dockerode";
import { start, type Mode, type Running, type StartOptions } from "../../src/main.ts";
import { redisConnection } from "../../src/queue/demand-queue.ts";
import { createLogger } from "../../src/logger.ts";
import { runnerLabels } from "../../src/docker/labels.ts";
import type { HostStore } from "../../src/state/hosts.ts";
import type { ConfigInput } from "../../src/config/schema.ts";
import assert from "node:assert/strict";
import { after, before } from "node:test";
import { FakeGitHubClient } from "../fakes/github/client.ts";
import type { FakeGitHub } from "../fakes/github/index.ts";
import { metricSample } from "./leftovers.ts";
import { testConfig, WEBHOOK_SECRET } from "./config.ts";
import { startRedis, type TestRedis } from "./redis.ts";
import { waitFor } from "./process.ts";


export const RUNNER_IMAGE = process.env.JITRUNNER_TEST_RUNNER_IMAGE ?? "jitrunner-test-runner:latest";
export const docker = new Docker();

/** A pool of real DinD runner containers that reach the fake GitHub through its unix socket. */
export function fakeRunnerPool(fake: FakeGitHub, over: Record<string, unknown> = {}) {
  return {
    name: "default",
    labels: ["self-hosted", "linux", "x64"],
    image: RUNNER_IMAGE,
    isolation: "capabilities" as const,
    networkMode: "none",
    resources: { memoryMb: 1024, pidsLimit: 2048 },
    mounts: [{ source: dirname(fake.socketPath), target: "/fake-github" }],
    env: { FAKE_GITHUB_SOCKET: "/fake-github/github.sock" },
    ...over,
  };
}

export interface SystemUnderTest extends Running {
  logs(): string;
}

/** The real composition root, in-process, against the fake GitHub, a real Redis and Docker. */
export async function startSystem(
  mode: Mode,
  fake: FakeGitHub,
  redis: TestRedis,
  hostId: string,
  over: Partial<ConfigInput> & { webhookSecret?: string; previousWebhookSecret?: string } = {},
  opts: StartOptions = {},
): Promise<SystemUnderTest> {
  const config = testConfig({
    github: { appId: fake.appId, apiUrl: fake.url },
    redis: { url: redis.url, prefix: redis.prefix },
    server: { host: "127.0.0.1", port: 0 },
    worker: { hostId, capacity: 2, completedGraceSeconds: 5, reconcileIntervalSeconds: 2 },
    logLevel: "debug",
    pools: [fakeRunnerPool(fake)],
    privateKey: fake.privateKey,
    webhookSecret: WEBHOOK_SECRET,
    ...over,
  });
  const lines: string[] = [];
  const sink = new Writable({
    write(chunk, _enc, cb) {
      lines.push(String(chunk));
      cb();
    },
  });
  const running = await start(config, mode, createLogger("debug", sink), opts);
  if (mode !== "worker") fake.setWebhookUrl(`${running.url}/webhooks/github`);
  return { ...running, logs: () => lines.join("") };
}

export function uniqueHost(tag: string): string {
  return `${tag}-${randomBytes(3).toString("hex")}`;
}

/** Our containers on one host, running or not. */
export async function containersOf(hostId: string): Promise<Docker.ContainerInfo[]> {
  return docker.listContainers({ all: true, filters: { label: ["dev.jitrunner.managed-by=jitrunner", `dev.jitrunner.host=${hostId}`] } });
}

/**
 * A container of ours (our labels, network none) on `host` for runner `name`, created, not
 * started: what a worker process left behind. `entrypoint` replaces the runner program (a sleep
 * stands in for one that waits for a job).
 */
export async function ourContainer(host: string, name: string, o: { pool?: string; entrypoint?: string[] } = {}): Promise<Docker.Container> {
  return docker.createContainer({
    Image: RUNNER_IMAGE,
    name: `${name}-${host}`,
    ...(o.entrypoint ? { Entrypoint: o.entrypoint } : {}),
    Labels: runnerLabels({ pool: o.pool ?? "default", host, runnerName: name, demandId: "" }),
    HostConfig: { NetworkMode: "none" },
  });
}

export async function removeContainersOf(hostId: string): Promise<void> {
  for (const c of await containersOf(hostId)) await docker.getContainer(c.Id).remove({ force: true, v: true }).catch(() => undefined);
  // A runner's data volume is named (not removed with its container), and labelled with its host.
  const filters = { label: [`dev.jitrunner.host=${hostId}`] };
  const volumes = await docker.listVolumes({ filters } as Docker.VolumeListOptions).catch(() => undefined);
  for (const v of volumes?.Volumes ?? []) await docker.getVolume(v.Name).remove().catch(() => undefined);
}

/** The same Redis under a key prefix of its own: job ids restart with each fake GitHub. */
export function scopedRedis(redis: TestRedis, tag: string): TestRedis {
  return { ...redis, prefix: `${redis.prefix}-${tag}` };
}

/** How many REST calls jitrunner made to one route of the fake (optionally one method). */
export function callsTo(fake: FakeGitHub, route: string, method?: string): number {
  return fake.requests.filter((r) => r.route === route && (!method || r.method === method)).length;
}

/** Waits until the demand item is in `state`, and returns what demandState says of it then. */
export async function demandIn(r: TestRedis, id: string, state: string, ms: number, pool = "default"): Promise<{ state: string; attempts: number; result: unknown }> {
  return waitFor(async () => {
    const d = await demandState(r, pool, id);
    return d?.state === state && d;
  }, ms, `demand ${id} ${state}`);
}

/** A demand item as BullMQ holds it: its state, launch attempts made and result; undefined if gone. */
export async function demandState(r: TestRedis, pool: string, id: string): Promise<{ state: string; attempts: number; result: unknown } | undefined> {
  const conn = redisConnection(r.url);
  const q = new Queue(`demand-${pool}`, { connection: conn, prefix: `${r.prefix}:bull` });
  try {
    // The state first: read after the job, a state of "completed" could come with a result read
    // before the completion (BullMQ sets both at once).
    const state = await q.getJobState(id);
    const job = await q.getJob(id);
    return job && state !== "unknown" ? { state, attempts: job.attemptsMade, result: job.returnvalue } : undefined;
  } finally {
    await q.close();
    conn.disconnect();
  }
}

/** Passes of the host loop the system has counted with this outcome (its /metrics). */
export async function hostPasses(sys: { url: string }, outcome: "ok" | "error"): Promise<number> {
  return metricSample(await (await fetch(`${sys.url}/metrics`)).text(), "jitrunner_reconcile_runs_total", `loop="host",outcome="${outcome}"`);
}

/**
 * Waits for the end of a worker's first host loop pass: its start resolves once the pass has
 * handled the host's containers and records, before the pass sweeps gone hosts.
 */
export async function firstHostPass(sys: { url: string }): Promise<void> {
  await waitFor(async () => (await hostPasses(sys, "ok")) + (await hostPasses(sys, "error")) >= 1, 60_000, "the first host loop pass ended");
}

/** Registers a runner of acme/app at the fake as jitrunner would; its id and the token its program would use. */
export async function registerRunner(fake: FakeGitHub, name: string, labels = ["self-hosted", "linux", "x64"]): Promise<{ id: number; token: string }> {
  const res = await new FakeGitHubClient(fake).call("POST", "/repos/acme/app/actions/runners/generate-jitconfig", { body: { name, runner_group_id: 1, labels } });
  assert.equal(res.status, 201, JSON.stringify(res.body));
  const body = res.body as { runner: { id: number }; encoded_jit_config: string };
  const jit = JSON.parse(Buffer.from(body.encoded_jit_config, "base64").toString("utf8")) as { token: string };
  return { id: body.runner.id, token: jit.token };
}

/**
 * A Redis for all the tests of a file that run workers (startRedis), and the host ids whose
 * containers are removed after them: a test pushes each host it runs. The Redis's fields are there
 * once `before` has run, so read them inside tests.
 */
export function workersForFile(): { readonly redis: TestRedis; readonly hosts: string[] } {
  const redis = {} as TestRedis;
  const hosts: string[] = [];
  before(async () => {
    Object.assign(redis, await startRedis());
  });
  after(async () => {
    for (const h of hosts) await removeContainersOf(h);
    await redis.stop();
  });
  return { redis, hosts };
}

/** A host that beat once, for a moment, and is gone now (its record expired; the index keeps it). */
export async function goneHost(hostStore: HostStore, id: string): Promise<void> {
  await hostStore.heartbeat({ id, capacity: 1, used: 1, pools: ["default"] }, 100);
  await waitFor(async () => !(await hostStore.alive(id)), 5_000, `host ${id}'s heartbeat lapsed`);
}
