import type { Redis } from "ioredis";

/** A repository jitrunner served a job for, and the App installation that reaches it. */
export interface ActiveRepo {
  installationId: number;
  owner: string;
  repo: string;
  /** Last time a queued job of it was seen (ms since epoch). */
  seenAt: number;
}

/** Newest entries kept at most, whatever the window: bounds the set under any load. */
const MAX_ENTRIES = 10_000;
/**
 * A repository noted by this process less than this long ago is not written again. The loops that
 * read the set look back hours and run every few minutes, so a few seconds of lag changes nothing,
 * while a burst of one repository's jobs costs one write instead of one per job.
 */
const RENOTE_MS = 10_000;

/**
 * Repositories with recent demand, in one Redis sorted set scored by time. The ingress touches a
 * repository on each queued job it accepts; the leader's reconcile loops read the most recent ones
 * (which repositories to ask GitHub about: GitHub has no "runs with queued jobs anywhere" call).
 */
export class ActiveRepos {
  readonly #redis: Redis;
  readonly #key: string;
  /** When this process last wrote each repository (at most MAX_ENTRIES of them). */
  readonly #noted = new Map<string, number>();

  constructor(redis: Redis, prefix: string) {
    this.#redis = redis;
    this.#key = `${prefix}:active-repos`;
  }

  /** Notes a repository as active at `at`, unless this process did so within the last RENOTE_MS. */
  async touch(r: Omit<ActiveRepo, "seenAt">, at: number = Date.now()): Promise<void> {
    const member = `${r.installationId}/${r.owner}/${r.repo}`;
    const last = this.#noted.get(member);
    if (last !== undefined && at >= last && at - last < RENOTE_MS) return;
    if (this.#noted.size >= MAX_ENTRIES) this.#noted.clear();
    this.#noted.set(member, at);
    try {
      await this.#redis.multi().zadd(this.#key, at, member).zremrangebyrank(this.#key, 0, -(MAX_ENTRIES + 1)).exec();
    } catch (err) {
      // Not written: the next job of this repository tries again.
      if (this.#noted.get(member) === at) this.#noted.delete(member);
      throw err;
    }
  }

  /** Repositories seen within `windowMs`, most recent first, at most `max`. Older ones are dropped. */
  async list(windowMs: number, max: number, now: number = Date.now()): Promise<ActiveRepo[]> {
    const since = now - windowMs;
    await this.#redis.zremrangebyscore(this.#key, "-inf", `(${since}`);
    const flat = await this.#redis.zrevrangebyscore(this.#key, "+inf", since, "WITHSCORES", "LIMIT", 0, max);
    const out: ActiveRepo[] = [];
    for (let i = 0; i + 1 < flat.length; i += 2) {
      const [installation, owner, repo] = flat[i]!.split("/");
      if (!installation || !owner || !repo) continue;
      out.push({ installationId: Number(installation), owner, repo, seenAt: Number(flat[i + 1]) });
    }
    return out;
  }
}
