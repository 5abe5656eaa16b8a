import type { Logger } from "pino";
import type { RunnerDriver } from "../docker/driver.ts";
import { setTimeout as sleep } from "node:timers/promises";
import { errorMessage, JitrunnerError, redact } from "../errors.ts";
import type { HostStore } from "../state/hosts.ts";
import { atMost, every, within } from "../timers.ts";
import { UNREADY, type WorkerProblem } from "./unready.ts";

export interface PresenceDeps {
  host: string;
  /** This worker process (Launcher.instance): alive while its beats last. */
  instance: string;
  capacity: number;
  pools: string[];
  heartbeatSeconds: number;
  hosts: HostStore;
  driver: RunnerDriver;
  logger: Logger;
  used: () => number;
  /**
   * Called on each beat, after the heartbeat is written (to refresh holds, etc.); not awaited by
   * the beat, and not called again while the last call runs.
   */
  onBeat: () => Promise<void>;
}

/** How a worker's stop leaves its host (HostPresence.stop). */
export type HostPresenceEnd = "leave" | "clean" | "cut_short";

/** How long a stopping worker waits for Redis to take its last words (see stop). */
const STOP_REDIS_MS = 5_000;

/**
 * A worker's presence in the fleet: its hold on its host (one worker process per host id), a
 * heartbeat record with an expiry (other hosts take over when it lapses), its engine's health (no
 * demand is taken while the engine does not answer), and the drain flag an operator sets with
 * `jitrunner drain`.
 */
export class HostPresence {
  readonly #d: PresenceDeps;
  #timer: { stop(): void } | undefined;
  #engineProblem: string | undefined;
  #hostProblem: string | undefined;
  #draining = false;
  #stopped = false;
  /** The onBeat call in progress, if any. */
  #onBeat: Promise<void> | undefined;

  constructor(deps: PresenceDeps) {
    this.#d = deps;
  }

  /** What keeps this worker from taking demand, if anything but a drain. */
  get problem(): WorkerProblem | undefined {
    if (this.#hostProblem) return { reason: UNREADY.hostTaken, detail: this.#hostProblem };
    if (this.#engineProblem) return { reason: UNREADY.engine, detail: this.#engineProblem };
    return undefined;
  }
  get draining(): boolean {
    return this.#draining;
  }
  /** Whether another worker process holds this host now (it took it while this one stalled). */
  get hostTaken(): boolean {
    return this.#hostProblem !== undefined;
  }
  /** Whether this worker may take new demand now. */
  get open(): boolean {
    return !this.#stopped && !this.#draining && !this.problem;
  }

  get #ttlMs(): number {
    return this.#d.heartbeatSeconds * 3000;
  }

  /**
   * Takes the host, then beats. A hold left by a process that stopped without a word (killed) is
   * waited out, at most its expiry; a hold its process keeps renewing means a second worker with
   * this host id, and the start fails.
   */
  async start(): Promise<void> {
    await this.#takeHost();
    await this.beat();
    this.#timer = every(this.#d.heartbeatSeconds * 1000, () => this.beat());
  }

  async #takeHost(): Promise<void> {
    const d = this.#d;
    const deadline = Date.now() + this.#ttlMs + d.heartbeatSeconds * 1000;
    let seen: { holder: string; ttlMs: number } | undefined;
    for (;;) {
      const hold = await d.hosts.hold(d.host, d.instance, this.#ttlMs);
      if (hold.held) {
        if (seen) d.logger.info("the earlier worker process's hold on this host lapsed; starting");
        return;
      }
      // A hold's time left only grows when its holder renews it.
      const renewed = seen?.holder === hold.holder && hold.ttlMs > seen.ttlMs;
      if (renewed || Date.now() >= deadline) {
        throw new JitrunnerError(
          "E_HOST_TAKEN",
          `another worker process is serving host "${d.host}" (it renewed its hold within the last ${d.heartbeatSeconds * 2} s): ` +
            "give each worker its own worker.hostId (JITRUNNER_HOST_ID), or stop the other one first",
        );
      }
      if (!seen) {
        d.logger.warn(
          { waitMs: hold.ttlMs },
          "another worker process held this host at its last beat; waiting to see whether it still runs (a worker killed without stopping holds it until its hold expires)",
        );
      }
      seen = { holder: hold.holder, ttlMs: hold.ttlMs };
      await sleep(Math.max(50, Math.min(hold.ttlMs, (d.heartbeatSeconds * 1000) / 2)));
    }
  }

  /**
   * Pings the engine now (not waiting for the next beat); false, and closed, if it does not answer
   * within a beat and a half. The driver's own time limit on calls (a minute by default) is longer
   * than the expiry of this host's record and hold (3 beats): a beat waiting that long on an engine
   * that hangs would let both lapse, and other hosts would take this one for gone. A beat and a
   * half, not one: the next beat comes a beat after this one ends, so the renewal is still within
   * the expiry, and a busy engine slow to answer a ping for a moment is not taken for a hung one.
   */
  async checkEngine(): Promise<boolean> {
    const d = this.#d;
    const ms = d.heartbeatSeconds * 1500;
    try {
      await within(d.driver.ping(), ms, `Docker engine did not answer 'ping' within ${ms / 1000} s`);
      if (this.#engineProblem) d.logger.info("Docker engine answers again; taking demand");
      this.#engineProblem = undefined;
      return true;
    } catch (err) {
      const problem = `Docker engine unreachable: ${redact(errorMessage(err))}`;
      if (problem !== this.#engineProblem) d.logger.warn(`${problem}; taking no demand until it answers`);
      this.#engineProblem = problem;
      return false;
    }
  }

  /**
   * Each write is made only while the worker has not begun to stop: a beat still waiting on the
   * engine's ping when the stop says this process is gone would otherwise write its hold, its
   * instance and its host record back, and the host would look served for 3 beats more (the next
   * process on this host waits that out). A write made before the stop began reaches Redis ahead of
   * the stop's own, on the same connection.
   */
  async beat(): Promise<void> {
    const d = this.#d;
    await this.checkEngine();
    try {
      if (this.#stopped || !(await this.#keepHost())) return;
      if (!this.#draining && (await d.hosts.draining(d.host))) {
        this.#draining = true;
        d.logger.info("draining: no new demand; running jobs finish, then the worker exits");
      }
      if (this.#stopped) return;
      await d.hosts.heartbeat(
        { id: d.host, capacity: this.#engineProblem || this.#draining ? 0 : d.capacity, used: d.used(), pools: d.pools },
        d.heartbeatSeconds * 3000,
        d.instance,
      );
      if (this.#stopped) return;
      // Not awaited: its Redis calls (one per place this worker holds) would put off the next beat,
      // and on a large host with a slow Redis let the record and hold, 3 beats long, lapse while
      // the worker lives (other hosts would then sweep its runners). A call still running when the
      // next beat comes is left to finish: its refreshes are the same.
      this.#onBeat ??= d
        .onBeat()
        .catch((err: unknown) => d.logger.warn({ err: errorMessage(err) }, "refreshing this worker's places failed"))
        .finally(() => (this.#onBeat = undefined));
    } catch (err) {
      d.logger.warn({ err: errorMessage(err) }, "heartbeat failed");
    }
  }

  /**
   * Renews the hold on the host. Lost (this process stalled past its expiry and another took the
   * host, or Redis lost it and another took it first), the worker takes no demand and writes no
   * beat until the host is its own again.
   */
  async #keepHost(): Promise<boolean> {
    const d = this.#d;
    const hold = await d.hosts.hold(d.host, d.instance, this.#ttlMs);
    if (hold.held) {
      if (this.#hostProblem) d.logger.info("this worker process holds its host again; taking demand");
      this.#hostProblem = undefined;
      return true;
    }
    if (!this.#hostProblem) d.logger.error("another worker process has taken this host; taking no demand, and leaving the host's containers and records alone, while it holds it");
    this.#hostProblem = `another worker process holds host "${d.host}": give each worker its own worker.hostId`;
    return false;
  }

  /**
   * Stops the heartbeat and says this process is gone (its records are others' to clean up now,
   * its host is free for the next process). `leave` (a clean exit, nothing of the host runs or is
   * recorded) also removes this host's record; `clean` (a clean stop that leaves runners running,
   * or recorded, for the next process on the host) notes the clean stop, so that if none comes
   * within the host's expiry, the other workers' sweep of the host counts it as stopped, not gone;
   * `cut_short` (a stop that left launches or demand to lapse, a failed start) says only that
   * this process is gone, and the host is left as a crash leaves it. `drained`: the stop follows
   * an operator's drain that finished (no runner left running); a `clean` one then also makes the
   * host's drain mark `left`, as `leave` does, so that `jitrunner drain` sees the worker gone and a
   * worker started on the host later stays up cordoned instead of draining again.
   */
  async stop(end: HostPresenceEnd, drained = false): Promise<void> {
    this.#stopped = true;
    this.#timer?.stop();
    // Bounded: with Redis away the commands would wait for it, and the stop with them. What they
    // would have said, Redis learns anyway once this host's hold and beat expire (a clean stop
    // then counts as gone).
    const said = (async () => {
      // Before the hold goes with instanceGone: the note is written only by its holder.
      if (end === "clean" && !this.#hostProblem) await this.#d.hosts.noteStop(this.#d.host, this.#d.instance).catch(() => undefined);
      // Before the hold goes too: the host's next process, once it holds it, finds the mark left.
      if (end === "clean" && drained && !this.#hostProblem) await this.#d.hosts.leftDrained(this.#d.host).catch(() => undefined);
      await this.#d.hosts.instanceGone(this.#d.instance, this.#d.host).catch(() => undefined);
      // A host another process has taken is that process's to leave.
      if (end === "leave" && !this.#hostProblem) await this.#d.hosts.forget(this.#d.host).catch(() => undefined);
    })();
    await atMost(said, STOP_REDIS_MS);
  }
}
