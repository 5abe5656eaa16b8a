/**
 * RunnerStore's writes to a record that may have been removed meanwhile (a sweep of a host taken
 * for gone, a teardown), against a real Redis: `update` and `claimDemand` write only to a record
 * that exists, and say whether they did. A plain HSET would bring the record back as a partial
 * hash with no name, no index entry and no expiry: read as absent, and never removed.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { redisForFile } from "../helpers/redis.ts";
import { RunnerStore, type RunnerRecord } from "../../src/state/runners.ts";

const shared = redisForFile();

function setUp(tag: string) {
  const prefix = `${shared.redis.prefix}-${tag}`;
  const runners = new RunnerStore(shared.conn, prefix);
  const record: RunnerRecord = {
    name: `jitrunner-default-${tag}`,
    pool: "default",
    host: "host-a",
    state: "registering",
    installationId: 1,
    owner: "acme",
    repo: "app",
    demandId: "4242-1",
    createdAt: Date.now(),
  };
  const exists = async (name: string) => (await shared.conn.exists(`${prefix}:runner:${name}`)) === 1;
  return { runners, record, exists };
}

test("update writes to a record that exists, and to none that was removed: the key stays gone and the call says so", async () => {
  const { runners, record, exists } = setUp("update");
  await runners.put(record);
  assert.equal(await runners.update(record.name, { runnerId: 7, state: "starting" }), true);
  const updated = await runners.get(record.name);
  assert.deepEqual([updated?.name, updated?.runnerId, updated?.state], [record.name, 7, "starting"]);

  await runners.remove(record, false);
  assert.equal(await runners.update(record.name, { runnerId: 1 }), false, "the call says the record is gone");
  assert.equal(await exists(record.name), false, "no partial record written");
  assert.deepEqual(await runners.listAll(), []);
});

test("claimDemand claims for a record that exists, and writes nothing, the demand's claim neither, for one that was removed", async () => {
  const { runners, record, exists } = setUp("claim");
  const warm = { ...record, demandId: "" };
  await runners.put(warm);
  assert.equal(await runners.claimDemand(warm.name, "4242-1"), true);
  assert.equal((await runners.get(warm.name))?.demandId, "4242-1");
  assert.equal((await runners.findByDemand("4242-1"))?.name, warm.name);

  await runners.remove({ ...warm, demandId: "4242-1" }, false);
  assert.equal(await runners.claimDemand(warm.name, "4243-1"), false, "the call says the record is gone");
  assert.equal(await exists(warm.name), false, "no partial record written");
  assert.equal(await runners.findByDemand("4243-1"), undefined, "no claim for the demand either");
});

test("mark with job 0 (not known: a deletion GitHub refused as busy) keeps the job id an in_progress webhook recorded; a known one replaces it", async () => {
  const { runners, record } = setUp("mark-job");
  await runners.put({ ...record, state: "idle", demandId: "" });
  const by = { installationId: 1, owner: "acme", repo: "app" };
  assert.equal(await runners.markFromWebhook(record.name, "busy", 4242, by), "marked");
  assert.equal(await runners.mark(record.name, "busy", 0), true);
  const busy = await runners.get(record.name);
  assert.deepEqual([busy?.state, busy?.jobId], ["busy", 4242], "the job the webhook named stays recorded");

  assert.equal(await runners.mark(record.name, "completed", 0), true);
  assert.deepEqual([(await runners.get(record.name))?.state, (await runners.get(record.name))?.jobId], ["completed", 4242]);
  assert.equal(await runners.markFromWebhook(record.name, "completed", 4343, by), "marked");
  assert.equal((await runners.get(record.name))?.jobId, 4343, "a known job id is written as given");

  const other = { ...record, name: `${record.name}-none`, state: "idle" as const, demandId: "" };
  await runners.put(other);
  assert.equal(await runners.mark(other.name, "busy", 0), true);
  const none = await runners.get(other.name);
  assert.deepEqual([none?.state, none?.jobId], ["busy", 0], "none recorded: 0, as before");
});

test("findByDemand never reads a demand's runner as gone while a failed launch's record is being removed: it sees the claim and the record, or neither", async () => {
  // Two connections, as a worker taking a lease over and another forgetting its failed runner:
  // `remove(record, false)` deletes the claim, then the record. A read of the claim, then of the
  // record, in two round trips could fall in between and read "served" (a name, no record).
  const { runners: writer, record } = setUp("find-race");
  const readerConn = shared.conn.duplicate();
  const reader = new RunnerStore(readerConn, `${shared.redis.prefix}-find-race`);
  const torn: number[] = [];
  try {
    for (let i = 0; i < 300; i++) {
      const r = { ...record, name: `${record.name}-${i}`, demandId: `5000-${i}` };
      await writer.put(r);
      const [found] = await Promise.all([reader.findByDemand(r.demandId), writer.remove(r, false)]);
      if (found && !found.record) torn.push(i);
      assert.ok(found === undefined || found.name === r.name);
    }
  } finally {
    readerConn.disconnect();
  }
  assert.deepEqual(torn, [], "no read of the claim without its record");
});
