import type { Redis } from "ioredis";
import type { PoolConfig } from "../config/load.ts";

/** A repository jitrunner served a job for, and the App installation that reaches it. */
export interface ActiveRepo {
  installationId: number;
  owner: string;
  repo: string;
  /** Last time a queued job of it was seen (ms since epoch). */
  seenAt: number;
}

/** An owner whose repository's job an organization pool served, and the installation that reaches it. */
export interface ActiveOrganization {
  installationId: number;
  owner: string;
  /** Last time such a job was seen (ms since epoch). */
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
 *
 * The owners of the repositories whose jobs organization pools served are kept in a second set,
 * so that only their organization runner lists are read: a user account has none, and
 * `GET /orgs/{user}/actions/runners` fails (404) on every pass. A repository pool's job says
 * nothing about its owner (users and organizations alike have repository runners).
 */
export class ActiveRepos {
  readonly #redis: Redis;
  readonly #key: string;
  readonly #orgKey: string;
  /** When this process last wrote each repository and scope (at most MAX_ENTRIES of them). */
  readonly #noted = new Map<string, number>();

  constructor(redis: Redis, prefix: string) {
    this.#redis = redis;
    this.#key = `${prefix}:active-repos`;
    this.#orgKey = `${prefix}:active-orgs`;
  }

  /**
   * Notes a repository as active at `at`, and its owner too when a pool of `scope` organization
   * served it, unless this process did so for that scope within the last RENOTE_MS.
   */
  async touch(r: Omit<ActiveRepo, "seenAt"> & { scope: PoolConfig["scope"] }, at: number = Date.now()): Promise<void> {
    const member = `${r.installationId}/${r.owner}/${r.repo}`;
    const noteKey = `${member}#${r.scope}`;
    const last = this.#noted.get(noteKey);
    if (last !== undefined && at >= last && at - last < RENOTE_MS) return;
    if (this.#noted.size >= MAX_ENTRIES) this.#noted.clear();
    this.#noted.set(noteKey, at);
    const tx = this.#redis.multi().zadd(this.#key, at, member).zremrangebyrank(this.#key, 0, -(MAX_ENTRIES + 1));
    if (r.scope === "organization") tx.zadd(this.#orgKey, at, `${r.installationId}/${r.owner}`).zremrangebyrank(this.#orgKey, 0, -(MAX_ENTRIES + 1));
    try {
      await tx.exec();
    } catch (err) {
      // Not written: the next job of this repository tries again.
      if (this.#noted.get(noteKey) === at) this.#noted.delete(noteKey);
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

  /**
   * Owners whose repositories' jobs organization pools served within `windowMs`, most recent first,
   * at most `max`. Older ones are dropped.
   */
  async listOrganizations(windowMs: number, max: number, now: number = Date.now()): Promise<ActiveOrganization[]> {
    const since = now - windowMs;
    await this.#redis.zremrangebyscore(this.#orgKey, "-inf", `(${since}`);
    const flat = await this.#redis.zrevrangebyscore(this.#orgKey, "+inf", since, "WITHSCORES", "LIMIT", 0, max);
    const out: ActiveOrganization[] = [];
    for (let i = 0; i + 1 < flat.length; i += 2) {
      const [installation, owner] = flat[i]!.split("/");
      if (!installation || !owner) continue;
      out.push({ installationId: Number(installation), owner, seenAt: Number(flat[i + 1]) });
    }
    return out;
  }
}
