/**
 * The "nothing left behind" check of issue 5, for tests that run jobs end to end: no container
 * and no volume of the test's hosts on the engine, no runner registration on the fake GitHub, no
 * demand in the queue and no runner record in Redis.
 */
import assert from "node:assert/strict";
import type { FakeGitHub } from "../fakes/github/index.ts";
import { DemandQueues, redisConnection } from "../../src/queue/demand-queue.ts";
import { RunnerStore } from "../../src/state/runners.ts";
import { LABEL } from "../../src/docker/labels.ts";
import { waitFor } from "./process.ts";
import type { TestRedis } from "./redis.ts";
import { containersOf, docker } from "./system.ts";

/**
 * Notes the volumes of the hosts' runner containers while they live (an anonymous volume has no
 * label of ours; it is known only through its container), sampling until `stop`.
 */
export function watchVolumes(hostIds: readonly string[]): { seen: Set<string>; stop(): Promise<void> } {
  const seen = new Set<string>();
  let running = true;
  const sampler = (async () => {
    while (running) {
      for (const host of hostIds) {
        for (const c of await containersOf(host).catch(() => [])) {
          for (const m of c.Mounts ?? []) if (m.Type === "volume" && m.Name) seen.add(m.Name);
        }
      }
      await new Promise((r) => setTimeout(r, 250));
    }
  })();
  return {
    seen,
    stop: async () => {
      running = false;
      await sampler;
    },
  };
}

export interface Leftovers {
  hostIds: readonly string[];
  fake: FakeGitHub;
  redis: TestRedis;
  pools: readonly string[];
  volumes: { seen: Set<string> };
}

/** Waits (bounded) until nothing of the test is left, and fails naming what is. */
export async function assertNothingLeft(o: Leftovers): Promise<void> {
  for (const host of o.hostIds) {
    await waitFor(async () => (await containersOf(host)).length === 0, 60_000, `0 runner containers left on ${host}`);
  }
  assert.ok(o.volumes.seen.size >= 1, "runner containers had their /var/lib/docker volumes");
  const volumesLeft = async () => {
    const existing = new Set(((await docker.listVolumes()).Volumes ?? []).map((v) => v.Name));
    return [...o.volumes.seen].filter((v) => existing.has(v));
  };
  await waitFor(async () => (await volumesLeft()).length === 0, 30_000, `0 runner volumes left (${o.volumes.seen.size} seen)`);
  // And any volume labelled with the hosts (a runner's data volume), seen by the sampler or not:
  // one a create failed half-way made never had a container to be seen through.
  for (const host of o.hostIds) {
    const labelled = async () => ((await docker.listVolumes({ filters: { label: [`${LABEL.host}=${host}`] } })).Volumes ?? []).map((v) => v.Name);
    await waitFor(async () => (await labelled()).length === 0, 30_000, `0 volumes labelled with host ${host} left`);
  }
  await waitFor(() => o.fake.runners().length === 0, 30_000, `0 runner registrations left (have ${JSON.stringify(o.fake.runners().map((r) => r.name))})`);

  const conn = redisConnection(o.redis.url);
  const queues = new DemandQueues({ redisUrl: o.redis.url, prefix: o.redis.prefix, attempts: 1 }, conn);
  try {
    const unserved = async () => {
      let n = 0;
      for (const c of (await queues.counts(o.pools)).values()) n += c.waiting + c.delayed + c.prioritized + c.paused + c.active;
      return n;
    };
    await waitFor(async () => (await unserved()) === 0, 30_000, "no demand waiting or held in the queue");
    for (const [pool, c] of await queues.counts(o.pools)) assert.equal(c.failed, 0, `no demand of pool ${pool} ran out of launch attempts`);
    const records = new RunnerStore(conn, o.redis.prefix);
    await waitFor(async () => (await records.listAll()).length === 0, 30_000, "no runner record left in Redis");
    // Below the store's own reading (listAll sees only indexed records with a name): no runner hash
    // at all, indexed or not, partial or whole, and no host's index of runners holding a name.
    const keys = async (pattern: string) => {
      const found: string[] = [];
      let cursor = "0";
      do {
        const [next, batch] = await conn.scan(cursor, "MATCH", pattern, "COUNT", 1000);
        cursor = next;
        found.push(...batch);
      } while (cursor !== "0");
      return found;
    };
    await waitFor(async () => (await keys(`${o.redis.prefix}:runner:*`)).length === 0, 30_000, "no runner hash left in Redis");
    assert.equal(await conn.scard(`${o.redis.prefix}:runners`), 0, "no name left in the index of every runner");
    for (const host of o.hostIds) assert.equal(await conn.scard(`${o.redis.prefix}:host:${host}:runners`), 0, `no name left in host ${host}'s runners`);
  } finally {
    await queues.close();
    conn.disconnect();
  }
}

/** The value of one sample in Prometheus text (labels exactly as exposed), 0 when absent. */
export function metricSample(text: string, name: string, labels: string): number {
  const line = text.split("\n").find((l) => l.startsWith(`${name}{${labels}}`));
  return line ? Number(line.split(" ").at(-1)) : 0;
}
