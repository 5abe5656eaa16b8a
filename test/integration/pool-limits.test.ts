/**
 * PoolLimits (src/state/hosts.ts), the places under a pool's limits in Redis: a gone host's
 * places are freed at once, and only its own, whatever its id and the other holders look like.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { hostHolder, PoolLimits } from "../../src/state/hosts.ts";
import { redisForFile } from "../helpers/redis.ts";

const shared = redisForFile();

test("a host's places are freed together, and no one else's: not a host whose id it begins, nor a demand's", async () => {
  const { redis, conn } = shared;
  const limits = new PoolLimits(conn, redis.prefix);
  const gone = [hostHolder("host-a"), hostHolder("host-a")];
  const others = [hostHolder("host-a:2"), hostHolder("host-b"), "8812345-1"];
  for (const h of [...gone, ...others]) assert.equal(await limits.acquire("default", h, 5), true);
  assert.equal(await limits.acquire("default", hostHolder("host-c"), 5), false, "the pool is full");

  assert.equal(await limits.releaseHost("default", "host-a"), 2);
  assert.equal(await limits.count("default"), others.length, "only host-a's two places freed");
  assert.equal(await limits.releaseHost("default", "host-a"), 0, "nothing more to free");
  assert.equal(await limits.releaseHost("other-pool", "host-b"), 0, "places are per pool");
  assert.equal(await limits.acquire("default", hostHolder("host-c"), 5), true, "a freed place is taken at once");
});
