import type { Logger } from "pino";
import { errorMessage } from "../errors.ts";
import type { Metrics } from "../metrics/metrics.ts";
import { linkedSignal } from "../timers.ts";
import type { Leadership } from "./leader.ts";

/** One named, idempotent reconcile pass, run every `intervalMs`. */
export interface Loop {
  name: string;
  intervalMs: number;
  /** Runs only while this process is the elected leader. */
  leaderOnly: boolean;
  /**
   * One pass. Must stop (throw) soon after `signal` aborts: closing, timed out, or leadership lost.
   * `budget` (none: no limit) tells a pass that works through a backlog how much of its time limit
   * is left, so that it can stop early and save its progress instead of being cut off.
   */
  run(signal: AbortSignal, budget?: PassBudget): Promise<void>;
}

/** A pass's time limit, as the pass sees it: `signal` aborts it when none is left. */
export interface PassBudget {
  /** The whole limit (ms). */
  limitMs: number;
  /** What is left of it (ms, a monotonic clock: not a test's clock). */
  leftMs(): number;
}

/** A budget of `limitMs` from now. */
export function passBudget(limitMs: number): PassBudget {
  const end = performance.now() + limitMs;
  return { limitMs, leftMs: () => end - performance.now() };
}

export interface LoopRunnerDeps {
  loops: Loop[];
  leader?: Leadership;
  metrics: Metrics;
  logger: Logger;
}

interface LoopState {
  loop: Loop;
  timer: NodeJS.Timeout | undefined;
  running: Promise<void> | undefined;
  /** When its last pass started (Date.now()), if it ran one. */
  startedAt: number | undefined;
  lastError: string | undefined;
  failures: number;
}

/** A pass that takes longer than this is aborted: every loop is bounded. */
export function passTimeoutMs(intervalMs: number): number {
  return Math.min(10 * 60_000, Math.max(30_000, 2 * intervalMs));
}

/**
 * Whether a pass that lists first (runs, runners) and then acts on what it listed should start no
 * new listing: half its time limit is spent. With GitHub slow, listing everything would take the
 * whole limit and the pass would be aborted before acting on any of it; stopped here, the later
 * phase gets the other half, with what was listed, and the next pass lists the rest first. With
 * no budget (a pass run by hand), never.
 */
export function listingOver(budget: PassBudget | undefined): boolean {
  return budget !== undefined && budget.leftMs() <= budget.limitMs / 2;
}

/**
 * Tells of passes that stop early for time (GitHub slow): a warning for the first such pass,
 * debug for the ones after it, and info once a pass gets through in time again; one line a pass at
 * most, never one per repository, scope or delivery.
 */
export class TimeUpNotice {
  readonly #log: Logger;
  readonly #slow: string;
  readonly #back: string;
  #cut = false;

  /** `slow`: what a pass stopped early says; `back`: what the first pass in time again says. */
  constructor(log: Logger, slow: string, back: string) {
    this.#log = log;
    this.#slow = slow;
    this.#back = back;
  }

  /** After a pass: whether it stopped early for time, with `fields` to say then. */
  note(cut: boolean, fields: Record<string, unknown>): void {
    const was = this.#cut;
    this.#cut = cut;
    if (!cut) {
      if (was) this.#log.info(this.#back);
      return;
    }
    if (was) this.#log.debug(fields, this.#slow);
    else this.#log.warn(fields, `${this.#slow} (said once until a pass gets through in time again)`);
  }
}

/** A TimeUpNotice for a loop that lists first (listingOver); `what`: what it lists, plural. */
export function listingCutNotice(log: Logger, what: string): { note(listed: number, total: number, limitMs: number): void } {
  const notice = new TimeUpNotice(
    log,
    `GitHub is slow: the pass stopped listing ${what} at half its time limit and went on with those listed; the next pass lists the rest first`,
    `a pass listed all its ${what} again within half its time limit`,
  );
  return { note: (listed, total, limitMs) => notice.note(listed < total, { listed, notListed: total - listed, passLimitSeconds: limitMs / 1000 }) };
}

/**
 * Runs each loop on its own timer (garm's startLoopForFunction): a loop that fails or hangs never
 * delays or stops another, and the next pass of a loop starts only after the previous one settled
 * (a pass that ignores its abort signal is abandoned, not awaited). A failure is logged when it
 * first happens (or its message changes) and counted on every pass; recovery is logged once.
 */
export class LoopRunner {
  readonly #d: LoopRunnerDeps;
  readonly #states: LoopState[];
  readonly #closing = new AbortController();

  constructor(deps: LoopRunnerDeps) {
    this.#d = deps;
    this.#states = deps.loops.map((loop) => ({ loop, timer: undefined, running: undefined, startedAt: undefined, lastError: undefined, failures: 0 }));
  }

  /** Each loop's first pass starts at once (leader-only ones pass quietly until elected). */
  start(): void {
    for (const s of this.#states) this.#schedule(s, 0);
  }

  /**
   * Runs the leader's loops on election: now, instead of waiting for their next interval, unless
   * this process ran a pass less than an interval ago (a term lost and won back, as Redis stalls
   * now and then: each pass at once would cost GitHub calls for every term), then an interval
   * after that pass started.
   */
  kickLeaderLoops(): void {
    for (const s of this.#states) {
      if (!s.loop.leaderOnly || s.running) continue;
      this.#schedule(s, s.startedAt === undefined ? 0 : Math.max(0, s.startedAt + s.loop.intervalMs - Date.now()));
    }
  }

  async close(): Promise<void> {
    this.#closing.abort(new Error("closing"));
    for (const s of this.#states) clearTimeout(s.timer);
    await Promise.allSettled(this.#states.flatMap((s) => (s.running ? [s.running] : [])));
  }

  #schedule(s: LoopState, delayMs: number): void {
    if (this.#closing.signal.aborted) return;
    clearTimeout(s.timer);
    s.timer = setTimeout(() => void this.#tick(s), delayMs);
    s.timer.unref();
  }

  async #tick(s: LoopState): Promise<void> {
    if (this.#closing.signal.aborted || s.running) return;
    const { loop } = s;
    const term = this.#d.leader?.term;
    if (loop.leaderOnly && !term) {
      this.#schedule(s, loop.intervalMs);
      return;
    }
    // Not AbortSignal.any: a composite per pass would stay on the closing signal and the term for good (see linkedSignal).
    const limitMs = passTimeoutMs(loop.intervalMs);
    const pass = linkedSignal([this.#closing.signal, loop.leaderOnly ? term : undefined], limitMs);
    s.startedAt = Date.now();
    s.running = this.#pass(s, pass.signal, passBudget(limitMs));
    await s.running;
    pass.dispose();
    s.running = undefined;
    this.#schedule(s, loop.intervalMs);
  }

  async #pass(s: LoopState, signal: AbortSignal, budget: PassBudget): Promise<void> {
    const { loop } = s;
    const { metrics, logger } = this.#d;
    try {
      await abortable(loop.run(signal, budget), signal);
      metrics.reconcileRun(loop.name, "ok");
      if (s.failures > 0) logger.info({ loop: loop.name, failedPasses: s.failures }, "reconcile loop recovered");
      s.failures = 0;
      s.lastError = undefined;
    } catch (err) {
      if (this.#closing.signal.aborted) return;
      const message = signal.aborted ? `aborted: ${errorMessage(signal.reason)}` : errorMessage(err);
      metrics.reconcileRun(loop.name, "error");
      s.failures++;
      if (message !== s.lastError) logger.warn({ loop: loop.name, err: message }, "reconcile loop failed; retrying every interval, counted in jitrunner_reconcile_runs_total");
      else logger.debug({ loop: loop.name, err: message, failedPasses: s.failures }, "reconcile loop failed again");
      s.lastError = message;
    }
  }
}

/** Settles when `p` does or when `signal` aborts, whichever is first: a stuck pass cannot stall its loop. */
function abortable<T>(p: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    p.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
  });
}
