/**
 * The network runners join by default (RUNNER_NETWORK), on the real Docker engine: a worker makes
 * it at start as a bridge whose containers cannot reach each other, once however many workers of
 * one engine start at once; one of that name that lets them is refused with what to do; and a
 * network removed after the start (`docker network prune` while no runner runs) is made again by
 * the next container start. The engine's network of that name is removed before and after.
 *
 * Network rule: no runner container joins it here. The one container started on it runs `true`
 * and exits (a start is what needs the network); every runner stays on network `none`.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { DockerodeDriver } from "../../src/docker/dockerode-driver.ts";
import { LABEL, MANAGED_BY, RUNNER_NETWORK } from "../../src/docker/labels.ts";
import { FakeGitHub } from "../fakes/github/index.ts";
import { WEBHOOK_SECRET } from "../helpers/config.ts";
import { docker, fakeRunnerPool, startSystem, uniqueHost, workersForFile } from "../helpers/system.ts";

const ICC = "com.docker.network.bridge.enable_icc";
/** An image every test machine has (test/fakes/runner/build.sh), run for its `true` only. */
const BASE_IMAGE = process.env.JITRUNNER_TEST_BASE_IMAGE ?? "jitrunner-test-base:bookworm";
const { redis, hosts } = workersForFile();

async function removeNetwork(): Promise<void> {
  await docker
    .getNetwork(RUNNER_NETWORK)
    .remove()
    .catch((err: { statusCode?: number }) => {
      if (err.statusCode !== 404) throw err;
    });
}

async function inspectNetwork() {
  return (await docker.getNetwork(RUNNER_NETWORK).inspect()) as { Id: string; Driver: string; Options: Record<string, string>; Labels: Record<string, string> };
}

before(removeNetwork);
after(removeNetwork);

test("a worker makes the runners' network at start: a bridge whose containers cannot reach each other, labelled as ours", { timeout: 120_000 }, async () => {
  await removeNetwork();
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost("runner-network");
  hosts.push(host);
  // No demand, no warm runner: nothing joins the network.
  const sys = await startSystem("worker", fake, redis, host, { pools: [fakeRunnerPool(fake, { networkMode: RUNNER_NETWORK })] });
  try {
    const made = await inspectNetwork();
    assert.equal(made.Driver, "bridge");
    assert.equal(made.Options[ICC], "false", "traffic between its containers is off");
    assert.equal(made.Labels[LABEL.managedBy], MANAGED_BY);
  } finally {
    await sys.close();
    await fake.close();
  }
});

test("a worker whose pools name other networks makes none", { timeout: 120_000 }, async () => {
  await removeNetwork();
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost("runner-network-none");
  hosts.push(host);
  const sys = await startSystem("worker", fake, redis, host);
  try {
    await assert.rejects(inspectNetwork(), (err: { statusCode?: number }) => err.statusCode === 404);
  } finally {
    await sys.close();
    await fake.close();
  }
});

test("workers of one engine starting at once make one network, and each start after finds it", async () => {
  await removeNetwork();
  const drivers = Array.from({ length: 4 }, () => new DockerodeDriver());
  await Promise.all(drivers.map((d) => d.ensureRunnerNetwork()));
  const first = await inspectNetwork();
  await drivers[0]!.ensureRunnerNetwork();
  assert.equal((await inspectNetwork()).Id, first.Id, "found, not made again");
  const named = (await docker.listNetworks({ filters: { name: [RUNNER_NETWORK] } })).filter((n) => n.Name === RUNNER_NETWORK);
  assert.equal(named.length, 1);
});

test("a network of that name whose containers can reach each other stops the worker's start, saying what to do", { timeout: 120_000 }, async () => {
  await removeNetwork();
  await docker.createNetwork({ Name: RUNNER_NETWORK, Driver: "bridge" });
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost("runner-network-open");
  hosts.push(host);
  try {
    await assert.rejects(
      startSystem("worker", fake, redis, host, { pools: [fakeRunnerPool(fake, { networkMode: RUNNER_NETWORK })] }),
      (err: Error) => {
        assert.match(err.message, new RegExp(`network ${RUNNER_NETWORK} exists on this engine but lets its containers reach each other`));
        assert.match(err.message, new RegExp(`docker network rm ${RUNNER_NETWORK}`));
        return true;
      },
    );
    assert.equal((await inspectNetwork()).Options[ICC], undefined, "the operator's network is left as it was");
  } finally {
    await fake.close();
  }
});

test("a container start after the network was removed makes it again and starts", { timeout: 60_000 }, async () => {
  await removeNetwork();
  const driver = new DockerodeDriver();
  await driver.ensureRunnerNetwork();
  const container = await docker.createContainer({ Image: BASE_IMAGE, Cmd: ["true"], HostConfig: { NetworkMode: RUNNER_NETWORK } });
  try {
    // As `docker network prune` does while no container on it runs.
    await removeNetwork();
    await driver.start(container.id);
    const remade = await inspectNetwork();
    assert.equal(remade.Options[ICC], "false");
    const { exitCode } = await driver.wait(container.id, AbortSignal.timeout(30_000));
    assert.equal(exitCode, 0);
  } finally {
    await container.remove({ force: true });
  }
});
