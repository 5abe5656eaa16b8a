import type { Config } from "../config/load.ts";
import { redisAddressOf, redisTarget } from "../queue/redis-address.ts";
import { DemandQueues } from "../queue/demand-queue.ts";
import { ActivityLog } from "../state/activity.ts";
import { HostStore } from "../state/hosts.ts";
import { RunnerStore } from "../state/runners.ts";
import { collectStatus } from "../state/status.ts";
import { within } from "../timers.ts";
import { CLI_REDIS_TIMEOUT_MS, cliRedis, connectCli, NO_ANSWER, unreachableReason } from "./redis.ts";
import { renderStatusText } from "./status-text.ts";

/**
 * `jitrunner status`: reads Redis directly (no server needed) and prints the status page's facts.
 * Fails fast, with exit code 1, when Redis does not answer: each step waits at most
 * CLI_REDIS_TIMEOUT_MS (cliRedis). `opts.origins`: the options the environment set, for the error
 * naming where the Redis URL came from (redisTarget).
 */
export async function statusCommand(
  config: Config,
  opts: { json: boolean; origins?: ReadonlyMap<string, string> },
  out: NodeJS.WritableStream,
  err: NodeJS.WritableStream,
): Promise<number> {
  const redis = cliRedis(redisAddressOf(config));
  try {
    await connectCli(redis);
  } catch (e) {
    err.write(`jitrunner status: cannot reach Redis at ${redisTarget(redisAddressOf(config), opts.origins)}: ${unreachableReason(e)}\n`);
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
