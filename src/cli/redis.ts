/** The Redis connection of the commands an operator runs and waits on (`status`, `drain`): every step bounded. */
import { Redis } from "ioredis";
import { errorMessage, redisUnavailableReason } from "../errors.ts";
import { addressOptions, type RedisAddress } from "../queue/redis-address.ts";
import { within } from "../timers.ts";

/** How long `status` and `drain` wait for Redis on one step: connecting, or any one command. */
export const CLI_REDIS_TIMEOUT_MS = 5_000;
/** What `status` and `drain` say when a step waited that long. */
export const NO_ANSWER = `Redis did not answer within ${CLI_REDIS_TIMEOUT_MS / 1000} s`;

/**
 * A connection for a command an operator runs and waits on. Every step is bounded: the connect
 * and its handshake (AUTH, the ready check) together by `connectCli`, each command by
 * commandTimeout (connectTimeout alone covers only the TCP connect: a Redis that accepts the
 * connection and never answers would otherwise be waited on for ever). While disconnected a
 * command fails at once, and a lost connection is not retried.
 */
export function cliRedis(address: RedisAddress): Redis {
  const redis = new Redis(address.url, {
    lazyConnect: true,
    connectTimeout: CLI_REDIS_TIMEOUT_MS,
    commandTimeout: CLI_REDIS_TIMEOUT_MS,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
    ...addressOptions(address),
    // Through Sentinel: each sentinel is asked once, each answer waited for as long as a command
    // (connectCli's limit leaves each that time).
    sentinelRetryStrategy: () => null,
    sentinelCommandTimeout: CLI_REDIS_TIMEOUT_MS,
  });
  redis.on("error", () => undefined);
  return redis;
}

/**
 * How long a connect may take: CLI_REDIS_TIMEOUT_MS for Redis itself, and through Sentinel as
 * much again for each sentinel's connect and for its answer, so that a sentinel that does not
 * answer (its host down, packets dropped) leaves the next ones time to be asked.
 */
export function cliConnectLimitMs(redis: Redis): number {
  return CLI_REDIS_TIMEOUT_MS * (1 + 2 * (redis.options.sentinels?.length ?? 0));
}

/**
 * Connects, ready for commands, within cliConnectLimitMs, or rejects: with the socket's error
 * (ECONNREFUSED, ENOTFOUND) rather than ioredis's "Connection is closed." that follows it.
 */
export async function connectCli(redis: Redis): Promise<void> {
  let last: Error | undefined;
  const onError = (e: Error) => (last = e);
  redis.on("error", onError);
  const limitMs = cliConnectLimitMs(redis);
  try {
    await within(redis.connect(), limitMs, limitMs === CLI_REDIS_TIMEOUT_MS ? NO_ANSWER : `Redis did not answer within ${limitMs / 1000} s`);
  } catch (e) {
    throw last && errorMessage(e).startsWith("Connection is closed") ? last : e;
  } finally {
    redis.off("error", onError);
  }
}

/**
 * Why Redis could not be reached, for an operator's one line: only the error's text, which names
 * at most host and port (never a password).
 */
export function unreachableReason(err: unknown): string {
  const message = errorMessage(err);
  if (message.startsWith("Redis did not answer within ")) return message;
  if (message.endsWith("Command timed out")) return NO_ANSWER;
  return message;
}

/** Whether `err` says Redis could not be reached or did not answer (not a bug of ours). */
export function isUnreachable(err: unknown): boolean {
  return errorMessage(err) === NO_ANSWER || redisUnavailableReason(err) !== undefined;
}
