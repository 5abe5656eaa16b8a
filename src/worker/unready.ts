/**
 * Why a worker takes no demand, or fails at it, in fixed words. `/readyz` answers without a token
 * (it serves probes and load balancers), so what it says must name no organization, repository,
 * runner group, pool, host, image, SSH fingerprint or GitHub/Docker message: those are in a
 * problem's `detail`, which the worker logs (and a demand's launch failure is on the status page,
 * behind the admin token).
 */
export const UNREADY = {
  engine: "worker: engine unreachable",
  hostTaken: "worker: host held by another process",
  takingDemand: "worker: taking demand failing",
  poolLimit: "worker: pool limit check failing",
  launches: "worker: launches failing",
  /** A pool's image is not on the engine (E_IMAGE_MISSING): launches fail before registering. */
  imageMissing: "worker: pool image missing on the engine",
  hostLoop: "worker: host reconcile failing",
} as const;

export type UnreadyReason = (typeof UNREADY)[keyof typeof UNREADY];

/** A worker problem: `reason` for anyone, `detail` for the log. */
export interface WorkerProblem {
  reason: UnreadyReason;
  detail: string;
}

/**
 * How long a problem lasts after its last failure when nothing clears it: a failure that is not
 * tried again soon (a launch GitHub refuses for good, a Docker error whose retry went to another
 * host, a pool's intake that failed once and then waits for a slot for hours, a limit check that
 * demand adopted by warm runners skips) must not leave the worker unready until that thing next
 * succeeds. What keeps failing notes its problem again with each try.
 */
export const PROBLEM_LASTS_MS = 5 * 60_000;

/**
 * A worker's problems, each under a key of what failed (a pool's intake of demand, its limit
 * check, its launches, its warm launches, the host loop): each is cleared by the next success of
 * the same thing, or lapses PROBLEM_LASTS_MS after it was last noted, and one thing's success
 * clears no other's.
 */
export class Problems {
  readonly #set = new Map<string, WorkerProblem & { until: number }>();
  readonly #now: () => number;

  constructor(o: { now?: () => number } = {}) {
    this.#now = o.now ?? Date.now;
  }

  /** Keeps `problem` under `key`; true when its detail is new for the key (worth a log line). */
  note(key: string, problem: WorkerProblem): boolean {
    const fresh = this.#current(key)?.detail !== problem.detail;
    // A key already set keeps its place in the order.
    this.#set.set(key, { ...problem, until: this.#now() + PROBLEM_LASTS_MS });
    return fresh;
  }

  clear(key: string): void {
    this.#set.delete(key);
  }

  /** The reasons still set, each once, the longest standing first. */
  reasons(): UnreadyReason[] {
    const out = new Set<UnreadyReason>();
    for (const key of [...this.#set.keys()]) {
      const p = this.#current(key);
      if (p) out.add(p.reason);
    }
    return [...out];
  }

  #current(key: string): WorkerProblem | undefined {
    const p = this.#set.get(key);
    if (p && p.until <= this.#now()) {
      this.#set.delete(key);
      return undefined;
    }
    return p;
  }
}
