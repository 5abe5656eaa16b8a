/**
 * Which volumes DockerodeDriver removes, on the real Docker engine: a runner's own data volume
 * (named after it) goes with it; a pool's own volume mounted at /var/lib/docker (a cache an
 * operator keeps), whatever its name, stays; a dangling volume with no labels goes only when it is
 * named as a runner's is, not merely alike. Containers are created, never started (network `none`);
 * and which containers the driver lists as running: a paused one is (one container started with
 * `sleep`, network `none`); and a volume the engine fails to remove (through a proxy answering
 * its removal with an error) fails no container removal; and an engine whose cgroup version could
 * not be learnt (its info answered with an error) gets no create, and nothing is left.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { after, test } from "node:test";
import { Secret } from "../../src/config/secret.ts";
import { DockerodeDriver, dataVolumeName } from "../../src/docker/dockerode-driver.ts";
import { DockerError } from "../../src/errors.ts";
import type { RunnerSpec } from "../../src/docker/driver.ts";
import { LABEL, MANAGED_BY, runnerLabels } from "../../src/docker/labels.ts";
import { startDockerProxy } from "../helpers/docker-proxy.ts";
import { docker, RUNNER_IMAGE } from "../helpers/system.ts";

/** A name prefix of this run's own, as a worker's `namePrefix`: nothing else on the engine has it. */
const PREFIX = `jrvol${randomBytes(3).toString("hex")}`;
const driver = new DockerodeDriver();
const made: string[] = [];

async function volumeExists(name: string): Promise<boolean> {
  return docker
    .getVolume(name)
    .inspect()
    .then(
      () => true,
      (err: { statusCode?: number }) => {
        if (err.statusCode === 404) return false;
        throw err;
      },
    );
}

async function makeVolume(name: string, labels: Record<string, string> = {}): Promise<string> {
  await docker.createVolume({ Name: name, Labels: labels });
  made.push(name);
  return name;
}

function spec(name: string, mounts: RunnerSpec["mounts"] = []): RunnerSpec {
  return {
    name,
    image: RUNNER_IMAGE,
    jitConfig: new Secret("not-a-real-jit-config"),
    env: {},
    labels: runnerLabels({ pool: "default", host: `${PREFIX}-host`, runnerName: name, demandId: "1-1" }),
    isolation: "capabilities",
    capDrop: [],
    resources: {},
    networkMode: "none",
    mounts,
  };
}

after(async () => {
  for (const name of made) await docker.getVolume(name).remove().catch(() => undefined);
});

test("a runner's own data volume goes with it; a pool's volume at /var/lib/docker/ (trailing slash and all) stays, whatever its name", async () => {
  const own = `${PREFIX}-default-${randomBytes(5).toString("hex")}`;
  const id = await driver.create(spec(own));
  made.push(dataVolumeName(own));
  assert.equal(await volumeExists(dataVolumeName(own)), true, "made with the container");
  await driver.remove(id);
  assert.equal(await volumeExists(dataVolumeName(own)), false, "removed with it");

  // The pool's cache, its name ending as a runner's data volume's does: the remove keeps it; and
  // mounted at the same place written another way, the create adds no second mount there.
  const cache = await makeVolume(`${PREFIX}-cache-var-lib-docker`);
  for (const target of ["/var/lib/docker", "/var/lib/docker/"]) {
    const withCache = `${PREFIX}-default-${randomBytes(5).toString("hex")}`;
    const id2 = await driver.create(spec(withCache, [{ source: cache, target, readOnly: false }]));
    assert.equal(await volumeExists(dataVolumeName(withCache)), false, `${target}: no volume of its own, the pool mounts one there`);
    await driver.remove(id2);
    assert.equal(await volumeExists(cache), true, `${target}: the pool's volume is not ours to remove`);
  }
});

test("a data volume the engine fails to remove fails nothing once the container is gone: it is named for the host loop, which removes it", async () => {
  const proxy = await startDockerProxy();
  try {
    const through = new DockerodeDriver({ socketPath: proxy.socketPath });
    const name = `${PREFIX}-default-${randomBytes(5).toString("hex")}`;
    const id = await through.create(spec(name));
    made.push(dataVolumeName(name));
    // As an engine answers a volume it could not delete in time (a job's gigabytes of layers).
    const failing = proxy.fail("DELETE", /\/volumes\//, "error while removing volume: context deadline exceeded");
    const { volumesLeft } = await through.remove(id);
    assert.equal(failing.answered, 1);
    assert.deepEqual(
      volumesLeft.map((v) => [v.volume, v.error.message]),
      [[dataVolumeName(name), "remove volume failed: error while removing volume: context deadline exceeded"]],
    );
    assert.equal((await docker.listContainers({ all: true, filters: { name: [name] } })).length, 0, "the container is gone");
    failing.stop();
    await through.removeUnusedVolumes({ [LABEL.managedBy]: MANAGED_BY, [LABEL.host]: `${PREFIX}-host` }, `${PREFIX}-`);
    assert.equal(await volumeExists(dataVolumeName(name)), false, "removed by the host loop's sweep");
  } finally {
    await proxy.close();
  }
});

test("an engine that fails to say its cgroup version gets no create: nothing is left, and the next create asks again", async () => {
  const name = `${PREFIX}-default-${randomBytes(5).toString("hex")}`;
  const proxy = await startDockerProxy();
  try {
    // A driver of its own: one that asked already would not ask again.
    const through = new DockerodeDriver({ socketPath: proxy.socketPath });
    made.push(dataVolumeName(name));
    // Taken for v1, a create on a v2 engine whose default is the host's cgroup namespace would give
    // the runner the host's (docs/security.md): so unknown refuses the create, retryably.
    const failing = proxy.fail("GET", /^\/(v[\d.]+\/)?info(\?|$)/, "engine info unavailable", 500, 1);
    await assert.rejects(through.create(spec(name)), (err: DockerError) => {
      assert.ok(err instanceof DockerError, String(err));
      assert.equal(err.retryable, true);
      assert.match(err.message, /could not learn the engine's cgroup version.*engine info unavailable/);
      return true;
    });
    assert.equal(failing.answered, 1);
    assert.equal((await docker.listContainers({ all: true, filters: { name: [name] } })).length, 0, "no container made");
    assert.equal(await volumeExists(dataVolumeName(name)), false, "no volume left");

    // Asked again, answered: the create goes ahead, a namespace of its own on a v2 engine.
    const id = await through.create(spec(name));
    try {
      const v2 = (await docker.info()).CgroupVersion === "2";
      const mode = ((await docker.getContainer(id).inspect()).HostConfig as { CgroupnsMode?: string }).CgroupnsMode;
      if (v2) assert.equal(mode, "private");
      else assert.notEqual(mode, "private", "on v1 no namespace is named");
    } finally {
      await through.remove(id);
    }
  } finally {
    // Without the refusal, the first create made the container.
    await docker.getContainer(name).remove({ force: true, v: true }).catch(() => undefined);
    await proxy.close();
  }
});

test("a dangling volume without labels is removed only when named as a runner's data volume is", async () => {
  const runnerLike = await makeVolume(`${PREFIX}-default-${randomBytes(5).toString("hex")}-var-lib-docker`);
  const alike = await makeVolume(`${PREFIX}-cache-var-lib-docker`);
  const labelled = await makeVolume(`${PREFIX}-elsewhere`, runnerLabels({ pool: "default", host: `${PREFIX}-host`, runnerName: "x", demandId: "1-1" }));
  // As the host loop asks: ours and this host's, or unlabelled and named with the worker's prefix.
  const { removed, failed } = await driver.removeUnusedVolumes({ [LABEL.managedBy]: MANAGED_BY, [LABEL.host]: `${PREFIX}-host` }, `${PREFIX}-`);
  assert.deepEqual(failed, []);
  assert.equal(await volumeExists(runnerLike), false, "named as a runner's: a create that lost its labels");
  assert.equal(await volumeExists(labelled), false, "labelled as this host's");
  assert.equal(await volumeExists(alike), true, "merely alike: an operator's");
  assert.ok(removed >= 2);
});

test("a paused runner container is listed as running: the host loop adopts it rather than removing it mid-job", async () => {
  const name = `${PREFIX}-default-${randomBytes(5).toString("hex")}`;
  const labels = runnerLabels({ pool: "default", host: `${PREFIX}-paused`, runnerName: name, demandId: "2-1" });
  // A plain process in the runner image (no runner, no engine inside), network `none`.
  const c = await docker.createContainer({ name, Image: RUNNER_IMAGE, Entrypoint: ["sleep"], Cmd: ["120"], Labels: labels, HostConfig: { NetworkMode: "none" } });
  try {
    await c.start();
    await c.pause();
    assert.equal((await c.inspect()).State.Status, "paused");
    const listed = await driver.list({ [LABEL.managedBy]: MANAGED_BY, [LABEL.host]: `${PREFIX}-paused` });
    assert.deepEqual(
      listed.map((x) => [x.name, x.running]),
      [[name, true]],
    );
    await c.unpause();
  } finally {
    await c.remove({ force: true, v: true });
  }
});
