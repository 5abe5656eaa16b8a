import { Redis } from "ioredis";
import type { Config } from "../config/load.ts";
import { HostStore } from "../state/hosts.ts";

/**
 * `jitrunner drain --host ID`: the host takes no new demand, lets its running jobs finish, then
 * its worker exits 0. With `wait`, returns once the host has left the fleet, with a progress line
 * every 10 s.
 */
export async function drainHost(config: Config, host: string, wait: boolean, out: NodeJS.WritableStream): Promise<number> {
  const redis = new Redis(config.redis.url, { maxRetriesPerRequest: 2, lazyConnect: true });
  try {
    await redis.connect();
    const hosts = new HostStore(redis, config.redis.prefix);
    const known = (await hosts.list()).find((h) => h.id === host);
    if (!known?.record) {
      out.write(`jitrunner drain: no live host '${host}' (known: ${(await hosts.list()).map((h) => h.id).join(", ") || "none"})\n`);
      return 1;
    }
    await hosts.drain(host);
    out.write(`draining ${host}: it takes no new demand; running jobs finish, then its worker exits\n`);
    if (!wait) return 0;
    let lastLine = 0;
    for (;;) {
      const now = (await hosts.list()).find((h) => h.id === host);
      if (!now?.record) break;
      if (Date.now() - lastLine >= 10_000) {
        out.write(`  ${host}: ${now.record.used} runner slot(s) in use\n`);
        lastLine = Date.now();
      }
      await new Promise((r) => setTimeout(r, 1000));
    }
    out.write(`${host} drained\n`);
    return 0;
  } finally {
    redis.disconnect();
  }
}
