/**
 * The leader's queued-jobs loop and the account a repository belongs to (real Redis, the fake
 * GitHub through the real client): a user's account has no organization runners, so a lost
 * `queued` webhook of a user's repository is recovered into a pool that registers on the
 * repository, never into an organization pool listed before it, as the webhook would have been
 * (ingress/pools.ts servesOwner). The loop learns the owner's type from the run GitHub lists
 * (`repository.owner.type`), which says `User` for a user's repository.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { FakeGitHub } from "../fakes/github/index.ts";
import { testConfig, WEBHOOK_SECRET } from "../helpers/config.ts";
import { redisForFile } from "../helpers/redis.ts";
import { demandState, scopedRedis } from "../helpers/system.ts";
import { githubFor } from "../helpers/github.ts";
import { DemandQueues } from "../../src/queue/demand-queue.ts";
import { activeRepos, queuedLoop } from "../helpers/active-repos.ts";

const shared = redisForFile();
const LABELS = ["self-hosted", "linux"];
const IMAGE = "jitrunner-test-runner:latest";

test("a lost queued webhook of a user's repository is recovered into a repository pool, not an organization pool listed first; an organization's into that one", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET, installations: [{ owner: "someuser", id: 30, type: "User" }] });
  // No webhook reaches us: demand comes only from the loop.
  fake.setWebhookUrl("http://127.0.0.1:9/");
  const r = scopedRedis(shared.redis, "queued-owner");
  const queues = new DemandQueues({ redisUrl: r.url, prefix: r.prefix, attempts: 3 }, shared.conn);
  const github = githubFor(fake);
  try {
    const mine = await fake.queueJob({ owner: "someuser", repo: "dotfiles", labels: LABELS });
    const theirs = await fake.queueJob({ owner: "acme", repo: "app", labels: LABELS });
    const repos = await activeRepos(shared.conn, r.prefix, [
      { installationId: 30, owner: "someuser", repo: "dotfiles" },
      { installationId: fake.installationId, owner: "acme", repo: "app" },
    ]);
    const loop = queuedLoop(fake, shared.conn, r.prefix, queues, repos, {
      config: testConfig({
        pools: [
          { name: "org", labels: LABELS, image: IMAGE, scope: "organization" },
          { name: "repo", labels: LABELS, image: IMAGE },
        ],
      }),
      github,
    });
    await loop.run(new AbortController().signal);
    assert.equal((await demandState(r, "repo", `${mine.id}-1`))?.state, "waiting", "the user's job: the repository pool");
    assert.equal(await demandState(r, "org", `${mine.id}-1`), undefined, "not the organization pool: a user has no organization runners");
    assert.equal((await demandState(r, "org", `${theirs.id}-1`))?.state, "waiting", "the organization's job: the first pool that matches");
  } finally {
    github.close();
    await queues.close();
    await fake.close();
  }
});
