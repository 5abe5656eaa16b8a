/**
 * Pickup: `queued` webhook received -> runner container started, for jobs queued one at a time
 * (nothing queues behind anything: jitrunner's own path) and for a burst of 50 at once (all
 * of them on one engine at the same moment), each against a bare `docker create` + `start` of the same
 * container spec on the same engine, timed the same way (to Docker's `start` event).
 */
import { randomBytes } from "node:crypto";
import { Queue } from "bullmq";
import type Docker from "dockerode";
import { Redis } from "ioredis";
import { Secret } from "../src/config/secret.ts";
import { createOptions } from "../src/docker/dockerode-driver.ts";
import { FakeGitHubClient } from "../test/fakes/github/client.ts";
import type { FakeGitHub } from "../test/fakes/github/index.ts";
import { ContainerEvents, maxRunning, type Lifecycle } from "./lib/docker-events.ts";
import { removeContainers } from "./lib/engines.ts";
import { CONCURRENT_CALLS, CONCURRENT_STARTS, JOB_LABELS, POOL, runnerPool, startJitrunner, type RunningJitrunner } from "./lib/jitrunner.ts";
import { machineCpu, sample, type BenchRedis } from "./lib/procs.ts";
import { summarize, type Summary } from "./lib/stats.ts";

const ISOLATED = Number(process.env.BENCH_PICKUP_ISOLATED ?? 20);
const BURST = Number(process.env.BENCH_PICKUP_BURST ?? 50);
/**
 * Bursts of each kind, taking turns (which goes first alternates): a single burst's median moved
 * by seconds from one run to the next on these shared machines, either way.
 */
const BURST_ROUNDS = Number(process.env.BENCH_PICKUP_ROUNDS ?? 3);
/** Between jobs queued one at a time: each runner is created and started before the next job comes. */
const SPACING_MS = 1_500;
const BASELINE_LABEL = "dev.jitrunner.bench-baseline";
const DEMAND_LABEL = "dev.jitrunner.demand";

/** One container's timeline, ms since the epoch; jitrunner's start at the webhook's arrival. */
export interface Pickup {
  /** webhook received by the server (jitrunner) or create call made (bare) */
  t0: number;
  /** demand added to BullMQ (jitrunner only) */
  queued?: number;
  /** demand taken by the worker (jitrunner only) */
  taken?: number;
  created: number;
  started: number;
  /** container stopped (jitrunner: the runner finished its job) */
  died?: number;
  /**
   * jitrunner only: the demand was taken again after this, its first runner, ended without a job
   * (BullMQ keeps only the last take's time, so `taken` is not this container's)
   */
  retaken?: boolean;
}

export interface Series {
  name: string;
  items: Pickup[];
  total: Summary;
  /** t0 -> queued, queued -> taken, taken -> created, created -> started */
  parts: Record<string, Summary>;
  /** gaps between consecutive `create` events, sorted by time */
  createGaps: Summary;
  /** start -> die of each container */
  lifetime: Summary;
  /** demands taken again (Pickup.retaken): left out of the steps around the take */
  retaken: number;
}

/**
 * CPU time spent while one burst's containers were being started: from the burst's first webhook
 * (jitrunner) or create call (bare) until its last container's start event. The machine was
 * saturated then (its 2 CPUs), so whatever any process used in the window, the starts waited for.
 */
export interface BurstCpu {
  windowMs: number;
  /** every process on the machine, and interrupt handling */
  machineMs: number;
  /** jitrunner's server and worker processes, and its Redis (idle, or nearly, in a bare burst) */
  jitrunnerMs: number;
  /** the bench process: the fake GitHub, the Docker event stream, the bare baseline's API calls */
  benchMs: number;
}

/** One round's bursts: their p50 and p99 (ms), which went first, and the CPU each window took. */
export interface BurstRound {
  bareFirst: boolean;
  bare: { p50: number; p99: number; mean?: number; cpu?: BurstCpu };
  jitrunner: { p50: number; p99: number; mean?: number; cpu?: BurstCpu };
}

export interface PickupResult {
  bareIsolated: Series;
  /** Every round's bare burst containers, pooled. */
  bareBurst: Series;
  isolated: Series;
  /** Every round's jitrunner burst runners, pooled. */
  burst: Series;
  /** Containers per burst. */
  burstSize: number;
  rounds: BurstRound[];
  /** Most runners running at once in any round's jitrunner burst. */
  burstMaxRunning: number;
  capacity: number;
  /** The worker's `worker.concurrentStarts`. */
  concurrentStarts: number;
  /** The worker's `github.concurrentCalls`; not recorded by runs before it was. */
  concurrentCalls?: number;
  metricPickup: { count: number; sum: number };
  githubCalls: Map<string, number>;
  jobs: number;
}

function series(name: string, items: Pickup[]): Series {
  const parts: Record<string, Summary> = {};
  const part = (key: string, f: (p: Pickup) => number | undefined) => {
    const values = items.map(f).filter((v): v is number => v !== undefined && Number.isFinite(v));
    if (values.length) parts[key] = summarize(values);
  };
  part("received -> in BullMQ", (p) => (p.queued === undefined ? undefined : p.queued - p.t0));
  part("in BullMQ -> taken by worker", (p) => (p.queued === undefined || p.taken === undefined || p.retaken ? undefined : p.taken - p.queued));
  part("taken -> container created", (p) => (p.taken === undefined || p.retaken ? undefined : p.created - p.taken));
  part("start -> container created", (p) => (p.queued === undefined ? p.created - p.t0 : undefined));
  part("created -> started", (p) => p.started - p.created);
  const creates = items.map((p) => p.created).sort((a, b) => a - b);
  return {
    name,
    items,
    total: summarize(items.map((p) => p.started - p.t0)),
    parts,
    createGaps: summarize(creates.slice(1).map((c, i) => c - creates[i]!)),
    lifetime: summarize(items.flatMap((p) => (p.died === undefined ? [] : [p.died - p.started]))),
    retaken: items.filter((p) => p.retaken).length,
  };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A bare container's job: labels no pool of jitrunner's matches, so its webhooks make no demand. */
const BARE_LABELS = ["self-hosted", "bench-bare-baseline"];

/**
 * Bare create + start of the runner spec jitrunner would create, on the same engine: `one` at a
 * time (each on an idle engine: started, exited, removed, gone) or `burst` at once. Each is given
 * a JIT config of its own and a job pinned to it, both made before its create call (untimed), so
 * that once started it does what a runner of jitrunner's does (boots its dockerd, runs the job with
 * its nested `docker run`, exits), and a burst loads the engine and the CPUs alike on both sides.
 */
class Bare {
  readonly #docker: Docker;
  readonly #fake: FakeGitHub;
  readonly #client: FakeGitHubClient;
  readonly #tag: string;
  readonly #events: ContainerEvents;
  readonly #t0s = new Map<string, number>();
  readonly #ids: string[] = [];
  #n = 0;

  private constructor(docker: Docker, fake: FakeGitHub, tag: string, events: ContainerEvents) {
    this.#docker = docker;
    this.#fake = fake;
    this.#client = new FakeGitHubClient(fake);
    this.#tag = tag;
    this.#events = events;
  }

  /** Its installation token is fetched here, before the phase counts GitHub calls: only its registrations count, and `registrations` says how many. */
  static async open(docker: Docker, fake: FakeGitHub): Promise<Bare> {
    const tag = randomBytes(4).toString("hex");
    const bare = new Bare(docker, fake, tag, await ContainerEvents.open(docker, `${BASELINE_LABEL}=${tag}`));
    await bare.#client.installationToken();
    return bare;
  }

  /** The bench's own generate-jitconfig calls, one per bare container. */
  get registrations(): number {
    return this.#n;
  }

  /** A runner registered at the fake, with a job queued for it alone: what a bare container runs. */
  async #registered(): Promise<{ name: string; jitConfig: string }> {
    const name = `bench-bare-${this.#tag}-${this.#n++}`;
    const res = await this.#client.call("POST", "/repos/acme/bench/actions/runners/generate-jitconfig", { body: { name, runner_group_id: 1, labels: BARE_LABELS } });
    if (res.status !== 201) throw new Error(`bare runner ${name}: generate-jitconfig answered ${res.status}`);
    await this.#fake.queueJob({ owner: "acme", repo: "bench", labels: BARE_LABELS, onlyRunner: name });
    return { name, jitConfig: (res.body as { encoded_jit_config: string }).encoded_jit_config };
  }

  async #createAndStart({ name, jitConfig }: { name: string; jitConfig: string }): Promise<string> {
    const pool = runnerPool(this.#fake);
    const opts = createOptions({
      name,
      image: pool.image,
      jitConfig: new Secret(jitConfig),
      env: pool.env,
      labels: { [BASELINE_LABEL]: this.#tag },
      isolation: pool.isolation,
      capDrop: ["SYS_RESOURCE"],
      resources: pool.resources,
      networkMode: pool.networkMode,
      mounts: pool.mounts,
    });
    const t0 = Date.now();
    const c = await this.#docker.createContainer(opts);
    this.#t0s.set(c.id, t0);
    this.#ids.push(c.id);
    await c.start();
    return c.id;
  }

  /** One on an idle engine; like a runner it boots its dockerd, runs its job and exits by itself, then it is removed. */
  async one(): Promise<string> {
    const events = this.#events;
    const id = await this.#createAndStart(await this.#registered());
    await events.until(() => events.byId.get(id)?.start, 30_000, "bare container start event");
    await events.until(() => events.byId.get(id)?.die, 120_000, "bare container to run its job and exit");
    await removeContainers(this.#docker, [id]);
    await events.until(() => events.byId.get(id)?.destroy, 30_000, "bare container destroy event");
    return id;
  }

  /**
   * `n` at once; resolves when all have started, run their jobs and exited. `timed` is called
   * once the JIT configs and jobs are made, right before the first create, and again once every
   * container has started.
   */
  async burst(n: number, timed: (phase: "start" | "started") => void): Promise<string[]> {
    const runners = await Promise.all(Array.from({ length: n }, () => this.#registered()));
    timed("start");
    const ids = await Promise.all(runners.map((r) => this.#createAndStart(r)));
    await this.#events.until(() => ids.every((id) => this.#events.byId.get(id)?.start !== undefined), 60_000, "bare start events");
    timed("started");
    await this.#events.until(() => ids.every((id) => this.#events.byId.get(id)?.die !== undefined), 180_000, "bare containers to run their jobs and exit");
    return ids;
  }

  pickups(ids: string[]): Pickup[] {
    return ids.map((id) => {
      const lc = this.#events.byId.get(id)!;
      return { t0: this.#t0s.get(id)!, created: lc.create!, started: lc.start!, died: lc.die };
    });
  }

  async close(): Promise<void> {
    this.#events.close();
    await removeContainers(this.#docker, this.#ids);
  }
}

/** Reads jitrunner's timeline of each demand back from BullMQ and pairs it with Docker's events. */
export async function timelines(redisUrl: string, prefix: string, containers: Lifecycle[]): Promise<Pickup[]> {
  const conn = new Redis(redisUrl, { maxRetriesPerRequest: null });
  const queue = new Queue(`demand-${POOL}`, { connection: conn, prefix: `${prefix}:bull` });
  try {
    // A demand whose runner ended without a job is launched again: its first container is its pickup.
    const first = new Map<string, Lifecycle>();
    const launches = new Map<string, number>();
    for (const lc of containers) {
      const id = lc.labels[DEMAND_LABEL];
      if (!id || lc.start === undefined || lc.create === undefined) continue;
      launches.set(id, (launches.get(id) ?? 0) + 1);
      if ((first.get(id)?.create ?? Number.POSITIVE_INFINITY) > lc.create) first.set(id, lc);
    }
    const out: Pickup[] = [];
    for (const [id, lc] of first) {
      const job = await queue.getJob(id);
      const receivedAt = (job?.data as { receivedAt?: number } | undefined)?.receivedAt;
      if (!job || receivedAt === undefined) continue;
      const retaken = launches.get(id)! > 1 || job.attemptsMade > 1;
      out.push({ t0: receivedAt, queued: job.timestamp, taken: job.processedOn, created: lc.create!, started: lc.start!, died: lc.die, retaken });
    }
    return out;
  } finally {
    await queue.close();
    conn.disconnect();
  }
}

export async function runPickup(
  dir: string,
  redis: BenchRedis,
  docker: Docker,
  fake: FakeGitHub,
  progress: (msg: string) => void,
): Promise<PickupResult> {
  const tag = randomBytes(3).toString("hex");
  const prefix = `bench-pickup-${tag}`;
  const host = `bench-pickup-${tag}`;
  const capacity = BURST + ISOLATED;
  const common = { dir, redisUrl: redis.url, prefix, privateKey: fake.privateKey, appId: fake.appId, apiUrl: fake.url, pools: [runnerPool(fake)], hostId: host, capacity };
  const events = await ContainerEvents.open(docker, `dev.jitrunner.host=${host}`);
  const bare = await Bare.open(docker, fake);
  const firstRequest = fake.requests.length;
  let server: RunningJitrunner | undefined;
  let worker: RunningJitrunner | undefined;
  try {
    server = await startJitrunner({ ...common, name: "pickup-server", mode: "server" });
    worker = await startJitrunner({ ...common, name: "pickup-worker", mode: "worker" });
    fake.setWebhookUrl(`${server.url}/webhooks/github`);
    const startedFor = (jobId: number) => () => events.all().find((lc) => lc.labels[DEMAND_LABEL] === `${jobId}-1` && lc.start !== undefined);

    progress("pickup: one warm-up of each (jitrunner: installation token, first JIT config)");
    await bare.one();
    const warm = await fake.queueJob({ owner: "acme", repo: "bench", labels: JOB_LABELS });
    await events.until(startedFor(warm.id), 60_000, "warm-up runner start");
    await waitQuiet(fake, events, 60_000, "the warm-up runner to finish and go");

    progress(`pickup: ${ISOLATED} bare create+start and ${ISOLATED} jitrunner jobs, one at a time on an idle engine, taking turns`);
    const bareIds: string[] = [];
    const isolatedIds: string[] = [];
    const spaced = async (step: () => Promise<void>) => {
      const at = Date.now();
      await step();
      await sleep(Math.max(0, SPACING_MS - (Date.now() - at)));
    };
    const bareStep = async () => {
      bareIds.push(await bare.one());
    };
    const jitrunnerStep = async () => {
      const job = await fake.queueJob({ owner: "acme", repo: "bench", labels: JOB_LABELS });
      isolatedIds.push((await events.until(startedFor(job.id), 60_000, `runner start for job ${isolatedIds.length + 1}`)).id);
      // Each on an idle engine: this runner runs its job and is gone before the next step.
      await waitQuiet(fake, events, 60_000, "the runner to finish and go");
    };
    for (let i = 0; i < ISOLATED; i++) {
      // Which goes first alternates, so neither always runs right after the other.
      const steps = i % 2 === 0 ? [bareStep, jitrunnerStep] : [jitrunnerStep, bareStep];
      for (const step of steps) await spaced(step);
    }
    const bareIsolated = series("bare, one at a time", bare.pickups(bareIds));

    const bareBursts: Pickup[] = [];
    const burstContainers: Lifecycle[] = [];
    const rounds: BurstRound[] = [];
    let burstMaxRunning = 0;
    const pids = { jitrunner: [server.proc.pid, worker.proc.pid, redis.pid] };
    const cpuNow = () => ({
      at: Date.now(),
      machine: machineCpu(),
      jitrunner: pids.jitrunner.reduce((sum, pid) => sum + sample(pid).cpuMs, 0),
      bench: process.cpuUsage(),
    });
    const cpuSince = (a: ReturnType<typeof cpuNow>): BurstCpu => {
      const b = cpuNow();
      return {
        windowMs: b.at - a.at,
        machineMs: b.machine.processMs + b.machine.irqMs - a.machine.processMs - a.machine.irqMs,
        jitrunnerMs: b.jitrunner - a.jitrunner,
        benchMs: (b.bench.user + b.bench.system - a.bench.user - a.bench.system) / 1000,
      };
    };
    const bareBurst = async (): Promise<{ items: Pickup[]; cpu: BurstCpu }> => {
      progress(`pickup: bare docker create+start, ${BURST} at once`);
      let from = cpuNow();
      let cpu: BurstCpu | undefined;
      const ids = await bare.burst(BURST, (phase) => (phase === "start" ? (from = cpuNow()) : (cpu = cpuSince(from))));
      await removeContainers(docker, ids);
      return { items: bare.pickups(ids), cpu: cpu! };
    };
    const jitrunnerBurst = async (): Promise<{ containers: Lifecycle[]; cpu: BurstCpu }> => {
      progress(`pickup: jitrunner, ${BURST} jobs at once`);
      const from = cpuNow();
      const jobs = await Promise.all(Array.from({ length: BURST }, () => fake.queueJob({ owner: "acme", repo: "bench", labels: JOB_LABELS })));
      const ids = new Set(jobs.map((j) => `${j.id}-1`));
      await events.until(
        () => events.all().filter((lc) => ids.has(lc.labels[DEMAND_LABEL] ?? "") && lc.start !== undefined).length >= BURST,
        180_000,
        `${BURST} burst runners to start`,
      );
      const cpu = cpuSince(from);
      const containers = events.all().filter((lc) => ids.has(lc.labels[DEMAND_LABEL] ?? ""));
      await waitQuiet(fake, events, 180_000, "burst jobs to finish and their containers to go");
      return { containers, cpu };
    };
    for (let round = 0; round < BURST_ROUNDS; round++) {
      progress(`pickup: burst round ${round + 1} of ${BURST_ROUNDS}`);
      const bareFirst = round % 2 === 0;
      const first = bareFirst ? await bareBurst() : undefined;
      const { containers, cpu } = await jitrunnerBurst();
      const { items: bareItems, cpu: bareCpu } = first ?? (await bareBurst());
      bareBursts.push(...bareItems);
      burstContainers.push(...containers);
      burstMaxRunning = Math.max(burstMaxRunning, maxRunning(containers));
      const mine = series("round", await timelines(redis.url, prefix, containers)).total;
      const theirs = series("round", bareItems).total;
      rounds.push({
        bareFirst,
        bare: { p50: theirs.p50, p99: theirs.p99, mean: theirs.mean, cpu: bareCpu },
        jitrunner: { p50: mine.p50, p99: mine.p99, mean: mine.mean, cpu },
      });
    }

    const metrics = await (await fetch(`${worker.url}/metrics`)).text();
    const metricPickup = {
      count: Number(/jitrunner_pickup_latency_seconds_count\{pool="default"\} (\S+)/.exec(metrics)?.[1] ?? Number.NaN),
      sum: Number(/jitrunner_pickup_latency_seconds_sum\{pool="default"\} (\S+)/.exec(metrics)?.[1] ?? Number.NaN),
    };
    const byId = (ids: Iterable<string>) => [...ids].map((id) => events.byId.get(id)!).filter(Boolean);
    const githubCalls = new Map<string, number>();
    for (const r of fake.requests.slice(firstRequest)) githubCalls.set(`${r.method} ${r.route}`, (githubCalls.get(`${r.method} ${r.route}`) ?? 0) + 1);
    // Jitrunner's calls only: the bare containers' registrations are the bench's.
    for (const key of githubCalls.keys()) if (key.startsWith("POST /repos/") && key.endsWith("/generate-jitconfig")) githubCalls.set(key, githubCalls.get(key)! - bare.registrations);
    return {
      bareIsolated,
      bareBurst: series(`bare, ${BURST} at once (${BURST_ROUNDS} rounds)`, bareBursts),
      isolated: series("jitrunner, one at a time", await timelines(redis.url, prefix, byId(isolatedIds))),
      burst: series(`jitrunner, ${BURST} at once (${BURST_ROUNDS} rounds)`, await timelines(redis.url, prefix, burstContainers)),
      burstSize: BURST,
      rounds,
      burstMaxRunning,
      capacity,
      concurrentStarts: CONCURRENT_STARTS,
      concurrentCalls: CONCURRENT_CALLS,
      metricPickup,
      githubCalls,
      jobs: 1 + ISOLATED + BURST_ROUNDS * BURST,
    };
  } finally {
    events.close();
    await bare.close();
    await worker?.proc.stop();
    await server?.proc.stop();
    await removeHost(docker, host);
  }
}

/** Every job of the fake completed and no container of ours left running. */
export async function waitQuiet(fake: FakeGitHub, events: ContainerEvents, timeoutMs: number, what: string): Promise<void> {
  await fake.waitFor(() => fake.jobs().every((j) => j.status === "completed"), timeoutMs, what);
  await events.until(() => events.all().every((lc) => lc.start === undefined || lc.destroy !== undefined), timeoutMs, what);
}

/** Force-removes whatever is left of one jitrunner host's containers (and their volumes). */
export async function removeHost(docker: Docker, host: string): Promise<void> {
  const left = await docker.listContainers({ all: true, filters: { label: [`dev.jitrunner.host=${host}`] } });
  await removeContainers(
    docker,
    left.map((c) => c.Id),
  );
}
