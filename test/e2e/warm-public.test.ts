/**
 * Warm runners and public repositories, for real: DinD runner containers on the engine that
 * register and come online at the fake GitHub, a real Redis. Warm runners of a repository made
 * public are deregistered and their containers removed, and none is launched in their place; a
 * job of a public repository is not run on one. (Each pool's case, with runner containers that
 * need not come online: test/integration/worker-warm-public.test.ts.)
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { FakeGitHub } from "../fakes/github/index.ts";
import { WEBHOOK_SECRET } from "../helpers/config.ts";
import { waitFor } from "../helpers/process.ts";
import { callsTo, containersOf, fakeRunnerPool, scopedRedis, startSystem, uniqueHost, workersForFile } from "../helpers/system.ts";

const JIT = "/repos/{owner}/{repo}/actions/runners/generate-jitconfig";
const MIN_IDLE = 2;
const { redis, hosts } = workersForFile();

test("online warm runners of a repository made public are deregistered and removed, none replaces them, and a fork's job finds none", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost("warm-public");
  const r = scopedRedis(redis, "warm-public");
  hosts.push(host);
  const pool = fakeRunnerPool(fake, {
    minIdle: MIN_IDLE,
    warm: { installationId: fake.installationId, owner: "acme", repo: "app" },
    env: { FAKE_GITHUB_SOCKET: "/fake-github/github.sock", FAKE_JOB_SECONDS: "1" },
  });
  const start = () => startSystem("all", fake, r, host, { pools: [pool], worker: { hostId: host, capacity: MIN_IDLE + 2, completedGraceSeconds: 5, reconcileIntervalSeconds: 2 } });
  const idleRunners = () => fake.runners().filter((x) => !x.busy && x.status === "online");
  let sys = await start();
  try {
    await waitFor(() => idleRunners().length === MIN_IDLE, 90_000, `${MIN_IDLE} warm runners online`);
    const warmNames = new Set(idleRunners().map((x) => x.name));

    // Made public while its worker is down: the next worker adopts the running runners, asks
    // GitHub afresh, and deregisters and removes them (a running one notices within 5 minutes).
    await sys.close();
    fake.setRepositoryPrivate("acme", "app", false);
    sys = await start();
    await waitFor(async () => fake.runners().length === 0 && (await containersOf(host)).length === 0, 60_000, "the warm runners deregistered and removed");
    for (const name of warmNames) assert.match(sys.logs(), new RegExp(`"runner":"${name}"[^\\n]*"msg":"warm runner removed: GitHub could hand it a public repository's job"`));
    assert.equal((sys.logs().match(/warm repository is public/g) ?? []).length, 1);

    // A job of the now public repository (a fork's pull request runs in its context): refused by
    // the webhook policy, and no warm runner is there to take it either.
    const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"], private: false });
    await new Promise((res) => setTimeout(res, 10_000));
    assert.equal(fake.jobs().find((j) => j.id === job.id)?.status, "queued", "nothing ran the public repository's job");
    assert.equal(callsTo(fake, JIT), MIN_IDLE, "no warm runner launched in their place, none for the job");
    assert.deepEqual(await containersOf(host), []);
  } finally {
    await sys.close();
    await fake.close();
  }
});
