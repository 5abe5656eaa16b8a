import { Redis } from "ioredis";
import type { Config } from "../config/load.ts";
import { errorMessage } from "../errors.ts";
import { DemandQueues } from "../queue/demand-queue.ts";
import { ActivityLog } from "../state/activity.ts";
import { HostStore } from "../state/hosts.ts";
import { RunnerStore } from "../state/runners.ts";
import { collectStatus } from "../state/status.ts";
import { renderStatusText } from "./status-text.ts";

/**
 * `jitrunner status`: reads Redis directly (no server needed) and prints the status page's facts.
 * Fails fast, with exit code 1, when Redis does not answer.
 */
export async function statusCommand(config: Config, opts: { json: boolean }, out: NodeJS.WritableStream, err: NodeJS.WritableStream): Promise<number> {
  const redis = new Redis(config.redis.url, {
    lazyConnect: true,
    connectTimeout: 5000,
    maxRetriesPerRequest: 1,
    retryStrategy: () => null,
  });
  redis.on("error", () => undefined);
  try {
    await redis.connect();
  } catch (e) {
    err.write(`jitrunner status: cannot reach Redis (redis.url): ${errorMessage(e)}\n`);
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
    await queues.close().catch(() => undefined);
    redis.disconnect();
  }
}
