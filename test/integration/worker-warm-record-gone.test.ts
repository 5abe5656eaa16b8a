/**
 * A warm runner whose record was removed (as a sweep of a host taken for gone removes one) when a
 * demand adopts it, for real (fake GitHub, real Redis, DinD runner containers): the claim writes
 * nothing (no partial record), the runner is retired, and the demand, handed back unspent, is
 * served by another runner.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { FakeGitHub } from "../fakes/github/index.ts";
import { WEBHOOK_SECRET } from "../helpers/config.ts";
import { waitFor } from "../helpers/process.ts";
import { containersOf, demandIn, fakeRunnerPool, scopedRedis, startSystem, uniqueHost, workersForFile } from "../helpers/system.ts";
import { redisConnection } from "../../src/queue/demand-queue.ts";
import Docker from "dockerode";
import { RunnerStore } from "../../src/state/runners.ts";

const { redis, hosts } = workersForFile();

test("a warm runner whose record is gone when a demand adopts it is retired, writes no partial record, and the demand is served by another runner", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost("warm-gone");
  const r = scopedRedis(redis, "warm-gone");
  hosts.push(host);
  const pool = fakeRunnerPool(fake, {
    minIdle: 1,
    warm: { installationId: fake.installationId, owner: "acme", repo: "app" },
    env: { FAKE_GITHUB_SOCKET: "/fake-github/github.sock", FAKE_JOB_SECONDS: "1" },
  });
  const sys = await startSystem("all", fake, r, host, { pools: [pool], worker: { hostId: host, capacity: 2, completedGraceSeconds: 5, reconcileIntervalSeconds: 2 } });
  const conn = redisConnection(r.url);
  const store = new RunnerStore(conn, r.prefix);
  try {
    const [warm] = await waitFor(() => fake.runners().filter((x) => !x.busy && x.status === "online").length === 1 && fake.runners(), 90_000, "a warm runner online");
    const record = await waitFor(() => store.get(warm!.name), 10_000, "the warm runner's record");
    await store.remove(record, false);
    // Paused, it takes no job before the demand adopts it: otherwise GitHub may hand the job to it
    // first (it is registered and idle), and the retire rightly finds it busy and keeps it.
    const [container] = (await containersOf(host)).filter((c) => c.Labels["dev.jitrunner.runner-name"] === warm!.name);
    await new Docker().getContainer(container!.Id).pause();

    const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
    const done = await waitFor(() => fake.jobs().find((j) => j.id === job.id && j.status === "completed"), 120_000, "job completed");
    assert.equal(done.conclusion, "success");
    assert.notEqual(done.runner_name, warm!.name, "not run by the runner whose record was gone");
    assert.match(sys.logs(), new RegExp(`"runner":"${warm!.name}"[^\\n]*"msg":"warm runner's record gone as the demand adopted it: runner removed, demand handed back"`));
    assert.match(sys.logs(), new RegExp(`"runner":"${warm!.name}"[^\\n]*"reason":"record_gone"[^\\n]*"msg":"runner removed"`));
    await demandIn(r, `${job.id}-1`, "completed", 30_000);

    assert.ok(!fake.runners().some((x) => x.name === warm!.name), "its registration deleted");
    assert.ok(!(await containersOf(host)).some((c) => c.Labels["dev.jitrunner.runner-name"] === warm!.name), "its container removed");
    assert.equal(await conn.exists(`${r.prefix}:runner:${warm!.name}`), 0, "no partial record written back");
  } finally {
    await sys.close();
    await fake.close();
    conn.disconnect();
  }
});
