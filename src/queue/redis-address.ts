/**
 * Where jitrunner's Redis is: one address (redis.url), or the master a group of Redis Sentinels
 * names (redis.sentinels, redis.sentinelName). Every connection jitrunner makes is built from it,
 * the server's, the worker's and BullMQ's (redisConnection) and the operator commands' (cliRedis);
 * and how it is shown wherever a line names it (withoutPassword, redisTarget).
 */
import type { RedisOptions } from "ioredis";
import type { Config } from "../config/load.ts";
import { atOutsideUserInfo, parseSentinelAddress } from "../config/schema.ts";
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

/**
 * A URL as it may be printed: a password in it (`redis://:PASSWORD@host`, `?password=`) replaced,
 * and a user name with no password (`redis://PASSWORD@host`, the ':' forgotten) as well.
 */
export function withoutPassword(url: string): string {
  const parsed = URL.canParse(url);
  const shown = parsed ? userInfoReplaced(url) : url;
  // Not a URL the WHATWG parser takes (a password with a '/' in it, say), or one it reads with an
  // '@' left after the host (a password's '/', '#' or '?' ended the host early, so no password was
  // found): hide all from the scheme to the last @. The config refuses both; this is for one that gets by.
  return !parsed || atOutsideUserInfo(shown) ? shown.replace(/\/\/.*@/, "//redacted@") : shown;
}

function userInfoReplaced(url: string): string {
  const u = new URL(url);
  const nameAlone = u.username !== "" && !u.password;
  const secretParams = [...u.searchParams.keys()].filter(isPasswordParam);
  if (!u.password && !nameAlone && secretParams.length === 0) return url;
  if (nameAlone) u.username = "redacted";
  if (u.password) u.password = "redacted";
  for (const k of secretParams) u.searchParams.set(k, "redacted");
  return u.href;
}

/**
 * Which Redis a command could not reach, for an operator's line: its URL without a password, and
 * where the URL came from, so the one to fix is found: the environment variable that set it
 * (`origins`, the options the environment set), else `redis.url` in the config. Through Sentinel,
 * the master's name and the sentinels asked, and the options or variables that gave them.
 */
export function redisTarget(address: RedisAddress, origins?: ReadonlyMap<string, string>): string {
  const s = address.sentinel;
  if (s) {
    const sentinels = s.sentinels.map(({ host, port }) => `${host.includes(":") ? `[${host}]` : host}:${port}`).join(", ");
    const named = ["redis.sentinelName", "redis.sentinels"].map((option) => origins?.get(option) ?? option).join(", ");
    return `master '${s.name}' through the sentinels at ${sentinels} (${named})`;
  }
  const from = origins?.get("redis.url");
  return `${withoutPassword(address.url)} (${from ? `from ${from}` : "redis.url"})`;
}
