/**
 * A worker reaches its Docker engine over SSH (dockerode's `ssh` protocol, keys from the SSH agent,
 * `docker system dial-stdio` on the far side), for real: an OpenSSH server on 127.0.0.1 in front of
 * this machine's engine, a job through the fake GitHub on a DinD runner launched over that
 * connection, nothing left behind. A connection that cannot authenticate fails the start with a
 * clear error.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { FakeGitHub } from "../fakes/github/index.ts";
import { WEBHOOK_SECRET } from "../helpers/config.ts";
import { waitFor } from "../helpers/process.ts";
import { startRedis, type TestRedis } from "../helpers/redis.ts";
import { startSshd, type TestSshd } from "../helpers/sshd.ts";
import { containersOf, fakeRunnerPool, removeContainersOf, scopedRedis, startSystem, uniqueHost } from "../helpers/system.ts";

let redis: TestRedis;
let sshd: TestSshd;
const hosts: string[] = [];
const agentBefore = process.env.SSH_AUTH_SOCK;

before(async () => {
  redis = await startRedis();
  sshd = await startSshd();
});
after(async () => {
  if (agentBefore === undefined) delete process.env.SSH_AUTH_SOCK;
  else process.env.SSH_AUTH_SOCK = agentBefore;
  for (const h of hosts) await removeContainersOf(h);
  await sshd?.stop();
  await redis?.stop();
});

test("over SSH: the worker launches a runner, its job completes, nothing is left", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost("ssh");
  hosts.push(host);
  process.env.SSH_AUTH_SOCK = sshd.agentSocket;
  const sys = await startSystem("all", fake, scopedRedis(redis, "ssh"), host, {
    pools: [fakeRunnerPool(fake)],
    worker: {
      hostId: host,
      capacity: 2,
      completedGraceSeconds: 5,
      reconcileIntervalSeconds: 2,
      docker: { protocol: "ssh", host: "127.0.0.1", port: sshd.port, username: "root" },
    },
  });
  try {
    const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
    const done = await waitFor(() => fake.jobs().find((j) => j.id === job.id && j.status === "completed"), 90_000, "job completed over SSH");
    assert.equal(done.conclusion, "success");
    await waitFor(async () => (await containersOf(host)).length === 0, 60_000, "runner container removed over SSH");
    await waitFor(() => fake.runners().length === 0, 30_000, "registration gone");
    assert.match(sys.logs(), /runner container started/);
  } finally {
    await sys.close();
    await fake.close();
  }
});

test("over SSH with no usable key: the worker does not start, and says why", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost("ssh-denied");
  process.env.SSH_AUTH_SOCK = sshd.emptyAgentSocket;
  try {
    await assert.rejects(
      startSystem("worker", fake, scopedRedis(redis, "ssh-denied"), host, {
        worker: { hostId: host, docker: { protocol: "ssh", host: "127.0.0.1", port: sshd.port, username: "root" } },
      }),
      (err: Error) => {
        assert.match(err.message, /ping/i);
        assert.match(err.message, /authentication/i);
        return true;
      },
    );
  } finally {
    await fake.close();
  }
});
