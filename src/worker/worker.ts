import type { Logger } from "pino";
import type { PoolConfig } from "../config/load.ts";
import { LABEL, MANAGED_BY } from "../docker/labels.ts";
import type { RunnerDriver } from "../docker/driver.ts";
import { errorMessage } from "../errors.ts";
import type { GitHubClient } from "../github/client.ts";
import type { Metrics } from "../metrics/metrics.ts";
import type { Lease } from "../queue/demand-queue.ts";
import type { RunnerStore } from "../state/runners.ts";
import { Launcher, type Tracked } from "./launcher.ts";
import { Slots } from "./slots.ts";
import { needsRunner } from "./still-queued.ts";

/** Where a worker takes demand from, per pool (BullMQ in production). */
export interface DemandSource {
  start(): Promise<void>;
  next(): Promise<Lease | undefined>;
  close(): Promise<void>;
}

export interface WorkerDeps {
  host: string;
  capacity: number;
  pools: PoolConfig[];
  checkStillQueued: boolean;
  namePrefix: string;
  reconcileIntervalSeconds: number;
  sources: Map<string, DemandSource>;
  launcher: Launcher;
  driver: RunnerDriver;
  github: GitHubClient;
  runners: RunnerStore;
  metrics: Metrics;
  logger: Logger;
}

/**
 * Takes demand while it has free slots and holds each lease for the life of the runner it
 * launched. Stopping takes no new demand and lets in-flight launches finish; running runners keep
 * running (a restarted worker adopts them).
 */
export class RunnerWorker {
  readonly #d: WorkerDeps;
  readonly #slots: Slots;
  readonly #pools: Map<string, PoolConfig>;
  readonly #launches = new Set<Promise<unknown>>();
  readonly #serving = new Set<Promise<unknown>>();
  readonly #shutdown = new AbortController();
  readonly #loops: Promise<void>[] = [];
  #stopping = false;
  #reconcileTimer: NodeJS.Timeout | undefined;
  #lastError: string | undefined;

  constructor(deps: WorkerDeps) {
    this.#d = deps;
    this.#slots = new Slots(deps.capacity);
    this.#pools = new Map(deps.pools.map((p) => [p.name, p]));
    deps.metrics.onScrape(async () => deps.metrics.runners(deps.host, this.#counts()));
  }

  /** Problems that make this worker unready. */
  get problem(): string | undefined {
    return this.#lastError;
  }

  async start(): Promise<void> {
    await this.#d.driver.ping();
    await this.reconcile();
    for (const [pool, source] of this.#d.sources) {
      await source.start();
      this.#loops.push(this.#loop(pool, source));
    }
    const tick = () => {
      this.#reconcileTimer = setTimeout(async () => {
        await this.reconcile();
        if (!this.#stopping) tick();
      }, this.#d.reconcileIntervalSeconds * 1000);
      this.#reconcileTimer.unref();
    };
    tick();
    this.#d.logger.info({ host: this.#d.host, capacity: this.#d.capacity, pools: [...this.#d.sources.keys()] }, "worker started");
  }

  async stop(): Promise<void> {
    this.#stopping = true;
    clearTimeout(this.#reconcileTimer);
    // Watching stops at once; launches in flight finish first, then hand their demand back.
    this.#shutdown.abort();
    await Promise.allSettled([...this.#d.sources.values()].map((s) => s.close()));
    await Promise.allSettled(this.#loops);
    await Promise.allSettled([...this.#launches]);
    await Promise.allSettled([...this.#serving]);
    this.#d.logger.info({ running: this.#d.launcher.tracked.size }, "worker stopped; running runners left running");
  }

  async #loop(pool: string, source: DemandSource): Promise<void> {
    let failures = 0;
    while (!this.#stopping) {
      await this.#slots.acquire();
      let lease: Lease | undefined;
      try {
        lease = this.#stopping ? undefined : await source.next();
        failures = 0;
      } catch (err) {
        failures++;
        this.#noteError(`taking demand for pool ${pool} failed: ${errorMessage(err)}`, failures === 1);
        await sleep(Math.min(30_000, 500 * 2 ** failures));
      }
      if (!lease) {
        this.#slots.release();
        continue;
      }
      const serving = this.#serve(lease).finally(() => {
        this.#slots.release();
        this.#serving.delete(serving);
      });
      this.#serving.add(serving);
    }
  }

  async #serve(lease: Lease): Promise<void> {
    const { demand } = lease;
    const pool = this.#pools.get(demand.pool)!;
    const log = this.#d.logger.child({ demandId: lease.id, jobId: demand.jobId, pool: pool.name, deliveryId: demand.deliveryId });
    try {
      const existing = await this.#d.runners.findByDemand(lease.id);
      if (existing) {
        // Taken over from a worker that stopped. Its runner served the demand, or still runs:
        // then wait for it to end (the host that has it removes it). No second runner either way.
        log.info({ runner: existing.name, host: existing.record?.host }, "demand already has a runner");
        if (existing.record) await this.#waitGone(existing.name);
        if (this.#stopping) await lease.release();
        else await lease.complete("served_by_earlier_runner");
        return;
      }
      if (this.#d.checkStillQueued && !(await this.#stillNeeded(lease, log))) {
        await lease.complete("not_needed");
        return;
      }
      const started = Date.now();
      const launching = this.#d.launcher.launch(demand, pool, log);
      this.#launches.add(launching);
      let tracked: Tracked;
      try {
        tracked = await launching;
      } finally {
        this.#launches.delete(launching);
      }
      this.#d.metrics.launched(pool.name, (Date.now() - started) / 1000, (Date.now() - demand.receivedAt) / 1000);
      this.#lastError = undefined;
      const reason = await this.#d.launcher.watch(tracked, pool, log, this.#shutdown.signal);
      if (reason === "shutdown") {
        await lease.release();
        return;
      }
      await this.#d.launcher.teardown(tracked.record, reason, log).catch((err) => {
        log.warn({ err: errorMessage(err) }, "teardown incomplete; the reconciler will retry");
      });
      await lease.complete(reason);
    } catch (err) {
      const retryable = (err as { retryable?: boolean }).retryable ?? true;
      this.#d.metrics.launchFailed(pool.name, (err as { code?: string }).code ?? "error");
      this.#noteError(`launch for pool ${pool.name} failed: ${errorMessage(err)}`, false);
      log.warn({ attempt: lease.attempt, retryable, err: errorMessage(err) }, "demand failed; returned to the queue");
      await lease.fail(err instanceof Error ? err : new Error(String(err)), !retryable).catch(() => undefined);
    }
  }

  /** GitHub's word on whether the job still needs a runner; on any API error, it does. */
  async #stillNeeded(lease: Lease, log: Logger): Promise<boolean> {
    const { demand } = lease;
    try {
      const job = await this.#d.github.getJob(demand.installationId, demand.owner, demand.repo, demand.jobId);
      const needed = needsRunner(job, this.#d.namePrefix);
      if (!needed) log.info({ status: job.status, conclusion: job.conclusion }, "job no longer needs a runner; skipped");
      return needed;
    } catch (err) {
      log.warn({ err: errorMessage(err) }, "still-queued check failed; launching anyway");
      return true;
    }
  }

  async #waitGone(name: string): Promise<void> {
    while (!this.#stopping && (await this.#d.runners.get(name))) await sleep(5000);
  }

  /**
   * The host loop: containers of ours that this process does not watch are adopted (running) or
   * removed (stopped); records of this host with no container are torn down.
   */
  async reconcile(): Promise<void> {
    const { driver, runners, launcher, host, logger } = this.#d;
    const log = logger.child({ loop: "host" });
    try {
      const containers = await driver.list({ [LABEL.managedBy]: MANAGED_BY, [LABEL.host]: host });
      const seen = new Set<string>();
      for (const c of containers) {
        const name = c.labels[LABEL.runnerName] ?? c.name;
        seen.add(name);
        if (launcher.tracked.has(name)) continue;
        const record = await runners.get(name);
        const pool = this.#pools.get(c.labels[LABEL.pool] ?? "");
        if (record && c.running && pool) {
          const tracked: Tracked = { record: { ...record, containerId: c.id }, state: record.state === "busy" ? "busy" : "idle" };
          launcher.tracked.set(name, tracked);
          log.info({ runner: name }, "adopted running runner");
          void launcher
            .watch(tracked, pool, log, this.#shutdown.signal)
            .then((reason) => (reason === "shutdown" ? undefined : launcher.teardown(tracked.record, reason, log)))
            .catch(() => undefined);
        } else {
          const stub = record ?? { name, pool: c.labels[LABEL.pool] ?? "", host, state: "registering" as const, installationId: 0, owner: "", repo: "", demandId: c.labels[LABEL.demand] ?? "", createdAt: c.createdAt };
          await launcher.teardown({ ...stub, containerId: c.id }, c.running ? "reconcile_unknown" : "reconcile_exited", log);
        }
      }
      for (const name of await runners.listHost(host)) {
        if (seen.has(name) || launcher.tracked.has(name)) continue;
        const record = await runners.get(name);
        if (!record) {
          await runners.remove({ name, host, demandId: "" }, true);
          continue;
        }
        if (Date.now() - record.createdAt < 60_000) continue;
        await launcher.teardown(record, "reconcile_no_container", log);
      }
    } catch (err) {
      this.#noteError(`host reconcile failed: ${errorMessage(err)}`, true);
    }
  }

  #counts(): Map<string, Map<string, number>> {
    const counts = new Map<string, Map<string, number>>();
    for (const p of this.#pools.keys()) counts.set(p, new Map([["starting", 0], ["idle", 0], ["busy", 0], ["completed", 0]]));
    for (const t of this.#d.launcher.tracked.values()) {
      const byState = counts.get(t.record.pool);
      if (byState) byState.set(t.state, (byState.get(t.state) ?? 0) + 1);
    }
    return counts;
  }

  #noteError(message: string, log: boolean): void {
    if (log || message !== this.#lastError) this.#d.logger.warn(message);
    this.#lastError = message;
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms).unref());
}
