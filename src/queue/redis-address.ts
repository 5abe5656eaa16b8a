/**
 * Where jitrunner's Redis is: one address (redis.url), or the master a group of Redis Sentinels
 * names (redis.sentinels, redis.sentinelName). Every connection jitrunner makes is built from it,
 * the server's, the worker's and BullMQ's (redisConnection) and the operator commands' (cliRedis).
 */
import type { RedisOptions } from "ioredis";
import type { Config } from "../config/load.ts";
import { parseSentinelAddress } from "../config/schema.ts";
import type { Secret } from "../config/secret.ts";

export interface RedisAddress {
  /**
   * A redis:// or rediss:// URL: the address, its password, user name and database. With
   * `sentinel`, its password, user name, database and scheme only: Sentinel names the address.
   */
  url: string;
  sentinel?: {
    sentinels: Array<{ host: string; port: number }>;
    /** The master's name, as the sentinels monitor it. */
    name: string;
    username?: string;
    password?: Secret;
  };
}

/**
 * How long a sentinel may take to answer one command (which master, which other sentinels) before
 * the next sentinel is asked. Unset, ioredis waits on a sentinel that accepts the connection and
 * never answers for ever, and the connection with it.
 */
export const SENTINEL_COMMAND_TIMEOUT_MS = 5_000;

/** The Redis a config names. */
export function redisAddressOf(config: Pick<Config, "redis" | "secrets">): RedisAddress {
  const { url, sentinels, sentinelName, sentinelUsername } = config.redis;
  if (!sentinels || sentinelName === undefined) return { url };
  const password = config.secrets.redisSentinelPassword;
  return {
    url,
    sentinel: { sentinels: sentinels.map(parseSentinelAddress), name: sentinelName, ...(sentinelUsername !== undefined && { username: sentinelUsername }), ...(password && { password }) },
  };
}

/**
 * ioredis's options for the address beyond its URL: none for one address; for Sentinel, the
 * sentinels, the master's name and the sentinels' credentials. ioredis asks the sentinels for the
 * master, checks that the node it reached says it is the master (INFO's role, its ready check),
 * and asks them again on every reconnection: Sentinel closes the clients of a master it demotes,
 * so a failover is a reconnection. With rediss://, TLS to the master and to the sentinels alike
 * (ioredis's enableTLSForSentinelMode, sentinelTLS).
 */
export function addressOptions(address: RedisAddress): RedisOptions {
  const s = address.sentinel;
  if (!s) return {};
  const tls = /^rediss:/i.test(address.url);
  return {
    sentinels: s.sentinels,
    name: s.name,
    ...(s.username !== undefined && { sentinelUsername: s.username }),
    ...(s.password && { sentinelPassword: s.password.reveal() }),
    sentinelCommandTimeout: SENTINEL_COMMAND_TIMEOUT_MS,
    ...(tls && { enableTLSForSentinelMode: true, sentinelTLS: {} }),
  };
}

/**
 * The passwords an address holds (the URL's, decoded, a query parameter's ioredis takes as an
 * option, `?sentinelPassword=`, and the sentinels'): hidden wherever an error might repeat one.
 */
export function addressPasswords(address: RedisAddress): string[] {
  return [...urlPasswords(address.url), address.sentinel?.password?.reveal() ?? ""].filter((p) => p !== "");
}

/**
 * Whether a Redis URL's query parameter holds a password: ioredis takes any of its options from
 * the query, `?password=` and `?sentinelPassword=` among them.
 */
export function isPasswordParam(name: string): boolean {
  return /pass/i.test(name);
}

/** The passwords in a Redis URL: its user info's (`redis://:PASSWORD@host`), decoded, and its query's (isPasswordParam). */
function urlPasswords(url: string): string[] {
  try {
    const u = new URL(url);
    return [decodeURIComponent(u.password), ...[...u.searchParams].filter(([k]) => isPasswordParam(k)).map(([, v]) => v)];
  } catch {
    return [];
  }
}
