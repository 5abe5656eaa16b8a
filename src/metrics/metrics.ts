import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";

const LATENCY_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300];

/**
 * The one place that knows metric names. Domain methods only; label values are bounded
 * (pools, hosts, states, outcomes, routes; never job ids or runner names).
 */
export class Metrics {
  readonly registry = new Registry();
  readonly #deliveries = new Counter({
    name: "jitrunner_webhook_deliveries_total",
    help: "Webhook deliveries received, by event, action and outcome",
    labelNames: ["event", "action", "outcome"],
    registers: [this.registry],
  });
  readonly #runners = new Gauge({
    name: "jitrunner_runners",
    help: "Runner containers this process manages, by pool, host and state",
    labelNames: ["pool", "host", "state"],
    registers: [this.registry],
  });
  readonly #startingFor = new Gauge({
    name: "jitrunner_runner_starting_seconds",
    help: "How long the runner of a pool on this host that has been starting longest has been starting (its launch under way: registering, its container created and started); 0 when none is",
    labelNames: ["pool", "host"],
    registers: [this.registry],
  });
  readonly #demandPending = new Gauge({
    name: "jitrunner_demand_pending",
    help: "Queued jobs waiting for a worker, per pool",
    labelNames: ["pool"],
    registers: [this.registry],
  });
  readonly #queueJobs = new Gauge({
    name: "jitrunner_queue_jobs",
    help: "Demand items in BullMQ per pool and state (waiting, delayed, prioritized, paused, active, failed: out of launch attempts, completed: kept for an hour)",
    labelNames: ["pool", "state"],
    registers: [this.registry],
  });
  readonly #launch = new Histogram({
    name: "jitrunner_launch_duration_seconds",
    help: "Demand taken by a worker -> runner container started",
    labelNames: ["pool"],
    buckets: LATENCY_BUCKETS,
    registers: [this.registry],
  });
  readonly #pickup = new Histogram({
    name: "jitrunner_pickup_latency_seconds",
    help: "Queued webhook received -> runner container started",
    labelNames: ["pool"],
    buckets: LATENCY_BUCKETS,
    registers: [this.registry],
  });
  readonly #warmRefused = new Gauge({
    name: "jitrunner_warm_refused",
    help: "1 while this worker launches no warm runner for the pool, by reason (public_repository, public_runner_group, runner_group_missing, visibility_unknown)",
    labelNames: ["pool", "reason"],
    registers: [this.registry],
  });
  readonly #launchFailures = new Counter({
    name: "jitrunner_launch_failures_total",
    help: "Failed runner launches, by pool and reason",
    labelNames: ["pool", "reason"],
    registers: [this.registry],
  });
  readonly #demandFailed = new Counter({
    name: "jitrunner_demand_failed_total",
    help: "Demand items failed (out of launch attempts, or an error that ends them), by pool: their jobs got no runner, until the reconciler gives a still-queued one fresh attempts (reconcile.retryFailedDemandSeconds)",
    labelNames: ["pool"],
    registers: [this.registry],
  });
  readonly #removals = new Counter({
    name: "jitrunner_runner_removals_total",
    help: "Runner containers removed, by pool and reason",
    labelNames: ["pool", "reason"],
    registers: [this.registry],
  });
  readonly #githubRequests = new Counter({
    name: "jitrunner_github_requests_total",
    help: "GitHub API requests, by route template and status (0: no response)",
    labelNames: ["route", "status"],
    registers: [this.registry],
  });
  /** When each installation's rate-limit window resets (ms, this host's clock), as its last answer said. */
  readonly #rateLimitResets = new Map<string, number>();
  readonly #rateLimit = new Gauge({
    name: "jitrunner_github_rate_limit_remaining",
    help: "GitHub API requests remaining in the current window, per installation (gone once the window has reset, until the next answer)",
    labelNames: ["installation"],
    registers: [this.registry],
    // A count left from a window since reset is stale: a process that no longer calls for an
    // installation would hold a low count (and the fleet's alert on the lowest) for good.
    collect: () => {
      const now = Date.now();
      for (const [installation, at] of this.#rateLimitResets) {
        if (now < at) continue;
        this.#rateLimit.remove({ installation });
        this.#rateLimitResets.delete(installation);
      }
    },
  });
  readonly #rateLimited = new Counter({
    name: "jitrunner_github_rate_limited_total",
    help: "GitHub answers that said rate limited, by kind (primary, secondary) and whether the call waited and retried (retried, gave_up)",
    labelNames: ["kind", "outcome"],
    registers: [this.registry],
  });

  readonly #reconcileRuns = new Counter({
    name: "jitrunner_reconcile_runs_total",
    help: "Reconcile loop passes, by loop and outcome (ok, error)",
    labelNames: ["loop", "outcome"],
    registers: [this.registry],
  });
  readonly #reconcileActions = new Counter({
    name: "jitrunner_reconcile_actions_total",
    help: "What reconcile loops fixed or left alone, by loop and action",
    labelNames: ["loop", "action"],
    registers: [this.registry],
  });
  readonly #reconcileLastOk = new Gauge({
    name: "jitrunner_reconcile_last_success_timestamp_seconds",
    help: "When each reconcile loop last completed a pass without error",
    labelNames: ["loop"],
    registers: [this.registry],
  });
  readonly #deliveriesReadLag = new Gauge({
    name: "jitrunner_deliveries_read_lag_seconds",
    help: "How far below the newest webhook delivery it read the github-deliveries loop has still to read the App's delivery list (the backlog): a failure that old may not be redelivered yet; 0 when read through",
    registers: [this.registry],
  });
  readonly #leader = new Gauge({
    name: "jitrunner_leader",
    help: "1 while this process holds the reconcile leader lock, else 0 (the sum over a fleet is 1)",
    labelNames: ["host"],
    registers: [this.registry],
  });

  readonly #jobWait = new Histogram({
    name: "jitrunner_job_queue_wait_seconds",
    help: "GitHub's created_at -> started_at of jobs our pools serve (from in_progress webhooks)",
    labelNames: ["pool"],
    buckets: LATENCY_BUCKETS,
    registers: [this.registry],
  });
  readonly #jobDuration = new Histogram({
    name: "jitrunner_job_duration_seconds",
    help: "GitHub's started_at -> completed_at of jobs that ran on our runners, by conclusion",
    labelNames: ["pool", "conclusion"],
    buckets: [1, 10, 30, 60, 300, 600, 1800, 3600, 7200, 21600],
    registers: [this.registry],
  });
  readonly #hostCapacity = new Gauge({
    name: "jitrunner_host_capacity",
    help: "Runner slots a host offers (0 while draining or its engine is down), from its heartbeat",
    labelNames: ["host"],
    registers: [this.registry],
  });
  readonly #heartbeatAge = new Gauge({
    name: "jitrunner_host_heartbeat_age_seconds",
    help: "Seconds since a host's last heartbeat; keeps growing for a host that stopped until its runners are cleaned up and it is forgotten",
    labelNames: ["host"],
    registers: [this.registry],
  });
  readonly #hostStopped = new Gauge({
    name: "jitrunner_host_stopped",
    help: "1 for a host whose worker stopped cleanly (SIGTERM) leaving runners, and is not back: its heartbeat age grows without anything having gone wrong",
    labelNames: ["host"],
    registers: [this.registry],
  });
  readonly #hostsGone = new Counter({
    name: "jitrunner_hosts_gone_total",
    help: "Hosts whose heartbeat lapsed without a clean stop (worker killed or crashed, machine or network gone) and whose runners this process cleaned up",
    registers: [this.registry],
  });
  readonly #stoppedHostsSwept = new Counter({
    name: "jitrunner_hosts_stopped_swept_total",
    help: "Hosts whose worker stopped cleanly (SIGTERM) leaving runners, was not back within the host's expiry, and whose runners this process cleaned up",
    registers: [this.registry],
  });

  constructor(opts: { processMetrics?: boolean } = {}) {
    if (opts.processMetrics ?? true) collectDefaultMetrics({ register: this.registry, prefix: "jitrunner_" });
  }

  /**
   * A verified delivery. The signature covers its body, not its headers: anyone holding one signed
   * body (GitHub shows them under Recent deliveries) can send it again with any X-GitHub-Event, so
   * the event label is one of the names the ingress acts on, or `other`. The action comes from the
   * signed body, yet the body may not be GitHub's (a holder of the webhook secret, a bug), so it is
   * one of the actions GitHub documents for the event (DOCUMENTED_ACTIONS), `none` for a body
   * without one, or `other`: one made-up action after another adds no series.
   */
  delivery(event: string, action: string, outcome: string): void {
    const labelled = LABELLED_EVENTS.has(event) ? event : "other";
    this.#deliveries.inc({ event: labelled, action: actionLabel(labelled, action), outcome });
  }
  /**
   * A request refused before its signature was checked (`too_large`: over the body limit;
   * `unsupported_media_type`: not `application/json`; `bad_request`: a body that does not match its
   * Content-Length) or for its signature (`unsigned`, `bad_signature`). Its headers come from
   * anyone, so none of them becomes a label: one series per outcome, however many event names
   * senders make up.
   */
  unverifiedDelivery(outcome: UnverifiedOutcome): void {
    this.#deliveries.inc({ event: "unverified", action: "none", outcome });
  }
  /** `startingSince`: per pool, the createdAt of its runner starting longest on this host (none: none starting). */
  runners(host: string, counts: ReadonlyMap<string, ReadonlyMap<string, number>>, startingSince: ReadonlyMap<string, number | undefined> = new Map()): void {
    this.#runners.reset();
    for (const [pool, byState] of counts) {
      for (const [state, n] of byState) this.#runners.set({ pool, host, state }, n);
    }
    this.#startingFor.reset();
    const now = Date.now();
    for (const [pool, since] of startingSince) this.#startingFor.set({ pool, host }, since === undefined ? 0 : Math.max(0, now - since) / 1000);
  }
  demandPending(pool: string, n: number): void {
    this.#demandPending.set({ pool }, n);
  }
  queueJobs(pool: string, counts: Readonly<Record<string, number>>): void {
    for (const [state, n] of Object.entries(counts)) this.#queueJobs.set({ pool, state }, n);
  }
  /** A runner started; for a demand (not a warm runner), that is also its pickup. */
  launched(pool: string, launchSeconds: number, pickupSeconds?: number): void {
    this.#launch.observe({ pool }, launchSeconds);
    if (pickupSeconds !== undefined) this.pickedUp(pool, pickupSeconds);
  }
  /** A demand got its runner: launched for it, or a warm one adopted. */
  pickedUp(pool: string, seconds: number): void {
    this.#pickup.observe({ pool }, seconds);
  }
  launchFailed(pool: string, reason: string): void {
    this.#launchFailures.inc({ pool, reason });
  }
  demandFailed(pool: string): void {
    this.#demandFailed.inc({ pool });
  }
  /**
   * Each pool's count of failed demand, and of failed launches for each reason, exported from the
   * start at 0: a counter that first appears at 1 shows Prometheus no increase (increase() of its
   * first sample is 0), and the first failure after each start would go unseen by
   * JitrunnerDemandFailed and JitrunnerLaunchFailures.
   */
  failureCounters(pools: readonly string[]): void {
    for (const pool of pools) {
      this.#demandFailed.inc({ pool }, 0);
      for (const reason of LAUNCH_FAILURE_REASONS) this.#launchFailures.inc({ pool, reason }, 0);
    }
  }
  /**
   * Why the pool's warm runners are refused now (WarmExposure), or undefined when they are not: a
   * state, not a failed launch, so that a pool kept warm on a public repository does not look like
   * one whose launches all fail.
   */
  warmRefused(pool: string, reason: string | undefined): void {
    for (const r of WARM_REFUSALS) this.#warmRefused.set({ pool, reason: r }, r === reason ? 1 : 0);
  }
  removed(pool: string, reason: string): void {
    this.#removals.inc({ pool, reason });
  }
  githubRequest(route: string, status: number): void {
    this.#githubRequests.inc({ route, status: String(status) });
  }
  jobStarted(pool: string, waitSeconds: number): void {
    if (Number.isFinite(waitSeconds) && waitSeconds >= 0) this.#jobWait.observe({ pool }, waitSeconds);
  }
  /** `conclusion`: GitHub's, or `unknown` for none; any other than GitHub documents counts as `other` (JOB_CONCLUSIONS). */
  jobFinished(pool: string, conclusion: string, seconds: number): void {
    const c = JOB_CONCLUSIONS.has(conclusion) ? conclusion : "other";
    if (Number.isFinite(seconds) && seconds >= 0) this.#jobDuration.observe({ pool, conclusion: c }, seconds);
  }
  /** Hosts from their heartbeats; a gone host has capacity 0 and an ever older heartbeat (its age on Redis's clock: HostStore.list). */
  hosts(hosts: ReadonlyArray<{ id: string; capacity: number; beatAgeMs?: number; stoppedCleanly?: boolean }>): void {
    this.#hostCapacity.reset();
    this.#heartbeatAge.reset();
    this.#hostStopped.reset();
    for (const h of hosts) {
      this.#hostCapacity.set({ host: h.id }, h.capacity);
      if (h.beatAgeMs !== undefined) this.#heartbeatAge.set({ host: h.id }, h.beatAgeMs / 1000);
      if (h.stoppedCleanly) this.#hostStopped.set({ host: h.id }, 1);
    }
  }
  /** A host forgotten by the gone-host sweep whose worker had not stopped cleanly. */
  hostGone(): void {
    this.#hostsGone.inc();
  }
  /** A host forgotten by the gone-host sweep whose worker had stopped cleanly (HostStore.noteStop). */
  stoppedHostSwept(): void {
    this.#stoppedHostsSwept.inc();
  }
  /** `resetsAtMs`: when the window resets on this host's clock (GitHub's `x-ratelimit-reset`), if known. */
  githubRateLimitRemaining(installationId: number, remaining: number, resetsAtMs?: number): void {
    const installation = String(installationId);
    this.#rateLimit.set({ installation }, remaining);
    if (resetsAtMs === undefined) this.#rateLimitResets.delete(installation);
    else this.#rateLimitResets.set(installation, resetsAtMs);
  }
  githubRateLimited(kind: "primary" | "secondary", outcome: "retried" | "gave_up"): void {
    this.#rateLimited.inc({ kind, outcome });
  }
  reconcileRun(loop: string, outcome: "ok" | "error"): void {
    this.#reconcileRuns.inc({ loop, outcome });
    if (outcome === "ok") this.#reconcileLastOk.set({ loop }, Date.now() / 1000);
  }
  reconcileAction(loop: string, action: string): void {
    this.#reconcileActions.inc({ loop, action });
  }
  /** From Redis, alike in every server: the loop runs on the leader, which may change. */
  deliveriesReadLag(seconds: number): void {
    this.#deliveriesReadLag.set(seconds);
  }
  leader(host: string, leading: boolean): void {
    this.#leader.set({ host }, leading ? 1 : 0);
  }
  /** Called before each scrape. */
  onScrape(fn: () => Promise<void>): void {
    this.#scrapeHooks.push(fn);
  }
  readonly #scrapeHooks: Array<() => Promise<void>> = [];

  async render(): Promise<string> {
    await Promise.allSettled(this.#scrapeHooks.map((fn) => fn()));
    return this.registry.metrics();
  }
}

export type UnverifiedOutcome = "unsigned" | "bad_signature" | "too_large" | "unsupported_media_type" | "bad_request";

/**
 * Launch failure reasons exported at 0 from a worker's start (Metrics.failureCounters): every code
 * a launch fails with. GitHub or the engine refused a step, Redis was away or refused a command,
 * the runner never came online or ended without a job, its record was removed while it launched,
 * the job's runner group is refused or could not be looked up; `error` for an error with no code.
 */
const LAUNCH_FAILURE_REASONS = [
  "E_GITHUB",
  "E_DOCKER",
  "E_IMAGE_MISSING",
  "E_REDIS_UNAVAILABLE",
  "E_REDIS_REFUSED",
  "E_RUNNER_NEVER_ONLINE",
  "E_RUNNER_LOST",
  "E_RECORD_GONE",
  "E_PUBLIC_RUNNER_GROUP",
  "E_RUNNER_GROUP_MISSING",
  "E_RUNNER_GROUP_REPOSITORY",
  "E_RUNNER_GROUP_UNKNOWN",
  "error",
] as const;
/** Why a pool's warm runners may be refused (WarmRefusal): each a series of jitrunner_warm_refused. */
const WARM_REFUSALS = ["public_repository", "public_runner_group", "runner_group_missing", "visibility_unknown"] as const;

/** The events that get a label of their own: those the ingress acts on. */
const LABELLED_EVENTS: ReadonlySet<string> = new Set(["workflow_job", "repository", "ping"]);

/**
 * The actions GitHub documents for the events labelled with their action (@octokit/openapi's
 * webhook schemas); any other event's action is `other`.
 */
const DOCUMENTED_ACTIONS: Readonly<Record<string, ReadonlySet<string>>> = {
  workflow_job: new Set(["queued", "waiting", "in_progress", "completed"]),
  repository: new Set(["archived", "created", "deleted", "edited", "privatized", "publicized", "renamed", "transferred", "unarchived"]),
};

/** A verified delivery's action as a label: documented for its event, `none` (the body has none), or `other`. */
function actionLabel(event: string, action: string): string {
  if (action === "none") return action;
  return DOCUMENTED_ACTIONS[event]?.has(action) ? action : "other";
}

/**
 * A job's conclusions as GitHub documents them (@octokit/openapi: a job's, and a check run's
 * `stale`), and `unknown` for a job that completed without one.
 */
const JOB_CONCLUSIONS: ReadonlySet<string> = new Set(["success", "failure", "neutral", "cancelled", "skipped", "timed_out", "action_required", "stale", "unknown"]);
