/**
 * Warm runners: job start with and without a launch on the critical path. One real `jitrunner all`
 * process serves two pools that differ only in `minIdle`: `cold` (0: each job's runner is launched
 * when its webhook arrives) and `warm` (MIN_IDLE idle registered runners kept ready). The same jobs
 * go to both, alternately, each on a settled system (every job done, exactly MIN_IDLE warm runners
 * online and idle, nothing starting or stopping); then a burst of BURST (<= MIN_IDLE) at once to each.
 *
 * Job start = the fake GitHub sends the `queued` webhook (the job exists and is queued from that
 * moment) -> the fake hands the job to a runner (its answer to the runner's `acquire`, timed to the
 * millisecond by a RunnerProxy on the runner protocol's socket). For each warm job the runner's
 * container `create` event (Docker's clock) is compared with the webhook: created before it means
 * no launch was on that job's critical path.
 */
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import type Docker from "dockerode";
import type { FakeGitHub } from "../test/fakes/github/index.ts";
import { ContainerEvents, type Lifecycle } from "./lib/docker-events.ts";
import { runnerPool, startJitrunner, type RunningJitrunner } from "./lib/jitrunner.ts";
import type { BenchRedis } from "./lib/procs.ts";
import { RunnerProxy } from "./lib/runner-proxy.ts";
import { summarize, type Summary } from "./lib/stats.ts";
import { removeHost } from "./pickup.ts";

const ISOLATED = Number(process.env.BENCH_WARM_ISOLATED ?? 10);
const MIN_IDLE = Number(process.env.BENCH_WARM_MIN_IDLE ?? 3);
const BURST = Math.min(MIN_IDLE, Number(process.env.BENCH_WARM_BURST ?? MIN_IDLE));
/** The warm pool's idle timeout: how long a warm runner a demand adopted but GitHub did not use lingers. */
const IDLE_TIMEOUT_S = 10;
/** At least this long between two measured jobs, so GitHub's write throttle never delays a cold launch. */
const SPACING_MS = 1_500;
const OWNER = "acme";
const REPO = "bench-warm";
const RUNNER_NAME_LABEL = "dev.jitrunner.runner-name";
const POOL_LABEL = "dev.jitrunner.pool";

export type Kind = "cold" | "warm";

/** One job's start, ms since the epoch. */
export interface JobStart {
  kind: Kind;
  series: "one at a time" | "burst";
  jobId: number;
  /** the fake GitHub starts sending the `queued` webhook (the job is queued from here) */
  sent: number;
  /** the server answered that webhook */
  answered: number;
  /** the fake handed the job to a runner */
  taken: number;
  runner: string;
  /** Docker's create and start events of that runner's container */
  created: number;
  started: number;
  /** idle warm runners online at the fake when the webhook was sent */
  idleWarmAtSend: number;
  /** the runner the worker's demand adopted (warm only; from the worker's log) */
  adopted?: string;
}

export interface WarmSeries {
  kind: Kind;
  series: JobStart["series"];
  jobs: JobStart[];
  /** webhook sent -> job taken */
  start: Summary;
  /** webhook sent -> container created (negative: created before the webhook) */
  toCreated: Summary;
  /** container created -> started */
  createdToStarted: Summary;
  /** container started -> job taken (runner's dockerd boot, online, first poll) */
  startedToTaken: Summary;
}

export interface WarmResult {
  minIdle: number;
  burst: number;
  isolated: number;
  idleTimeoutS: number;
  capacity: number;
  series: WarmSeries[];
  /** warm jobs whose runner's container was created before the job's webhook, of how many */
  warmPrecreated: number;
  warmJobs: number;
  /** warm jobs where the worker adopted a different warm runner than the one GitHub gave the job */
  adoptedOther: number;
  /** ...and of those, adopted runners that then took no job at all and were removed at the idle timeout */
  adoptedUnused: number;
  /** warm jobs whose adoption was found in the worker's log */
  adoptionsLogged: number;
  /** containers of each pool created after the first measured job, per measured job of that pool */
  launchesPerJob: Record<Kind, number>;
  githubCalls: Map<string, number>;
  /** measured jobs: all completed, and how many succeeded */
  completed: number;
  succeeded: number;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function seriesOf(kind: Kind, series: JobStart["series"], jobs: JobStart[]): WarmSeries {
  const mine = jobs.filter((j) => j.kind === kind && j.series === series);
  return {
    kind,
    series,
    jobs: mine,
    start: summarize(mine.map((j) => j.taken - j.sent)),
    toCreated: summarize(mine.map((j) => j.created - j.sent)),
    createdToStarted: summarize(mine.map((j) => j.started - j.created)),
    startedToTaken: summarize(mine.map((j) => j.taken - j.started)),
  };
}

/**
 * From the worker's log: which runner each demand adopted ("demand adopted by a warm runner", or
 * by an idle runner that is not warm),
 * and why each runner was removed ("runner removed").
 */
function workerLog(logFile: string): { adopted: Map<number, string>; removed: Map<string, string> } {
  const adopted = new Map<number, string>();
  const removed = new Map<string, string>();
  for (const line of readFileSync(logFile, "utf8").split("\n")) {
    if (!line.includes("demand adopted by") && !line.includes("runner removed")) continue;
    try {
      const o = JSON.parse(line) as { msg?: string; jobId?: number; runner?: string; reason?: string };
      if (typeof o.runner !== "string") continue;
      if (o.msg?.startsWith("demand adopted by") && typeof o.jobId === "number") adopted.set(o.jobId, o.runner);
      if (o.msg === "runner removed" && typeof o.reason === "string") removed.set(o.runner, o.reason);
    } catch {
      // not a JSON line
    }
  }
  return { adopted, removed };
}

export async function runWarm(dir: string, redis: BenchRedis, docker: Docker, fake: FakeGitHub, progress: (msg: string) => void): Promise<WarmResult> {
  const tag = randomBytes(3).toString("hex");
  const host = `bench-warm-${tag}`;
  const prefix = host;
  // The demand loop of each pool waits with a slot; MIN_IDLE warm runners, as many replacements
  // while adopted ones still run, and a cold burst each need one.
  const capacity = 2 + 2 * MIN_IDLE + BURST;
  const proxy = await RunnerProxy.start(join(dir, "runner-proxy"), fake.socketPath);
  const events = await ContainerEvents.open(docker, `dev.jitrunner.host=${host}`).catch(async (err: unknown) => {
    await proxy.close();
    throw err;
  });
  const base = { socketDir: proxy.dir };
  const pools = [
    runnerPool(fake, { ...base, extra: { name: "cold", labels: ["self-hosted", "linux", "x64", "cold"] } }),
    runnerPool(fake, {
      ...base,
      extra: {
        name: "warm",
        labels: ["self-hosted", "linux", "x64", "warm"],
        minIdle: MIN_IDLE,
        idleTimeoutSeconds: IDLE_TIMEOUT_S,
        warm: { installationId: fake.installationId, owner: OWNER, repo: REPO },
      },
    }),
  ];
  const firstRequest = fake.requests.length;
  const idleWarm = () => fake.runners().filter((r) => r.status === "online" && !r.busy && r.labels.includes("warm")).length;
  /** Every job done, exactly MIN_IDLE warm runners idle and nothing else registered, no container starting or stopping. */
  const settled = async (what: string) => {
    await fake.waitFor(
      () => {
        if (!fake.jobs().every((j) => j.status === "completed")) return false;
        if (fake.runners().length !== MIN_IDLE || idleWarm() !== MIN_IDLE) return false;
        const live = events.all().filter((lc) => lc.create !== undefined && lc.destroy === undefined);
        return live.length === MIN_IDLE && live.every((lc) => lc.start !== undefined && lc.die === undefined);
      },
      120_000 + IDLE_TIMEOUT_S * 1000,
      what,
    );
  };
  const starts: Array<Omit<JobStart, "runner" | "created" | "started"> & { runner?: string }> = [];
  const queue = async (kind: Kind, series: JobStart["series"]) => {
    const idle = idleWarm();
    const sent = Date.now();
    const job = await fake.queueJob({ owner: OWNER, repo: REPO, labels: ["self-hosted", "linux", kind] });
    starts.push({ kind, series, jobId: job.id, sent, answered: Date.now(), taken: Number.NaN, idleWarmAtSend: idle });
    return job.id;
  };
  const taken = (ids: number[], what: string) => fake.waitFor(() => ids.every((id) => proxy.acquired.has(id)), 120_000, what);

  let jitrunner: RunningJitrunner | undefined;
  try {
    jitrunner = await startJitrunner({
      dir,
      name: "warm-all",
      mode: "all",
      redisUrl: redis.url,
      prefix,
      privateKey: fake.privateKey,
      appId: fake.appId,
      apiUrl: fake.url,
      pools,
      hostId: host,
      capacity,
    });
    fake.setWebhookUrl(`${jitrunner.url}/webhooks/github`);
    progress(`warm: ${MIN_IDLE} warm runners to come online (capacity ${capacity})`);
    await settled(`${MIN_IDLE} warm runners online`);

    progress("warm: one warm-up job per pool (installation token, first JIT config)");
    for (const kind of ["cold", "warm"] as const) {
      const id = (await fake.queueJob({ owner: OWNER, repo: REPO, labels: ["self-hosted", "linux", kind] })).id;
      await taken([id], `warm-up ${kind} job`);
      await settled(`warm-up ${kind} job done and ${MIN_IDLE} warm runners idle`);
    }
    const measuredFrom = Date.now();

    progress(`warm: ${ISOLATED} jobs to each pool, one at a time, alternately`);
    for (let i = 0; i < ISOLATED; i++) {
      for (const kind of i % 2 === 0 ? (["cold", "warm"] as const) : (["warm", "cold"] as const)) {
        await settled(`job ${i + 1}: a settled system`);
        const at = Date.now();
        await taken([await queue(kind, "one at a time")], `${kind} job ${i + 1} to be taken`);
        await sleep(Math.max(0, SPACING_MS - (Date.now() - at)));
      }
    }

    progress(`warm: a burst of ${BURST} jobs to each pool`);
    for (const kind of ["cold", "warm"] as const) {
      await settled(`${kind} burst: a settled system`);
      const ids = await Promise.all(Array.from({ length: BURST }, () => queue(kind, "burst")));
      await taken(ids, `${kind} burst jobs to be taken`);
    }
    await settled("the last jobs to finish");

    const jobs = fake.jobs();
    const byRunner = new Map<string, Lifecycle>();
    for (const lc of events.all()) if (lc.labels[RUNNER_NAME_LABEL]) byRunner.set(lc.labels[RUNNER_NAME_LABEL]!, lc);
    const { adopted, removed } = workerLog(jitrunner.logFile);
    const all: JobStart[] = starts.map((s) => {
      const runner = jobs.find((j) => j.id === s.jobId)?.runner_name ?? "";
      const lc = byRunner.get(runner);
      return {
        ...s,
        taken: proxy.acquired.get(s.jobId)?.at ?? Number.NaN,
        runner,
        created: lc?.create ?? Number.NaN,
        started: lc?.start ?? Number.NaN,
        adopted: s.kind === "warm" ? adopted.get(s.jobId) : undefined,
      };
    });
    const warmJobs = all.filter((j) => j.kind === "warm");
    const measured = new Set(all.map((j) => j.jobId));
    const done = jobs.filter((j) => measured.has(j.id));
    const launches = (kind: Kind) =>
      events.all().filter((lc) => lc.labels[POOL_LABEL] === kind && lc.create !== undefined && lc.create >= measuredFrom).length;
    const githubCalls = new Map<string, number>();
    for (const r of fake.requests.slice(firstRequest)) githubCalls.set(`${r.method} ${r.route}`, (githubCalls.get(`${r.method} ${r.route}`) ?? 0) + 1);
    return {
      minIdle: MIN_IDLE,
      burst: BURST,
      isolated: ISOLATED,
      idleTimeoutS: IDLE_TIMEOUT_S,
      capacity,
      series: [seriesOf("cold", "one at a time", all), seriesOf("warm", "one at a time", all), seriesOf("cold", "burst", all), seriesOf("warm", "burst", all)],
      warmPrecreated: warmJobs.filter((j) => j.created < j.sent).length,
      warmJobs: warmJobs.length,
      adoptedOther: warmJobs.filter((j) => j.adopted !== undefined && j.adopted !== j.runner).length,
      adoptedUnused: warmJobs.filter((j) => j.adopted !== undefined && removed.get(j.adopted) === "idle_timeout").length,
      adoptionsLogged: warmJobs.filter((j) => j.adopted !== undefined).length,
      launchesPerJob: {
        cold: launches("cold") / all.filter((j) => j.kind === "cold").length,
        warm: launches("warm") / warmJobs.length,
      },
      githubCalls,
      completed: done.filter((j) => j.status === "completed").length,
      succeeded: done.filter((j) => j.conclusion === "success").length,
    };
  } finally {
    events.close();
    await jitrunner?.proc.stop();
    await removeHost(docker, host);
    await proxy.close();
  }
}
