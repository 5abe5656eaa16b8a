import type { Logger } from "pino";
import type { RunnerDriver } from "../docker/driver.ts";
import { errorMessage } from "../errors.ts";
import type { HostStore } from "../state/hosts.ts";
import { every } from "../timers.ts";

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
  /** Called on each beat, after the engine check (to refresh holds, etc.). */
  onBeat: () => Promise<void>;
}

/**
 * A worker's presence in the fleet: a heartbeat record with an expiry (other hosts take over when
 * it lapses), its engine's health (no demand is taken while the engine does not answer), and the
 * drain flag an operator sets with `jitrunner drain`.
 */
export class HostPresence {
  readonly #d: PresenceDeps;
  #timer: { stop(): void } | undefined;
  #engineProblem: string | undefined;
  #draining = false;
  #stopped = false;

  constructor(deps: PresenceDeps) {
    this.#d = deps;
  }

  get engineProblem(): string | undefined {
    return this.#engineProblem;
  }
  get draining(): boolean {
    return this.#draining;
  }
  /** Whether this worker may take new demand now. */
  get open(): boolean {
    return !this.#stopped && !this.#draining && !this.#engineProblem;
  }

  async start(): Promise<void> {
    await this.beat();
    this.#timer = every(this.#d.heartbeatSeconds * 1000, () => this.beat());
  }

  /** Pings the engine now (not waiting for the next beat); false, and closed, if it does not answer. */
  async checkEngine(): Promise<boolean> {
    const d = this.#d;
    try {
      await d.driver.ping();
      if (this.#engineProblem) d.logger.info("Docker engine answers again; taking demand");
      this.#engineProblem = undefined;
      return true;
    } catch (err) {
      const problem = `Docker engine unreachable: ${errorMessage(err)}`;
      if (problem !== this.#engineProblem) d.logger.warn(`${problem}; taking no demand until it answers`);
      this.#engineProblem = problem;
      return false;
    }
  }

  async beat(): Promise<void> {
    const d = this.#d;
    await this.checkEngine();
    try {
      if (!this.#draining && (await d.hosts.draining(d.host))) {
        this.#draining = true;
        d.logger.info("draining: no new demand; running jobs finish, then the worker exits");
      }
      await d.hosts.heartbeat(
        { id: d.host, capacity: this.#engineProblem || this.#draining ? 0 : d.capacity, used: d.used(), pools: d.pools },
        d.heartbeatSeconds * 3000,
        d.instance,
      );
      await d.onBeat();
    } catch (err) {
      d.logger.warn({ err: errorMessage(err) }, "heartbeat failed");
    }
  }

  /**
   * Stops the heartbeat and says this process is gone (its records are others' to clean up now);
   * `leave` also removes this host's record (a clean exit: nothing of it runs).
   */
  async stop(leave: boolean): Promise<void> {
    this.#stopped = true;
    this.#timer?.stop();
    await this.#d.hosts.instanceGone(this.#d.instance).catch(() => undefined);
    if (leave) await this.#d.hosts.forget(this.#d.host).catch(() => undefined);
  }
}
