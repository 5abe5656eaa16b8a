import type { FastifyInstance } from "fastify";
import type { Redis } from "ioredis";
import type { Logger } from "pino";
import type { Config } from "./config/load.ts";
import { DockerodeDriver } from "./docker/dockerode-driver.ts";
import { errorMessage } from "./errors.ts";
import { OctokitGitHub } from "./github/octokit-client.ts";
import { buildApp } from "./http/app.ts";
import { Ingress } from "./ingress/ingress.ts";
import { Metrics } from "./metrics/metrics.ts";
import { DemandConsumer, DemandQueues, redisConnection } from "./queue/demand-queue.ts";
import { notingActivity } from "./reconcile/repo-activity.ts";
import { Reconciler } from "./reconcile/reconciler.ts";
import { ActiveRepos } from "./state/active-repos.ts";
import { DeliveryLog } from "./state/deliveries.ts";
import { HostStore, PoolLimits } from "./state/hosts.ts";
import { RunnerStore } from "./state/runners.ts";
import { ActivityLog } from "./state/activity.ts";
import { collectStatus } from "./state/status.ts";
import { Launcher } from "./worker/launcher.ts";
import { RunnerEvents } from "./worker/runner-events.ts";
import { RunnerWorker } from "./worker/worker.ts";

export type Mode = "server" | "worker" | "all";

export interface Running {
  app: FastifyInstance;
  /** http://host:port the HTTP server listens on. */
  url: string;
  /** Resolves when this worker has been drained (`jitrunner drain`); never in `server` mode. */
  drained: Promise<void>;
  close(): Promise<void>;
}

/**
 * The composition root: builds every collaborator from the config, starts the parts this mode
 * runs, and returns one `close` that stops them in order (no new webhooks, no new demand, finish
 * in-flight launches, close connections; running runners keep running).
 */
export async function start(config: Config, mode: Mode, logger: Logger): Promise<Running> {
  const connections: Redis[] = [];
  const undo: Array<() => Promise<unknown>> = [];
  try {
    return await startWith(config, mode, logger, connections, undo);
  } catch (err) {
    // A start that fails half-way (engine unreachable, port taken) leaves nothing open.
    await Promise.allSettled(undo.reverse().map((fn) => fn()));
    for (const c of connections) c.disconnect();
    throw err;
  }
}

async function startWith(config: Config, mode: Mode, logger: Logger, connections: Redis[], undo: Array<() => Promise<unknown>>): Promise<Running> {
  const connect = (): Redis => {
    const c = redisConnection(config.redis.url);
    c.on("error", (err) => logger.debug({ err: errorMessage(err) }, "redis connection error"));
    connections.push(c);
    return c;
  };
  const redis = connect();
  // BullMQ loads its Lua scripts into the connection it is given, and ioredis then copies them
  // onto every MULTI on it: our own state writes get a connection of their own (measured in
  // BENCHMARKS.md: about 0.1 ms of server CPU per delivery).
  const queueRedis = connect();
  const metrics = new Metrics();
  const runners = new RunnerStore(redis, config.redis.prefix);
  const activity = new ActivityLog(redis, config.redis.prefix);
  const settings = {
    redisUrl: config.redis.url,
    prefix: config.redis.prefix,
    attempts: config.worker.launchAttempts,
    leaseMs: config.worker.leaseSeconds * 1000,
  };
  const allPools = config.pools.map((p) => p.name);

  const hostStore = new HostStore(redis, config.redis.prefix);
  let queues: DemandQueues | undefined;
  let ingress: Ingress | undefined;
  if (mode !== "worker") {
    queues = new DemandQueues(settings, queueRedis);
    const demand = notingActivity(queues, new ActiveRepos(redis, config.redis.prefix), logger);
    ingress = new Ingress({ config, demand, runners, deliveries: new DeliveryLog(redis, config.redis.prefix), metrics, logger, activity });
    const q = queues;
    metrics.onScrape(async () => {
      const hosts = await hostStore.list();
      metrics.hosts(hosts.map((h) => ({ id: h.id, capacity: h.record?.capacity ?? 0, lastBeatAt: h.lastBeatAt })));
    });
    metrics.onScrape(async () => {
      for (const [pool, counts] of await q.counts(allPools)) {
        metrics.queueJobs(pool, counts);
        metrics.demandPending(pool, counts.waiting + counts.delayed + counts.prioritized + counts.paused);
      }
    });
  }

  let worker: RunnerWorker | undefined;
  let events: RunnerEvents | undefined;
  let reconciler: Reconciler | undefined;
  let reconcilerQueues: DemandQueues | undefined;
  let github: OctokitGitHub | undefined;
  if (mode !== "server") {
    const host = config.worker.hostId;
    const driver = new DockerodeDriver(config.worker.docker);
    github = new OctokitGitHub({
      appId: config.github.appId,
      privateKey: config.secrets.privateKey,
      apiUrl: config.github.apiUrl,
      logger,
      metrics,
      // Installation tokens shared by every process on this Redis.
      redis,
      redisPrefix: config.redis.prefix,
      writes: { max: config.github.writesPerMinute, windowMs: 60_000 },
    });
    events = new RunnerEvents(connect(), runners.eventsChannel);
    await events.start();
    const launcher = new Launcher({
      host,
      namePrefix: config.runnerNamePrefix,
      completedGraceSeconds: config.worker.completedGraceSeconds,
      concurrentStarts: config.worker.concurrentStarts,
      driver,
      github,
      runners,
      events,
      metrics,
    });
    const served = config.worker.pools.length ? config.pools.filter((p) => config.worker.pools.includes(p.name)) : config.pools;
    const sources = new Map(served.map((p) => [p.name, new DemandConsumer(settings, connect(), p.name, `${host}:${process.pid}`)]));
    for (const source of sources.values()) undo.push(() => source.close());
    worker = new RunnerWorker({
      host,
      capacity: config.worker.capacity,
      pools: served,
      checkStillQueued: config.github.checkStillQueued,
      overlapStillQueuedCheckSeconds: config.github.overlapStillQueuedCheckSeconds,
      namePrefix: config.runnerNamePrefix,
      reconcileIntervalSeconds: config.worker.reconcileIntervalSeconds,
      heartbeatSeconds: config.worker.heartbeatSeconds,
      sources,
      launcher,
      driver,
      github,
      runners,
      hosts: hostStore,
      limits: new PoolLimits(redis, config.redis.prefix),
      metrics,
      logger: logger.child({ host }),
      activity,
    });
    await worker.start();
    // Workers campaign for the reconcile leader: they hold GitHub access and exist in every fleet.
    // (Its own producer in `worker` mode: `queues` stays the server's, which the status page keys on.)
    reconcilerQueues = queues ?? new DemandQueues(settings, queueRedis);
    reconciler = new Reconciler({ config, redis, github, demand: reconcilerQueues, runners, metrics, logger });
    await reconciler.start();
  }

  const w = worker;
  const q = queues;
  const app = await buildApp({
    logger,
    metrics,
    webhooks: ingress ? { secret: config.secrets.webhookSecret, bodyLimit: config.server.bodyLimitBytes, ingress } : undefined,
    readiness: async () => {
      const problems: string[] = [];
      await redis.ping().catch((err) => problems.push(`redis: ${errorMessage(err)}`));
      if (w?.problem) problems.push(w.problem);
      return problems;
    },
    status: q && {
      snapshot: () => collectStatus({ pools: config.pools, runners, hosts: hostStore, activity, pending: (pools) => q.pending(pools) }),
      adminToken: config.secrets.adminToken,
    },
    metricsToken: config.secrets.metricsToken,
  });
  const url = await app.listen({ host: config.server.host, port: config.server.port });
  logger.info({ mode, url }, "jitrunner started");

  let closing: Promise<void> | undefined;
  const close = () =>
    (closing ??= (async () => {
      await app.close();
      await reconciler?.close();
      await worker?.stop();
      github?.close();
      await queues?.close();
      if (reconcilerQueues !== queues) await reconcilerQueues?.close();
      await events?.close();
      await Promise.allSettled(connections.map((c) => c.quit()));
    })());
  return { app, url, close, drained: worker?.drained ?? new Promise<void>(() => undefined) };
}
