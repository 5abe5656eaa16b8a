import type { FastifyInstance } from "fastify";
import type { Redis, RedisOptions } from "ioredis";
import type { Logger } from "pino";
import { secretsNeeded, type Config } from "./config/load.ts";
import { DockerodeDriver, type DockerFiles } from "./docker/dockerode-driver.ts";
import { ConfigError, errorMessage, JitrunnerError, redact, StartAbortedError } from "./errors.ts";
import { AppCredentialsCheck } from "./github/app-check.ts";
import { OctokitGitHub } from "./github/octokit-client.ts";
import { buildApp, REQUEST_TIMEOUT_MS } from "./http/app.ts";
import { Ingress } from "./ingress/ingress.ts";
import { Metrics } from "./metrics/metrics.ts";
import { DemandConsumer, DemandQueues, FAIL_FAST, redisConnection } from "./queue/demand-queue.ts";
import { addressPasswords, redisAddressOf, redisTarget } from "./queue/redis-address.ts";
import { notingActivity } from "./reconcile/repo-activity.ts";
import { Reconciler } from "./reconcile/reconciler.ts";
import { ActiveRepos } from "./state/active-repos.ts";
import { DeliveryLog } from "./state/deliveries.ts";
import { HostStore, PoolLimits } from "./state/hosts.ts";
import { RunnerStore } from "./state/runners.ts";
import { RedeliveryLog } from "./state/redeliveries.ts";
import { ActivityLog } from "./state/activity.ts";
import { collectStatus } from "./state/status.ts";
import { within } from "./timers.ts";
import { Launcher } from "./worker/launcher.ts";
import { RunnerEvents } from "./worker/runner-events.ts";
import { RunnerWorker } from "./worker/worker.ts";

export type Mode = "server" | "worker" | "all";

export interface StartOptions {
  /**
   * The options the environment set, and by which variable ("server.port" -> "JITRUNNER_PORT"),
   * as loadConfigWithOrigins returns them: an error about a value names where it came from.
   */
  origins?: ReadonlyMap<string, string>;
  /** The worker's Docker TLS files, read already (before the process ran on as another user). */
  dockerFiles?: DockerFiles;
  /**
   * Aborted: a stop was asked for during the start. Until the worker has started, the start goes no
   * further than the step it is in, undoes what it began and rejects with StartAbortedError. Once
   * the worker has started (its demand loops run), the start ends as ever: its caller stops it as
   * any process that started, with close()'s outcome (runUntilStopped), not an undo whose failure
   * would go unsaid and whose stop of in-flight launches the start's own wait would cut short.
   */
  signal?: AbortSignal;
}

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
export async function start(config: Config, mode: Mode, logger: Logger, opts: StartOptions = {}): Promise<Running> {
  // A config loaded for another mode (loadConfig's secretsFor) lacks a secret this one needs: an
  // empty webhook secret would let anyone sign deliveries.
  const needs = secretsNeeded(mode);
  if (needs.privateKey && !config.secrets.privateKey.reveal()) throw new ConfigError([`${mode} mode needs the GitHub App's private key`]);
  if (needs.webhookSecret && !config.secrets.webhookSecret.reveal()) throw new ConfigError([`${mode} mode needs the webhook secret`]);
  const connections: Redis[] = [];
  const undo: Array<() => Promise<unknown>> = [];
  const waitNote = new RedisWaitNote(logger, redisTarget(redisAddressOf(config), opts.origins), connections);
  try {
    return await startWith(config, mode, logger, opts, connections, undo, waitNote);
  } catch (err) {
    // A start that fails half-way (engine unreachable, port taken) leaves nothing open.
    await Promise.allSettled(undo.reverse().map((fn) => fn()));
    for (const c of connections) c.disconnect();
    throw err;
  } finally {
    waitNote.end();
  }
}

/** How often a start still waiting for Redis says so again. */
const REDIS_WAIT_NOTE_MS = 30_000;

/**
 * Says at warn, while the start waits for Redis, which Redis it waits for and the option (or
 * variable) that named it: at the first connection error, then every REDIS_WAIT_NOTE_MS while a
 * connection is still not ready, until the start ends. A connection's error alone names neither,
 * and a worker's start waits for Redis for as long as it takes, saying nothing else.
 */
class RedisWaitNote {
  readonly #logger: Logger;
  readonly #message: string;
  readonly #connections: readonly Redis[];
  #timer: NodeJS.Timeout | undefined;
  #lastError: string | undefined;
  #ended = false;

  /** `target`: the Redis as redisTarget says it (its URL without a password, or the master and sentinels). */
  constructor(logger: Logger, target: string, connections: readonly Redis[]) {
    this.#logger = logger;
    this.#message = `waiting for Redis at ${target}`;
    this.#connections = connections;
  }

  /** A connection failed (its error as redisErrorText says it). */
  failed(err: string): void {
    this.#lastError = err;
    if (this.#ended || this.#timer) return;
    this.#logger.warn({ err }, this.#message);
    this.#timer = setInterval(() => {
      if (this.#connections.some((c) => c.status !== "ready")) this.#logger.warn({ err: this.#lastError }, this.#message);
    }, REDIS_WAIT_NOTE_MS);
    this.#timer.unref();
  }

  /** The start is over (started or failed): nothing more is said. */
  end(): void {
    this.#ended = true;
    clearInterval(this.#timer);
  }
}

async function startWith(
  config: Config,
  mode: Mode,
  logger: Logger,
  opts: StartOptions,
  connections: Redis[],
  undo: Array<() => Promise<unknown>>,
  waitNote: RedisWaitNote,
): Promise<Running> {
  // Each connection's last error, redacted, until it is ready again: what readiness says of a Redis
  // that is not connected (its status alone, connecting or reconnecting, says nothing of why).
  const lastErrors = new Map<Redis, string>();
  // The HTTP side's errors said at warn, once each: a server whose Redis refuses its password, or
  // whose Redis host does not resolve, listens and answers 503 for good, and nothing else says why
  // (the worker's start fails with the error instead). Repeats, and the worker's, go at debug.
  const warned = new Set<string>();
  const address = redisAddressOf(config);
  const passwords = addressPasswords(address);
  const connect = (options: RedisOptions = {}, warn = false): Redis => {
    const c = redisConnection(address, options);
    // A sentinel that could not be asked, when another could: the connection goes on through the others.
    c.on("sentinelError", (err) => logger.debug({ err: redisErrorText(err, passwords) }, "redis sentinel error"));
    c.on("error", (err) => {
      // ioredis goes on through its list of sentinels from where its last connection found the
      // master: when that was the last one, its next reconnection first runs off the list's end
      // and says so ("All sentinels are unreachable", no sentinel's error with it), then asks from
      // the first. No sentinel was asked: not an outage.
      if (/^All sentinels are unreachable\. Retrying from scratch after \d+ms\.$/.test(errorMessage(err))) {
        logger.debug("redis sentinel list read to its end: asking from the first sentinel again");
        // During the start no connection found the master yet: every sentinel was asked, in vain.
        waitNote.failed("all sentinels unreachable");
        return;
      }
      const said = redisErrorText(err, passwords);
      lastErrors.set(c, said);
      waitNote.failed(said);
      if (warn && !warned.has(said) && warned.size < WARNED_MAX) {
        warned.add(said);
        logger.warn({ err: said }, "redis connection error");
      } else logger.debug({ err: said }, "redis connection error");
    });
    c.on("ready", () => lastErrors.delete(c));
    connections.push(c);
    return c;
  };
  const metrics = new Metrics();
  const prefix = config.redis.prefix;
  const settings = {
    redisUrl: config.redis.url,
    prefix,
    attempts: config.worker.launchAttempts,
    leaseMs: config.worker.leaseSeconds * 1000,
  };
  const allPools = config.pools.map((p) => p.name);

  // The HTTP side (webhooks, status page, scrapes, readiness) answers callers that will not wait:
  // its connections fail fast while Redis is away (FAIL_FAST). The worker's and the reconciler's
  // wait for Redis to come back, with their own retries and backoff.
  let http: { redis: Redis; queueRedis: Redis; queues: DemandQueues; runners: RunnerStore; activity: ActivityLog; hosts: HostStore; ingress: Ingress } | undefined;
  if (mode !== "worker") {
    const redis = connect(FAIL_FAST, true);
    // BullMQ loads its Lua scripts into the connection it is given, and ioredis then copies them
    // onto every MULTI on it: our own state writes get a connection of their own (measured in
    // BENCHMARKS.md: about 0.1 ms of server CPU per delivery).
    const queueRedis = connect(FAIL_FAST, true);
    // They hold no command until connected: listening before would refuse the first deliveries.
    // A Redis that is down does not keep the server from starting (unready, answering 503).
    await Promise.all([readyWithin(redis, STARTUP_REDIS_WAIT_MS), readyWithin(queueRedis, STARTUP_REDIS_WAIT_MS)]);
    const queues = new DemandQueues(settings, queueRedis);
    const runners = new RunnerStore(redis, prefix);
    const activity = new ActivityLog(redis, prefix);
    const hosts = new HostStore(redis, prefix);
    const demand = notingActivity(queues, new ActiveRepos(redis, prefix), config.pools, logger);
    // However many deliveries wait for Redis to come back, one listener per connection.
    let bothReady: Promise<unknown> | undefined;
    const redisReconnected = async () => {
      bothReady ??= Promise.all([redis, queueRedis].map((c) => (c.status === "ready" ? Promise.resolve() : new Promise((r) => c.once("ready", r))))).finally(() => {
        bothReady = undefined;
      });
      await within(bothReady, config.server.redisWaitSeconds * 1000, "redis did not come back").catch(() => undefined);
      return redis.status === "ready" && queueRedis.status === "ready";
    };
    const ingress = new Ingress({ config, demand, runners, repositories: runners, deliveries: new DeliveryLog(redis, prefix), metrics, logger, activity, redisReconnected });
    http = { redis, queueRedis, queues, runners, activity, hosts, ingress };
    metrics.onScrape(async () => {
      const list = await hosts.list();
      metrics.hosts(list.map((h) => ({ id: h.id, capacity: h.record?.capacity ?? 0, beatAgeMs: h.beatAgeMs, stoppedCleanly: h.stoppedCleanly })));
    });
    if (config.reconcile.deliveriesIntervalSeconds > 0) {
      const redeliveries = new RedeliveryLog(redis, prefix);
      metrics.onScrape(async () => metrics.deliveriesReadLag((await redeliveries.readLagMs()) / 1000));
    }
    metrics.onScrape(async () => {
      for (const [pool, counts] of await queues.counts(allPools)) {
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
  /** The App's credentials, asked of GitHub once at start (and again while refused): processes that call GitHub. */
  let appCheck: AppCredentialsCheck | undefined;
  let redis: Redis | undefined;
  if (mode !== "server") {
    redis = connect();
    const runners = new RunnerStore(redis, prefix);
    const activity = new ActivityLog(redis, prefix);
    const hostStore = new HostStore(redis, prefix);
    const host = config.worker.hostId;
    const driver = new DockerodeDriver(config.worker.docker, { warn: (message) => logger.warn({ docker: "connection" }, message), files: opts.dockerFiles });
    github = new OctokitGitHub({
      appId: config.github.appId,
      privateKey: config.secrets.privateKey,
      apiUrl: config.github.apiUrl,
      logger,
      metrics,
      // Installation tokens shared by every process on this Redis.
      redis,
      redisPrefix: prefix,
      writes: { max: config.github.writesPerMinute, windowMs: 60_000 },
      concurrentCalls: config.github.concurrentCalls,
    });
    appCheck = new AppCredentialsCheck({ github, logger });
    events = new RunnerEvents(connect(), runners.eventsChannel);
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
      goneHostBusyCheckSeconds: config.worker.goneHostBusyCheckSeconds,
      heartbeatSeconds: config.worker.heartbeatSeconds,
      stopTimeoutSeconds: config.worker.stopTimeoutSeconds,
      sources,
      launcher,
      driver,
      github,
      runners,
      hosts: hostStore,
      limits: new PoolLimits(redis, prefix),
      metrics,
      logger: logger.child({ host }),
      activity,
      events,
    });
    // Workers campaign for the reconcile leader: they hold GitHub access and exist in every fleet.
    // Its producer is its own (in `all` mode too): the server's fails fast while Redis is away.
    reconcilerQueues = new DemandQueues(settings, connect());
    reconciler = new Reconciler({ config, redis, github, demand: reconcilerQueues, runners, activity, metrics, logger });
  }

  const w = worker;
  // Unready until the worker has started (its engine answered, its first host pass done).
  let workerStarted = false;
  // Ready once every connection a webhook needs answers (the HTTP side's two), else the worker's.
  const readinessRedis = http ? [http.redis, http.queueRedis] : redis ? [redis] : [];
  // Why Redis made the last answer unready (pingProblem): logged when it changes, as /readyz does
  // not say it.
  let redisSaid: string | undefined;
  const app = await buildApp({
    logger,
    metrics,
    webhooks: http && {
      secret: config.secrets.webhookSecret,
      ...(config.secrets.previousWebhookSecret && { previousSecret: config.secrets.previousWebhookSecret }),
      bodyLimit: config.server.bodyLimitBytes,
      ingress: http.ingress,
    },
    // Fixed reasons only: /readyz needs no token, and the words of Redis, GitHub or Docker can
    // name hosts, organizations, runner groups, images or keys. They go to the log.
    readiness: async () => {
      const problems: string[] = [];
      const redisProblem = (await Promise.all(readinessRedis.map((c) => pingProblem(c, lastErrors.get(c))))).find((p) => p !== undefined);
      if (redisProblem && redisProblem !== redisSaid) logger.warn({ err: redisProblem }, `not ready: ${REDIS_UNAVAILABLE}`);
      redisSaid = redisProblem;
      if (redisProblem) problems.push(REDIS_UNAVAILABLE);
      if (w && !workerStarted) problems.push("worker: starting");
      if (w) problems.push(...w.problems);
      if (appCheck?.problem) problems.push(appCheck.problem);
      return problems;
    },
    status: http && {
      snapshot: () => collectStatus({ pools: config.pools, runners: http.runners, hosts: http.hosts, activity: http.activity, pending: (pools) => http.queues.pending(pools) }),
      adminToken: config.secrets.adminToken,
    },
    metricsToken: config.secrets.metricsToken,
  });
  const beginHttpClose = closeConnectionsAfterResponses(app);
  // As close() does: a keep-alive client, or one stalled mid-body, would hold the close for good,
  // and the failed start would neither listen nor exit.
  undo.push(() => {
    beginHttpClose();
    return app.close();
  });
  // A stop asked for during the start (StartOptions.signal): no step further; the caller undoes.
  const going = () => {
    if (opts.signal?.aborted) throw new StartAbortedError();
  };
  going();
  // Bound before the worker and the reconciler start: a port taken fails the start before a host
  // record, a leader lock or a demand lease exists that the undo would have to take back.
  const url = await app.listen({ host: config.server.host, port: config.server.port }).catch((err: unknown) => {
    throw listenError(err, config.server, opts.origins?.get("server.port"));
  });
  if (worker && reconciler && events && github) {
    const [wk, gh, ev, rec] = [worker, github, events, reconciler];
    // Undone in close()'s order. A worker whose start fails stops what it started (RunnerWorker.start).
    let reconcilerUp = false;
    undo.push(async () => {
      appCheck?.stop();
      if (reconcilerUp) await rec.close();
      if (workerStarted) await wk.stop();
      gh.close();
      await ev.close();
    });
    going();
    // Not waited for: GitHub slow or away must not hold the start; a refusal makes the process unready.
    appCheck?.start();
    await ev.start();
    going();
    await wk.start();
    workerStarted = true;
    // Its demand loops run from here: the start goes on to its end (one quick step), and a stop
    // asked for by now is the caller's to do, as after any start (see StartOptions.signal).
    await rec.start();
    reconcilerUp = true;
  }
  if (!workerStarted) going();
  logger.info({ mode, url }, "jitrunner started");

  let closing: Promise<void> | undefined;
  const close = () =>
    (closing ??= (async () => {
      // The HTTP side, the leader and the worker stop side by side: a keep-alive client (a proxy,
      // a scraper) must not hold up the launches' end, nor the launches the HTTP server's; nor
      // the leader's pass in flight (up to two Redis calls of a third of its lock each) the
      // worker's stop, during which it would take demand after saying it takes none (and a
      // failed leader close would skip the worker's stop). A delivery in flight still reaches the
      // queue: it closes below, once all are done.
      beginHttpClose();
      const stopped = await Promise.allSettled([app.close(), reconciler?.close(), worker?.stop()]);
      appCheck?.stop();
      github?.close();
      // Each whatever the others do: one that fails leaves none of the rest, nor the quits, undone.
      const closed = await Promise.allSettled([http?.queues.close(), reconcilerQueues?.close(), events?.close()]);
      // A quit waits for the commands before it: with Redis away, for ever. Past QUIT_WAIT_MS, cut.
      await Promise.allSettled(
        connections.map(async (c) => {
          if (c.status === "ready") await within(c.quit(), QUIT_WAIT_MS, "").catch(() => c.disconnect());
          else c.disconnect();
        }),
      );
      const failed = [...stopped, ...closed].find((r) => r.status === "rejected");
      if (failed) throw failed.reason;
    })());
  return { app, url, close, drained: worker?.drained ?? new Promise<void>(() => undefined) };
}

/**
 * Node's and Fastify's close ends only the connections idle when it starts: a keep-alive
 * connection whose request is in flight then stays open after its response until the client
 * leaves or keepAliveTimeout (72 s) passes, and app.close() waits for it. Once the function
 * returned is called, every response says `Connection: close` (Node then ends its connection),
 * and each finished response closes the connections left idle, so close ends right after the
 * in-flight responses (and what is still open REQUEST_TIMEOUT_MS later is cut). Hooks must be
 * added before the app is ready: call this before listen.
 */
function closeConnectionsAfterResponses(app: FastifyInstance): () => void {
  let closing = false;
  // Callback hooks, not async ones: they run on every response, webhooks included, and cost no
  // promise while the process is not closing.
  app.addHook("onSend", (_req, reply, payload, done) => {
    if (closing && !reply.raw.headersSent) void reply.header("connection", "close");
    done(null, payload);
  });
  app.addHook("onResponse", (_req, _reply, done) => {
    if (closing) app.server.closeIdleConnections();
    done();
  });
  return () => {
    closing = true;
    // Node stops timing requests out once its server closes (REQUEST_TIMEOUT_MS): a client that
    // stalls mid-body would hold the stop for good. What is still open that long after is cut.
    const cut = setTimeout(() => app.server.closeAllConnections(), REQUEST_TIMEOUT_MS);
    cut.unref();
    app.server.once("close", () => clearTimeout(cut));
  };
}

/**
 * Why the HTTP listener could not bind, in an operator's words: which option, set where, and what
 * to do. `from`: the environment variable that set server.port, if one did. Other errors as they are.
 */
function listenError(err: unknown, server: { host: string; port: number }, from: string | undefined): unknown {
  const code = (err as NodeJS.ErrnoException).code;
  const option = `server.port ${server.port}${from ? ` (from ${from})` : ""}`;
  // Where to change it, unless the message already names the variable that set it.
  const where = from ? "" : " (server.port in the config, or JITRUNNER_PORT)";
  if (code === "EADDRINUSE") {
    return new JitrunnerError("E_LISTEN", `${option} is in use on ${server.host}: pick another port${where} or stop the process using it`, { cause: err });
  }
  if (code === "EACCES") {
    const message = `${option} cannot be bound on ${server.host}: permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE): pick one of 1024 or more${where}`;
    return new JitrunnerError("E_LISTEN", message, { cause: err });
  }
  return err;
}

/** How long a stopping process lets a Redis connection send what it holds before it cuts it. */
const QUIT_WAIT_MS = 3_000;

/** How long a server's start waits for its Redis connections before it listens regardless. */
const STARTUP_REDIS_WAIT_MS = 5_000;

/** Resolves once `redis` is connected and ready, or after `ms`, whichever comes first. */
function readyWithin(redis: Redis, ms: number): Promise<void> {
  if (redis.status === "ready") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      redis.off("ready", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    redis.once("ready", done);
  });
}

/** How long readiness waits for Redis's answer to a ping. */
const READY_PING_MS = 2_000;

/** What /readyz says of a Redis that is not connected or does not answer a ping (pingProblem says why, to the log). */
const REDIS_UNAVAILABLE = "redis: unavailable";

/**
 * Why Redis makes this process unready, or undefined; answers within READY_PING_MS. `lastError`:
 * the connection's last error since it was last ready (redisErrorText), if any.
 */
async function pingProblem(redis: Redis, lastError: string | undefined): Promise<string | undefined> {
  // Not connected: said at once, rather than a ping left waiting for the reconnection. Not its
  // status: ioredis goes from connecting to reconnecting and back with each try, and each change
  // would be logged as a new problem.
  if (redis.status !== "ready") return `redis: not connected${lastError ? `: ${lastError}` : ""}`;
  try {
    await within(redis.ping(), READY_PING_MS, `no answer to a ping within ${READY_PING_MS} ms`);
    return undefined;
  } catch (err) {
    return `redis: ${errorMessage(err)}`;
  }
}

/** Distinct connection errors said at warn at most (a message naming something that changes, at debug past them). */
const WARNED_MAX = 20;

/**
 * A Redis connection's error as the log and readiness say it: its message redacted (redact), and
 * the address's passwords (addressPasswords), should the message hold one, hidden too. The delay
 * ioredis names when no sentinel answered (it grows with each try) is left out: the same outage
 * reads the same, and is warned of once.
 */
function redisErrorText(err: unknown, passwords: string[]): string {
  const text = redact(errorMessage(err)).replace(/(All sentinels are unreachable\. Retrying from scratch) after \d+ms\./, "$1.");
  return passwords.reduce((said, password) => said.replaceAll(password, "[redacted]"), text);
}
