/**
 * The network runners join with `networkMode: jitrunner-runners` (RUNNER_NETWORK), on the real
 * Docker engine: a worker makes it at start as a bridge whose containers cannot reach each other,
 * with the MTU of the engine's default bridge, once however many workers of one engine start at
 * once (duplicates of that name, which Docker's non-atomic name check lets through, are removed but
 * the first made); one of that name that lets them is refused with what to do; and a network
 * removed after the start (`docker network prune` while no runner runs), or duplicated since, is
 * made again or cut to one by the next container start. The engine's networks of that name are
 * removed before and after. The MTU is checked on an extra engine of the test's own, given one
 * other than Docker's 1500.
 *
 * Network rule: no runner container joins it here. The one container started on it runs `true`
 * and exits (a start is what needs the network); every runner stays on network `none`.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import Docker from "dockerode";
import { DockerodeDriver } from "../../src/docker/dockerode-driver.ts";
import { LABEL, MANAGED_BY, RUNNER_NETWORK } from "../../src/docker/labels.ts";
import { FakeGitHub } from "../fakes/github/index.ts";
import { WEBHOOK_SECRET } from "../helpers/config.ts";
import { startDockerProxy } from "../helpers/docker-proxy.ts";
import { startEngine } from "../helpers/engines.ts";
import { docker, fakeRunnerPool, startSystem, uniqueHost, workersForFile } from "../helpers/system.ts";

const ICC = "com.docker.network.bridge.enable_icc";
const MTU = "com.docker.network.driver.mtu";
/** An image every test machine has (test/fakes/runner/build.sh), run for its `true` only. */
const BASE_IMAGE = process.env.JITRUNNER_TEST_BASE_IMAGE ?? "jitrunner-test-base:bookworm";
const { redis, hosts } = workersForFile();

/** The engine's networks named RUNNER_NETWORK (its name filter also matches longer names). */
async function networksNamed() {
  return (await docker.listNetworks({ filters: { name: [RUNNER_NETWORK] } })).filter((n) => n.Name === RUNNER_NETWORK);
}

/** Removes every network of that name, by id: a name two networks share is ambiguous to remove. */
async function removeNetwork(): Promise<void> {
  for (const n of await networksNamed()) {
    await docker
      .getNetwork(n.Id)
      .remove()
      .catch((err: { statusCode?: number }) => {
        if (err.statusCode !== 404) throw err;
      });
  }
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

test("networks of that name made twice, as workers of one engine starting at once can, are cut to one: the first made", async () => {
  await removeNetwork();
  // Docker's name check is not atomic; API 1.41 skips it on request, which makes the race's
  // outcome (two networks of one name) every time rather than when the race happens.
  const racing = new Docker({ version: "v1.41" });
  const made: string[] = [];
  for (let i = 0; i < 2; i++) {
    const n = await racing.createNetwork({
      Name: RUNNER_NETWORK,
      Driver: "bridge",
      CheckDuplicate: false,
      Options: { [ICC]: "false" },
      Labels: { [LABEL.managedBy]: MANAGED_BY },
    });
    made.push(n.id);
  }
  assert.equal((await networksNamed()).length, 2, "the engine holds two networks of that name");

  await new DockerodeDriver().ensureRunnerNetwork();
  assert.deepEqual(
    (await networksNamed()).map((n) => n.Id),
    [made[0]],
    "one left, the first made: the one every worker keeps",
  );
});

test("workers of one engine starting at once make one network, and each start after finds it", async () => {
  await removeNetwork();
  const drivers = Array.from({ length: 4 }, () => new DockerodeDriver());
  await Promise.all(drivers.map((d) => d.ensureRunnerNetwork()));
  const first = await inspectNetwork();
  await drivers[0]!.ensureRunnerNetwork();
  assert.equal((await inspectNetwork()).Id, first.Id, "found, not made again");
  assert.equal((await networksNamed()).length, 1);
});

test("the network made carries the MTU of the engine's default bridge, not Docker's 1500", { timeout: 120_000 }, async () => {
  // An engine of its own, given an MTU (dockerd --mtu) as a host on a cloud's or a VPN's path would be.
  const engine = await startEngine("runner-network-mtu", undefined, { bridgeMtu: 1400 });
  try {
    const own = engine.docker;
    const defaultBridge = (await own.getNetwork("bridge").inspect()) as { Options?: Record<string, string> };
    assert.equal(defaultBridge.Options?.[MTU], "1400", "the engine's default bridge has the MTU it was given");
    for (const n of (await own.listNetworks()).filter((n) => n.Name === RUNNER_NETWORK)) await own.getNetwork(n.Id).remove();
    await new DockerodeDriver({ socketPath: engine.socketPath }).ensureRunnerNetwork();
    const made = (await own.getNetwork(RUNNER_NETWORK).inspect()) as { Options: Record<string, string> };
    assert.equal(made.Options[MTU], "1400", "the MTU the engine was given holds on the runners' network too");
  } finally {
    await engine.stop();
  }
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

test("a container start after the network was removed, said as Docker 28 and later say it, makes it again and starts", { timeout: 60_000 }, async () => {
  await removeNetwork();
  const proxy = await startDockerProxy();
  const driver = new DockerodeDriver({ socketPath: proxy.socketPath });
  await driver.ensureRunnerNetwork();
  const container = await docker.createContainer({ Image: BASE_IMAGE, Cmd: ["true"], HostConfig: { NetworkMode: RUNNER_NETWORK } });
  try {
    await removeNetwork();
    // This machine's engine (20.10) says "network ... not found"; Docker 28 and later wrap it
    // (moby daemon/start_linux.go), as the proxy answers the first start here.
    const failing = proxy.fail("POST", /\/containers\/[^/]+\/start(\?|$)/, `failed to set up container networking: network ${RUNNER_NETWORK} not found`, 404, 1);
    await driver.start(container.id);
    assert.equal(failing.answered, 1, "the first start was answered with Docker 28's words");
    assert.equal((await inspectNetwork()).Options[ICC], "false", "the network made again");
    const { exitCode } = await driver.wait(container.id, AbortSignal.timeout(30_000));
    assert.equal(exitCode, 0);
  } finally {
    await container.remove({ force: true });
    await proxy.close();
  }
});

test("a container start that finds two networks of that name (a worker stopped between making its own and removing it) cuts them to one and starts", { timeout: 60_000 }, async () => {
  await removeNetwork();
  const driver = new DockerodeDriver();
  await driver.ensureRunnerNetwork();
  const kept = (await networksNamed())[0]!.Id;
  await new Docker({ version: "v1.41" }).createNetwork({ Name: RUNNER_NETWORK, Driver: "bridge", CheckDuplicate: false, Options: { [ICC]: "false" }, Labels: { [LABEL.managedBy]: MANAGED_BY } });
  assert.equal((await networksNamed()).length, 2);
  const container = await docker.createContainer({ Image: BASE_IMAGE, Cmd: ["true"], HostConfig: { NetworkMode: RUNNER_NETWORK } });
  try {
    await driver.start(container.id);
    assert.deepEqual((await networksNamed()).map((n) => n.Id), [kept], "the first made is kept");
    const { exitCode } = await driver.wait(container.id, AbortSignal.timeout(30_000));
    assert.equal(exitCode, 0);
  } finally {
    await container.remove({ force: true });
  }
});
