/**
 * PoolLimits (src/state/hosts.ts), the places under a pool's limits in Redis: a gone host's
 * places are freed at once, and only its own, whatever its id and the other holders look like; a
 * place is taken over from the holder before it (a restarted worker's runners) without counting
 * twice.
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

test("a place taken over from another holder: the count stays; a holder whose place expired or was freed is no way in, nor one over a limit lowered since", async () => {
  const { redis, conn } = shared;
  const limits = new PoolLimits(conn, redis.prefix);
  const before = [hostHolder("host-a"), hostHolder("host-a")];
  for (const h of before) assert.equal(await limits.acquire("inherit", h, 2), true);
  const after = hostHolder("host-a");
  assert.equal(await limits.acquire("inherit", after, 2), false, "the pool is full");
  assert.equal(await limits.acquire("inherit", after, 2, before[0]), true, "taken over although the pool is full");
  assert.equal(await limits.count("inherit"), 2, "counted once");
  assert.deepEqual((await conn.zrange(`${redis.prefix}:pool:inherit:holders`, 0, -1)).sort(), [after, before[1]!].sort());
  // The first holder's place is gone now: naming it again takes nothing over, and the pool is full.
  assert.equal(await limits.acquire("inherit", hostHolder("host-a"), 2, before[0]), false, "a place taken over once is not taken over again");
  await limits.release("inherit", before[1]!);
  assert.equal(await limits.acquire("inherit", hostHolder("host-a"), 2, before[1]), true, "a freed holder named: a new place while there is room");
  assert.equal(await limits.acquire("inherit", hostHolder("host-a"), 2, "never-held"), false, "and none past the limit");
  assert.deepEqual(await limits.heldBy("inherit", "host-a"), await conn.zrange(`${redis.prefix}:pool:inherit:holders`, 0, -1), "heldBy lists the host's holders");

  // Three places under a limit lowered to 2: taking one over frees it and takes none.
  const three = [hostHolder("host-b"), hostHolder("host-b"), hostHolder("host-b")];
  for (const h of three) assert.equal(await limits.acquire("lowered", h, 3), true);
  const next = hostHolder("host-b");
  assert.equal(await limits.acquire("lowered", next, 2, three[0]), false, "over the lowered limit");
  assert.equal(await limits.count("lowered"), 2, "the old place freed all the same");
  assert.equal(await limits.acquire("lowered", next, 2, three[1]), true, "at the limit once freed: taken over");
  assert.deepEqual((await conn.zrange(`${redis.prefix}:pool:lowered:holders`, 0, -1)).sort(), [next, three[2]!].sort());
});
