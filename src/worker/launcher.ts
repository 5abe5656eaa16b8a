import { randomUUID } from "node:crypto";
import type { Logger } from "pino";
import type { PoolConfig } from "../config/load.ts";
import type { Demand } from "../demand.ts";
import { demandIdOf } from "../demand.ts";
import { runnerLabels } from "../docker/labels.ts";
import type { RunnerDriver, RunnerSpec } from "../docker/driver.ts";
import { GitHubError, JitrunnerError, NotSentError, errorMessage, githubUnavailable, redact } from "../errors.ts";
import type { GitHubClient, JitRunner, RunnerScope } from "../github/client.ts";
import type { Metrics } from "../metrics/metrics.ts";
import { scopeOf, type RunnerRecord, type RunnerStore } from "../state/runners.ts";
import { runnerName } from "./names.ts";
import { PoolImages } from "./pool-images.ts";
import type { RunnerEvents } from "./runner-events.ts";
import { Slots } from "./slots.ts";

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
  /** Container starts in flight at once on this engine (`worker.concurrentStarts`); default: no limit. */
  concurrentStarts?: number;
}

/** Where a runner registers, and the demand it answers for ("" for a warm runner). */
export interface LaunchTarget {
  installationId: number;
  owner: string;
  repo: string;
  demandId: string;
}

export function targetOf(demand: Demand): LaunchTarget {
  return { installationId: demand.installationId, owner: demand.owner, repo: demand.repo, demandId: demandIdOf(demand) };
}

const IDLE_RECHECK_MS = 2000;
/** How soon a watch writes again a busy state GitHub told it of, when Redis refused the write. */
const BUSY_WRITE_RETRY_MS = 5_000;
/**
 * How often a watch reads its runner's record again until the runner is known completed: one
 * HGETALL per watched runner per period (1,000 runners on one Redis: 100 a second). A `completed`
 * published while the worker's subscriber was disconnected is lost, and its hung container is then
 * removed at most this much later than the grace after `completed` would have.
 */
const RECORD_RECHECK_MS = 10_000;
/** Reasons a watch ends for only after GitHub deleted the registration (no job ran on it). */
const DEREGISTERED_BY_WATCH = new Set(["idle_timeout", "start_timeout"]);
/** Removals of a launch undone before its runner could take a job: its demand was not served. */
const LAUNCH_UNDONE = new Set(["launch_failed", "launch_given_up"]);

/** Points of a launch at which a test can have the process die (docs/reliability.md). */
export type Failpoint = "launch:after-jit" | "launch:after-create" | "launch:after-start" | "teardown:after-remove";

/**
 * A testing aid for the chaos tests: `JITRUNNER_FAILPOINT` (comma-separated points) makes the
 * process SIGKILL itself at that point of every launch, exactly as a crash there would, leaving
 * what that point leaves behind. Read once, when the process starts; never set in production.
 */
const FAILPOINTS = new Set((process.env.JITRUNNER_FAILPOINT ?? "").split(",").map((p) => p.trim()).filter(Boolean));

function failpoint(point: Failpoint): void {
  if (!FAILPOINTS.has(point)) return;
  // stderr is written synchronously (a pipe or a file), so the test sees which point was hit.
  process.stderr.write(`failpoint ${point}: SIGKILL\n`);
  process.kill(process.pid, "SIGKILL");
}

/** The launch stopped before its container: GitHub says the job needs no runner after all. */
export class NotNeeded extends JitrunnerError {
  constructor() {
    super("E_NOT_NEEDED", "the job no longer needs a runner");
  }
}

/**
 * The runner's record was removed while its launch went on (a sweep of this host taken for gone,
 * a teardown): written again it would be a partial record that nothing indexes or expires, and the
 * github-runners loop would delete the registration of a runner left running. So the launch is
 * undone as a failed one is; its demand is served again.
 */
export class RecordGone extends JitrunnerError {
  constructor() {
    super("E_RECORD_GONE", "the runner's record was removed while it launched", { retryable: true });
  }
}

/**
 * One runner's life on this host: register (JIT config), create, start, watch, tear down.
 * Every step after registration that fails undoes the registration and the container.
 */
export class Launcher {
  readonly tracked = new Map<string, Tracked>();
  /** This process among the host's workers, past and present: written on each record it launches. */
  readonly instance = randomUUID();
  /** Whether pools' images are on the engine: asked before each registration (see launch). */
  readonly images: PoolImages;
  readonly #d: LauncherDeps;
  /** Starts wait here in order: see DEFAULT_CONCURRENT_STARTS. */
  readonly #starts: Slots;

  constructor(deps: LauncherDeps) {
    this.#d = deps;
    this.#starts = new Slots(deps.concurrentStarts ?? Number.POSITIVE_INFINITY);
    this.images = new PoolImages(deps.driver);
  }

  /**
   * Registers, creates and starts a runner for `target`. `needed`, a check still under way, gates
   * the container: when it says false, the registration is deleted and the launch ends in NotNeeded.
   * `stop` (the worker stopping) ends a launch still waiting to ask for its registration (a full
   * write budget, a wait GitHub asked of another call) in NotSentError; one that has asked goes on
   * to the end. A pool image missing on the engine fails the launch first (E_IMAGE_MISSING, a
   * DockerError), with nothing registered or recorded: workers never pull.
   */
  async launch(target: LaunchTarget, pool: PoolConfig, log: Logger, needed?: Promise<boolean>, stop?: AbortSignal): Promise<Tracked> {
    const d = this.#d;
    await this.images.require(pool);
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
      instance: this.instance,
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
          jit = await d.github.generateJitConfig(
            scopeOf(record),
            { name, labels: pool.labels, runnerGroupId: pool.runnerGroupId, runnerGroup: pool.runnerGroup },
            { signal: stop },
          );
        } catch (err) {
          // 409, name taken: by our own earlier try whose answer was lost (created, then a 5xx or
          // timeout, then retried). Delete that orphan and forget its record; go on under a new name.
          // Any other failure after a lost answer (answerLost) may have left that orphan too, and
          // teardown knows no runner id: delete it by name as well, then fail.
          const taken = err instanceof GitHubError && err.status === 409 && attempt < 3;
          if (!taken && !(err instanceof GitHubError && err.answerLost)) throw err;
          // GitHub's words, redacted as the logger redacts those under `err`.
          const orphan = await d.github.deleteRunnerNamed(scopeOf(record), name).catch((e: unknown) => `not deleted: ${redact(errorMessage(e))}`);
          if (!taken) {
            rlog.warn({ orphan }, "registering failed after an answer was lost; the registration it may have made deleted by name");
            throw err;
          }
          rlog.warn({ orphan }, "runner name already registered; registering under a new name");
          await d.runners.remove(record, false);
          this.tracked.delete(name);
          name = record.name = runnerName(d.namePrefix, pool.name);
          this.tracked.set(name, tracked);
          rlog = log.child({ runner: name });
          await d.runners.put(record);
        }
      }
      // Registered at GitHub; not yet noted anywhere but in this process.
      failpoint("launch:after-jit");
      record.runnerId = jit.runnerId;
      if (!(await d.runners.update(name, { runnerId: jit.runnerId }))) throw new RecordGone();
      rlog.info({ runnerId: jit.runnerId }, "runner registered");
      if (needed && !(await needed)) throw new NotNeeded();
      const spec: RunnerSpec = {
        name,
        image: pool.image,
        jitConfig: jit.encodedJitConfig,
        env: pool.env,
        // Ours last, so pool config cannot relabel a container into another pool or host.
        labels: runnerLabels(
          { pool: pool.name, host: d.host, runnerName: name, demandId: record.demandId },
          { installationId: record.installationId, owner: record.owner, repo: record.repo, runnerId: jit.runnerId },
        ),
        isolation: pool.isolation,
        capDrop: pool.capDrop,
        resources: pool.resources,
        networkMode: pool.networkMode,
        mounts: pool.mounts,
      };
      record.containerId = await d.driver.create(spec);
      failpoint("launch:after-create");
      record.state = "starting";
      if (!(await d.runners.update(name, { containerId: record.containerId, state: "starting" }))) throw new RecordGone();
      await this.#starts.acquire();
      try {
        await d.driver.start(record.containerId);
      } finally {
        this.#starts.release();
      }
      failpoint("launch:after-start");
      tracked.state = "idle";
      // Best effort, as the host loop's adopt: the runner is running and may take a job any
      // moment, so a refused write (Redis read-only in a failover, out of memory under noeviction)
      // must not tear it down, as the catch below would, container first. Left `starting`, the
      // record only shows so on the status page until the watch notes the start (at its reads of
      // the record, every RECORD_RECHECK_MS) or a job's webhook marks it busy: the watch, the host
      // loop (which adopts it as idle) and the sweep of a gone host treat it as an idle runner's.
      await d.runners.started(name).catch((err: unknown) =>
        rlog.warn({ err: errorMessage(err) }, "noting the runner's start in Redis failed; its watch notes it once Redis takes writes again"),
      );
      rlog.info({ container: record.containerId.slice(0, 12) }, "runner container started");
      return tracked;
    } catch (err) {
      const reason = err instanceof NotNeeded ? "not_needed" : err instanceof NotSentError ? "launch_given_up" : "launch_failed";
      if (reason === "not_needed") rlog.info("job needs no runner after all; deleting the registration");
      else if (reason === "launch_given_up") rlog.info("launch given up before its registration was asked for (the worker stopping, or the demand's lease lost)");
      // GitHub unavailable: the worker says so, once per demand at warn (Worker's hand-back).
      else rlog[githubUnavailable(err) ? "debug" : "warn"]({ err: errorMessage(err) }, "launch failed; undoing registration and container");
      await this.teardown(record, reason, rlog).catch((e) =>
        rlog.warn({ err: errorMessage(e) }, "cleanup after failed launch incomplete; the reconciler will retry"),
      );
      // Whatever the cleanup managed, the demand was not served: its retry must launch anew.
      await d.runners.releaseDemand(record).catch(() => undefined);
      throw err;
    }
  }

  /**
   * Waits until the runner is done: its container stopped, or `completed` came and the grace
   * period passed, or it stayed idle past the pool's idle timeout and GitHub agreed to delete it,
   * or GitHub still did not list it online at the pool's start timeout (never registered, hung)
   * and agreed to delete it.
   */
  watch(
    tracked: Tracked,
    pool: Pick<PoolConfig, "idleTimeoutSeconds" | "startTimeoutSeconds">,
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
      // The timers pending now: each leaves the set as it fires. A warm runner's idle check runs
      // every IDLE_RECHECK_MS for as long as it waits, so those that fired must not be kept.
      const timers = new Set<NodeJS.Timeout>();
      const later = (fn: () => unknown, ms: number) => {
        // Not once the watch is over (a check that ended after it): nothing would clear it.
        if (finished) return;
        const timer = setTimeout(() => {
          timers.delete(timer);
          void fn();
        }, ms);
        timers.add(timer);
      };
      let recheck: NodeJS.Timeout | undefined;
      let finished = false;
      const onShutdown = () => finish("shutdown");
      const finish = (reason: string) => {
        if (finished) return;
        finished = true;
        timers.forEach(clearTimeout);
        timers.clear();
        clearTimeout(recheck);
        off();
        shutdown?.removeEventListener("abort", onShutdown);
        ac.abort();
        resolve(reason);
      };
      const onState = (state: "busy" | "completed") => {
        if (finished || tracked.state === "completed") return;
        tracked.state = state;
        if (state === "completed") {
          later(() => finish("completed_grace_expired"), d.completedGraceSeconds * 1000);
        }
      };
      // The start of a runner whose container runs while its record still says starting: the
      // launch could not note it (Redis refusing writes then: see launch), or the process before
      // this one died before it did. Noted at each read of the record until it is, so that the
      // status shows the runner idle, not starting until a job's webhook. RunnerStore.started
      // moves starting to idle only: a busy mark written meanwhile stays.
      const noteStarted = () =>
        d.runners.started(name).then(
          () => log.info(runnerField(log, name), "runner's start noted in Redis after all"),
          (err: unknown) => log.debug({ ...runnerField(log, name), err: errorMessage(err) }, "noting the runner's start in Redis failed again; tried again at the next read of its record"),
        );
      // The record says what the events say, and what they could not: a webhook that arrived
      // before we listened, or one published while the subscriber was disconnected (a Redis restart
      // or failover, a dropped connection; pub/sub keeps nothing for it). It is read now, every
      // RECORD_RECHECK_MS until the runner is known completed, and as soon as the subscriber is back.
      const readRecord = () => {
        clearTimeout(recheck);
        recheck = undefined;
        void d.runners
          .get(name)
          .then(async (r) => {
            if (r && (r.state === "busy" || r.state === "completed")) onState(r.state);
            else if (r?.state === "starting" && tracked.state === "idle" && !finished) await noteStarted();
          }, () => undefined)
          .finally(() => {
            if (!finished && tracked.state !== "completed" && !recheck) recheck = setTimeout(readRecord, RECORD_RECHECK_MS);
          });
      };
      // GitHub refused to delete the registration (422) and says the runner is busy (a 422 for
      // another reason fails the deletion, tried again by the next check): the runner runs a
      // job, and webhooks may never say so (both lost). Written to the record as they would
      // (RunnerStore.mark: a `completed` already there stays, a record removed stays removed),
      // so that the checks of busy runners cover it: the record's busy state for this watch, the
      // leader's look at GitHub's list for a runner that hangs after its job (a record left idle
      // would never be looked at), and status. Its job is not known: 0, as that leader's loop
      // writes, which keeps a job id an `in_progress` webhook recorded (a demand of that job finds
      // its runner by it). A write that fails is tried again while the watch lasts (logged once).
      let busyWriteFailed = false;
      const noteBusy = async () => {
        onState("busy");
        if (finished || tracked.state === "completed") return;
        const written = await d.runners.mark(name, "busy", 0).then(
          () => true,
          (err: unknown) => {
            if (!busyWriteFailed) log.warn({ ...runnerField(log, name), err: errorMessage(err) }, "recording a runner GitHub says is busy failed; trying again");
            busyWriteFailed = true;
            return false;
          },
        );
        if (!written && !finished) later(noteBusy, BUSY_WRITE_RETRY_MS);
      };
      const off = d.events.on(name, onState, readRecord);
      // Shutdown stops the watching, not the runner: a restarted worker adopts it.
      if (shutdown?.aborted) return finish("shutdown");
      shutdown?.addEventListener("abort", onShutdown, { once: true });
      readRecord();
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
        if (wait > 0) return later(idleCheck, Math.min(wait, IDLE_RECHECK_MS));
        const result = await this.#deregister(tracked.record, log);
        if (result === "busy") await noteBusy();
        else if (result) finish("idle_timeout");
        else later(idleCheck, 30_000);
      };
      later(idleCheck, Math.max(0, Math.min(deadline() - Date.now(), idleDeadline ? IDLE_RECHECK_MS : Infinity)));
      // One look at GitHub: a runner not online by now never will be. Deleting it first settles
      // the race with a job GitHub hands it at this very moment (422: busy, kept). A look or a
      // deletion that fails (GitHub unreachable, 5xx through the client's retries) is tried again
      // 30 s later, as the idle check's deletion is: given up, a runner that never came online would hold its
      // slot until the idle timeout. Said at warn the first time, then at debug.
      let startLookFailed = false;
      const startCheck = async () => {
        if (finished || tracked.state === "busy" || tracked.state === "completed" || !tracked.record.runnerId) return;
        let failure: unknown;
        const registered = await d.github.getRunner(scopeOf(tracked.record), tracked.record.runnerId).catch((err: unknown) => {
          failure = err;
          return "error" as const;
        });
        if (finished) return;
        if (registered === "error") {
          log[startLookFailed ? "debug" : "warn"]({ ...runnerField(log, name), err: errorMessage(failure) }, "asking GitHub whether the runner came online failed at the start timeout; asking again in 30 s");
          startLookFailed = true;
          return later(startCheck, 30_000);
        }
        if (registered?.status === "online") return;
        // GitHub no longer knows it, while its record is still ours: a JIT registration goes with its
        // one job (an unused one stays a day), and whoever of us deletes one removes its record too,
        // so it ran a job and the webhooks saying so were lost. It ends as after `completed`.
        // Not when one of our processes had set out to delete it (a stop or a crash since): that
        // deletion may be what GitHub's answer shows.
        const stored = registered === undefined ? await d.runners.get(name).catch(() => undefined) : undefined;
        if (stored && stored.runnerId === tracked.record.runnerId && stored.deregisteringAt === undefined) {
          if (finished) return;
          log.warn(runnerField(log, name), "runner's registration gone at the start timeout: it ran a job; removing it after the completed grace");
          onState("completed");
          return;
        }
        log.warn({ ...runnerField(log, name), startTimeoutSeconds: pool.startTimeoutSeconds }, "runner never came online; removing it");
        const result = await this.#deregister(tracked.record, log);
        if (result === "busy") await noteBusy();
        else if (result) finish("start_timeout");
        else later(startCheck, 30_000);
      };
      later(startCheck, pool.startTimeoutSeconds * 1000);
    });
  }

  /**
   * Removes the container and its volumes, the registration if it may still exist, the record.
   * Resolves whether the runner took a job: a webhook said so, or GitHub refused to delete its
   * registration (busy) or had removed it already while its record was still ours (whoever of us
   * deletes a registration removes the record too). That last sign is what is left when the
   * `in_progress` and `completed` webhooks were lost (no server answered) and the runner exited.
   * `deregistered`: GitHub's answer to a deletion of the registration made already (retire).
   */
  async teardown(record: RunnerRecord, reason: string, log: Logger, deregistered?: "deleted" | "not_found"): Promise<{ tookAJob: boolean }> {
    const d = this.#d;
    try {
      const ids = record.containerId ? [record.containerId] : (await d.driver.list(runnerLabels({ ...labelKey(record) }))).map((c) => c.id);
      for (const id of ids) {
        for (const { volume, error } of (await d.driver.remove(id)).volumesLeft) {
          log.warn({ ...runnerField(log, record.name), volume, err: errorMessage(error) }, "could not remove the runner's data volume; the host loop removes it");
        }
      }
      // The container and its volume gone; its record, and maybe its registration, not yet.
      failpoint("teardown:after-remove");
      const stored = await d.runners.get(record.name);
      // The id this process knows counts too: the write that would have recorded it may have
      // failed (Redis refusing writes), and the registration is there all the same.
      const latest = { ...(stored ?? record), runnerId: stored?.runnerId ?? record.runnerId };
      // A runner that ran a job removed itself from GitHub (JIT runners are ephemeral).
      let ranAJob = latest.state === "busy" || latest.state === "completed";
      // An idle or start timeout ends only once GitHub has agreed to delete the registration. A
      // launch undone here with no id was never registered (a registration whose answer was lost
      // it deleted by name already); any other runner with no id is deleted by name (#deregister),
      // but for a container found with no record, which does not say where it registered (the
      // leader's github-runners loop deletes a registration of ours with no record).
      const unregistered = !latest.runnerId && (LAUNCH_UNDONE.has(reason) || !latest.installationId);
      if (!ranAJob && !unregistered && !DEREGISTERED_BY_WATCH.has(reason)) {
        const result = deregistered ?? (await this.#deregister(latest, log));
        if (result === undefined) throw new Error("could not delete the runner's registration");
        // Only an id GitHub no longer knows says the runner removed itself: a name it does not
        // know may never have been registered; nor does one we had set out to delete before (a
        // process that died or stopped after GitHub's deletion). Taken for a runner that ran no
        // job, its demand is served anew only after GitHub says its job is still queued.
        const deletedBefore = (deregistered ? record : stored)?.deregisteringAt !== undefined;
        ranAJob = result === "busy" || (result === "not_found" && stored !== undefined && latest.runnerId !== undefined && !deletedBefore);
      }
      // A runner that took no job did not serve its demand: a lease of it that comes back (its
      // worker died) must launch again, not find this runner and call the demand served. A runner
      // with no record left (a container the host loop found, whose record its teardown removed
      // already) says nothing of its demand: whoever removed the record settled the claim.
      await d.runners.remove(record, stored === undefined || (!LAUNCH_UNDONE.has(reason) && ranAJob));
      d.metrics.removed(record.pool, reason);
      log.info({ ...runnerField(log, record.name), reason }, "runner removed");
      return { tookAJob: ranAJob };
    } finally {
      this.tracked.delete(record.name);
    }
  }

  /**
   * Tears down a running runner that no watch of this process follows, GitHub first: teardown
   * removes the container before it deletes the registration, so a runner GitHub handed a job a
   * moment ago would be killed mid-job. Here the registration is deleted first, and a runner GitHub
   * refuses to delete (422: it runs a job) is left running, untouched: "busy". One whose record
   * says busy is not asked about. A record that says completed needs no deletion (GitHub removed
   * the ephemeral registration itself) and is torn down.
   */
  async retire(record: RunnerRecord, reason: string, log: Logger): Promise<"busy" | "removed"> {
    if (record.state === "busy") return "busy";
    let deregistered: "deleted" | "not_found" | undefined;
    if (record.state !== "completed") {
      const result = await this.#deregister(record, log);
      if (result === undefined) throw new Error("could not delete the runner's registration");
      if (result === "busy") return "busy";
      deregistered = result;
    }
    await this.teardown(record, reason, log, deregistered);
    return "removed";
  }

  /**
   * Deletes the registration: by id, or by name when no id was ever noted (a crash, or a write
   * Redis refused, between the registration and the record's update). `busy`: GitHub refused
   * because it runs a job; undefined: error.
   */
  async #deregister(record: RunnerRecord, log: Logger): Promise<"deleted" | "not_found" | "busy" | undefined> {
    try {
      return await deregisterNoted(this.#d.github, this.#d.runners, record);
    } catch (err) {
      log.warn({ ...runnerField(log, record.name), err: errorMessage(err) }, "deleting runner registration failed");
      return undefined;
    }
  }
}

/**
 * Deletes the registration of the runner `record` names: by its id, or by its name when its id
 * was never noted (its worker died between the registration and the record's update). `busy`:
 * GitHub refused, it runs a job. Neither id nor installation (a container found with no record):
 * nothing to ask GitHub by, `not_found`. A failure throws.
 */
function deregisterRecord(github: Pick<GitHubClient, "deleteRunner" | "deleteRunnerNamed">, record: RunnerRecord): Promise<"deleted" | "not_found" | "busy"> {
  if (record.runnerId) return github.deleteRunner(scopeOf(record), record.runnerId);
  if (!record.installationId) return Promise.resolve("not_found");
  return github.deleteRunnerNamed(scopeOf(record), record.name);
}

/**
 * deregisterRecord, noted on the record first (RunnerRecord.deregisteringAt): should this process
 * die or stop between GitHub's deletion and the record's removal, whoever tears the runner down
 * later reads GitHub's 404 as our deletion, not as a runner that ran a job. The note is taken back
 * when GitHub surely deleted nothing: it refused (busy, or another 4xx); after no answer or a 5xx
 * it stays, as the deletion may have landed.
 */
export async function deregisterNoted(
  github: Pick<GitHubClient, "deleteRunner" | "deleteRunnerNamed">,
  runners: Pick<RunnerStore, "deregistering" | "deregisteringUndone">,
  record: RunnerRecord,
): Promise<"deleted" | "not_found" | "busy"> {
  const asks = Boolean(record.runnerId || record.installationId);
  if (asks) await runners.deregistering(record.name, Date.now());
  const undo = () => (asks ? runners.deregisteringUndone(record.name).catch(() => undefined) : undefined);
  try {
    const outcome = await deregisterRecord(github, record);
    if (outcome === "busy") await undo();
    return outcome;
  } catch (err) {
    if (err instanceof GitHubError && err.status !== undefined && err.status < 500 && err.status !== 408) await undo();
    throw err;
  }
}

function labelKey(record: RunnerRecord) {
  return { pool: record.pool, host: record.host, runnerName: record.name, demandId: record.demandId };
}

/** The runner's name for a log line, unless `log` is bound to it already (a key once per line). */
function runnerField(log: Logger, name: string): { runner?: string } {
  return log.bindings().runner === name ? {} : { runner: name };
}
