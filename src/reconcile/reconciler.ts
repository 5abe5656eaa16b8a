import type { Redis } from "ioredis";
import type { Logger } from "pino";
import type { Config } from "../config/load.ts";
import type { GitHubClient } from "../github/client.ts";
import type { DemandSink } from "../ingress/ingress.ts";
import type { Metrics } from "../metrics/metrics.ts";
import type { DemandQueues } from "../queue/demand-queue.ts";
import { ActiveRepos } from "../state/active-repos.ts";
import type { ActivityRecorder } from "../state/activity.ts";
import { RedeliveryLog } from "../state/redeliveries.ts";
import type { RunnerStore } from "../state/runners.ts";
import { githubDeliveriesLoop } from "./github-deliveries.ts";
import { githubQueuedLoop } from "./github-queued.ts";
import { githubRunnersLoop } from "./github-runners.ts";
import { LeaderElection } from "./leader.ts";
import { LoopRunner, type Loop } from "./loops.ts";

export interface ReconcilerDeps {
  config: Pick<Config, "reconcile" | "pools" | "policy" | "runnerNamePrefix" | "redis"> & { worker: { hostId: string } };
  redis: Redis;
  github: GitHubClient;
  demand: Pick<DemandSink, "add" | "ended" | "addAgain"> & Pick<DemandQueues, "waitingFor" | "taken" | "held">;
  runners: Pick<RunnerStore, "get" | "findByDemand" | "forgetDemand" | "listAll" | "mark">;
  /** Told of failed demand the queued-jobs loop retries (the status page's recent jobs). */
  activity?: Pick<ActivityRecorder, "demandRetried">;
  metrics: Metrics;
  logger: Logger;
}

/**
 * The leader side of reconciliation (docs/reliability.md, "The mechanisms"): one process elected
 * through a Redis lock runs the loops that compare GitHub with Redis. Every process that runs it
 * campaigns; only the leader's loops do anything. (Each worker's host loop lives in the worker.)
 */
export class Reconciler {
  readonly #leader: LeaderElection;
  readonly #loops: LoopRunner;

  constructor(d: ReconcilerDeps) {
    const rc = d.config.reconcile;
    const logger = d.logger.child({ component: "reconcile" });
    const repos = new ActiveRepos(d.redis, d.config.redis.prefix);
    const windowMs = rc.activeWindowSeconds * 1000;
    const common = { windowMs, maxRepositories: rc.maxRepositories, metrics: d.metrics, logger };
    const loops: Loop[] = [
      githubRunnersLoop({
        ...common,
        github: d.github,
        runners: d.runners,
        repos,
        pools: d.config.pools,
        namePrefix: d.config.runnerNamePrefix,
        intervalMs: rc.runnersIntervalSeconds * 1000,
        graceMs: rc.orphanGraceSeconds * 1000,
      }),
      githubQueuedLoop({
        ...common,
        config: d.config,
        github: d.github,
        demand: d.demand,
        runners: d.runners,
        repos,
        intervalMs: rc.queuedIntervalSeconds * 1000,
        maxRunsPerPass: rc.queuedMaxRunsPerPass,
        retryFailedAfterMs: rc.retryFailedDemandSeconds * 1000,
        activity: d.activity,
      }),
    ];
    if (rc.deliveriesIntervalSeconds > 0) {
      loops.push(
        githubDeliveriesLoop({
          ...common,
          github: d.github,
          log: new RedeliveryLog(d.redis, d.config.redis.prefix),
          intervalMs: rc.deliveriesIntervalSeconds * 1000,
          maxPerPass: rc.deliveriesMaxPerPass,
          maxPages: rc.deliveriesMaxPagesPerPass,
          retryBaseMs: rc.deliveriesRetrySeconds * 1000,
        }),
      );
    }
    this.#leader = new LeaderElection({
      redis: d.redis,
      prefix: d.config.redis.prefix,
      host: d.config.worker.hostId,
      lockMs: rc.leaderLockSeconds * 1000,
      metrics: d.metrics,
      logger,
    });
    this.#loops = new LoopRunner({ loops, leader: this.#leader, metrics: d.metrics, logger });
    this.#leader.onChange((leading) => leading && this.#loops.kickLeaderLoops());
  }

  get isLeader(): boolean {
    return this.#leader.isLeader;
  }

  async start(): Promise<void> {
    this.#loops.start();
    await this.#leader.start();
  }

  /** Stops the loops (a pass in flight is aborted), then gives up leadership at once. */
  async close(): Promise<void> {
    await this.#loops.close();
    await this.#leader.close();
  }
}
