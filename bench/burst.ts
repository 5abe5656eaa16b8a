/**
 * Burst: N queued jobs at once on one engine with a capacity limit, every one served by a real
 * DinD runner that runs its job. What it costs: scheduler CPU, Redis commands and GitHub calls
 * per job, and the RSS of the server and the worker (separate processes, so each is measured).
 */
import { randomBytes } from "node:crypto";
import type Docker from "dockerode";
import type { FakeGitHub } from "../test/fakes/github/index.ts";
import { ContainerEvents, maxRunning } from "./lib/docker-events.ts";
import { JOB_LABELS, runnerPool, startJitrunner, type RunningJitrunner } from "./lib/jitrunner.ts";
import { commandDelta, sample, type BenchRedis, type ProcSample } from "./lib/procs.ts";
import { summarize, type Summary } from "./lib/stats.ts";
import { removeHost, timelines, waitQuiet } from "./pickup.ts";

const JOBS = Number(process.env.BENCH_BURST_JOBS ?? 200);
const CAPACITY = Number(process.env.BENCH_BURST_CAPACITY ?? 4);
const SETTLE_MS = 15_000;
const IDLE_WINDOW_MS = 15_000;

export interface ProcCost {
  /** CPU over the whole burst, ms */
  cpuMs: number;
  /** CPU per second while idle (same processes, before the burst), ms/s */
  idleCpuMsPerS: number;
  idle: ProcSample;
  after: ProcSample;
}

export interface BurstResult {
  settleS: number;
  idleWindowS: number;
  jobs: number;
  capacity: number;
  served: number;
  succeeded: number;
  distinctRunners: number;
  registrationsLeft: number;
  containersLeft: number;
  maxRunning: number;
  launchFailures: number;
  /** first webhook sent -> last runner container gone, ms */
  makespanMs: number;
  /** sum over runners of start -> die, ms */
  runnerMs: number;
  lifetime: Summary;
  pickup: Summary;
  /** gaps between consecutive container creates */
  createGaps: Summary;
  server: ProcCost;
  worker: ProcCost;
  redis: { commands: number; byCommand: Map<string, number>; idleCommandsPerS: number; cpuMs: number; idleCpuMsPerS: number };
  github: { calls: number; byRoute: Map<string, number> };
  webhooks: number;
}

export async function runBurst(dir: string, redis: BenchRedis, docker: Docker, fake: FakeGitHub, progress: (msg: string) => void): Promise<BurstResult> {
  const tag = randomBytes(3).toString("hex");
  const prefix = `bench-burst-${tag}`;
  const host = `bench-burst-${tag}`;
  const common = { dir, redisUrl: redis.url, prefix, privateKey: fake.privateKey, appId: fake.appId, apiUrl: fake.url, pools: [runnerPool(fake)], hostId: host, capacity: CAPACITY };
  const events = await ContainerEvents.open(docker, `dev.jitrunner.host=${host}`);
  let server: RunningJitrunner | undefined;
  let worker: RunningJitrunner | undefined;
  try {
    server = await startJitrunner({ ...common, name: "burst-server", mode: "server" });
    worker = await startJitrunner({ ...common, name: "burst-worker", mode: "worker" });
    fake.setWebhookUrl(`${server.url}/webhooks/github`);

    progress(`burst: ${SETTLE_MS / 1000} s to settle, then a ${IDLE_WINDOW_MS / 1000} s idle window (what server, worker and Redis cost doing nothing)`);
    await new Promise((r) => setTimeout(r, SETTLE_MS));
    const idle0 = { server: sample(server.proc.pid), worker: sample(worker.proc.pid), cmds: await redis.commandstats(), redisCpu: await redis.cpuMs() };
    await new Promise((r) => setTimeout(r, IDLE_WINDOW_MS));
    const idle1 = { server: sample(server.proc.pid), worker: sample(worker.proc.pid), cmds: await redis.commandstats(), redisCpu: await redis.cpuMs() };
    const perS = (a: number, b: number) => ((b - a) / IDLE_WINDOW_MS) * 1000;

    progress(`burst: ${JOBS} jobs at once, capacity ${CAPACITY}, one engine`);
    const firstRequest = fake.requests.length;
    const firstDelivery = fake.deliveries.length;
    const t0 = Date.now();
    const jobs = await Promise.all(Array.from({ length: JOBS }, (_, i) => fake.queueJob({ owner: "acme", repo: `burst${i % 5}`, labels: JOB_LABELS })));
    const ids = new Set(jobs.map((j) => j.id));
    let reported = 0;
    await fake.waitFor(
      () => {
        const done = fake.jobs().filter((j) => ids.has(j.id) && j.status === "completed").length;
        if (done >= reported + 25) progress(`burst: ${(reported = done - (done % 25))}/${JOBS} jobs done`);
        return done === JOBS;
      },
      JOBS * 4_000 + 60_000,
      `${JOBS} burst jobs to complete`,
    );
    await waitQuiet(fake, events, 120_000, "burst runners to go");
    const makespanMs = Math.max(...events.all().map((lc) => lc.destroy ?? 0)) - t0;
    const end = { server: sample(server.proc.pid), worker: sample(worker.proc.pid), cmds: await redis.commandstats(), redisCpu: await redis.cpuMs() };

    const containers = events.all().filter((lc) => lc.start !== undefined);
    const lifetimes = containers.flatMap((lc) => (lc.die === undefined ? [] : [lc.die - lc.start!]));
    const creates = containers.map((lc) => lc.create ?? Number.NaN).sort((a, b) => a - b);
    const metrics = await (await fetch(`${worker.url}/metrics`)).text();
    const launchFailures = [...metrics.matchAll(/^jitrunner_launch_failures_total\{[^}]*\} (\S+)$/gm)].reduce((a, m) => a + Number(m[1]), 0);
    const byRoute = new Map<string, number>();
    const calls = fake.requests.slice(firstRequest);
    for (const r of calls) byRoute.set(`${r.method} ${r.route}`, (byRoute.get(`${r.method} ${r.route}`) ?? 0) + 1);
    const done = fake.jobs().filter((j) => ids.has(j.id));
    const cmds = commandDelta(idle1.cmds, end.cmds);
    const idleCmds = commandDelta(idle0.cmds, idle1.cmds);
    const pickups = (await timelines(redis.url, prefix, containers)).map((p) => p.started - p.t0);
    return {
      settleS: SETTLE_MS / 1000,
      idleWindowS: IDLE_WINDOW_MS / 1000,
      jobs: JOBS,
      capacity: CAPACITY,
      served: done.filter((j) => j.status === "completed").length,
      succeeded: done.filter((j) => j.conclusion === "success").length,
      distinctRunners: new Set(done.map((j) => j.runner_name)).size,
      registrationsLeft: fake.runners().length,
      containersLeft: (await docker.listContainers({ all: true, filters: { label: [`dev.jitrunner.host=${host}`] } })).length,
      maxRunning: maxRunning(containers),
      launchFailures,
      makespanMs,
      runnerMs: lifetimes.reduce((a, b) => a + b, 0),
      lifetime: summarize(lifetimes),
      pickup: summarize(pickups),
      createGaps: summarize(creates.slice(1).map((c, i) => c - creates[i]!)),
      server: {
        cpuMs: end.server.cpuMs - idle1.server.cpuMs,
        idleCpuMsPerS: perS(idle0.server.cpuMs, idle1.server.cpuMs),
        idle: idle1.server,
        after: end.server,
      },
      worker: {
        cpuMs: end.worker.cpuMs - idle1.worker.cpuMs,
        idleCpuMsPerS: perS(idle0.worker.cpuMs, idle1.worker.cpuMs),
        idle: idle1.worker,
        after: end.worker,
      },
      redis: {
        commands: cmds.total,
        byCommand: cmds.byCommand,
        idleCommandsPerS: perS(0, idleCmds.total),
        cpuMs: end.redisCpu - idle1.redisCpu,
        idleCpuMsPerS: perS(idle0.redisCpu, idle1.redisCpu),
      },
      github: { calls: calls.length, byRoute },
      webhooks: fake.deliveries.length - firstDelivery,
    };
  } finally {
    events.close();
    await worker?.proc.stop();
    await server?.proc.stop();
    await removeHost(docker, host);
  }
}
