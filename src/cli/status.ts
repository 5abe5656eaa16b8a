import { Redis } from "ioredis";
import type { Config } from "../config/load.ts";
import { errorMessage, redisUnavailableReason } from "../errors.ts";
import { DemandQueues } from "../queue/demand-queue.ts";
import { ActivityLog } from "../state/activity.ts";
import { HostStore } from "../state/hosts.ts";
import { RunnerStore } from "../state/runners.ts";
import { collectStatus } from "../state/status.ts";
import { within } from "../timers.ts";
import { renderStatusText } from "./status-text.ts";

/** How long `status` and `drain` wait for Redis on one step: connecting, or any one command. */
export const CLI_REDIS_TIMEOUT_MS = 5_000;
const NO_ANSWER = `Redis did not answer within ${CLI_REDIS_TIMEOUT_MS / 1000} s`;

/**
 * A connection for a command an operator runs and waits on. Every step is bounded: the connect
 * and its handshake (AUTH, the ready check) together by `connectCli`, each command by
 * commandTimeout (connectTimeout alone covers only the TCP connect: a Redis that accepts the
 * connection and never answers would otherwise be waited on for ever). While disconnected a
 * command fails at once, and a lost connection is not retried.
 */
export function cliRedis(url: string): Redis {
  const redis = new Redis(url, {
    lazyConnect: true,
    connectTimeout: CLI_REDIS_TIMEOUT_MS,
    commandTimeout: CLI_REDIS_TIMEOUT_MS,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
  });
  redis.on("error", () => undefined);
  return redis;
}

/**
 * Connects, ready for commands, within CLI_REDIS_TIMEOUT_MS, or rejects: with the socket's error
 * (ECONNREFUSED, ENOTFOUND) rather than ioredis's "Connection is closed." that follows it.
 */
export async function connectCli(redis: Redis): Promise<void> {
  let last: Error | undefined;
  const onError = (e: Error) => (last = e);
  redis.on("error", onError);
  try {
    await within(redis.connect(), CLI_REDIS_TIMEOUT_MS, NO_ANSWER);
  } catch (e) {
    throw last && errorMessage(e).startsWith("Connection is closed") ? last : e;
  } finally {
    redis.off("error", onError);
  }
}

/**
 * Why Redis could not be reached, for an operator's one line: never the URL (it may carry a
 * password), only the error's text, which names at most host and port.
 */
export function unreachableReason(err: unknown): string {
  const message = errorMessage(err);
  if (message === NO_ANSWER || message.endsWith("Command timed out")) return NO_ANSWER;
  return message;
}

/** Whether `err` says Redis could not be reached or did not answer (not a bug of ours). */
export function isUnreachable(err: unknown): boolean {
  return errorMessage(err) === NO_ANSWER || redisUnavailableReason(err) !== undefined;
}

/**
 * `jitrunner status`: reads Redis directly (no server needed) and prints the status page's facts.
 * Fails fast, with exit code 1, when Redis does not answer: each step waits at most
 * CLI_REDIS_TIMEOUT_MS (cliRedis).
 */
export async function statusCommand(config: Config, opts: { json: boolean }, out: NodeJS.WritableStream, err: NodeJS.WritableStream): Promise<number> {
  const redis = cliRedis(config.redis.url);
  try {
    await connectCli(redis);
  } catch (e) {
    err.write(`jitrunner status: cannot reach Redis (redis.url): ${unreachableReason(e)}\n`);
    redis.disconnect();
    return 1;
  }
  const queues = new DemandQueues({ redisUrl: config.redis.url, prefix: config.redis.prefix, attempts: config.worker.launchAttempts }, redis);
  try {
    const snapshot = await collectStatus({
      pools: config.pools,
      runners: new RunnerStore(redis, config.redis.prefix),
      hosts: new HostStore(redis, config.redis.prefix),
      activity: new ActivityLog(redis, config.redis.prefix),
      pending: (pools) => queues.pending(pools),
    });
    out.write(opts.json ? `${JSON.stringify(snapshot, null, 2)}\n` : renderStatusText(snapshot));
    return snapshot.problems.length ? 1 : 0;
  } finally {
    // BullMQ's close waits on Redis: bounded like any other step.
    await within(queues.close(), CLI_REDIS_TIMEOUT_MS, NO_ANSWER).catch(() => undefined);
    redis.disconnect();
  }
}
