/**
 * Chaos (issue 5), deliveries: webhooks as GitHub may really deliver them. GitHub promises no
 * order and at-least-once delivery, so in a burst every delivery arrives three times and out of
 * order: a job's `completed` before its `queued` (cancelled while queued), `in_progress` before
 * `queued` (a runner launched for a later job took it: runners are not bound to jobs), and
 * `completed` before `in_progress`. The fake GitHub holds its events back and the test sends them
 * late, so its own job state always agrees with what each payload says. Every job that needs a
 * runner gets exactly one, on a real DinD runner container, and nothing is left behind.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { FakeGitHub, type FakeJob } from "../fakes/github/index.ts";
import { WEBHOOK_SECRET } from "../helpers/config.ts";
import { assertNothingLeft, metricSample, watchVolumes } from "../helpers/leftovers.ts";
import { waitFor } from "../helpers/process.ts";
import { startRedis, type TestRedis } from "../helpers/redis.ts";
import { callsTo, fakeRunnerPool, removeContainersOf, scopedRedis, startSystem, uniqueHost } from "../helpers/system.ts";

const JIT = "/repos/{owner}/{repo}/actions/runners/generate-jitconfig";
const COPIES = 3;
const LABELS = ["self-hosted", "linux"];
const host = uniqueHost("chaos-deliveries");
let redis: TestRedis;

before(async () => {
  redis = await startRedis();
});
after(async () => {
  await removeContainersOf(host);
  await redis.stop();
});

test("a burst with every delivery sent 3 times and shuffled: one runner per job that needs one, nothing left behind", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const r = scopedRedis(redis, "deliveries");
  const sys = await startSystem("all", fake, r, host, {
    worker: { hostId: host, capacity: 3, completedGraceSeconds: 5, reconcileIntervalSeconds: 2, heartbeatSeconds: 1 },
    pools: [fakeRunnerPool(fake, { env: { FAKE_GITHUB_SOCKET: "/fake-github/github.sock", FAKE_JOB_SECONDS: "2" } })],
    // The queued-runs loop passes once at election, before any job exists, and then not for an
    // hour: the shuffled webhooks alone must serve every job. The other loops run every 2 s.
    reconcile: { leaderLockSeconds: 2, runnersIntervalSeconds: 2, orphanGraceSeconds: 5, queuedIntervalSeconds: 3600, deliveriesIntervalSeconds: 2 },
  });
  const volumes = watchVolumes([host]);
  const refused: string[] = [];
  /** Sends a held event three times (a delivery and two redeliveries of the same id). */
  const send = async (id: string, what: string) => {
    const statuses = await fake.sendHeld(id, COPIES);
    if (!statuses.every((s) => s === 202)) refused.push(`${what}: ${statuses.join(",")}`);
  };
  const deliver = async (job: FakeJob, action: string) => {
    const held = await waitFor(
      () => fake.heldWebhooks().find((h) => h.jobId === job.id && h.action === action),
      60_000,
      `the ${action} event of job ${job.id}`,
    );
    await send(held.id, `${action} ${job.id}`);
  };
  const status = (job: FakeJob) => fake.jobs().find((j) => j.id === job.id)!;
  let pumping = false;
  let pump: Promise<void> = Promise.resolve();
  try {
    fake.holdWebhooks();
    const jobs: FakeJob[] = [];
    for (let i = 0; i < 6; i++) jobs.push(await fake.queueJob({ owner: "acme", repo: "app", labels: LABELS }));
    const [j1, j2, j3, j4, j5, j6] = jobs as [FakeJob, FakeJob, FakeJob, FakeJob, FakeJob, FakeJob];
    await fake.cancelJob(j6.id);

    // Cancelled while queued, and its `completed` overtakes its `queued`.
    await deliver(j6, "completed");
    await deliver(j6, "queued");
    // Two later jobs first: their runners take the oldest queued jobs, j1 and j2.
    await deliver(j5, "queued");
    await deliver(j4, "queued");
    await waitFor(
      () => status(j1).status !== "queued" && status(j2).status !== "queued",
      120_000,
      `j1 and j2 taken by the runners launched for j5 and j4 (${JSON.stringify(fake.jobs().map((j) => j.status))})`,
    );
    assert.equal(status(j3).status, "queued", "the runners took the two oldest jobs");
    // `in_progress` before `queued`.
    await deliver(j1, "in_progress");
    await deliver(j2, "in_progress");
    await deliver(j3, "queued");
    await deliver(j2, "queued");
    await deliver(j1, "queued");

    // From here on every event goes out as it is held, three times, except that a job's
    // `in_progress` waits for its `completed` and goes after it.
    pumping = true;
    pump = (async () => {
      while (pumping) {
        const held = fake.heldWebhooks();
        for (const h of held) {
          if (h.action === "in_progress") continue;
          await send(h.id, `${h.action} ${h.jobId}`);
          const late = held.find((x) => x.action === "in_progress" && x.jobId === h.jobId);
          if (h.action === "completed" && late) await send(late.id, `in_progress ${h.jobId}`);
        }
        await new Promise((res) => setTimeout(res, 250));
      }
    })();

    await waitFor(
      () => fake.jobs().every((j) => j.status === "completed"),
      300_000,
      `every job completed (${JSON.stringify(fake.jobs().map((j) => [j.status, j.conclusion]))})`,
    );
    await waitFor(() => fake.heldWebhooks().length === 0, 30_000, "every held event sent");
    pumping = false;
    await pump;
    await fake.webhooksIdle();

    const ran = [j1, j2, j3, j4, j5].map(status);
    assert.deepEqual(ran.map((j) => j.conclusion), Array(5).fill("success"), "every job that was not cancelled ran and succeeded");
    const names = new Set(ran.map((j) => String(j.runner_name)));
    assert.equal(names.size, 5, "each on a runner of its own");
    for (const n of names) assert.match(n, /^jitrunner-default-[0-9a-f]{10}$/);
    assert.deepEqual([status(j6).conclusion, status(j6).runner_name], ["cancelled", null], "the cancelled job never ran");
    // The cancelled job's late `queued` comes after its `completed`, which marked the attempt seen:
    // its demand asks GitHub first (Demand.seenBefore), and nothing is registered for it.
    assert.equal(callsTo(fake, JIT), 5, "one registration per job that needed a runner, none for the cancelled one");

    // The deliveries really were sent three times each, all accepted, and really out of order.
    assert.deepEqual(refused, [], "every copy of every delivery answered 202");
    const byId = new Map<string, typeof fake.deliveries>();
    for (const d of fake.deliveries) byId.set(d.id, [...(byId.get(d.id) ?? []), d]);
    assert.equal(byId.size, 6 + 5 + 6, "6 queued, 5 in_progress and 6 completed events");
    for (const attempts of byId.values()) {
      assert.deepEqual(attempts.map((a) => a.redelivery), [false, true, true], "a delivery, then two redeliveries of the same id");
    }
    const first = (job: FakeJob, action: string) => fake.deliveries.findIndex((d) => d.jobId === job.id && d.action === action);
    assert.ok(first(j6, "completed") < first(j6, "queued"), "completed before queued");
    assert.ok(first(j1, "in_progress") < first(j1, "queued") && first(j2, "in_progress") < first(j2, "queued"), "in_progress before queued");
    for (const j of [j3, j4, j5]) assert.ok(first(j, "completed") < first(j, "in_progress"), "completed before in_progress");

    const text = await (await fetch(`${sys.url}/metrics`)).text();
    const outcome = (action: string, o: string) =>
      metricSample(text, "jitrunner_webhook_deliveries_total", `event="workflow_job",action="${action}",outcome="${o}"`);
    assert.equal(outcome("queued", "queued"), 6, "one demand per job");
    assert.equal(outcome("queued", "duplicate"), 0);
    assert.equal(
      ["queued", "in_progress", "completed"].reduce((n, a) => n + outcome(a, "replayed"), 0),
      2 * byId.size,
      "the two extra copies of each delivery were recognised and not acted on",
    );
    assert.equal(outcome("completed", "no_demand"), 1, "the early completed of the cancelled job found no demand to drop");
    assert.ok(outcome("in_progress", "runner_busy") >= 2, "an in_progress before its queued marks our runner busy");
    assert.equal(metricSample(text, "jitrunner_pickup_latency_seconds_count", 'pool="default"'), 5, "5 runners launched");
    assert.equal(sys.logs().match(/job no longer needs a runner; skipped/g)?.length, 1, "the late queued of the cancelled job launched nothing");
    assert.equal(sys.logs().match(/job needs no runner after all; deleting the registration/g)?.length, undefined, "no registration made to be deleted");

    await assertNothingLeft({ hostIds: [host], fake, redis: r, pools: ["default"], volumes });
  } finally {
    pumping = false;
    await pump.catch(() => undefined);
    await volumes.stop();
    if (process.env.JITRUNNER_TEST_VERBOSE) process.stderr.write(sys.logs());
    await sys.close();
    await fake.close();
  }
});
