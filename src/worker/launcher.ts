import type { Logger } from "pino";
import type { PoolConfig } from "../config/load.ts";
import type { Demand } from "../demand.ts";
import { demandId } from "../demand.ts";
import { runnerLabels } from "../docker/labels.ts";
import type { RunnerDriver, RunnerSpec } from "../docker/driver.ts";
import { GitHubError, errorMessage } from "../errors.ts";
import type { GitHubClient, JitRunner, RunnerScope } from "../github/client.ts";
import type { Metrics } from "../metrics/metrics.ts";
import type { RunnerRecord, RunnerStore } from "../state/runners.ts";
import { runnerName } from "./names.ts";
import type { RunnerEvents } from "./runner-events.ts";

export type LiveState = "starting" | "idle" | "busy" | "completed";

/** A runner this process watches. */
export interface Tracked {
  record: RunnerRecord;
  state: LiveState;
}

export interface LauncherDeps {
  host: string;
  namePrefix: string;
  completedGraceSeconds: number;
  driver: RunnerDriver;
  github: GitHubClient;
  runners: RunnerStore;
  events: RunnerEvents;
  metrics: Metrics;
}

/** Where a runner registers, and the demand it answers for ("" for a warm runner). */
export interface LaunchTarget {
  installationId: number;
  owner: string;
  repo: string;
  demandId: string;
}

export function targetOf(demand: Demand): LaunchTarget {
  return { installationId: demand.installationId, owner: demand.owner, repo: demand.repo, demandId: demandId(demand.jobId, demand.runAttempt) };
}

export function scopeOf(record: Pick<RunnerRecord, "installationId" | "owner" | "repo">): RunnerScope {
  return { installationId: record.installationId, owner: record.owner, repo: record.repo || undefined };
}

const IDLE_RECHECK_MS = 2000;

/**
 * One runner's life on this host: register (JIT config), create, start, watch, tear down.
 * Every step after registration that fails undoes the registration and the container.
 */
export class Launcher {
  readonly tracked = new Map<string, Tracked>();
  readonly #d: LauncherDeps;

  constructor(deps: LauncherDeps) {
    this.#d = deps;
  }

  async launch(target: LaunchTarget, pool: PoolConfig, log: Logger): Promise<Tracked> {
    const d = this.#d;
    let name = runnerName(d.namePrefix, pool.name);
    const record: RunnerRecord = {
      name,
      pool: pool.name,
      host: d.host,
      state: "registering",
      installationId: target.installationId,
      owner: target.owner,
      repo: pool.scope === "repository" ? target.repo : "",
      demandId: target.demandId,
      createdAt: Date.now(),
    };
    const tracked: Tracked = { record, state: "starting" };
    this.tracked.set(name, tracked);
    let rlog = log.child({ runner: name });
    try {
      // The record comes first: a crash at any later step leaves a trace the reconciler follows.
      await d.runners.put(record);
      let jit: JitRunner | undefined;
      for (let attempt = 1; !jit; attempt++) {
        try {
          jit = await d.github.generateJitConfig(scopeOf(record), {
            name,
            labels: pool.labels,
            runnerGroupId: pool.runnerGroupId,
            runnerGroup: pool.runnerGroup,
          });
        } catch (err) {
          // 409, name taken: by our own earlier try whose answer was lost (created, then a 5xx or
          // timeout, then retried). Delete that orphan and forget its record; go on under a new name.
          if (!(err instanceof GitHubError && err.status === 409) || attempt >= 3) throw err;
          const orphan = await d.github.deleteRunnerNamed(scopeOf(record), name).catch((e: unknown) => `not deleted: ${errorMessage(e)}`);
          rlog.warn({ orphan }, "runner name already registered; registering under a new name");
          await d.runners.remove(record, false);
          this.tracked.delete(name);
          name = record.name = runnerName(d.namePrefix, pool.name);
          this.tracked.set(name, tracked);
          rlog = log.child({ runner: name });
          await d.runners.put(record);
        }
      }
      record.runnerId = jit.runnerId;
      await d.runners.update(name, { runnerId: jit.runnerId });
      rlog.info({ runnerId: jit.runnerId }, "runner registered");
      const spec: RunnerSpec = {
        name,
        image: pool.image,
        jitConfig: jit.encodedJitConfig,
        env: pool.env,
        // Ours last, so pool config cannot relabel a container into another pool or host.
        labels: runnerLabels({ pool: pool.name, host: d.host, runnerName: name, demandId: record.demandId }),
        isolation: pool.isolation,
        capDrop: pool.capDrop,
        resources: pool.resources,
        networkMode: pool.networkMode,
        mounts: pool.mounts,
      };
      record.containerId = await d.driver.create(spec);
      record.state = "starting";
      await d.runners.update(name, { containerId: record.containerId, state: "starting" });
      await d.driver.start(record.containerId);
      tracked.state = "idle";
      await d.runners.started(name);
      rlog.info({ container: record.containerId.slice(0, 12) }, "runner container started");
      return tracked;
    } catch (err) {
      rlog.warn({ err: errorMessage(err) }, "launch failed; undoing registration and container");
      await this.teardown(record, "launch_failed", rlog).catch((e) =>
        rlog.warn({ err: errorMessage(e) }, "cleanup after failed launch incomplete; the reconciler will retry"),
      );
      // Whatever the cleanup managed, the demand was not served: its retry must launch anew.
      await d.runners.releaseDemand(record).catch(() => undefined);
      throw err;
    }
  }

  /**
   * Waits until the runner is done: its container stopped, or `completed` came and the grace
   * period passed, or it stayed idle past the pool's idle timeout and GitHub agreed to delete it.
   */
  watch(
    tracked: Tracked,
    pool: Pick<PoolConfig, "idleTimeoutSeconds">,
    log: Logger,
    shutdown?: AbortSignal,
    /** When an idle runner is reaped (ms since epoch); a warm runner's moves while it waits. */
    idleDeadline?: () => number,
  ): Promise<string> {
    const d = this.#d;
    const fixedDeadline = Date.now() + pool.idleTimeoutSeconds * 1000;
    const deadline = idleDeadline ?? (() => fixedDeadline);
    const { name, containerId } = tracked.record;
    return new Promise((resolve) => {
      const ac = new AbortController();
      const timers: NodeJS.Timeout[] = [];
      let finished = false;
      const finish = (reason: string) => {
        if (finished) return;
        finished = true;
        timers.forEach(clearTimeout);
        off();
        ac.abort();
        resolve(reason);
      };
      const onState = (state: "busy" | "completed") => {
        if (finished || tracked.state === "completed") return;
        tracked.state = state;
        if (state === "completed") {
          timers.push(setTimeout(() => finish("completed_grace_expired"), d.completedGraceSeconds * 1000));
        }
      };
      const off = d.events.on(name, onState);
      // Shutdown stops the watching, not the runner: a restarted worker adopts it.
      if (shutdown?.aborted) return finish("shutdown");
      shutdown?.addEventListener("abort", () => finish("shutdown"), { once: true });
      // A webhook may have arrived before we listened.
      d.runners.get(name).then((r) => r && (r.state === "busy" || r.state === "completed") && onState(r.state), () => undefined);
      if (!containerId) return finish("no_container");
      d.driver.wait(containerId, ac.signal).then(
        () => finish("exited"),
        (err) => {
          log.warn({ err: errorMessage(err) }, "lost track of runner container");
          finish("wait_failed");
        },
      );
      const idleCheck = async () => {
        if (finished || tracked.state === "busy" || tracked.state === "completed") return;
        const wait = deadline() - Date.now();
        // A moving deadline is looked at again every few seconds; no API call until it passes.
        if (wait > 0) return void timers.push(setTimeout(idleCheck, Math.min(wait, IDLE_RECHECK_MS)));
        const result = await this.#deregister(tracked.record, log);
        if (result === "busy") tracked.state = "busy";
        else if (result) finish("idle_timeout");
        else timers.push(setTimeout(idleCheck, 30_000));
      };
      timers.push(setTimeout(idleCheck, Math.max(0, Math.min(deadline() - Date.now(), idleDeadline ? IDLE_RECHECK_MS : Infinity))));
    });
  }

  /** Removes the container and its volumes, the registration if it may still exist, the record. */
  async teardown(record: RunnerRecord, reason: string, log: Logger): Promise<void> {
    const d = this.#d;
    try {
      if (record.containerId) await d.driver.remove(record.containerId);
      else for (const c of await d.driver.list(runnerLabels({ ...labelKey(record) }))) await d.driver.remove(c.id);
      const latest = (await d.runners.get(record.name)) ?? record;
      // A runner that ran a job removed itself from GitHub (JIT runners are ephemeral).
      const ranAJob = latest.state === "busy" || latest.state === "completed";
      // An idle timeout ends only once GitHub has agreed to delete the registration.
      if (latest.runnerId && !ranAJob && reason !== "idle_timeout") {
        const result = await this.#deregister(latest, log);
        if (result === undefined) throw new Error("could not delete the runner's registration");
      }
      await d.runners.remove(record, reason !== "launch_failed");
      d.metrics.removed(record.pool, reason);
      log.info({ runner: record.name, reason }, "runner removed");
    } finally {
      this.tracked.delete(record.name);
    }
  }

  /** Deletes the registration. `busy`: GitHub refused because it runs a job; undefined: error. */
  async #deregister(record: RunnerRecord, log: Logger): Promise<"deleted" | "not_found" | "busy" | undefined> {
    if (!record.runnerId) return "not_found";
    try {
      return await this.#d.github.deleteRunner(scopeOf(record), record.runnerId);
    } catch (err) {
      log.warn({ runner: record.name, err: errorMessage(err) }, "deleting runner registration failed");
      return undefined;
    }
  }
}

function labelKey(record: RunnerRecord) {
  return { pool: record.pool, host: record.host, runnerName: record.name, demandId: record.demandId };
}
