/**
 * The leader's queued-jobs loop and a run that waits for an environment's approval (real Redis,
 * the fake GitHub through the real client): while one job of a run waits for approval, GitHub
 * reports the run `waiting` and lists it under `status=waiting` only, though a sibling job is
 * queued for a self-hosted runner. A sibling whose `queued` webhook was lost is recovered from
 * it; the waiting job gets no runner until it is approved.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { FakeGitHub } from "../fakes/github/index.ts";
import { testConfig, WEBHOOK_SECRET } from "../helpers/config.ts";
import { metricSample } from "../helpers/leftovers.ts";
import { redisForFile } from "../helpers/redis.ts";
import { demandState, scopedRedis } from "../helpers/system.ts";
import { githubFor } from "../helpers/github.ts";
import { createLogger } from "../../src/logger.ts";
import { Metrics } from "../../src/metrics/metrics.ts";
import { DemandQueues } from "../../src/queue/demand-queue.ts";
import { githubQueuedLoop } from "../../src/reconcile/github-queued.ts";
import { RunnerStore } from "../../src/state/runners.ts";
import { activeRepos } from "../helpers/active-repos.ts";

const shared = redisForFile();
const DEAD_URL = "http://127.0.0.1:9/";
const LABELS = ["self-hosted", "linux"];

test("a queued job whose webhook was lost, in a run waiting for another job's approval, is recovered; the waiting job only once approved", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  // No webhook reaches us: demand comes only from the loop.
  fake.setWebhookUrl(DEAD_URL);
  const r = scopedRedis(shared.redis, "queued-waiting");
  const queues = new DemandQueues({ redisUrl: r.url, prefix: r.prefix, attempts: 3 }, shared.conn);
  const metrics = new Metrics({ processMetrics: false });
  const github = githubFor(fake);
  try {
    const gated = await fake.queueJob({ owner: "acme", repo: "app", labels: LABELS, name: "deploy", waitForApproval: true });
    const sibling = await fake.queueJob({ owner: "acme", repo: "app", labels: LABELS, name: "build", runId: gated.run_id });
    const listed = async (status: string) => (await github.listRuns(fake.installationId, "acme", "app", status)).map((run) => run.id);
    assert.deepEqual(await listed("waiting"), [gated.run_id], "the run is waiting while one of its jobs is");
    assert.deepEqual([await listed("queued"), await listed("in_progress")], [[], []], "and listed under no other status");

    const loop = githubQueuedLoop({
      config: testConfig(),
      github,
      demand: queues,
      runners: new RunnerStore(shared.conn, r.prefix),
      repos: await activeRepos(shared.conn, r.prefix, [{ installationId: fake.installationId, owner: "acme", repo: "app" }]),
      intervalMs: 60_000,
      windowMs: 3600_000,
      maxRepositories: 10,
      maxRunsPerPass: 10,
      retryFailedAfterMs: 0,
      metrics,
      logger: createLogger("silent"),
    });
    await loop.run(new AbortController().signal);
    assert.equal((await demandState(r, "default", `${sibling.id}-1`))?.state, "waiting", "the queued sibling's demand recovered");
    assert.equal(await demandState(r, "default", `${gated.id}-1`), undefined, "no runner for a job waiting for approval");
    const recovered = async () => metricSample(await metrics.registry.metrics(), "jitrunner_reconcile_actions_total", 'loop="github-queued",action="demand_recovered"');
    assert.equal(await recovered(), 1);

    // Approved (its `queued` webhook lost too): queued now, and recovered as any queued job.
    await fake.approveJob(gated.id);
    await loop.run(new AbortController().signal);
    assert.equal((await demandState(r, "default", `${gated.id}-1`))?.state, "waiting", "the approved job's demand recovered");
    assert.equal(await recovered(), 2);
  } finally {
    github.close();
    await queues.close();
    await fake.close();
  }
});
