import { setTimeout as delay } from "node:timers/promises";
import type { Logger } from "pino";
import type { PoolConfig } from "../config/load.ts";
import { DEFAULT_STOP_TIMEOUT_SECONDS } from "../config/schema.ts";
import { LABEL, MANAGED_BY, RUNNER_NETWORK, registeredFromLabels } from "../docker/labels.ts";
import type { RunnerContainer, RunnerDriver } from "../docker/driver.ts";
import { DockerError, IMAGE_MISSING, JitrunnerError, LeaseLostError, NotSentError, errorMessage, githubUnavailable, redact } from "../errors.ts";
import type { GitHubClient } from "../github/client.ts";
import type { Metrics } from "../metrics/metrics.ts";
import type { Lease } from "../queue/demand-queue.ts";
import type { ActivityRecorder } from "../state/activity.ts";
import { hostHolder, PoolLimits, type HostStore } from "../state/hosts.ts";
import { registeredAt, scopeOf, type RunnerRecord, type RunnerStore } from "../state/runners.ts";
import { deregisterNoted, Launcher, NotNeeded, targetOf, type Tracked } from "./launcher.ts";
import { PassFailures } from "./pass-failures.ts";
import { HostPresence } from "./presence.ts";
import { Slots } from "./slots.ts";
import { atMost, every, linkedSignal } from "../timers.ts";
import { JobChecks } from "./job-checks.ts";
import { needsRunner } from "./still-queued.ts";
import { Problems, UNREADY, type UnreadyReason } from "./unready.ts";
import { missingImage } from "./pool-images.ts";
import type { RunnerEvents } from "./runner-events.ts";
import { WarmExposure, type ExposureTarget, type Refusal } from "./warm-exposure.ts";

/** Where a worker takes demand from, per pool (BullMQ in production). */
export interface DemandSource {
  start(): Promise<void>;
  next(): Promise<Lease | undefined>;
  /** Demand already waiting, up to `max`, taken at once without waiting for more. */
  ready?(max: number): Promise<Lease[]>;
  close(): Promise<void>;
}

export interface WorkerDeps {
  host: string;
  capacity: number;
  pools: PoolConfig[];
  checkStillQueued: boolean;
  /** Demand younger than this (first attempt) is checked while its runner registers, not before. */
  overlapStillQueuedCheckSeconds?: number;
  namePrefix: string;
  reconcileIntervalSeconds: number;
  /**
   * A busy runner of a gone host is asked about at GitHub once it has been busy this long, and
   * then at most once per this long (`worker.goneHostBusyCheckSeconds`; see #sweepGoneBusyRunner).
   */
  goneHostBusyCheckSeconds: number;
  heartbeatSeconds: number;
  /**
   * How long a stop waits for launches in flight, demand held and host loop passes
   * (`worker.stopTimeoutSeconds`); past it they are left as a crash would leave them. Default
   * DEFAULT_STOP_TIMEOUT_SECONDS.
   */
  stopTimeoutSeconds?: number;
  sources: Map<string, DemandSource>;
  launcher: Launcher;
  driver: RunnerDriver;
  github: GitHubClient;
  runners: RunnerStore;
  hosts: HostStore;
  limits: PoolLimits;
  metrics: Metrics;
  logger: Logger;
  /** Recent launch failures for operators (status page, `jitrunner status`); optional. */
  activity?: ActivityRecorder;
  /** Repositories GitHub made public, from the server (RunnerEvents); without it, noticed within WARM_CHECK_TTL_MS. */
  events?: Pick<RunnerEvents, "onPublicized">;
}

/** How old a record that names no worker process must be before the host loop takes it for dead. */
const UNATTRIBUTED_RECORD_MS = 60_000;

/** Why a job's launch is refused by the pool's config, before anything is registered (#checkRunnerGroup). */
const CONFIG_REFUSAL = { publicGroup: "E_PUBLIC_RUNNER_GROUP", missingGroup: "E_RUNNER_GROUP_MISSING", repositoryNotInGroup: "E_RUNNER_GROUP_REPOSITORY" } as const;
/**
 * A demand whose launch failed with GitHub unavailable is handed back for 2 s, then 4 s, ... up to
 * 5 minutes, spending no attempt, while it is younger than an hour; past that, such failures spend
 * attempts as any other. Each try of a demand that waited asks GitHub whether its job is still
 * queued first: at most 5 minutes apart, a long incident costs each waiting job about 18 tries an
 * hour, its reads and writes within GitHub's budgets.
 */
const GITHUB_RETRY_BASE_MS = 2_000;
const GITHUB_RETRY_MAX_MS = 300_000;
const GITHUB_PATIENCE_MS = 3_600_000;
const CONFIG_REFUSALS: ReadonlySet<string> = new Set(Object.values(CONFIG_REFUSAL));

/** How often the warm loop looks at its pool when nothing happens. */
const WARM_TICK_MS = 1000;
/** How long a host loop pass starts deregistering runners of gone hosts; the next pass goes on. */
const SWEEP_PASS_MS = 60_000;
/**
 * How long a worker's turn to sweep a gone host lasts (HostStore.sweepTurn): past a pass's sweep
 * time, so a host being swept is not taken up by another worker meanwhile.
 */
const SWEEP_TURN_MS = 90_000;
/**
 * A spare that is not warm is adopted by demand only this long before its idle timeout or more:
 * past it, its watch may be deregistering it (it looks at the deadline every 2 s).
 */
const ADOPT_IDLE_MARGIN_MS = 10_000;

/**
 * How often the warm loop looks again while its pool's warm runners are refused (WarmExposure):
 * the verdict is kept minutes anyway (a repository made public is rechecked at once: #publicized),
 * and the refusal shows as the `jitrunner_warm_refused` gauge meanwhile.
 */
const WARM_REFUSED_PAUSE_MS = 60_000;

/**
 * After warm runners of a pool end without a job (their runner exits at once, never comes online:
 * a broken image, a runner version GitHub no longer takes, a host whose Docker-in-Docker fails),
 * the next waits 2 s, doubling with each such end up to this: each costs two GitHub writes (its
 * registration and its deletion) out of the installation's budget that launches for jobs share.
 */
const WARM_ENDED_BACKOFF_MAX_MS = 5 * 60_000;

/**
 * A stopping worker waits for its launches in flight and the demand it holds as long as Redis
 * answers: it asks Redis every this long whether it does, and gives it this long to answer.
 */
const STOP_REDIS_PROBE_MS = 3_000;
/** Probes Redis must miss in a row before a stopping worker stops waiting for its work. */
const STOP_REDIS_MISSES = 2;

/** How often a stopping worker says what it still waits for (#logStopProgress). */
const STOP_PROGRESS_MS = 10_000;
/**
 * In a burst, demand taken at once beyond the lease being served, per pool (never more than the
 * free slots beyond that lease's and what the pools' loops hold taken ahead): one after the other,
 * each take waited for the one before and for the launches in flight on this process's event loop,
 * and the 50th job of a burst was taken 300 ms after the first.
 */
export const TAKE_AHEAD = 8;

/**
 * How long a place under a pool limit (or a warm place) lasts unrefreshed: at least
 * PoolLimits.HOLD_MS, and 6 beats at a slower heartbeat. Places are refreshed on each beat, and
 * beats come a heartbeat apart after the previous one ends, which waits up to a beat and a half
 * for the engine (HostPresence.checkEngine): 2.5 beats between refreshes at worst, so a place of a
 * live worker never lapses between two of them (another host would then take it, and the pool run
 * over its `maxRunners`).
 */
export function placeHoldMs(heartbeatSeconds: number): number {
  return Math.max(PoolLimits.HOLD_MS, heartbeatSeconds * 6000);
}

/** A warm runner of this host: launched for no demand, kept idle until one adopts it. */
interface Spare {
  pool: PoolConfig;
  /** Its holder id in the pool's warm set and under the pool limit. */
  holder: string;
  tracked: Tracked;
  /** Counted among the pool's warm runners (exempt from the idle timeout). */
  warm: boolean;
  /** A demand took it over. */
  adopted: boolean;
  /** When it stopped being warm: the idle timeout runs from here. */
  idleFrom: number;
  /** The watch: why the runner ended. */
  ended: Promise<string>;
  /** The watch has ended. */
  done?: boolean;
  /** Adopted by a demand while idle and not warm (it would have idled out). */
  adoptedIdle?: boolean;
  /** It took over a demand for the job it took on its own (#handOver): kept once true, or while asked. */
  handedOver?: Promise<boolean>;
  /** The job it took on its own, once its record names one (read from Redis once, for #handOver). */
  jobId?: number;
  /** To be deregistered and removed at once: GitHub could hand it a public repository's job (#retireSpares). */
  retired?: boolean;
}

/** A demand served by an adopted warm runner that has not taken a job yet. */
interface Adoption {
  lease: Lease;
  spare: Spare;
  /** Set when a warm runner that took the demand's job itself took the demand over. */
  taker?: Spare;
  wake(): void;
}

function warmKey(pool: string): string {
  return `${pool}:warm`;
}

/** Why a watched runner ended without having taken a job: its demand must be served again. */
const ENDED_WITHOUT_JOB = new Set(["exited", "wait_failed", "no_container", "start_timeout"]);

/**
 * Takes demand while it has free slots (and its pool is under its global limit) and holds each
 * lease for the life of the runner it launched. Stopping takes no new demand, lets in-flight
 * launches finish and hands held demand back; running runners keep running (a restarted worker
 * adopts them). Draining takes no new demand and resolves `drained` once every runner is gone.
 */
export class RunnerWorker {
  readonly #d: WorkerDeps;
  readonly #slots: Slots;
  readonly #pools: Map<string, PoolConfig>;
  readonly #presence: HostPresence;
  /** The pool limits, with places held long enough for this worker's heartbeat (placeHoldMs). */
  readonly #limits: PoolLimits;
  /** Places a beat found lost (lapsed, and taken by others), by holder: logged once each. */
  readonly #lostPlaces = new Set<string>();
  readonly #launches = new Set<Promise<unknown>>();
  /**
   * What each launch under way is at, in words, by its lease (a warm launch: by its promise), from
   * its still-queued check to its container's start: a stopping worker names them (#logStopProgress).
   */
  readonly #steps = new Map<object, () => string>();
  /** Still-queued checks, one listing for the jobs of a run checked together. */
  readonly #jobChecks: JobChecks;
  readonly #serving = new Map<Promise<unknown>, Lease>();
  /**
   * Leases served here that hold no slot of this host: each waits for its demand's runner on
   * another host (#waitElsewhere). Their end frees no slot.
   */
  readonly #slotless = new Set<Lease>();
  /**
   * Leases that a stop handed back while their demand's runner runs on (here, or on another host
   * for #waitElsewhere): the demand's place under the pool limit is kept, and lapses placeHoldMs
   * later unless a worker refreshes it. Held by the demand's id, it is the one the next process
   * on this host refreshes when it adopts the runner, or a lease of the demand serves it: a quick
   * restart keeps the pool's count, where a place given up at once let other hosts launch over it.
   */
  readonly #placesKept = new Set<Lease>();
  /**
   * The runner of this host each lease served here holds its slot for, by name: the one it
   * launched, or a warm runner it adopted, once its launch or adoption is done; the demand's
   * earlier runner it waits for (#alreadyServed). Leases of one demand that hold a slot for one
   * runner count it once (#countOnce).
   */
  readonly #runnerOf = new Map<Lease, string>();
  /**
   * Leases that gave the slot they held for their demand's runner to a later lease of that demand
   * here (#countOnce): lapsed, as a demand has one live lease at a time. Each holds no slot (it is
   * in #slotless), and has it back should that later lease lapse while the runner runs (#waitLost).
   */
  readonly #gaveSlot = new Set<Lease>();
  /** Demand every pool's loop holds taken ahead, or has room set aside for in a take under way (see TAKE_AHEAD). */
  #aheadHeld = 0;
  readonly #loops: Promise<void>[] = [];
  /** Pools whose demand source has started, with its loops. */
  readonly #started = new Set<string>();
  readonly #shutdown = new AbortController();
  /** Warm runners this host launched that no demand has adopted yet, by runner name. */
  readonly #spares = new Map<string, Spare>();
  /** Per pool: warm runners that ended without a job in a row, and no warm launch until `until` (see WARM_ENDED_BACKOFF_MAX_MS). */
  readonly #warmEnded = new Map<string, { count: number; until: number }>();
  /** Demands served by an adopted warm runner still idle, by GitHub job id. */
  readonly #adoptions = new Map<number, Adoption>();
  /**
   * Running runners of this host that run a job and that this process does not watch: of a pool
   * it does not serve (removed or renamed in its config, or left out of `worker.pools`), or met
   * while it stops. Left to finish their job; each holds a slot meanwhile (#leaveRunning), and the
   * host loop removes it once its container has stopped. Its pool, by runner name.
   */
  readonly #leftRunning = new Map<string, string>();
  /**
   * Runners of a demand adopted from the process before this one (restarted mid-job): each holds
   * a slot, and its demand's place under the pool limit, until it ends, as its launch did; or
   * until a lease of its demand taken here holds a slot and place for it instead (#alreadyServed),
   * theirs again should that lease be lost while it waits (#waitLost). By runner name.
   */
  readonly #adopted = new Map<string, { pool: PoolConfig; holder: string }>();
  /**
   * The runners of a demand the host loop adopted and watches, by name: whether their slot and
   * place are #adopted's, or a lease's of their demand that waits for their end (#alreadyServed).
   * The watch's end frees what #adopted holds for them; a lease lost while it waits gives the
   * runner its slot and place back there (#waitLost).
   */
  readonly #adoptedWatched = new Set<string>();
  /**
   * Warm runners being launched, by holder: their places are refreshed on each beat as a
   * demand's are while it launches (a launch waiting out GitHub's rate limit, or a slow engine's
   * create and start, outlasts placeHoldMs). `warm` turns false when the warm place lapsed and
   * others filled the set: the runner is then a spare like any other once it is up.
   */
  readonly #warmLaunches = new Map<string, { pool: PoolConfig; warm: boolean }>();
  /**
   * The places the process before this one on this host held under each pool's limits (its
   * hostHolder ids; any left after a crash), by limit: each runner it left that this process
   * adopts without a demand takes one of them over (#takePlace), instead of counting a second
   * time beside it until it expires. Those left over once a host pass has handled each of the
   * host's containers are freed (#freeInherited). Read once this process holds the host.
   */
  #inherited: Map<string, string[]> | undefined;
  /** Gone hosts this worker took a turn to sweep (HostStore.sweepTurn): handed back at its stop. */
  readonly #sweepTurns = new Set<string>();
  /** Host loop passes that swept gone hosts: where in their list the next pass starts. */
  #sweepRound = 0;
  /**
   * Host loop passes under way. A pass tears down what it finds (a stopped container left
   * running, a record without a container): a drain is over, and a stop decides whether the host
   * leaves the fleet, only once it has ended. (Teardowns of runners this process watches keep
   * them in `launcher.tracked` until they end.)
   */
  readonly #passes = new Set<Promise<boolean>>();
  /** The end of a drain, once every runner is gone: it waits for the host loop's pass (#finishDrain). */
  #finishingDrain: Promise<void> | undefined;
  /**
   * The host's drain mark was left by a worker that drained before this one started (HostStore
   * DrainMark `left`): this one takes no demand, and stays up, until `drain --undo` removes it.
   */
  #cordoned = false;
  /**
   * The first host loop pass has ended: a drain is not over before it (a worker restarted while
   * its host drains adopts the runners it finds there first, and lets their jobs finish).
   */
  #passed = false;
  #stopping = false;
  /** The start failed: its stop leaves the host as a crash would (HostPresence.stop `cut_short`). */
  #startFailed = false;
  #reconcileTimer: { stop(): void } | undefined;
  /** Stops hearing of repositories made public (see #publicized). */
  #offPublicized: (() => void) | undefined;
  /** Whether each warm pool's runners may register where they would (public repositories). */
  readonly #exposure: WarmExposure;
  /** Per warm pool, ends the pause its warm loop sleeps now (#warmPause): a repository made public (#publicized). */
  readonly #warmWakes = new Map<string, AbortController>();
  readonly #problems = new Problems();
  /** Served pools' images found missing on the engine: said once each, until found there (#checkImages). */
  readonly #imagesMissing = new Set<string>();
  #drained: (() => void) | undefined;
  /** An operator's drain has finished (`drained` resolved): the stop leaves the host drained (HostPresence.stop). */
  #drainOver = false;
  /** Resolves when an operator's drain has finished: no demand held, no runner left. */
  readonly drained: Promise<void>;

  constructor(deps: WorkerDeps) {
    this.#d = deps;
    this.#slots = new Slots(deps.capacity);
    this.#pools = new Map(deps.pools.map((p) => [p.name, p]));
    this.#limits = deps.limits.holding(placeHoldMs(deps.heartbeatSeconds));
    this.#exposure = new WarmExposure({ github: deps.github, logger: deps.logger });
    this.#jobChecks = new JobChecks(deps.github, deps.namePrefix);
    this.drained = new Promise((resolve) => (this.#drained = resolve));
    this.#presence = new HostPresence({
      host: deps.host,
      instance: deps.launcher.instance,
      capacity: deps.capacity,
      pools: deps.pools.map((p) => p.name),
      heartbeatSeconds: deps.heartbeatSeconds,
      hosts: deps.hosts,
      driver: deps.driver,
      logger: deps.logger,
      used: () => this.#slots.used,
      onBeat: () => this.#onBeat(),
    });
    deps.metrics.onScrape(async () => deps.metrics.runners(deps.host, this.#counts(), this.#startingSince()));
    deps.metrics.failureCounters([...this.#pools.keys()]);
  }

  /** What makes this worker unready, if anything: fixed reasons, fit for /readyz (the details are in the log). */
  get problems(): UnreadyReason[] {
    // The host's own problems (engine, host taken) first; they are never among #problems.
    const presence = this.#presence.problem;
    return presence ? [presence.reason, ...this.#problems.reasons()] : this.#problems.reasons();
  }

  async start(): Promise<void> {
    await this.#d.driver.ping();
    await this.#checkImages();
    // Before any launch: a network of that name that lets runners reach each other stops the start.
    if (this.#d.pools.some((p) => p.networkMode === RUNNER_NETWORK)) await this.#d.driver.ensureRunnerNetwork();
    await this.#presence.start();
    try {
      await this.#placesBefore();
      // The drain mark before any demand (the beats read it beside them, not before).
      await this.#checkCordon();
      await this.#startServing();
    } catch (err) {
      // Half started: stop what did start, and free the host for the next try; a failed start
      // is no clean stop (the process exits 1).
      this.#startFailed = true;
      await this.stop().catch(() => undefined);
      throw err;
    }
    this.#d.logger.info({ capacity: this.#d.capacity, pools: [...this.#d.sources.keys()] }, "worker started");
  }

  async #startServing(): Promise<void> {
    this.#offPublicized = this.#d.events?.onPublicized((where) => this.#publicized(where));
    // Demand is taken once the pass has handled this host's containers and records, not after its
    // sweep of gone hosts too: that can wait minutes on GitHub's write budget.
    if (await this.#listing()) return this.#serveDemand();
    // The host's containers could not be listed (an engine whose lists hang, Redis away): those a
    // stopped or crashed worker left (runners mid-job, warm runners) are not known yet. Opened now,
    // the demand and warm loops would fill the slots beside them, and the pass that later adopts
    // them would put the host over its capacity. No demand is taken until a pass has listed them.
    this.#d.logger.warn("the host's containers could not be listed: taking no demand until they are (tried again every few seconds)");
    this.#loops.push(
      (async () => {
        for (let tries = 1; !this.#stopping; tries++) {
          await this.#pause(Math.min(30_000, 1000 * 2 ** tries));
          if (this.#stopping || !(this.#passed || (await this.#listing())) || this.#stopping) continue;
          if (!this.#passed) this.#d.logger.info("the host's containers listed: taking demand");
          try {
            await this.#serveDemand();
            this.#problems.clear("demand");
            return;
          } catch (err) {
            // A queue that cannot start (Redis away): tried again, the pools started already kept.
            this.#noteError("demand", UNREADY.takingDemand, `taking demand could not start: ${errorMessage(err)}`, true);
          }
        }
      })(),
    );
  }

  /** Takes demand and keeps warm runners, once a host loop pass has listed this host's containers. */
  async #serveDemand(): Promise<void> {
    this.#passed = true;
    this.#checkDrained();
    for (const [pool, source] of this.#d.sources) {
      if (this.#stopping) return;
      if (this.#started.has(pool)) continue;
      await source.start();
      this.#started.add(pool);
      // Stopped meanwhile (the sources closed): nothing more is started that the stop would not wait for.
      if (this.#stopping) return;
      this.#loops.push(this.#loop(pool, source));
      const config = this.#pools.get(pool);
      if (config && config.minIdle > 0) this.#loops.push(this.#warmLoop(config));
    }
    // A pass under way (the first one's sweep of gone hosts) is waited for, and the next comes an
    // interval after it, as after any pass.
    this.#reconcileTimer = every(this.#d.reconcileIntervalSeconds * 1000, async () => {
      if (this.#passes.size > 0) await Promise.allSettled([...this.#passes]);
      else await this.reconcile();
    });
  }

  async stop(): Promise<void> {
    if (this.#stopping) return;
    this.#stopping = true;
    this.#reconcileTimer?.stop();
    this.#offPublicized?.();
    // Watching stops at once; launches in flight finish first, then hand their demand back.
    this.#shutdown.abort();
    this.#slots.notify();
    await Promise.allSettled([...this.#d.sources.values()].map((s) => s.close()));
    const work = (async () => {
      await Promise.allSettled(this.#loops);
      await Promise.allSettled([...this.#launches]);
      await Promise.allSettled([...this.#serving.keys()]);
      // A pass's teardown cut short would leave a container, or a record, behind the host's leaving.
      await Promise.allSettled([...this.#passes]);
    })();
    const progress = setInterval(() => this.#logStopProgress(), STOP_PROGRESS_MS).unref();
    const timeoutMs = (this.#d.stopTimeoutSeconds ?? DEFAULT_STOP_TIMEOUT_SECONDS) * 1000;
    const ended = await this.#whileRedisAnswers(work, Date.now() + timeoutMs).finally(() => clearInterval(progress));
    let left: string | undefined;
    if (ended !== "done") {
      // Redis away: the worker's connection holds its commands until it is back, and what waits on
      // it would hold the stop up for ever. Past the stop timeout: a launch or teardown waiting out
      // a GitHub rate limit, or a hung engine's call limits. Left as a crash would leave it: a
      // lease lapses, a place expires, and the next worker's host loop finishes a launch or a
      // teardown cut short. The stop then fails, so that the process exits 1.
      const what = { launching: this.#launches.size, holding: this.#serving.size, passes: this.#passes.size };
      const why = ended === "redis_silent" ? "Redis does not answer" : `the stop took over worker.stopTimeoutSeconds (${timeoutMs / 1000} s)`;
      this.#d.logger.warn(what, `${why}: stopping without waiting for launches in flight, demand held and host loop passes`);
      // Demand not handed back is what the stop failed to do (a pass left is the next one's).
      if (what.launching + what.holding > 0) left = `${why}: left to lapse: ${what.launching} launch${what.launching === 1 ? "" : "es"} in flight, ${what.holding} demand held`;
    }
    // With runners still running the host stays listed until its record expires, so a quick
    // restart adopts them before anyone treats the host as gone. So it does with runners still
    // recorded (a teardown that failed: an engine that would not remove a container, GitHub not
    // answering): forgotten, the host would be swept by no one, and nothing would remove them.
    const running = this.#d.launcher.tracked.size + this.#leftRunning.size;
    const recorded = running === 0 ? await this.#recordedRunners() : undefined;
    if (recorded !== 0 && running === 0) {
      this.#d.logger.warn(
        { recorded },
        "runners of this host are still recorded (a teardown failed, or Redis did not answer): the host stays listed, for the next worker on it or the other hosts' host loops to clean up",
      );
    }
    // Turns to sweep gone hosts go to the other workers at once, not when they lapse.
    await atMost(Promise.allSettled([...this.#sweepTurns].map((id) => this.#d.hosts.endSweepTurn(id, this.#d.host))), 3_000);
    // A stop that left nothing to lapse is a clean one, even with runners left: should no worker
    // come back to the host within its expiry, the others sweep it counted as stopped, not gone.
    // One after a finished drain whose last teardown failed leaves the host drained (mark `left`).
    await this.#presence.stop(running === 0 && recorded === 0 ? "leave" : left || this.#startFailed ? "cut_short" : "clean", this.#drainOver);
    this.#d.logger.info({ running: this.#d.launcher.tracked.size + this.#leftRunning.size }, "worker stopped; running runners left running");
    if (left) throw new Error(`worker stop incomplete: ${left}`);
  }

  /**
   * Says what the stop still waits for: launches by job and step (a warm one by pool), demand
   * held otherwise (handed back as its watch ends), host loop passes; else the demand loops.
   */
  #logStopProgress(): void {
    const launches = [...this.#steps.values()].map((step) => step());
    const holding = [...this.#serving.values()].filter((lease) => !this.#steps.has(lease)).length;
    const parts: string[] = [];
    if (launches.length > 0) parts.push(`${launches.length} launch${launches.length === 1 ? "" : "es"} in flight (${launches.join("; ")})`);
    if (holding > 0) parts.push(`${holding} demand held`);
    if (this.#passes.size > 0) parts.push(`${this.#passes.size} host loop pass${this.#passes.size === 1 ? "" : "es"}`);
    if (parts.length === 0) parts.push("the demand loops");
    this.#d.logger.info({ launching: launches.length, holding, passes: this.#passes.size }, `stopping: waiting for ${parts.join(", ")}`);
  }

  /**
   * Where the launch for a demand is, from the launcher's record of it (found by demand id; none
   * yet: it waits for its still-queued check first). `checking`: that check has not answered.
   */
  #launchStep(demandId: string, checking: boolean): string {
    const tracked = [...this.#d.launcher.tracked.values()].find((t) => t.record.demandId === demandId);
    if (!tracked) return checking ? "still-queued check" : "launching";
    const { record } = tracked;
    if (record.runnerId === undefined) return `runner ${record.name}: registering at GitHub`;
    if (!record.containerId) return `runner ${record.name}: ${checking ? "still-queued check" : "creating its container"}`;
    return `runner ${record.name}: ${tracked.state === "starting" ? "starting its container" : "noting its start"}`;
  }

  /** How many runners of this host Redis records; undefined if it does not say within STOP_REDIS_PROBE_MS. */
  async #recordedRunners(): Promise<number | undefined> {
    const names = this.#d.runners.listHost(this.#d.host).catch(() => undefined);
    return (await atMost(names, STOP_REDIS_PROBE_MS))?.length;
  }

  /**
   * Waits for `work` until `deadline` (ms since epoch) as long as Redis answers (asked every
   * STOP_REDIS_PROBE_MS): `done` once it is, `redis_silent` once Redis has not answered
   * STOP_REDIS_MISSES probes in a row (one slow answer, a failover's, does not give up the work),
   * `deadline` once that has passed.
   */
  async #whileRedisAnswers(work: Promise<void>, deadline: number): Promise<"done" | "redis_silent" | "deadline"> {
    let done = false;
    const finished = work.then(() => (done = true));
    for (let misses = 0; ; ) {
      await atMost(finished, Math.max(0, Math.min(STOP_REDIS_PROBE_MS, deadline - Date.now())));
      if (done) return "done";
      if (Date.now() >= deadline) return "deadline";
      const answered = await atMost(
        this.#d.hosts.ping().then(
          () => true,
          () => false,
        ),
        STOP_REDIS_PROBE_MS,
      );
      if (done) return "done";
      misses = answered ? 0 : misses + 1;
      if (misses >= STOP_REDIS_MISSES) return "redis_silent";
    }
  }

  /**
   * `p`, or `stopped` as soon as the worker stops: a loop's wait on Redis, which lasts while Redis
   * is away, must not hold a stop up (`p` goes on; what it does late is harmless).
   */
  async #unlessStopped<T>(p: Promise<T>, stopped: T): Promise<T> {
    const signal = this.#shutdown.signal;
    let onStop!: () => void;
    const aborted = new Promise<T>((resolve) => (onStop = () => resolve(stopped)));
    if (signal.aborted) onStop();
    else signal.addEventListener("abort", onStop, { once: true });
    try {
      return await Promise.race([p, aborted]);
    } finally {
      signal.removeEventListener("abort", onStop);
    }
  }

  async #loop(pool: string, source: DemandSource): Promise<void> {
    let failures = 0;
    // Demand taken ahead in a burst (see TAKE_AHEAD), oldest first, served in order before more is
    // taken; a take of more in flight; and whether the pool's limit refused the last demand (none
    // is taken ahead then, until a demand gets through).
    const ahead: Lease[] = [];
    let more: Promise<Lease[]> | undefined;
    let atLimit = false;
    const shift = () => {
      const lease = ahead.shift();
      if (lease) this.#aheadHeld--;
      return lease;
    };
    // `first` (older than all taken ahead), then what was taken ahead, back unspent. Each goes
    // back to the head of the line, so they go newest first, to keep the queue's order.
    const giveBack = async (first?: Lease) => {
      const leases = ahead.splice(0);
      if (more) leases.push(...(await more));
      more = undefined;
      this.#aheadHeld -= leases.length;
      if (first) leases.unshift(first);
      for (const lease of leases.reverse()) await lease.release().catch(() => undefined);
    };
    while (!this.#stopping) {
      if (!this.#open) {
        await giveBack();
        await sleep(1000);
        continue;
      }
      // Demand is taken only while a slot is free, and waiting for it holds none: a pool without
      // demand keeps no slot from another pool's (BullMQ's wait for demand lasts up to 2 s).
      if (this.#slots.free === 0) {
        // Watched from before the hand-back: a slot freed while it waits on Redis wakes this loop.
        const changed = this.#slots.changed();
        await giveBack();
        if (this.#slots.free === 0) await changed;
        continue;
      }
      let lease = shift();
      if (!lease && more) {
        ahead.push(...(await more));
        more = undefined;
        lease = shift();
      }
      try {
        lease ??= this.#stopping || !this.#open ? undefined : await this.#next(source);
        failures = 0;
        this.#problems.clear(`demand:${pool}`);
      } catch (err) {
        failures++;
        this.#noteError(`demand:${pool}`, UNREADY.takingDemand, `taking demand for pool ${pool} failed: ${errorMessage(err)}`, failures === 1);
        // Cut short by a stop: with Redis away, the backoff reaches 30 s.
        await this.#pause(Math.min(30_000, 500 * 2 ** failures));
      }
      if (!lease) continue;
      if (!this.#open) {
        // Closed while it waited (engine gone, host taken, drain, stop): the demand goes back unspent.
        await giveBack(lease);
        continue;
      }
      // There was demand: what else waits is taken while this lease is served, as far as the free
      // slots go beyond this lease's and what every pool's loop holds taken ahead.
      const room = atLimit ? 0 : Math.min(TAKE_AHEAD, this.#slots.free - 1 - this.#aheadHeld);
      if (!ahead.length && !more && room > 0 && source.ready) {
        this.#aheadHeld += room;
        more = this.#ready(source.ready(room)).then((leases) => {
          this.#aheadHeld -= room - leases.length;
          return leases;
        });
      }
      // A warm runner of this host takes the demand over with its slot and its place under the
      // pool limit; else the demand needs a slot of its own.
      const spare = await this.#adoptSpare(lease);
      if (!spare && !this.#slots.tryAcquire()) {
        // Another pool's demand took the last slot while this one waited: back unspent, first in
        // line, for a host with room (or this one, once a slot is free).
        await giveBack(lease);
        continue;
      }
      if (!spare) {
        atLimit = !(await this.#withinPoolLimit(lease));
        if (atLimit) {
          this.#slots.release();
          // The demand taken ahead is the same pool's: it would wait for the same limit.
          await giveBack(lease);
          await sleep(1000);
          continue;
        }
      }
      const held = lease;
      const serving: Promise<void> = this.#serve(held, spare).finally(async () => {
        this.#serving.delete(serving);
        this.#runnerOf.delete(held);
        this.#gaveSlot.delete(held);
        if (!this.#slotless.delete(held)) this.#slots.release();
        // The place is the demand's (its id): not freed under another lease of it served here,
        // whose end frees it (a lapsed lease that launched the runner another lease waits for),
        // nor by a lease that lapsed: the demand's next holder, on another host maybe, holds the
        // same place, and freeing it would let the pool over its limit until that holder's next
        // beat. Held by no one, it frees itself at its expiry (placeHoldMs).
        if (!this.#placesKept.delete(held) && !this.#servedHere(held.id) && !held.lost.aborted) await this.#limits.release(held.demand.pool, held.id).catch(() => undefined);
        this.#checkDrained();
      });
      this.#serving.set(serving, held);
    }
    // Stopped: what was taken ahead goes back unspent.
    await giveBack();
  }

  /**
   * The leases `take` (a source's `ready`) gets, or none (a failure to take more is the next
   * blocking take's to report); once the worker stops, none, and those that come late go back.
   */
  async #ready(take: Promise<Lease[]>): Promise<Lease[]> {
    const taking = take.catch(() => [] as Lease[]);
    const leases = await this.#unlessStopped(taking, undefined);
    if (leases && !this.#shutdown.signal.aborted) return leases;
    void taking.then((late) => Promise.all(late.map((l) => l.release().catch(() => undefined))));
    return [];
  }

  /**
   * The source's next lease, or undefined once the worker stops: a wait for demand on a Redis
   * that is away lasts until it is back, and must not hold the stop up. A lease that comes after
   * the stop goes back at once, unspent.
   */
  async #next(source: DemandSource): Promise<Lease | undefined> {
    const taking = source.next();
    const lease = await this.#unlessStopped(taking, undefined);
    if (!this.#shutdown.signal.aborted) return lease;
    // Stopped: the lease, taken already or still to come, goes back.
    void taking.then((late) => late?.release(), () => undefined).catch(() => undefined);
    return undefined;
  }

  /** False (the demand goes back) when the pool is at its limit, Redis cannot say that it is not, or the worker stops. */
  async #withinPoolLimit(lease: Lease): Promise<boolean> {
    const max = this.#pools.get(lease.demand.pool)?.maxRunners;
    if (!max) return true;
    if (this.#stopping) return false;
    try {
      const within = await this.#unlessStopped(this.#limits.acquire(lease.demand.pool, lease.id, max), false);
      this.#problems.clear(`limit:${lease.demand.pool}`);
      return within;
    } catch (err) {
      // A Redis error (out of memory, read-only replica) must not end this pool's loop.
      this.#noteError(`limit:${lease.demand.pool}`, UNREADY.poolLimit, `pool limit check for pool ${lease.demand.pool} failed: ${errorMessage(err)}`, false);
      return false;
    }
  }

  /**
   * Each beat refreshes this worker's places under pool limits (they last placeHoldMs), and ends
   * a finished drain.
   */
  async #onBeat(): Promise<void> {
    // Errors aside (the places are refreshed all the same): the next beat looks again.
    await this.#checkCordon().catch((err: unknown) => this.#d.logger.warn({ err: errorMessage(err) }, "reading the host's drain mark failed"));
    const held = new Set<string>();
    for (const lease of this.#serving.values()) {
      const max = this.#pools.get(lease.demand.pool)?.maxRunners;
      if (max) await this.#refreshPlace(lease.demand.pool, lease.id, max, held);
    }
    for (const { pool, holder } of this.#adopted.values()) {
      if (pool.maxRunners) await this.#refreshPlace(pool.name, holder, pool.maxRunners, held);
    }
    // Each place is refreshed only while its holder still holds it, looked at right before the
    // refresh is sent: a launch that failed, or a spare adopted by demand, while this beat waited
    // on Redis has had its places freed or moved, and a refresh would put them back.
    for (const [holder, launch] of this.#warmLaunches) {
      const { pool } = launch;
      const launching = () => this.#warmLaunches.get(holder) === launch;
      if (launching() && launch.warm && !(await this.#limits.acquire(warmKey(pool.name), holder, pool.minIdle))) launch.warm = false;
      if (launching() && pool.maxRunners) await this.#refreshPlace(pool.name, holder, pool.maxRunners, held);
    }
    for (const [name, spare] of this.#spares) {
      const { pool, holder } = spare;
      const kept = () => this.#spares.get(name) === spare && spare.holder === holder && !spare.adopted;
      if (kept() && spare.warm && !(await this.#limits.acquire(warmKey(pool.name), holder, pool.minIdle)) && kept()) {
        // Its place expired and others filled the set: a spare like any other now.
        spare.warm = false;
        spare.idleFrom = Date.now();
      }
      if (kept() && pool.maxRunners) await this.#refreshPlace(pool.name, holder, pool.maxRunners, held);
    }
    for (const holder of this.#lostPlaces) if (!held.has(holder)) this.#lostPlaces.delete(holder);
    this.#checkDrained();
  }

  /**
   * Refreshes a runner's place under its pool's `maxRunners`. One that lapsed (Redis lost it, or
   * this process stalled past placeHoldMs) and that others took meanwhile cannot be had back: the
   * runner runs all the same, and the pool is over its limit until one of its runners ends. Said
   * once per place.
   */
  async #refreshPlace(pool: string, holder: string, max: number, held: Set<string>): Promise<void> {
    held.add(holder);
    if (await this.#limits.acquire(pool, holder, max)) {
      this.#lostPlaces.delete(holder);
      return;
    }
    if (this.#lostPlaces.has(holder)) return;
    this.#lostPlaces.add(holder);
    this.#d.logger.warn({ pool, holder, maxRunners: max }, "a runner's place under maxRunners lapsed and the pool is full: it runs over the limit until a runner of the pool ends");
  }

  /** Whether this worker may take demand now: its presence is open, and the host is not cordoned. */
  get #open(): boolean {
    return this.#presence.open && !this.#cordoned;
  }

  /**
   * Follows the host's drain mark on each beat. A mark left by a worker that drained (`left`)
   * cordons this one, said once as a warning, as a worker restarted on a drained host (a restart
   * policy such as Compose's `unless-stopped`) would otherwise take demand again; it exits only
   * when asked to drain itself (`asked`: HostPresence then drains it). The mark removed, it takes
   * demand again.
   */
  async #checkCordon(): Promise<void> {
    const { hosts, host, logger } = this.#d;
    const cordoned = (await hosts.drainMark(host)) === "left";
    if (cordoned && !this.#cordoned) {
      logger.warn(
        `host "${host}" is drained (jitrunner drain): taking no demand, and staying up, until \`jitrunner drain --host ${host} --undo\` removes its drain mark`,
      );
    } else if (!cordoned && this.#cordoned && !this.#presence.draining) {
      logger.info("the host's drain mark is gone: taking demand");
    }
    this.#cordoned = cordoned;
  }

  /** Whether an operator's drain has nothing left to wait for in this process but passes under way. */
  #idleDrained(): boolean {
    return this.#passed && this.#presence.draining && this.#serving.size === 0 && this.#d.launcher.tracked.size === 0 && this.#leftRunning.size === 0;
  }

  #checkDrained(): void {
    if (this.#idleDrained()) this.#finishingDrain ??= this.#finishDrain().finally(() => (this.#finishingDrain = undefined));
  }

  /**
   * Resolves `drained` once the host loop's passes under way have ended, if nothing came back
   * meanwhile: resolved earlier, the worker would exit in the middle of a pass's teardown.
   */
  async #finishDrain(): Promise<void> {
    while (this.#passes.size > 0) await Promise.allSettled([...this.#passes]);
    if (!this.#idleDrained()) return;
    this.#drainOver = true;
    this.#drained?.();
  }

  async #serve(lease: Lease, spare?: Spare): Promise<void> {
    const { demand } = lease;
    const pool = this.#pools.get(demand.pool)!;
    const log = this.#d.logger.child({ demandId: lease.id, jobId: demand.jobId, pool: pool.name, deliveryId: demand.deliveryId });
    // An adopted warm runner is this call's to hand back until #whileAdopted watches it (or
    // #alreadyServed hands it back itself).
    const unwatched: { spare?: Spare } = { spare };
    try {
      if (await this.#alreadyServed(lease, log, unwatched)) {
        const back = unwatched.spare;
        unwatched.spare = undefined;
        if (back) await this.#returnSpare(back, lease, log);
        return;
      }
      // Handed back while the demand waited for a runner of another host: a launch of its own now.
      spare = unwatched.spare;
      let tracked: Tracked;
      let reason: string;
      if (spare) {
        // No launch on this job's critical path: GitHub hands the job to an idle runner at once.
        // No still-queued check either: adopting costs no API call, and a cancelled job's runner
        // is reaped after the idle timeout like any runner that got no job.
        if (!(await this.#d.runners.claimDemand(spare.tracked.record.name, lease.id)) && (await this.#recordGone(spare, log)) === "removed") {
          unwatched.spare = undefined;
          await lease.release();
          return;
        }
        spare.tracked.record.demandId = lease.id;
        this.#d.metrics.pickedUp(pool.name, (Date.now() - demand.receivedAt) / 1000);
        log.info({ runner: spare.tracked.record.name }, spare.adoptedIdle ? "demand adopted by an idle runner of this host that is not warm" : "demand adopted by a warm runner");
        unwatched.spare = undefined;
        const served = await this.#whileAdopted(lease, spare);
        tracked = served.tracked;
        reason = served.reason;
      } else {
        // A fresh job was queued a moment ago: ask GitHub alongside the registration, and let the
        // answer gate only the container. Demand that waited (a backlog, a retry) asks first, as a
        // job cancelled meanwhile is likelier there and would waste a registration; so does demand
        // for a job attempt seen before (a late copy of its `queued` delivery: Demand.seenBefore).
        const fresh = lease.attempt === 1 && !demand.seenBefore && Date.now() - demand.receivedAt < (this.#d.overlapStillQueuedCheckSeconds ?? 0) * 1000;
        // Nothing is asked of GitHub for a launch this engine lacks the image of (see PoolImages).
        await this.#d.launcher.images.require(pool);
        // The first line of the job's launch: its registration may wait minutes on a slow GitHub.
        log.info({ attempt: lease.attempt }, "launching a runner");
        let checking = this.#d.checkStillQueued;
        const check = this.#d.checkStillQueued ? this.#stillNeeded(lease, log).finally(() => (checking = false)) : undefined;
        this.#steps.set(lease, () => `job ${demand.jobId}: ${this.#launchStep(lease.id, checking)}`);
        try {
          if (check && !fresh && !(await check)) {
            await lease.complete("not_needed");
            return;
          }
          if (check && !fresh && this.#shutdown.signal.aborted) {
            // The stop cut the check short (#stillNeeded): nothing is registered, the demand goes back unspent.
            log.info("worker stopping: launch given up at its still-queued check, before its registration was asked for");
            await lease.release();
            return;
          }
          await this.#checkRunnerGroup(pool, demand);
          // The lease lapsed during the checks (Redis away for longer than it): the demand's next
          // holder launches; nothing is registered here. One that lapses while the registration
          // waits its turn in the write budget gives it up the same way (NotSentError).
          if (lease.lost.aborted) throw lease.lost.reason;
          const started = Date.now();
          const stop = linkedSignal([this.#shutdown.signal, lease.lost]);
          const launching = this.#d.launcher.launch(targetOf(demand), pool, log, check, stop.signal);
          this.#launches.add(launching);
          try {
            tracked = await launching;
          } catch (err) {
            if (!(err instanceof NotNeeded)) throw err;
            await lease.complete("not_needed");
            return;
          } finally {
            stop.dispose();
            this.#launches.delete(launching);
          }
          this.#d.metrics.launched(pool.name, (Date.now() - started) / 1000, (Date.now() - demand.receivedAt) / 1000);
        } finally {
          this.#steps.delete(lease);
        }
        this.#problems.clear(`launch:${pool.name}`);
        // A later lease of the demand may wait here for this runner already (this one lapsed
        // while it launched): the runner holds one slot between them.
        this.#countOnce(lease, tracked.record.name);
        reason = await this.#d.launcher.watch(tracked, pool, log, this.#shutdown.signal);
      }
      if (reason === "shutdown") {
        // The runner runs on: its place is kept (#placesKept).
        this.#placesKept.add(lease);
        await lease.release();
        return;
      }
      const latest = await this.#d.runners.get(tracked.record.name).catch(() => undefined);
      const tookAJob = tracked.state === "busy" || tracked.state === "completed" || latest?.state === "busy" || latest?.state === "completed";
      const torn = await this.#tearDown(tracked.record, reason, log);
      // The lease lapsed while the runner ran: the demand is its current holder's, whatever the
      // runner did, and a runner that took no job is no launch of this host's that failed. The
      // teardown settled the demand's claim (kept for a runner that took a job, released for one
      // that took none; one cut short leaves it to the host loop's), and the holder reads it once
      // the record is gone, to complete the demand or launch again: this lease neither retries
      // nor releases the claim under it.
      if (lease.lost.aborted) throw lease.lost.reason;
      const retry = tookAJob || torn?.tookAJob ? undefined : await this.#retryReason(lease, reason, log);
      // No renewal may have found the lapse yet (Redis back a moment ago from an outage longer
      // than the lease): asked once before the runner counts as a launch that failed, a lease
      // found lost ends as above.
      if (retry && !(await lease.held())) throw lease.lost.reason;
      if (retry) {
        // This runner did not serve the demand: forget its claim so the retry launches anew.
        await this.#d.runners.releaseDemand(tracked.record);
        throw Object.assign(new Error(retry.message), { code: retry.code, retryable: true });
      }
      await lease.complete(reason);
    } catch (err) {
      // Failed before the adopted runner was watched (Redis, GitHub): it is a spare again.
      if (unwatched.spare) await this.#returnSpare(unwatched.spare, lease, log).catch(() => undefined);
      if (err instanceof LeaseLostError) {
        // No launch failed: the demand is its current holder's, who finds this runner's record.
        log.warn("the demand's lease lapsed while it was served (Redis away for longer than worker.leaseSeconds): its end is the demand's current holder's to record");
        return;
      }
      if (err instanceof NotSentError) {
        if (lease.lost.aborted) {
          log.warn("the demand's lease lapsed while its registration waited (Redis away for longer than worker.leaseSeconds): nothing registered, its next holder launches");
          return;
        }
        // Stopping, with nothing registered: the demand goes back without spending an attempt.
        await lease.release().catch(() => undefined);
        return;
      }
      // A Docker error is this host's (an image, a runtime or a network it lacks), not the job's: the
      // demand is tried again, by another host perhaps, up to its launch attempts.
      const retryable = err instanceof DockerError || ((err as { retryable?: boolean }).retryable ?? true);
      // The host failed, not the demand: it goes back without spending one of its launch
      // attempts, for another host, or this one once its engine answers (it takes none before).
      const engineGone = err instanceof DockerError && !(await this.#presence.checkEngine());
      this.#d.metrics.launchFailed(pool.name, (err as { code?: string }).code ?? "error");
      // A job the config refuses (its runner group) says nothing of this worker's health.
      if (!CONFIG_REFUSALS.has((err as { code?: string }).code ?? "")) {
        this.#noteError(`launch:${pool.name}`, launchProblem(err), `launch for pool ${pool.name} failed: ${errorMessage(err)}`, false);
      }
      if (engineGone) {
        await this.#d.activity?.launchFailure(demand, lease.attempt, err, false).catch(() => undefined);
        log.warn({ attempt: lease.attempt, err: errorMessage(err) }, "launch failed with the Docker engine gone; demand handed back");
        await lease.release().catch(() => undefined);
        return;
      }
      // GitHub did not answer, answered 5xx or held its calls back (a rate limit) through the
      // client's retries: GitHub failed, not the job. Its attempts spent on an incident (5 in about
      // 100 s), the demand would fail for good and wait on the reconciler's retry of failed demand
      // (reconcile.retryFailedDemandSeconds, 10 a pass). It is handed back for a while instead, no
      // attempt spent, each time twice as long (2 s to 5 minutes), for as long as GITHUB_PATIENCE_MS.
      // Logged at warn the first time only: an incident would log a line per job per try.
      if (githubUnavailable(err) && Date.now() - demand.receivedAt < GITHUB_PATIENCE_MS) {
        const postponed = demand.postponed ?? 0;
        const ms = Math.min(GITHUB_RETRY_MAX_MS, GITHUB_RETRY_BASE_MS * 2 ** Math.min(postponed, 10));
        await this.#d.activity?.launchFailure(demand, lease.attempt, err, false).catch(() => undefined);
        log[postponed === 0 ? "warn" : "debug"]({ attempt: lease.attempt, postponed, retryInSeconds: ms / 1000, err: errorMessage(err) }, "launch failed with GitHub unavailable; demand handed back, no attempt spent");
        await lease.postpone(ms).catch(() => undefined);
        return;
      }
      const failed = await lease.fail(err instanceof Error ? err : new Error(String(err)), !retryable).then(
        () => true,
        () => false,
      );
      // Its last try (BullMQ retries while attempts remain), and the queue took it as failed: not
      // when the fail did not land (the lease lost to another holder, Redis away), as the demand goes on.
      const final = failed && (!retryable || lease.attempt >= lease.attempts);
      if (final) this.#d.metrics.demandFailed(pool.name);
      if (final) log.error({ attempt: lease.attempt, retryable, err: errorMessage(err) }, finalFailure(lease, err));
      else log.warn({ attempt: lease.attempt, retryable, err: errorMessage(err) }, "demand failed; returned to the queue");
      await this.#d.activity?.launchFailure(demand, lease.attempt, err, final).catch(() => undefined);
    }
  }

  /**
   * An organization pool's runner is registered in a runner group, and GitHub hands it any job of
   * matching labels from any repository the group admits, before the job it was launched for: in
   * a group that admits public repositories, a fork's pull request. So unless the pool allows
   * public repositories, no runner is launched in such a group, as no warm one is (WarmExposure,
   * asked once per 5 minutes per pool and organization, ahead of time in an answer's last minute:
   * no launch waits for it while jobs keep coming). Throws, before anything is registered:
   * for good (the demand fails, its error saying what to change) when the group admits public
   * repositories or is not there; to be retried when GitHub cannot say (asked again on each try);
   * NotSentError when the worker stops. Refusals of the config are no failure of the worker's:
   * they do not make it unready (see #serve).
   * A group that admits only selected repositories gets no runner for a job of another one, in
   * any pool, and a group that admits no public repository (its repository access "Private
   * repositories", or public repositories not allowed) none for a public repository's job (in a
   * pool that allows public repositories: the ingress drops such jobs for the others): GitHub
   * would never hand it the job, and it would hold its slot and place until its idle timeout, then
   * launch again on each try. The demand fails for good instead.
   */
  async #checkRunnerGroup(pool: PoolConfig, demand: Lease["demand"]): Promise<void> {
    if (pool.scope !== "organization") return;
    const refused = await this.#exposure.refusal(pool, this.#shutdown.signal, exposureTargetOf(demand), true);
    if (this.#shutdown.signal.aborted) throw new NotSentError("the runner group check");
    const group = pool.runnerGroup ?? pool.runnerGroupId ?? 1;
    if (refused === "repository_not_in_group") {
      throw new JitrunnerError(
        CONFIG_REFUSAL.repositoryNotInGroup,
        `runner group ${group} of organization ${demand.owner} does not admit repository ${demand.owner}/${demand.repo} (it admits selected repositories only): GitHub would never hand this job to its runners; add the repository to the group, or serve its jobs with another pool than ${pool.name}`,
        { retryable: false },
      );
    }
    if (refused === "public_repository_not_admitted") {
      throw new JitrunnerError(
        CONFIG_REFUSAL.repositoryNotInGroup,
        `runner group ${group} of organization ${demand.owner} does not admit public repository ${demand.owner}/${demand.repo} (its repository access is "Private repositories", or it does not allow public repositories): GitHub would never hand this job to its runners; allow public repositories in the group, or serve the repository's jobs with another pool than ${pool.name}`,
        { retryable: false },
      );
    }
    if (refused === "public_runner_group") {
      throw new JitrunnerError(
        CONFIG_REFUSAL.publicGroup,
        `runner group ${group} of organization ${demand.owner} admits public repositories: any pull request could run on this pool's runners; restrict the group to private repositories, or set allowPublicRepositories on pool ${pool.name}`,
        { retryable: false },
      );
    }
    if (refused === "runner_group_missing") {
      throw new JitrunnerError(
        CONFIG_REFUSAL.missingGroup,
        `runner group ${group} does not exist in organization ${demand.owner}: check runnerGroup or runnerGroupId of pool ${pool.name}`,
        { retryable: false },
      );
    }
    if (refused === "visibility_unknown") {
      throw new JitrunnerError("E_RUNNER_GROUP_UNKNOWN", `could not learn from GitHub whether runner group ${group} of organization ${demand.owner} admits public repositories, or which repositories it admits (see the log)`, {
        retryable: true,
      });
    }
  }

  /**
   * A demand taken over from a worker that stopped may already have its runner. Running on a live
   * host, or done: no second runner. On a host that is gone, a runner that never took a job is
   * deregistered and forgotten, and the demand is served again here. `unwatched`: the warm runner
   * of this host adopted for the demand, if any, while #serve is to hand it back.
   */
  async #alreadyServed(lease: Lease, log: Logger, unwatched: { spare?: Spare }): Promise<boolean> {
    const existing = await this.#d.runners.findByDemand(lease.id);
    if (!existing) return false;
    const record = existing.record;
    const hostGone = record && record.host !== this.#d.host && !(await this.#d.hosts.alive(record.host));
    if (record && hostGone && record.state !== "busy" && record.state !== "completed") {
      const outcome = await deregisterNoted(this.#d.github, this.#d.runners, record);
      if (outcome !== "busy") {
        await this.#d.runners.remove(record, false);
        log.info({ runner: record.name, runnerHost: record.host }, "runner lost with its host; launching another");
        return false;
      }
    }
    log.info({ runner: existing.name, runnerHost: record?.host }, "demand already has a runner");
    if (record && !hostGone && record.host !== this.#d.host) return this.#waitElsewhere(lease, existing.name, log, unwatched);
    // A warm runner adopted for the demand before its runner here was found: a spare again at
    // once, rather than held idle for that runner's whole job (two containers in one slot and one
    // place, and one warm runner short meanwhile).
    if (record && !hostGone && unwatched.spare) await this.#holdForEarlierRunner(lease, log, unwatched);
    // Adopted here: this lease's slot and place count for it now (the place is the same one).
    this.#releaseAdopted(existing.name, lease.id);
    if (record && !hostGone) {
      // Launched, or waited for, by an earlier lease of the demand here that lapsed: this lease
      // takes that one's slot over, and the runner counts once.
      this.#countOnce(lease, existing.name);
      await this.#waitGone(existing.name, log, lease);
      // Lost, or found lost: a later lease of the demand took its slot (its lock was gone then).
      if (lease.lost.aborted || this.#gaveSlot.has(lease)) return this.#waitLost(lease, existing.name, log);
    }
    // Gone without serving the demand (a launch cut short by a crash, a runner that took no job):
    // its teardown released the claim, and the demand needs a runner still.
    if (record && !hostGone && !this.#stopping && !(await this.#d.runners.findByDemand(lease.id))) {
      if (!this.#open) {
        // Not launched on a host that takes no demand now (drained, cordoned): another host will.
        log.info({ runner: existing.name }, "earlier runner gone without a job, and this host takes no demand now: demand handed back");
        await lease.release();
        return true;
      }
      log.info({ runner: existing.name }, "earlier runner gone without a job; launching another");
      return false;
    }
    if (this.#stopping) {
      // The runner here runs on, and the next process on this host adopts it with this very place
      // (same holder id), as #waitElsewhere keeps it: freed now, another host could launch in it.
      if (record && !hostGone) this.#placesKept.add(lease);
      await lease.release();
    } else await lease.complete("served_by_earlier_runner");
    return true;
  }

  /**
   * The demand already has a runner: a warm runner adopted for it meanwhile is a spare again, with
   * a slot and a place of its own (taken back from the demand's), and the demand's place under the
   * pool limit is had again, for that runner. Best effort, as a refresh is: one the pool has no
   * room for runs over the limit all the same.
   */
  async #holdForEarlierRunner(lease: Lease, log: Logger, unwatched: { spare?: Spare }): Promise<void> {
    const spare = unwatched.spare;
    unwatched.spare = undefined;
    if (spare) await this.#returnSpare(spare, lease, log);
    const max = this.#pools.get(lease.demand.pool)?.maxRunners;
    if (max) await this.#limits.acquire(lease.demand.pool, lease.id, max).catch(() => false);
  }

  /**
   * The demand's runner runs on another live host, whose worker handed the demand back as it
   * stopped (or died, and its lease lapsed) and adopts the runner when it starts again, with a slot
   * of its own and the demand's place under the pool limit (#holdAdopted). The lease waits here for
   * the runner's end without a slot of this host: held, it would keep this host's room from other
   * jobs for the whole of a job that runs elsewhere, the runner counting twice. It holds the
   * demand's place only, the very place that host takes on adopting (same holder id), so the runner
   * counts once under `maxRunners`, adopted or not yet. A warm runner of this host adopted for the
   * demand is a spare again. Should the runner end without serving the demand, the lease takes a
   * slot and a place again to launch, or, with none free, goes back to the queue unspent.
   */
  async #waitElsewhere(lease: Lease, name: string, log: Logger, unwatched: { spare?: Spare }): Promise<boolean> {
    // The spare takes a slot of its own back, and its place; the lease's slot is free after it.
    await this.#holdForEarlierRunner(lease, log, unwatched);
    this.#slotless.add(lease);
    this.#slots.release();
    log.info({ runner: name }, "waiting for the demand's runner on another host, holding no slot here");
    await this.#waitGone(name, log, lease, true);
    if (lease.lost.aborted) return this.#waitLost(lease, name, log);
    if (this.#stopping) {
      // The runner on the other host runs on, counted by the place its worker refreshes.
      this.#placesKept.add(lease);
      await lease.release();
      return true;
    }
    const found = await this.#d.runners.findByDemand(lease.id);
    if (found?.record) {
      // Still running there, and this host takes no demand now (drained, cordoned, its engine or
      // host lost): waited for here, the runner's job would hold a drain for its whole length. The
      // demand goes back, its place kept for that runner, for a host that takes demand to wait on.
      log.info({ runner: name }, "this host takes no demand now: the demand, whose runner runs on another host, handed back");
      this.#placesKept.add(lease);
      await lease.release();
      return true;
    }
    if (found) {
      await lease.complete("served_by_earlier_runner");
      return true;
    }
    if (!this.#open) {
      log.info({ runner: name }, "earlier runner gone without a job, and this host takes no demand now: demand handed back");
      await lease.release();
      return true;
    }
    // Gone without serving the demand (a runner that took no job): launched here, given room.
    if (this.#slots.tryAcquire()) {
      this.#slotless.delete(lease);
      if (await this.#withinPoolLimit(lease)) {
        log.info({ runner: name }, "earlier runner gone without a job; launching another");
        return false;
      }
    }
    log.info({ runner: name }, "earlier runner gone without a job and no room here: demand handed back");
    await lease.release();
    return true;
  }

  /**
   * Keeps `pool.minIdle` warm runners across the fleet: a place in a Redis set per pool, taken and
   * checked in one script like the pool limit, is what a host must win before it launches one.
   * A warm runner that takes a job (busy), is adopted by a demand, or ends gives its place up, and
   * some host launches the next. Warm runners use this host's free slots only, never the one a
   * demand loop waits with.
   */
  async #warmLoop(pool: PoolConfig): Promise<void> {
    let failures = 0;
    while (!this.#stopping) {
      // Asked of GitHub once per few minutes (cached), so a repository made public later is
      // noticed too: its idle warm runners are removed, and none is launched while it stays so.
      const refused = await this.#unlessStopped(this.#exposure.refusal(pool, this.#shutdown.signal), undefined);
      if (this.#stopping) break;
      if (refused) {
        // Not on a failed lookup: those were allowed when launched, and a GitHub outage would
        // otherwise cost every warm runner (and deregistrations GitHub then fails too).
        if (refused === "public_repository" || refused === "public_runner_group") this.#retireSpares(pool, refused);
        this.#d.metrics.warmRefused(pool.name, refused);
        await this.#warmPause(pool, WARM_REFUSED_PAUSE_MS);
        continue;
      }
      this.#d.metrics.warmRefused(pool.name, undefined);
      for (const spare of [...this.#spares.values()]) {
        if (spare.pool !== pool || spare.tracked.state === "starting") continue;
        if (spare.tracked.state === "idle") {
          // An idle spare with no warm place (a restart found the pool's warm places taken by other
          // hosts, or the pool's minIdle lowered) takes a free one before any launch does.
          // Not one near its idle deadline: its watch may be deregistering it already (as #adoptSpare).
          if (!spare.warm && !spare.adopted && !spare.done && !spare.retired && !idlingOut(spare) && atWarmTarget(pool, spare.tracked.record) && (await this.#unlessStopped(this.#warmUp(spare), false))) {
            this.#d.logger.info({ pool: pool.name, runner: spare.tracked.record.name }, "spare warm again");
          }
          continue;
        }
        // It took a job directly: the demand for that job, if it adopted another runner, is its;
        // else that demand is still to come, or never will. Either way, no longer warm.
        if (await this.#unlessStopped(this.#handOver(spare, this.#d.logger.child({ pool: pool.name })), false)) continue;
        if (spare.warm) await this.#unwarm(spare);
      }
      // A slot free for each pool's demand stays free: warm runners never crowd demand out. None
      // while warm runners of the pool that ended without a job hold launches back.
      const held = (this.#warmEnded.get(pool.name)?.until ?? 0) > Date.now();
      let refusedSince: Refusal | undefined;
      while (!held && !this.#stopping && this.#open) {
        // Asked before each launch too (free while GitHub's answer is kept): while jobs adopt warm
        // runners, this loop may launch for long without coming back to the check above, and a
        // repository made public meanwhile (#publicized) must get no warm runner from here.
        refusedSince = await this.#unlessStopped(this.#exposure.refusal(pool, this.#shutdown.signal), undefined);
        if (refusedSince || this.#stopping || !this.#open || !this.#slots.tryAcquire(this.#d.sources.size)) break;
        const holder = hostHolder(this.#d.host);
        const place = (key: string, max: number) => this.#unlessStopped(this.#limits.acquire(key, holder, max).catch(() => false), false);
        const placed = (await place(warmKey(pool.name), pool.minIdle)) && (!pool.maxRunners || (await place(pool.name, pool.maxRunners)));
        if (!placed) {
          const freeing = this.#limits.release(warmKey(pool.name), holder).catch(() => undefined);
          // Stopping: not waited for (with Redis away, 3 s); a place not freed expires.
          if (!this.#stopping) await freeing;
          this.#slots.release();
          break;
        }
        if (!(await this.#launchSpare(pool, holder))) {
          failures++;
          break;
        }
        failures = 0;
      }
      // Refused: said, and its idle warm runners retired, at the top (the answer is kept: no call).
      if (refusedSince) continue;
      // After a failure, back off (the slots stay free for demand meanwhile).
      await this.#warmPause(pool, failures > 0 ? Math.min(60_000, 1000 * 2 ** failures) : WARM_TICK_MS);
    }
  }

  /**
   * Has every spare of the pool that no demand holds deregistered and removed at once (a drain's
   * way: its idle deadline is now), each said once: GitHub would hand it a public repository's job.
   * One that took a job meanwhile keeps it (the deregistration answers busy).
   */
  #retireSpares(pool: PoolConfig, refusal: string): void {
    for (const spare of this.#spares.values()) {
      if (spare.pool !== pool || spare.adopted || spare.done || spare.retired) continue;
      spare.retired = true;
      this.#d.logger.warn({ pool: pool.name, runner: spare.tracked.record.name, reason: refusal }, "warm runner removed: GitHub could hand it a public repository's job");
    }
  }

  /**
   * A repository made public (`where`; undefined: perhaps any, messages were missed): the warm
   * pools that register on it ask GitHub again now, not at their next check. Their warm loop is
   * woken from any pause (a backoff, a refusal's minute) and asks before its next launch; and the
   * answer is asked for here too, so that their idle warm runners are removed at once, not only
   * after a launch under way ends. An organization pool's warm runners are refused by their
   * runner group, which no repository's change alters.
   */
  #publicized(where: { owner: string; repo: string } | undefined): void {
    const same = (a: string, b: string) => a.toLowerCase() === b.toLowerCase();
    for (const pool of this.#d.pools) {
      const warm = pool.warm;
      if (pool.minIdle === 0 || !warm || pool.scope !== "repository" || pool.allowPublicRepositories) continue;
      if (where && !(same(warm.owner, where.owner) && same(warm.repo ?? "", where.repo))) continue;
      // Said only when it changed something: replays of one delivery add no line each.
      if (this.#exposure.recheck(pool.name) && where) this.#d.logger.info({ pool: pool.name, owner: warm.owner, repo: warm.repo }, "warm repository made public: asking GitHub again");
      this.#warmWakes.get(pool.name)?.abort();
      // Shares the lookup of the warm loop, should it ask at once too; never throws (a refusal).
      void this.#exposure.refusal(pool, this.#shutdown.signal).then((refused) => {
        if (!this.#stopping && refused === "public_repository") this.#retireSpares(pool, refused);
      });
    }
  }

  /** A pause of `pool`'s warm loop: until `ms` have passed, the worker stops, or #publicized wakes it. */
  async #warmPause(pool: PoolConfig, ms: number): Promise<void> {
    const wake = new AbortController();
    this.#warmWakes.set(pool.name, wake);
    const { signal, dispose } = linkedSignal([this.#shutdown.signal, wake.signal]);
    try {
      await delay(ms, undefined, { signal, ref: false }).catch(() => undefined);
    } finally {
      dispose();
      if (this.#warmWakes.get(pool.name) === wake) this.#warmWakes.delete(pool.name);
    }
  }

  /** Sleeps, but no longer than until the worker stops. */
  async #pause(ms: number): Promise<void> {
    await delay(ms, undefined, { signal: this.#shutdown.signal, ref: false }).catch(() => undefined);
  }

  /** Launches one warm runner that already holds its places and a slot; false if it failed. */
  async #launchSpare(pool: PoolConfig, holder: string): Promise<boolean> {
    const log = this.#d.logger.child({ pool: pool.name, warm: true });
    const started = Date.now();
    const launching = this.#d.launcher.launch({ ...pool.warm!, repo: pool.warm!.repo ?? "", demandId: "" }, pool, log, undefined, this.#shutdown.signal);
    const places = { pool, warm: true };
    this.#warmLaunches.set(holder, places);
    this.#launches.add(launching);
    this.#steps.set(launching, () => `warm runner of pool ${pool.name}`);
    let tracked: Tracked;
    try {
      tracked = await launching;
    } catch (err) {
      // Off the beat's list first: a beat must not refresh the places being freed.
      this.#warmLaunches.delete(holder);
      await this.#freeSparePlaces(pool, holder);
      if (err instanceof NotSentError) return false;
      this.#d.metrics.launchFailed(pool.name, (err as { code?: string }).code ?? "error");
      this.#noteError(`warm:${pool.name}`, launchProblem(err), `warm runner launch for pool ${pool.name} failed: ${errorMessage(err)}`, false);
      return false;
    } finally {
      this.#warmLaunches.delete(holder);
      this.#launches.delete(launching);
      this.#steps.delete(launching);
    }
    this.#d.metrics.launched(pool.name, (Date.now() - started) / 1000);
    // Not while its warm runners end without a job: that is said until one does its part.
    if (!this.#warmEnded.has(pool.name)) this.#problems.clear(`warm:${pool.name}`);
    this.#keepSpare(pool, holder, tracked, places.warm, log);
    log.info({ runner: tracked.record.name }, "warm runner ready");
    return true;
  }

  /**
   * A running runner of this host that no demand holds (launched warm before this process
   * started): a spare again, in a slot of its own, and warm if the pool has a warm place free, so
   * that the restarted worker hands it the next demand instead of launching another beside it.
   */
  async #readoptSpare(pool: PoolConfig, tracked: Tracked, log: Logger): Promise<void> {
    const holder = hostHolder(this.#d.host);
    // Before any loop runs, so the slot is free unless the capacity shrank across the restart.
    this.#slots.take();
    // One registered where the pool's warm runners no longer go (`warm` changed across the
    // restart) is a spare that idles out, never warm again: it would hold a warm place for good,
    // and the checks of warm runners' exposure look at the pool's warm target only.
    const warm = tracked.state === "idle" && atWarmTarget(pool, tracked.record) && (await this.#takePlace(warmKey(pool.name), holder, pool.minIdle).catch(() => false));
    if (pool.maxRunners) await this.#takePlace(pool.name, holder, pool.maxRunners).catch(() => false);
    this.#keepSpare(pool, holder, tracked, warm, log);
    log.info({ runner: tracked.record.name, warm }, "adopted running runner as a spare");
  }

  /** Frees a spare's places and slot, by the holder it has then (a hand-over swaps holders). */
  async #freeSparePlaces(pool: PoolConfig, holder: string): Promise<void> {
    await this.#limits.release(warmKey(pool.name), holder).catch(() => undefined);
    if (pool.maxRunners) await this.#limits.release(pool.name, holder).catch(() => undefined);
    this.#slots.release();
  }

  /** Watches a spare that holds a slot (and `holder`'s places) until it ends, then frees them. */
  #keepSpare(pool: PoolConfig, holder: string, tracked: Tracked, warm: boolean, log: Logger): void {
    const spare: Spare = { pool, holder, tracked, warm, adopted: false, idleFrom: warm ? Number.POSITIVE_INFINITY : Date.now(), ended: Promise.resolve("") };
    const name = tracked.record.name;
    // Warm: never idle too long. No longer counted as warm: the pool's idle timeout, from that
    // moment. Either is reaped at once when the host drains or is cordoned (idle and registered,
    // GitHub would hand it a new job there). Adopted: its demand's, the pool's idle timeout from
    // the adoption, drain or not. Retired: at once.
    spare.ended = this.#d.launcher.watch(tracked, pool, log, this.#shutdown.signal, () => {
      if (spare.adopted) return spare.idleFrom + pool.idleTimeoutSeconds * 1000;
      if (spare.retired || this.#presence.draining || this.#cordoned) return 0;
      return spare.warm ? Number.POSITIVE_INFINITY : spare.idleFrom + pool.idleTimeoutSeconds * 1000;
    });
    this.#spares.set(name, spare);
    void spare.ended.then(async (reason) => {
      spare.done = true;
      // An adopted runner is its demand's now: #serve tears it down and frees the places. One that
      // ran a job so short that the warm loop never saw it busy may still become a demand's.
      if (spare.adopted) return;
      if ((reason === "exited" || reason === "completed_grace_expired") && (await this.#handOver(spare, log))) return;
      // Adopted while the hand-over asked Redis: #serve tears it down and frees its slot.
      if (spare.adopted) return;
      this.#noteSpareEnd(pool, spare, reason, log);
      this.#spares.delete(name);
      if (reason !== "shutdown") await this.#tearDown(tracked.record, reason, log);
      await this.#freeSparePlaces(pool, spare.holder);
      this.#checkDrained();
    });
  }

  /**
   * A spare that ended without a job for a reason of its own (exited, never online: see
   * ENDED_WITHOUT_JOB) holds the pool's next warm launches back, longer with each in a row, counts
   * as a launch failure and is said (once, until a spare does its part: one that took a job, was
   * adopted or idled out). One stopped, retired or drained is neither.
   */
  #noteSpareEnd(pool: PoolConfig, spare: Spare, reason: string, log: Logger): void {
    const tookAJob = spare.tracked.state === "busy" || spare.tracked.state === "completed";
    if (tookAJob || reason === "idle_timeout") {
      this.#warmDidItsPart(pool);
      return;
    }
    if (!ENDED_WITHOUT_JOB.has(reason) || spare.retired) return;
    const count = (this.#warmEnded.get(pool.name)?.count ?? 0) + 1;
    const waitMs = Math.min(WARM_ENDED_BACKOFF_MAX_MS, 1000 * 2 ** Math.min(count, 20));
    this.#warmEnded.set(pool.name, { count, until: Date.now() + waitMs });
    this.#d.metrics.launchFailed(pool.name, reason === "start_timeout" ? "E_RUNNER_NEVER_ONLINE" : "E_RUNNER_LOST");
    this.#noteError(
      `warm:${pool.name}`,
      UNREADY.launches,
      `warm runners of pool ${pool.name} end without a job (${reason}): each next one waits twice as long, up to ${WARM_ENDED_BACKOFF_MAX_MS / 60_000} minutes`,
      false,
    );
    log.info({ runner: spare.tracked.record.name, reason, inARow: count, nextInSeconds: waitMs / 1000 }, "warm runner ended without a job");
  }

  /** A spare of `pool` did its part (see #noteSpareEnd): its warm launches are held back no more. */
  #warmDidItsPart(pool: PoolConfig): void {
    if (this.#warmEnded.delete(pool.name)) this.#problems.clear(`warm:${pool.name}`);
  }

  /**
   * Waits for the end of the warm runner serving `lease`. GitHub hands a job to whichever idle
   * runner asks first, so the job may go to another warm runner than the one adopted for it: that
   * one then takes the demand over (#handOver), and the adopted one, still idle, is warm again
   * instead of idling out with a demand that is already served.
   */
  async #whileAdopted(lease: Lease, spare: Spare): Promise<{ tracked: Tracked; reason: string }> {
    for (;;) {
      // The runner this lease holds its slot for (a later lease of the demand here may wait for it).
      this.#countOnce(lease, spare.tracked.record.name);
      let wake!: () => void;
      const woken = new Promise<void>((resolve) => (wake = resolve));
      const adoption: Adoption = { lease, spare, wake };
      this.#adoptions.set(lease.demand.jobId, adoption);
      await Promise.race([spare.ended, woken]);
      if (this.#adoptions.get(lease.demand.jobId) === adoption) this.#adoptions.delete(lease.demand.jobId);
      // Decided by the hand-over itself, not by which promise settled first.
      if (!adoption.taker) return { tracked: spare.tracked, reason: await spare.ended };
      spare = adoption.taker;
    }
  }

  /**
   * A runner launched warm, not adopted, took a job on its own: if a demand for that job was given
   * to another warm runner that is still idle, the two swap. The taker serves the demand (its
   * places and slot go to the demand); the idle one comes back with the taker's places, warm if
   * the taker was. True when the taker now belongs to a demand.
   */
  #handOver(taker: Spare, log: Logger): Promise<boolean> {
    taker.handedOver ??= this.#tryHandOver(taker, log).then(
      (handed) => {
        // Only a hand-over is kept: a "no" is asked again at the next look (the warm loop's next
        // tick, while the runner stays busy), as the demand of its job may register its adoption
        // (#whileAdopted) only after the runner was first seen busy.
        if (!handed) taker.handedOver = undefined;
        return handed;
      },
      (err: unknown) => {
        // Reading its job from Redis failed: asked again at the next look, not answered "no" for
        // good, which would leave the adopted runner to idle out. At debug: with Redis away this
        // comes each tick, and the outage is told elsewhere.
        log.debug({ runner: taker.tracked.record.name, err: errorMessage(err) }, "could not read which job a warm runner took; asked again");
        taker.handedOver = undefined;
        return false;
      },
    );
    return taker.handedOver;
  }

  async #tryHandOver(taker: Spare, log: Logger): Promise<boolean> {
    if (taker.adopted) return false;
    // Read until the record names its job (0: not known yet), then kept: asked each tick, no read each.
    const jobId = taker.jobId ?? (await this.#d.runners.get(taker.tracked.record.name))?.jobId;
    if (jobId) taker.jobId = jobId;
    const adoption = jobId === undefined ? undefined : this.#adoptions.get(jobId);
    const idle = adoption?.spare;
    // From here to the wake-up, synchronous: neither runner's end can slip in between the checks
    // and the swap (an idle runner that ended meanwhile is its demand's to tear down).
    // Runners of one pool only: the places that change hands are the pool's (maxRunners, minIdle).
    // A job of overlapping pools (a narrower pool's job on a wider pool's warm runner) is not
    // handed over: the taker gives up its warm place, and the adopted runner idles out.
    if (!adoption || !idle || idle.done || idle.tracked.state !== "idle" || idle.pool.name !== taker.pool.name) return false;
    if (taker.adopted || !this.#spares.has(taker.tracked.record.name)) return false;
    const { lease } = adoption;
    const takerName = taker.tracked.record.name;
    const idleName = idle.tracked.record.name;
    this.#adoptions.delete(jobId!);
    this.#spares.delete(takerName);
    taker.adopted = true;
    taker.idleFrom = Date.now();
    taker.tracked.record.demandId = lease.id;
    // Slots and places change hands, none is freed: the idle runner holds the taker's now.
    idle.holder = taker.holder;
    idle.warm = taker.warm;
    idle.adopted = false;
    idle.idleFrom = idle.warm ? Number.POSITIVE_INFINITY : Date.now();
    idle.tracked.record.demandId = "";
    taker.warm = false;
    this.#spares.set(idleName, idle);
    adoption.taker = taker;
    adoption.wake();
    log.info({ demandId: lease.id, jobId, runner: takerName, returned: idleName }, "a warm runner took the job itself: demand handed over to it; the adopted runner is a spare again");
    // Best effort, both: a record gone meanwhile stays gone (nothing written). The taker's claim
    // unrecorded, a lease of the demand redelivered after a crash launches anew, as after a failed write.
    await this.#d.runners.claimDemand(takerName, lease.id).catch(() => undefined);
    await this.#d.runners.update(idleName, { demandId: "" }).catch(() => undefined);
    if (!idle.warm && !idle.done) await this.#warmUp(idle);
    return true;
  }

  /**
   * Takes a warm place for an idle spare that has none; true when it is warm now. One a demand
   * adopted (or that ended, or changed holders) while Redis answered gives the place back at once:
   * warm, an adopted runner would never idle out, and the place would be held for no runner.
   */
  async #warmUp(spare: Spare): Promise<boolean> {
    const { pool, holder } = spare;
    const name = spare.tracked.record.name;
    if (!(await this.#limits.acquire(warmKey(pool.name), holder, pool.minIdle).catch(() => false))) return false;
    if (this.#spares.get(name) === spare && !spare.adopted && !spare.done && spare.holder === holder) {
      spare.warm = true;
      spare.idleFrom = Number.POSITIVE_INFINITY;
      return true;
    }
    // Not when a hand-over gave the holder to another spare meanwhile: the place is that one's.
    if (![...this.#spares.values()].some((other) => other !== spare && other.holder === holder)) await this.#limits.release(warmKey(pool.name), holder).catch(() => undefined);
    return false;
  }

  /** A warm runner that took a job on its own gives up its warm place; it keeps its slot until it ends. */
  async #unwarm(spare: Spare): Promise<void> {
    spare.warm = false;
    spare.idleFrom = Date.now();
    await this.#limits.release(warmKey(spare.pool.name), spare.holder).catch(() => undefined);
  }

  /**
   * Hands a spare runner of this host to the demand, with its slot and place: the one already
   * running the demand's job if GitHub gave it one, else an idle one: one that is not warm first
   * (it would idle out, and no replacement is launched for it), then the oldest. Only one
   * registered where the job can go (its installation and owner, and its repository in a
   * repository pool): GitHub never hands a job to a runner registered elsewhere. Not one that is
   * not warm and close to its idle timeout: its deregistration may be under way.
   */
  async #adoptSpare(lease: Lease): Promise<Spare | undefined> {
    let chosen: Spare | undefined;
    const before = (a: Spare, b: Spare) => (a.warm === b.warm ? a.tracked.record.createdAt < b.tracked.record.createdAt : !a.warm);
    for (const spare of [...this.#spares.values()]) {
      if (spare.pool.name !== lease.demand.pool || spare.adopted || !servesDemand(spare, lease)) continue;
      // Its runner group does not admit the job's repository (as last asked): the launch path refuses the demand.
      if (this.#exposure.notAdmitted(spare.pool, exposureTargetOf(lease.demand))) continue;
      if (spare.tracked.state === "busy" || spare.tracked.state === "completed") {
        const record = await this.#unlessStopped(this.#d.runners.get(spare.tracked.record.name).catch(() => undefined), undefined);
        if (record?.jobId === lease.demand.jobId && !spare.adopted && this.#spares.has(record.name)) {
          chosen = spare;
          break;
        }
      } else if (spare.tracked.state === "idle" && !spare.done && !spare.retired && !idlingOut(spare) && (!chosen || before(spare, chosen))) {
        chosen = spare;
      }
    }
    if (!chosen || chosen.adopted || !this.#spares.has(chosen.tracked.record.name)) return undefined;
    const spare = chosen;
    spare.adopted = true;
    // Online and idle until a demand took it: the pool's warm runners do their part again.
    this.#warmDidItsPart(spare.pool);
    spare.adoptedIdle = !spare.warm && spare.tracked.state === "idle";
    spare.idleFrom = Date.now();
    this.#spares.delete(spare.tracked.record.name);
    // The runner's slot and its place under the pool limit are the demand's now.
    if (spare.warm) void this.#limits.release(warmKey(spare.pool.name), spare.holder).catch(() => undefined);
    spare.warm = false;
    if (spare.pool.maxRunners) void this.#limits.transfer(spare.pool.name, spare.holder, lease.id).catch(() => undefined);
    return spare;
  }

  /** A runner's teardown; one cut short is logged and left to the host loop (undefined). */
  #tearDown(record: RunnerRecord, reason: string, log: Logger): Promise<Awaited<ReturnType<Launcher["teardown"]>> | undefined> {
    return this.#d.launcher.teardown(record, reason, log).catch((err: unknown) => {
      log.warn({ err: errorMessage(err) }, "teardown incomplete; the reconciler will retry");
      return undefined;
    });
  }

  /**
   * The demand needed no runner after all: the adopted runner goes back to being a spare. One that
   * ended while adopted (it took another job, or idled out, while the demand waited for an earlier
   * runner) is torn down instead: the handler #keepSpare set on its end left it to the demand.
   */
  async #returnSpare(spare: Spare, lease: Lease, log: Logger): Promise<void> {
    if (spare.done) {
      const reason = await spare.ended;
      if (reason !== "shutdown") await this.#tearDown(spare.tracked.record, reason, log);
      return;
    }
    // Back among the spares, with a slot of its own, before anything is awaited: should it end
    // from here on, that handler frees it like any spare.
    spare.adopted = false;
    spare.warm = false;
    spare.idleFrom = Date.now();
    this.#slots.take();
    this.#spares.set(spare.tracked.record.name, spare);
    if (spare.pool.maxRunners) await this.#limits.transfer(spare.pool.name, lease.id, spare.holder).catch(() => undefined);
    if (spare.tracked.state !== "idle" || spare.done || !atWarmTarget(spare.pool, spare.tracked.record)) return;
    await this.#warmUp(spare);
  }

  /**
   * GitHub's word on whether the job still needs a runner; on any API error, it does. The stop
   * cuts the question short (true, and no failure logged): GitHub slow or away would hold it for
   * the client's retries (tens of seconds). Asked before the registration, #serve then hands the demand back;
   * asked alongside it, a registration already asked for goes on to its container, as it would.
   */
  async #stillNeeded(lease: Lease, log: Logger): Promise<boolean> {
    const { demand } = lease;
    try {
      // The check takes no signal (it may answer others too): raced against the stop, its late answer dropped.
      const job = await this.#unlessStopped(this.#jobChecks.check(demand), undefined);
      if (!job) return true;
      const needed = needsRunner(job, this.#d.namePrefix);
      if (!needed) log.info({ status: job.status, conclusion: job.conclusion }, "job no longer needs a runner; skipped");
      return needed;
    } catch (err) {
      log.warn({ err: errorMessage(err) }, "still-queued check failed; launching anyway");
      return true;
    }
  }

  /**
   * A warm runner's record was gone as a demand adopted it (claimDemand wrote nothing): removed by
   * a sweep that took this host for gone, which deregistered the runner, or by an operator. Such a
   * runner cannot stand for the demand: it is retired (its registration deleted first), and #serve
   * hands the demand back unspent. One GitHub refuses to delete runs a job it was handed a moment
   * ago: "busy", and it stays adopted, watched as any adopted runner (unclaimed: a crash leaves the
   * demand to be served anew). A failure throws: it is a spare again, as on any failure before its
   * watch, and the demand fails this attempt.
   */
  async #recordGone(spare: Spare, log: Logger): Promise<"removed" | "busy"> {
    const name = spare.tracked.record.name;
    const retired = await this.#d.launcher.retire(spare.tracked.record, "record_gone", log);
    if (retired === "removed") log.warn({ runner: name }, "warm runner's record gone as the demand adopted it: runner removed, demand handed back");
    else log.warn({ runner: name }, "warm runner's record gone as the demand adopted it, and GitHub says it runs a job: kept, adopted");
    return retired;
  }

  /**
   * Why a runner that took no job leaves its demand unserved, if it does: it died (engine
   * restarted, container killed, crash), or it sat idle all along while GitHub still lists its
   * job as queued (it never came online). GitHub not answering whether the job is still queued
   * counts as queued: a demand served again costs a runner that idles out, one completed for a
   * job that waits leaves the job waiting until the leader's queued-job loop finds it.
   */
  async #retryReason(lease: Lease, reason: string, log: Logger): Promise<{ code: string; message: string } | undefined> {
    if (reason === "start_timeout") return { code: "E_RUNNER_NEVER_ONLINE", message: "runner was not online at the pool's start timeout" };
    if (ENDED_WITHOUT_JOB.has(reason)) return { code: "E_RUNNER_LOST", message: `runner ended without taking a job (${reason})` };
    if (reason !== "idle_timeout") return undefined;
    const { demand } = lease;
    try {
      const job = await this.#d.github.getJob(demand.installationId, demand.owner, demand.repo, demand.jobId);
      return job.status === "queued" ? { code: "E_RUNNER_NEVER_ONLINE", message: "runner never took its still-queued job" } : undefined;
    } catch (err) {
      log.warn({ err: errorMessage(err) }, "could not ask GitHub whether the job of a runner that idled out is still queued; serving its demand again");
      return { code: "E_GITHUB", message: `runner idled out and GitHub did not say whether its job is still queued: ${errorMessage(err)}` };
    }
  }

  /**
   * Until runner `name`'s record is gone, the worker stops, `lease` is lost, or (`whileOpen`) this
   * host takes no demand. The wait lasts the runner's whole job: a read Redis fails says nothing
   * of the runner, and is tried again 2 s later (at warn the first time in the wait, then at
   * debug), rather than fail the demand's launch and spend one of its attempts.
   */
  async #waitGone(name: string, log: Logger, lease: Lease, whileOpen = false): Promise<void> {
    const cut = linkedSignal([this.#shutdown.signal, lease.lost]);
    let warned = false;
    try {
      while (!this.#stopping && !lease.lost.aborted && !this.#gaveSlot.has(lease) && (!whileOpen || this.#open)) {
        try {
          if (!(await this.#d.runners.get(name))) return;
        } catch (err) {
          log[warned ? "debug" : "warn"]({ runner: name, err: errorMessage(err) }, "could not read the record of the demand's runner; reading it again in 2 s");
          warned = true;
        }
        await delay(2000, undefined, { signal: cut.signal, ref: false }).catch(() => undefined);
      }
    } finally {
      cut.dispose();
    }
  }

  /**
   * The lease lapsed while it waited for its demand's runner `name` (Redis away for longer than
   * the lease, or this process paused): the demand is back in the queue or another lease's, whose
   * holder finds the same runner and waits for it in turn, on this host or another. Waited on,
   * the lost lease would hold what it holds for the runner's whole job: for a runner of this
   * host, its slot, so that the demand taken again here counted the runner twice, and a host of
   * one slot could take it again only once the runner had ended. It ends now, settling nothing
   * (the demand is its next holder's to settle), and the runner runs on. Its place under the pool
   * limit is the demand's, the very place the runner's host and the demand's next lease hold
   * (same holder id): kept, not freed under them. A slot it holds (none while it waits for a
   * runner of another host, nor once a later lease of the demand took it over) is the runner's
   * again, as before the lease took it over: an earlier lease of the demand here that gave it
   * this one (#countOnce: the lease that launched the runner, watching it to its end) has it back;
   * else the runner has it as adopted, where this process watches it so and no other lease of the
   * demand here holds a slot for it (one that took the demand again); else it is freed.
   */
  #waitLost(lease: Lease, name: string, log: Logger): true {
    this.#placesKept.add(lease);
    const pool = this.#pools.get(lease.demand.pool);
    const gave = [...this.#serving.values()].find((other) => other !== lease && this.#gaveSlot.has(other) && this.#runnerOf.get(other) === name);
    if (gave && !this.#slotless.has(lease)) {
      this.#gaveSlot.delete(gave);
      this.#slotless.delete(gave);
      this.#slotless.add(lease);
    } else if (pool && !this.#slotless.has(lease) && this.#adoptedWatched.has(name) && !this.#adopted.has(name) && !this.#servedHere(lease.id, lease)) {
      this.#adopted.set(name, { pool, holder: lease.id });
      this.#slotless.add(lease);
    }
    log.warn({ runner: name }, "the demand's lease lapsed while it waited for its runner (Redis away for longer than worker.leaseSeconds, or this process paused): the runner runs on, and the demand's next holder waits for it");
    return true;
  }

  /**
   * `lease` holds its slot for runner `name` of this host now (launched, adopted warm, or waited
   * for). Leases of one demand served here at once are all lapsed but the latest taken (a demand
   * has one live lease; #serving keeps them in the order taken), and each holding a slot for the
   * runner would count it once per lease, for its whole job: the latest keeps its slot, and each
   * earlier one gives its own up (#gaveSlot), to have it back should that one lapse in turn while
   * the runner runs (#waitLost). Whichever ends first, no slot is freed twice: one that gave its
   * slot is in #slotless, its end frees none.
   */
  #countOnce(lease: Lease, name: string): void {
    this.#runnerOf.set(lease, name);
    const holders = [...this.#serving.values()].filter((held) => this.#runnerOf.get(held) === name && !this.#slotless.has(held));
    for (const earlier of holders.slice(0, -1)) {
      this.#slotless.add(earlier);
      this.#gaveSlot.add(earlier);
      this.#slots.release();
    }
  }

  /** Whether a lease of demand `id` (other than `except`) is served here. */
  #servedHere(id: string, except?: Lease): boolean {
    return [...this.#serving.values()].some((lease) => lease !== except && lease.id === id);
  }

  /**
   * The host loop: containers of ours that this process does not watch are adopted (running, of a
   * pool it serves), left to finish their job (running one, of a pool it does not serve) or removed
   * (stopped, or running no job); volumes of ours that no container uses are removed; records of
   * this host with no container are torn down once no launch can be under way for them (#launchOver);
   * runners of hosts whose heartbeat lapsed are deregistered and forgotten unless they run a job
   * (a busy one is forgotten once GitHub no longer knows it: see #sweepGoneBusyRunner).
   * Each container, volume, record and gone host is handled on its own (PassFailures): one that
   * fails is logged and tried again next pass, and the others are handled all the same. A pass
   * with any failure counts as an error in `jitrunner_reconcile_runs_total{loop="host"}`, and the
   * worker is not ready until a pass has none. True when the pass listed this host's containers
   * (see #startServing), as is `listed`, called before the sweep of gone hosts (which may wait on
   * GitHub's write budget for each of their runners). One pass at a time: a call waits for the
   * pass under way first.
   */
  async reconcile(listed?: (listed: boolean) => void): Promise<boolean> {
    while (this.#passes.size > 0) await Promise.allSettled([...this.#passes]);
    // Stopping meanwhile: no new pass (it would take the runners a stop leaves running for ones
    // no process watches, and remove them).
    if (this.#stopping) {
      listed?.(false);
      return false;
    }
    const pass = this.#reconcilePass(listed);
    this.#passes.add(pass);
    try {
      return await pass;
    } finally {
      this.#passes.delete(pass);
    }
  }

  /** A host loop pass, until it has listed this host's containers or failed to: whether it did. */
  #listing(): Promise<boolean> {
    return new Promise<boolean>((resolve) => void this.reconcile(resolve).then(resolve, () => resolve(false)));
  }

  async #reconcilePass(onListed?: (listed: boolean) => void): Promise<boolean> {
    // Another process holds the host (this one stalled past its hold): what it launches is not
    // tracked here, and a container it has created but not yet started would look left behind.
    // The pass waits until the host is this process's again (counted as no pass meanwhile).
    if (this.#presence.hostTaken) {
      onListed?.(false);
      return false;
    }
    const log = this.#d.logger.child({ loop: "host" });
    const pass = new PassFailures(log);
    let listed = false;
    try {
      try {
        listed = await this.#reconcileContainers(log, pass);
        await this.#removeUnusedVolumes(log, pass);
        await this.#reconcileRecords(log, pass);
      } finally {
        onListed?.(listed);
      }
      await this.#checkImages();
      await this.#sweepGoneHosts(log, pass);
      const failed = pass.summary();
      if (failed) throw failed;
      this.#d.metrics.reconcileRun("host", "ok");
      this.#problems.clear("host");
    } catch (err) {
      this.#d.metrics.reconcileRun("host", "error");
      this.#noteError("host", UNREADY.hostLoop, `host reconcile failed: ${errorMessage(err)}`, false);
    }
    return listed;
  }

  /**
   * Warns once per image when a served pool's image is not on the engine, at start and on each
   * host loop pass: no start failure, as an operator may build or pull it afterwards (workers never
   * pull); meanwhile each launch for the pool fails E_IMAGE_MISSING before registering. Said at
   * info once it is there. An engine that cannot say is left to the launches and the host loop.
   */
  async #checkImages(): Promise<void> {
    for (const pool of this.#d.pools) {
      const found = await this.#d.launcher.images.has(pool.image).catch(() => undefined);
      if (found === false && !this.#imagesMissing.has(pool.image)) {
        this.#imagesMissing.add(pool.image);
        this.#d.logger.warn({ pool: pool.name, image: pool.image }, `${missingImage(pool)}; each launch for the pool fails (${IMAGE_MISSING}) until it is`);
      } else if (found && this.#imagesMissing.delete(pool.image)) {
        this.#d.logger.info({ pool: pool.name, image: pool.image }, `image ${pool.image} of pool ${pool.name} is on this Docker engine now`);
      }
    }
  }

  /** Whether the host's containers were listed (each one's handling may still have failed: it is tried again next pass). */
  async #reconcileContainers(log: Logger, pass: PassFailures): Promise<boolean> {
    const { driver, host } = this.#d;
    let containers: RunnerContainer[] = [];
    const listed = await pass.attempt({ host }, "listing containers", async () => {
      containers = await driver.list({ [LABEL.managedBy]: MANAGED_BY, [LABEL.host]: host });
    });
    if (!listed) return false;
    const names = new Set<string>();
    let handled = true;
    for (const c of containers) {
      const name = c.labels[LABEL.runnerName] ?? c.name;
      names.add(name);
      if (!(await pass.attempt({ runner: name, container: c.id.slice(0, 12) }, "reconciling container", () => this.#reconcileContainer(c, name, log)))) handled = false;
    }
    // Not while a runner the process before left may still be adopted by the next pass: it takes
    // its place over then (one never taken over expires on its own).
    if (handled) await this.#freeInherited(log);
    // Left running, and gone since by other hands (an operator's `docker rm`): its slot is free.
    for (const [name, pool] of this.#leftRunning) {
      if (names.has(name)) continue;
      log.info({ runner: name, pool }, "runner left running is gone (its container removed by other hands): its slot is free");
      this.#letGo(name);
    }
    return true;
  }

  async #reconcileContainer(c: RunnerContainer, name: string, log: Logger): Promise<void> {
    const { runners, launcher, host } = this.#d;
    if (launcher.tracked.has(name)) return;
    const record = await runners.get(name);
    const pool = this.#pools.get(c.labels[LABEL.pool] ?? "");
    if (record && c.running && pool && !this.#stopping) {
      const tracked: Tracked = { record: { ...record, containerId: c.id, instance: launcher.instance }, state: record.state === "busy" ? "busy" : "idle" };
      launcher.tracked.set(name, tracked);
      // Ours now: should its teardown be cut short, this process's host loop finishes it at once.
      // Best effort: unnoted, the record names the process before this one, gone: to the same effect.
      await runners.adopt(name, launcher.instance).catch(() => undefined);
      if (!record.demandId && pool.minIdle > 0) {
        await this.#readoptSpare(pool, tracked, log.child({ pool: pool.name, warm: true }));
        return;
      }
      this.#holdAdopted(pool, tracked.record);
      this.#adoptedWatched.add(name);
      log.info({ runner: name }, "adopted running runner");
      void launcher
        .watch(tracked, pool, log, this.#shutdown.signal)
        // A teardown cut short is logged, and left to the next pass (the container is still listed).
        .then(async (reason) => {
          // Left running by a stop: its demand's place is kept for the next process (see
          // #placesKept); a place of this host's, held by no id the next process knows, is not.
          if (reason === "shutdown") return tracked.record.demandId ? "kept" : undefined;
          await this.#tearDown(tracked.record, reason, log);
          return undefined;
        })
        .catch((err: unknown) => log.warn({ runner: name, err: errorMessage(err) }, "watching an adopted runner failed; the next pass looks at it again"))
        .then((kept) => {
          this.#adoptedWatched.delete(name);
          this.#releaseAdopted(name, undefined, kept === "kept");
          this.#checkDrained();
        });
      return;
    }
    // No record: a leftover, or a runner this process tore down since the list was made (its
    // teardown removes the container before the record). Looked up again, so that one is not torn
    // down, counted and logged a second time.
    if (!record && !(await this.#stillListed(c))) return;
    // Where it is registered, from its labels: a running one is then retired GitHub first.
    const stub: RunnerRecord = record ?? {
      name,
      pool: c.labels[LABEL.pool] ?? "",
      host,
      state: "registering",
      ...registeredFromLabels(c.labels),
      demandId: c.labels[LABEL.demand] ?? "",
      createdAt: c.createdAt,
    };
    const target = { ...stub, containerId: c.id };
    if (!c.running) {
      // A runner left running has ended its job (the ephemeral runner exits after one). Its slot
      // is free once its teardown has ended (a drain waits for it to end, done or not).
      try {
        await launcher.teardown(target, "reconcile_exited", log);
      } finally {
        this.#letGo(name);
      }
      return;
    }
    // Running, and not adopted: of a pool this worker does not serve, or met while it stops. One
    // running a job is left to finish it (killing it fails the job). One left running because
    // GitHub said it is busy is not asked again each pass, until its record says completed.
    if (this.#leftRunning.has(name) && record?.state !== "completed") {
      // Its busy mark, should the write have failed when it was left running.
      if (record && record.state !== "busy") await this.#markLeftBusy(name);
      return;
    }
    // The registration goes first (retire): a runner GitHub handed a job a moment ago, that no
    // webhook has marked busy yet, answers 422 and is left running too.
    if ((await launcher.retire(target, "reconcile_unknown", log)) !== "busy") return this.#letGo(name);
    this.#leaveRunning(target, pool !== undefined, log);
    if (record && record.state !== "busy") await this.#markLeftBusy(name);
  }

  /**
   * A runner left running because GitHub refused to delete its registration and says it is busy
   * is recorded busy, as the launcher's watch records one (noteBusy): its webhooks may both be
   * lost, and a record left idle or starting would never be looked at again should it hang after
   * its job (the leader's github-runners loop marks completed only records that say busy; this
   * host loop then removes it). Its job is not known: 0. Not over a busy (its job id) or completed
   * mark already there (RunnerStore.mark keeps a completed one, and a removed record stays
   * removed). A failed write fails this item of the pass; the next pass writes it again.
   */
  async #markLeftBusy(name: string): Promise<void> {
    const { runners } = this.#d;
    const now = await runners.get(name);
    if (now && now.state !== "busy" && now.state !== "completed") await runners.mark(name, "busy", 0);
  }

  /** Whether the engine still lists the container. */
  async #stillListed(c: RunnerContainer): Promise<boolean> {
    const { driver, host } = this.#d;
    return (await driver.list({ [LABEL.managedBy]: MANAGED_BY, [LABEL.host]: host })).some((x) => x.id === c.id);
  }

  /**
   * Leaves a running runner that runs a job to finish it; logged once. It holds one of this
   * worker's slots until a pass finds its container stopped: it uses the engine's room as much as
   * a runner of ours does, and `capacity` is what the host has room for. So a worker restarted with
   * a pool removed takes less demand while that pool's last jobs finish, instead of overfilling
   * the host; the slots it reports on each beat say so to the fleet.
   */
  #leaveRunning(record: RunnerRecord, served: boolean, log: Logger): void {
    if (this.#leftRunning.has(record.name)) return;
    this.#leftRunning.set(record.name, record.pool);
    this.#slots.take();
    const why = served ? "worker stopping" : "pool not served by this worker";
    log.info({ runner: record.name, pool: record.pool, why }, "runner running a job left running until it exits; removed then");
  }

  /**
   * An adopted runner of a demand takes a slot, even over capacity (it runs regardless), and a
   * place under the pool limit; unless a lease of that demand served here holds them already. The
   * place is the demand's, held by the lease's id: a lease of it that waits for the runner on
   * another host holds the same (#waitElsewhere), and the runner counts once. One with no demand
   * takes a place of this host's (a hostHolder: freed with the host should it go).
   */
  #holdAdopted(pool: PoolConfig, record: RunnerRecord): void {
    if (record.demandId && this.#servedHere(record.demandId)) return;
    const holder = record.demandId || hostHolder(this.#d.host);
    this.#adopted.set(record.name, { pool, holder });
    this.#slots.take();
    if (pool.maxRunners) void (record.demandId ? this.#limits.acquire(pool.name, holder, pool.maxRunners) : this.#takePlace(pool.name, holder, pool.maxRunners)).catch(() => false);
  }

  /**
   * The places of the process before this one on this host, by limit (see #inherited). Unread
   * (Redis away), the runners it left take new places beside its own until those expire.
   */
  async #placesBefore(): Promise<void> {
    const found = new Map<string, string[]>();
    try {
      for (const pool of this.#pools.values()) {
        for (const [key, max] of [[pool.name, pool.maxRunners], [warmKey(pool.name), pool.minIdle]] as const) {
          const holders = max ? await this.#limits.heldBy(key, this.#d.host) : [];
          if (holders.length) found.set(key, holders);
        }
      }
    } catch (err) {
      this.#d.logger.warn({ err: errorMessage(err) }, "could not read the places the worker before this one held under the pool limits: the runners it left count twice until those expire");
    }
    if (found.size) this.#inherited = found;
  }

  /** Takes a place under limit `key` for a runner left by the process before: one of its places if any is left (#inherited), else a new one. */
  #takePlace(key: string, holder: string, max: number): Promise<boolean> {
    return this.#limits.acquire(key, holder, max, this.#inherited?.get(key)?.shift());
  }

  /** Frees the places of the process before that no runner it left took over (see #inherited). */
  async #freeInherited(log: Logger): Promise<void> {
    const left = this.#inherited;
    this.#inherited = undefined;
    let freed = 0;
    for (const [key, holders] of left ?? []) {
      for (const holder of holders) {
        await this.#limits.release(key, holder).catch(() => undefined);
        freed++;
      }
    }
    if (freed) log.info({ places: freed }, "freed the places under pool limits of the worker before this one that no runner it left holds");
  }

  /**
   * An adopted runner's slot and place are free again; but for a place `heldBy` holds (its
   * demand's lease) now, or one `kept` for a runner a stop leaves running.
   */
  #releaseAdopted(name: string, heldBy?: string, kept = false): void {
    const held = this.#adopted.get(name);
    if (!held) return;
    this.#adopted.delete(name);
    this.#slots.release();
    if (held.pool.maxRunners && held.holder !== heldBy && !kept) void this.#limits.release(held.pool.name, held.holder).catch(() => undefined);
  }

  /** A runner left running is gone, or on its way: its slot is free again. */
  #letGo(name: string): void {
    if (!this.#leftRunning.delete(name)) return;
    this.#slots.release();
    this.#checkDrained();
  }

  async #removeUnusedVolumes(log: Logger, pass: PassFailures): Promise<void> {
    const { driver, host, namePrefix } = this.#d;
    await pass.attempt({ host }, "removing unused volumes", async () => {
      const { removed, failed } = await driver.removeUnusedVolumes({ [LABEL.managedBy]: MANAGED_BY, [LABEL.host]: host }, `${namePrefix}-`);
      if (removed > 0) log.info({ volumes: removed }, "removed volumes of ours that no container uses");
      for (const { volume, error } of failed) pass.fail({ volume }, "removing volume", error);
    });
  }

  async #reconcileRecords(log: Logger, pass: PassFailures): Promise<void> {
    const { driver, runners, host } = this.#d;
    let present = new Set<string>();
    let names: string[] = [];
    const listed = await pass.attempt({ host }, "listing records", async () => {
      present = new Set((await driver.list({ [LABEL.managedBy]: MANAGED_BY, [LABEL.host]: host })).map((c) => c.labels[LABEL.runnerName] ?? c.name));
      names = await runners.listHost(host);
    });
    if (!listed) return;
    for (const name of names) {
      if (present.has(name)) continue;
      await pass.attempt({ runner: name }, "reconciling record", () => this.#reconcileRecord(name, log));
    }
  }

  async #reconcileRecord(name: string, log: Logger): Promise<void> {
    const { runners, launcher, host } = this.#d;
    if (launcher.tracked.has(name)) return;
    const record = await runners.get(name);
    if (!record) {
      await runners.remove({ name, host, demandId: "" }, true);
      return;
    }
    if (!(await this.#launchOver(record))) return;
    await launcher.teardown(record, "reconcile_no_container", log);
  }

  /**
   * Whether a record of this host with no container is done with: not a launch still under way.
   * This process's own launches are tracked from before their record is written; another worker
   * process's (this host restarted, or a second worker on it) are over once that process stopped
   * beating. A record that names no process (written before records did) gets 60 s.
   */
  async #launchOver(record: RunnerRecord): Promise<boolean> {
    if (record.instance === this.#d.launcher.instance) return true;
    if (record.instance) return !(await this.#d.hosts.instanceAlive(record.instance));
    return Date.now() - record.createdAt >= UNATTRIBUTED_RECORD_MS;
  }

  async #sweepGoneHosts(log: Logger, pass: PassFailures): Promise<void> {
    const { hosts, host } = this.#d;
    let gone: string[] = [];
    const listed = await pass.attempt({ host }, "listing hosts", async () => {
      gone = (await hosts.list()).filter((h) => !h.record && h.id !== host).map((h) => h.id);
    });
    if (!listed) return;
    // Each pass sweeps for a while at most, so that a long one (every runner's deregistration
    // waits its turn in GitHub's write budget) does not hold up the next pass's own cleanup, nor a
    // stop; each starts one host further along the list, so that one slow host does not keep
    // those after it waiting for good.
    const until = Date.now() + SWEEP_PASS_MS;
    const first = gone.length > 0 ? this.#sweepRound++ % gone.length : 0;
    for (const id of [...gone.slice(first), ...gone.slice(0, first)]) {
      if (this.#stopping) return;
      if (Date.now() >= until) {
        log.info({ goneHosts: gone.length }, "sweeping gone hosts goes on in the next pass");
        return;
      }
      await pass.attempt({ goneHost: id }, "sweeping gone host", async () => {
        if (!(await hosts.sweepTurn(id, host, SWEEP_TURN_MS))) return;
        this.#sweepTurns.add(id);
        await this.#sweepGoneHost(id, log, pass, until);
      });
    }
  }

  /**
   * A gone host's runners are deregistered and forgotten, but for those that run a job; the host
   * is forgotten once none of its runners is left in Redis: one that runs a job (or is recorded
   * busy and not yet checked at GitHub), or whose deregistration failed, keeps it, so that the
   * next pass looks at it again.
   *
   * The verdict "gone" came from one look at the host list, and the sweep may take tens of seconds
   * (each deregistration waits its turn in the shared GitHub write budget): a host whose beat
   * lapsed only briefly (a GC pause, a Redis hiccup) may beat again meanwhile. So the host is
   * looked at again before each runner and before its places are freed, and the sweep stops once
   * it beats; forgetGone checks once more, in the same step as it forgets.
   */
  async #sweepGoneHost(id: string, log: Logger, pass: PassFailures, until: number): Promise<void> {
    const { hosts, runners, metrics } = this.#d;
    const back = async (): Promise<boolean> => {
      if (!(await hosts.alive(id))) return false;
      log.info({ goneHost: id }, "gone host beats again; its sweep stops");
      return true;
    };
    for (const name of await runners.listHost(id)) {
      // Out of this pass's time, or stopping: the next pass goes on with the runners left.
      if (Date.now() >= until || this.#stopping) return;
      if (await back()) return;
      await pass.attempt({ runner: name, goneHost: id }, "deregistering runner of a gone host", () => this.#sweepGoneRunner(id, name, log));
    }
    // Busy runners, and those whose deregistration or removal failed.
    const left = (await runners.listHost(id)).length;
    if (await back()) return;
    // Its warm places: its runners are deregistered or busy, none is warm. Its places under the
    // pool limit too once none of its runners is left. Freed now, not when they expire.
    for (const pool of this.#pools.keys()) {
      await this.#limits.releaseHost(warmKey(pool), id);
      if (left === 0) await this.#limits.releaseHost(pool, id);
    }
    if (left > 0) return;
    const end = await hosts.forgetGone(id);
    if (end === "beats") {
      log.info({ goneHost: id }, "gone host beats again; not forgotten");
      return;
    }
    // Its worker stopped cleanly (a maintenance stop, an upgrade, a reboot) and is not back within
    // the host's expiry: its runners were cleaned up all the same, but nothing went wrong.
    if (end === "stopped") {
      metrics.stoppedHostSwept();
      log.info({ goneHost: id }, "gone host forgotten; its worker had stopped cleanly");
      return;
    }
    metrics.hostGone();
    log.info({ goneHost: id }, "gone host forgotten");
  }

  async #sweepGoneRunner(id: string, name: string, log: Logger): Promise<void> {
    const { runners, metrics } = this.#d;
    const r = await runners.get(name);
    if (!r) {
      // A name in the host's set whose record is gone: nothing to deregister, but the name must go
      // too, or it would stay in Redis after the host is forgotten.
      await runners.remove({ name, host: id, demandId: "" }, true);
      return;
    }
    if (r.state === "busy") return this.#sweepGoneBusyRunner(id, r, log);
    if (r.state === "completed") {
      // Its job is done and GitHub removed the registration: nothing of it needs the host.
      // Its stopped container, on that host's engine, goes when that host's worker returns.
      await runners.remove(r, true);
      metrics.removed(r.pool, "host_gone");
      log.info({ runner: name, goneHost: id }, "completed runner of a gone host forgotten");
      return;
    }
    // A failure (a 5xx after retries, a rate limit) throws: the record stays, and so does the host.
    const outcome = await deregisterNoted(this.#d.github, runners, r);
    if (outcome === "busy") {
      // Its webhooks lost: recorded busy, so that the next passes of every worker look at it once
      // an interval between them (#sweepGoneBusyRunner), not each asking GitHub every pass.
      await this.#markLeftBusy(name);
      return;
    }
    await runners.remove(r, false);
    metrics.removed(r.pool, "host_gone");
    log.info({ runner: name, goneHost: id }, "runner of a gone host deregistered");
  }

  /**
   * A busy runner's record is ended by its `completed` webhook. When that webhook is lost, a busy
   * record of a gone host would stay for good, and the host with it; so GitHub is asked about the
   * runner instead: once it has been busy for `goneHostBusyCheckSeconds`, and then at most once per
   * that interval. The time of the last look is on the record, so the fleet's workers, which all
   * sweep gone hosts, ask once an interval between them: one read per busy runner of a gone host
   * per interval (12 an hour at the default 5 minutes), against 5,000 an hour per installation.
   *
   * - GitHub no longer knows it: its job is over (an ephemeral runner removes its registration
   *   after its job); the record is forgotten as a completed one is.
   * - Known and busy: its job may still run, on the gone host's engine; kept.
   * - Known and not busy: it runs no job; deregistered like an idle runner (422 busy: kept).
   * - No runner id on the record (its id never noted): looked up by name, with the same outcomes
   *   (GitHub's 422 settles busy), at the cost of one list call; forgetting it unasked could drop
   *   the record of a runner that still runs its job.
   *
   * A failure (a 5xx after retries, a rate limit) throws: the record stays, and so does the host;
   * the next look is an interval later, so a failing GitHub is not asked every pass.
   */
  async #sweepGoneBusyRunner(id: string, r: RunnerRecord, log: Logger): Promise<void> {
    const { runners, github, metrics } = this.#d;
    const now = Date.now();
    const lastLook = Math.max(r.busyAt ?? r.createdAt, r.askedAt ?? 0);
    if (now - lastLook < this.#d.goneHostBusyCheckSeconds * 1000) return;
    await runners.asked(r.name, now);
    const scope = scopeOf(r);
    let outcome: "deleted" | "not_found" | "busy";
    if (!r.runnerId) {
      outcome = await github.deleteRunnerNamed(scope, r.name);
    } else {
      const registered = await github.getRunner(scope, r.runnerId);
      if (registered?.busy) outcome = "busy";
      else outcome = registered ? await github.deleteRunner(scope, r.runnerId) : "not_found";
    }
    const item = { runner: r.name, goneHost: id };
    if (outcome === "busy") {
      log.debug(item, "busy runner of a gone host still runs a job at GitHub; kept");
      return;
    }
    // It took a job (a webhook marked it busy): its demand was served.
    await runners.remove(r, true);
    metrics.removed(r.pool, "host_gone");
    if (outcome === "deleted") log.info(item, "runner of a gone host recorded busy but running no job at GitHub; deregistered");
    else log.info(item, "busy runner of a gone host forgotten: GitHub no longer knows it, its job is over");
  }

  /** Runners of this worker by pool and state, for `jitrunner_runners`. */
  #counts(): Map<string, Map<string, number>> {
    const counts = new Map<string, Map<string, number>>();
    for (const p of this.#pools.keys()) counts.set(p, new Map([["starting", 0], ["idle", 0], ["busy", 0], ["completed", 0]]));
    for (const t of this.#d.launcher.tracked.values()) {
      const byState = counts.get(t.record.pool);
      if (byState) byState.set(t.state, (byState.get(t.state) ?? 0) + 1);
    }
    // Left running to finish a job (#leaveRunning), of a pool this worker may not serve: busy.
    for (const pool of this.#leftRunning.values()) {
      const byState = counts.get(pool) ?? new Map([["busy", 0]]);
      byState.set("busy", (byState.get("busy") ?? 0) + 1);
      counts.set(pool, byState);
    }
    return counts;
  }

  /** Per pool this worker serves, since when its runner starting longest has been starting (createdAt); none when none is. */
  #startingSince(): Map<string, number | undefined> {
    const since = new Map<string, number | undefined>([...this.#pools.keys()].map((p) => [p, undefined]));
    for (const t of this.#d.launcher.tracked.values()) {
      if (t.state !== "starting" || !since.has(t.record.pool)) continue;
      since.set(t.record.pool, Math.min(since.get(t.record.pool) ?? Infinity, t.record.createdAt));
    }
    return since;
  }

  /**
   * Logs `text` (when new for `key`, or when asked to) and keeps it, with its fixed `reason`, as a
   * problem of the worker's under `key` (see Problems); redacted, as GitHub's or Docker's words
   * are among ours.
   */
  #noteError(key: string, reason: UnreadyReason, text: string, log: boolean): void {
    const detail = redact(text);
    if (this.#problems.note(key, { reason, detail }) || log) this.#d.logger.warn(detail);
  }
}

/**
 * Whether GitHub can hand the demand's job to the spare: it is registered in the job's
 * installation and owner, and, in a repository pool, on the job's repository (a warm runner
 * registers on `pool.warm`, which need not be where the job runs).
 */
function servesDemand(spare: Spare, lease: Lease): boolean {
  return registeredAt(spare.pool, spare.tracked.record, lease.demand);
}

/** Where a demand's runner registers, for the runner group check: with its repository, and whether that is public. */
function exposureTargetOf(demand: Lease["demand"]): ExposureTarget {
  return { installationId: demand.installationId, owner: demand.owner, repo: demand.repo, publicRepository: demand.publicRepository };
}

/** A spare not warm within ADOPT_IDLE_MARGIN_MS of its idle deadline, or past it: its watch may be deregistering it. */
function idlingOut(spare: Spare): boolean {
  return !spare.warm && spare.idleFrom + spare.pool.idleTimeoutSeconds * 1000 - Date.now() <= ADOPT_IDLE_MARGIN_MS;
}

/** Whether a runner is registered where the pool's warm runners go now (its `warm` target). */
function atWarmTarget(pool: PoolConfig, record: RunnerRecord): boolean {
  return pool.warm !== undefined && registeredAt(pool, record, { ...pool.warm, repo: pool.warm.repo ?? "" });
}

/** Why a failed launch makes the worker unready: a pool image missing on the engine, or a launch failure. */
function launchProblem(err: unknown): UnreadyReason {
  return (err as { code?: string }).code === IMAGE_MISSING ? UNREADY.imageMissing : UNREADY.launches;
}

/**
 * What a demand's final launch failure says: nothing launches for its job until the reconciler's
 * github-queued loop gives it fresh attempts (reconcile.retryFailedDemandSeconds after the
 * failure, if GitHub still lists the job as queued; 0 turns that off).
 */
function finalFailure(lease: Lease, err: unknown): string {
  return `demand failed for good (attempt ${lease.attempt} of ${lease.attempts}): ${redact(errorMessage(err))}; tried again by the reconciler after reconcile.retryFailedDemandSeconds if GitHub still has it queued`;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms).unref());
}
