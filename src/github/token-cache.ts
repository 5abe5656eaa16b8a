import { randomUUID } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import type { Redis } from "ioredis";
import { within } from "../timers.ts";

/** A token is handed out only while it has at least this long left (a slow call must not outlive it). */
const MIN_REMAINING_MS = 5 * 60_000;
/** How long one process may take to mint a token before others stop waiting for it. */
const MINT_LOCK_MS = 10_000;
const WAIT_FOR_MINT_MS = 5_000;
const POLL_MS = 100;
/**
 * A Redis that does not answer within this long is treated as down (connections may queue
 * commands forever): the GitHub client's own Redis calls (this cache, the shared write budget).
 */
export const REDIS_TIMEOUT_MS = 2_000;

const RELEASE_IF_OURS = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0`;

/**
 * @octokit/auth-app's `cache` option, in Redis: every process of a fleet uses the same
 * installation token instead of each minting its own, until shortly before it expires (the key's
 * TTL ends MIN_REMAINING_MS before the token does). A process that finds no token takes a short
 * lock and mints one; the others wait for it, bounded, instead of minting their own. A copy is kept
 * in memory until the same moment, so most calls cost no Redis round trip. Values are auth-app's
 * own strings (`token|createdAt|expiresAt|...`); Redis holds the tokens, as it holds everything
 * else of jitrunner. When Redis fails, calls go on with a token of this process's own.
 */
export class RedisTokenCache {
  readonly #redis: Redis;
  readonly #prefix: string;
  readonly #githubNow: () => number;
  readonly #memory = new Map<string, { value: string; until: number }>();
  /** Mint locks this process holds, by cache key. */
  readonly #locks = new Map<string, string>();

  /** `prefix`: keys are `<prefix>:<auth-app's key>`; `githubNow`: GitHub's time in ms (token expiry is in it). */
  constructor(redis: Redis, prefix: string, githubNow: () => number = Date.now) {
    this.#redis = redis;
    this.#prefix = prefix;
    this.#githubNow = githubNow;
  }

  /** The cached value, or "" (auth-app treats a falsy value as a miss and mints a token). */
  async get(key: string): Promise<string> {
    const mem = this.#memory.get(key);
    if (mem && mem.until > Date.now()) return mem.value;
    this.#memory.delete(key);
    try {
      const found = await this.#read(key);
      if (found) return found;
      if (this.#locks.has(key)) return ""; // our own mint failed: try again at once
      const lock = randomUUID();
      if (await bounded(this.#redis.set(this.#lockKey(key), lock, "PX", MINT_LOCK_MS, "NX"))) {
        this.#locks.set(key, lock);
        return ""; // ours to mint; set() releases the lock
      }
      // Another process is minting: wait for its token rather than mint a second one.
      const deadline = Date.now() + WAIT_FOR_MINT_MS;
      while (Date.now() < deadline) {
        await sleep(POLL_MS);
        const minted = await this.#read(key);
        if (minted) return minted;
      }
    } catch {
      // Redis unavailable: mint one of our own.
    }
    return "";
  }

  async set(key: string, value: string): Promise<void> {
    const ttl = this.#ttl(value);
    if (ttl > 0) this.#memory.set(key, { value, until: Date.now() + ttl });
    try {
      if (ttl > 0) await bounded(this.#redis.set(this.#key(key), value, "PX", ttl));
      const lock = this.#locks.get(key);
      this.#locks.delete(key);
      if (lock) await bounded(this.#redis.eval(RELEASE_IF_OURS, 1, this.#lockKey(key), lock));
    } catch {
      // Not shared this time; this process still has it.
    }
  }

  async #read(key: string): Promise<string | undefined> {
    const stored = await bounded(this.#redis.get(this.#key(key)));
    const ttl = stored ? this.#ttl(stored) : 0;
    if (!stored || ttl <= 0) return undefined;
    const value = notAhead(stored);
    this.#memory.set(key, { value, until: Date.now() + ttl });
    return value;
  }

  /** How long a value may still be handed out, in ms (<= 0: not at all). */
  #ttl(value: string): number {
    const expiresAt = Date.parse(value.split("|")[2] ?? "");
    return Number.isFinite(expiresAt) ? expiresAt - this.#githubNow() - MIN_REMAINING_MS : 0;
  }

  #key(key: string): string {
    return `${this.#prefix}:${key}`;
  }

  #lockKey(key: string): string {
    return `${this.#prefix}:${key}:minting`;
  }
}

/**
 * A value another process minted, its `createdAt` (stamped by that host's clock) brought back to
 * this host's now should it be later. auth-app takes a 401 on a token under 5 s old for GitHub's
 * replication lag and retries it, with longer waits, until it is 5 s old by this clock: a token
 * from a host whose clock is minutes ahead held every refused call (a revoked token) for minutes.
 */
function notAhead(value: string): string {
  const fields = value.split("|");
  const createdAt = Date.parse(fields[1] ?? "");
  if (!(createdAt > Date.now())) return value;
  fields[1] = new Date().toISOString();
  return fields.join("|");
}

function bounded<T>(op: Promise<T>): Promise<T> {
  return within(op, REDIS_TIMEOUT_MS, "redis did not answer");
}
