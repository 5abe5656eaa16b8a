/**
 * Issue #8: the Compose deployment works where no registry is reachable. Both images are built
 * from the real Dockerfiles through `docker-compose build` with `--network none` (compose
 * `build.network`), on local stand-ins for their official bases (test/fixtures/compose); then
 * `docker-compose up` runs the real docker-compose.yml, with an override that names the images,
 * puts Redis and jitrunner on the host's loopback and points jitrunner at the fake GitHub. One
 * signed `queued` webhook must end as a completed job on a runner container that the
 * containerised jitrunner launched from the built runner image, and `docker-compose down -v` must
 * leave no container, volume or network of the project and no runner registration.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { chmodSync, cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { parseDocument, stringify } from "yaml";
import { FakeGitHub } from "../fakes/github/index.ts";
import { WEBHOOK_SECRET } from "../helpers/config.ts";
import { assertNothingLeft, watchVolumes } from "../helpers/leftovers.ts";
import { assertNoSecrets } from "../helpers/secrets.ts";
import {
  CLASSIC_BUILD_ENV,
  dockerfileNodeImage,
  ensureImage,
  hashInputs,
  imageId,
  INPUTS_LABEL,
  localNodeImage,
  localRedisImage,
  localRunnerBaseImage,
  offlineNpmCache,
  runCommand,
} from "../helpers/local-images.ts";
import { freePort } from "../helpers/ports.ts";
import { waitFor } from "../helpers/process.ts";
import { containersOf, docker, fakeRunnerPool, removeContainersOf, uniqueHost } from "../helpers/system.ts";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
/** What a checkout holds for `docker compose build`; copied, so the project dir is a temp dir. */
const CONTROL_INPUTS = ["Dockerfile", ".dockerignore", "package.json", "package-lock.json", "tsconfig.json", "tsconfig.build.json", "src", "bin"];
const RUNNER_INPUTS = ["images/runner"];
const CONTROL_IMAGE = "jitrunner-test-compose:latest";
const RUNNER_IMAGE = "jitrunner-test-compose-runner:latest";
/** The official node image's user `node`, which the control-plane image runs as. */
const NODE_UID = 1000;

const project = `jrcompose${randomBytes(3).toString("hex")}`;
const hostId = uniqueHost("compose");
const projectFilter = { label: [`com.docker.compose.project=${project}`] };
const started = Date.now();
const progress = (msg: string) => process.stderr.write(`[compose +${Math.round((Date.now() - started) / 1000)}s] ${msg}\n`);

let fake: FakeGitHub;
let dir: string;
let url: string;
let redisUrl: string;
let downDone = false;

/** `docker-compose` on the real file and the test's override, in the temp project dir. */
function compose(args: string[], timeoutMs: number): Promise<string> {
  return runCommand("docker-compose", ["--ansi", "never", "-f", "docker-compose.yml", "-f", "compose.test.yml", "-p", project, ...args], {
    cwd: dir,
    // No DOCKER_GID, nor any other step for the socket's group: started as root, jitrunner adds it itself.
    env: { ...CLASSIC_BUILD_ENV, COMPOSE_FILE: undefined, COMPOSE_PROJECT_NAME: undefined },
    timeoutMs,
  });
}

/** The tail of the project's logs, for a failure message. */
async function composeLogs(): Promise<string> {
  return (await compose(["logs", "--no-color", "--tail", "200"], 60_000).catch((err: Error) => err.message)).slice(-6000);
}

/** Fails with the project's logs attached. */
async function withLogs<T>(p: Promise<T>): Promise<T> {
  try {
    return await p;
  } catch (err) {
    throw new Error(`${(err as Error).message}\n--- docker-compose logs ---\n${await composeLogs()}`);
  }
}

/** The checkout, as far as the build needs it, and what README.md tells users to put beside it. */
function writeProjectDir(redisPort: number, jitrunnerPort: number, images: { node: string; redis: string; runnerBase: string }, hashes: { control: string; runner: string }): void {
  for (const p of [...CONTROL_INPUTS, ...RUNNER_INPUTS]) cpSync(join(ROOT, p), join(dir, p), { recursive: true });
  // The real docker-compose.yml, but for jitrunner's published port: under network_mode host there
  // is nothing to publish, and Compose v1 refuses the pair ("incompatible with port_bindings")
  // while an override cannot remove a list entry there (v2's `!reset` is unknown to v1).
  const composeFile = parseDocument(readFileSync(join(ROOT, "docker-compose.yml"), "utf8"));
  assert.ok(composeFile.hasIn(["services", "jitrunner", "ports"]), "docker-compose.yml publishes jitrunner's port");
  composeFile.deleteIn(["services", "jitrunner", "ports"]);
  writeFileSync(join(dir, "docker-compose.yml"), String(composeFile));
  // As docs/operations.md tells users: mode 0600, owned by whoever wrote them (root here). The image
  // reads them as root, then runs as `node`.
  mkdirSync(join(dir, "secrets"), { mode: 0o755 });
  for (const [name, text] of [["github-app-key", fake.privateKey], ["webhook-secret", WEBHOOK_SECRET]] as const) {
    const file = join(dir, "secrets", name);
    writeFileSync(file, text, { mode: 0o600 });
    if (process.getuid?.() !== 0) chmodSync(file, 0o644);
  }
  const config = {
    github: { appId: fake.appId, apiUrl: fake.url, privateKeyFile: "/run/secrets/github-app-key", webhookSecretFile: "/run/secrets/webhook-secret" },
    redis: { prefix: hostId },
    // The port comes from JITRUNNER_PORT (the override below), as the healthcheck reads it there.
    server: { host: "127.0.0.1" },
    worker: { hostId, capacity: 2, completedGraceSeconds: 5, reconcileIntervalSeconds: 5 },
    pools: [fakeRunnerPool(fake, { image: RUNNER_IMAGE })],
  };
  writeFileSync(join(dir, "jitrunner.yml"), stringify(config));
  // network_mode host keeps Redis's and jitrunner's traffic on loopback. Written as JSON (a subset of YAML): Compose
  // v1.29 parses YAML 1.1, where a plain `yes` is a boolean.
  const override = {
    version: "3.8",
    services: {
      redis: {
        image: images.redis,
        command: ["redis-server", "--bind", "127.0.0.1", "--port", String(redisPort), "--appendonly", "yes", "--appendfsync", "everysec"],
        network_mode: "host",
      },
      jitrunner: {
        build: { network: "none", args: { NODE_IMAGE: images.node, NPM_OFFLINE: "true" }, labels: { [INPUTS_LABEL]: hashes.control } },
        image: CONTROL_IMAGE,
        network_mode: "host",
        environment: { JITRUNNER_REDIS_URL: redisUrl, JITRUNNER_HOST_ID: hostId, JITRUNNER_PORT: String(jitrunnerPort) },
      },
      "runner-image": {
        build: { network: "none", args: { BASE_IMAGE: images.runnerBase, INSTALL_DOCKER: "false" }, labels: { [INPUTS_LABEL]: hashes.runner } },
        // It only exits (entrypoint `true`); it stays on the project's default network, which
        // `down` must then remove.
        image: RUNNER_IMAGE,
      },
    },
  };
  writeFileSync(join(dir, "compose.test.yml"), JSON.stringify(override, null, 2));
}

before(
  async () => {
    progress("local base images (built once, then cached by tag and inputs hash)");
    const images = { node: await localNodeImage(), redis: await localRedisImage(), runnerBase: await localRunnerBaseImage() };
    const hashes = {
      control: hashInputs([(await imageId(images.node))!, "NPM_OFFLINE=true"], ROOT, [...CONTROL_INPUTS, "docker-compose.yml"]),
      runner: hashInputs([(await imageId(images.runnerBase))!, "INSTALL_DOCKER=false"], ROOT, [...RUNNER_INPUTS, "docker-compose.yml"]),
    };

    fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
    dir = mkdtempSync(join(tmpdir(), "jitrunner-compose-"));
    const [redisPort, port] = [await freePort(), await freePort()];
    redisUrl = `redis://127.0.0.1:${redisPort}`;
    url = `http://127.0.0.1:${port}`;
    writeProjectDir(redisPort, port, images, hashes);

    const builtControl = await ensureImage(CONTROL_IMAGE, hashes.control, async () => {
      progress(`building ${CONTROL_IMAGE} from Dockerfile, offline (a few minutes the first time)`);
      const packages = await offlineNpmCache(join(dir, "package-lock.json"), join(dir, "npm-cache"));
      progress(`npm cache for the build context: ${packages} packages`);
      await compose(["build", "jitrunner"], 15 * 60_000);
      rmSync(join(dir, "npm-cache"), { recursive: true, force: true });
    });
    const builtRunner = await ensureImage(RUNNER_IMAGE, hashes.runner, async () => {
      progress(`building ${RUNNER_IMAGE} from images/runner/Dockerfile, offline`);
      await compose(["build", "runner-image"], 10 * 60_000);
    });
    progress(`images: ${CONTROL_IMAGE} ${builtControl ? "built" : "up to date"}, ${RUNNER_IMAGE} ${builtRunner ? "built" : "up to date"}`);

    progress(`docker-compose up -d (project ${project})`);
    await withLogs(compose(["up", "-d", "--no-build"], 3 * 60_000));
    fake.setWebhookUrl(`${url}/webhooks/github`);
    await withLogs(waitFor(async () => (await fetch(`${url}/readyz`)).ok, 90_000, "the containerised jitrunner to be ready"));
    progress("jitrunner is ready");
  },
  { timeout: 30 * 60_000 },
);

after(async () => {
  if (dir && !downDone) await compose(["down", "-v", "--timeout", "10"], 3 * 60_000).catch((err: Error) => progress(`down failed: ${err.message}`));
  await removeContainersOf(hostId);
  await fake?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test("a queued job runs on a runner container that the containerised jitrunner launched from the built image", { timeout: 5 * 60_000 }, async () => {
  const volumes = watchVolumes([hostId]);
  const runnerImages = new Set<string>();
  let runnerName: string | null | undefined;
  try {
    const job = await fake.queueJob({ owner: "acme", repo: "compose", labels: ["self-hosted", "linux"] });
    progress(`queued job ${job.id}`);
    const done = await withLogs(
      waitFor(
        async () => {
          for (const c of await containersOf(hostId)) runnerImages.add(c.Image);
          const j = fake.jobs().find((x) => x.id === job.id);
          return j?.status === "completed" && j;
        },
        180_000,
        `job ${job.id} to complete`,
      ),
    );
    runnerName = done.runner_name;
    progress(`job completed on ${runnerName}`);
    assert.equal(done.conclusion, "success", "the runner ran its nested docker run");
    assert.match(String(done.runner_name), /^jitrunner-default-[0-9a-f]{10}$/);
    assert.deepEqual([...runnerImages], [RUNNER_IMAGE], "the runner container ran the image built from images/runner");
  } finally {
    await volumes.stop();
  }
  await assertNothingLeft({ hostIds: [hostId], fake, redis: { url: redisUrl, prefix: hostId, stop: async () => undefined }, pools: ["default"], volumes });

  // The image runs the Node release its Dockerfile names, whatever the host's is.
  const { major } = dockerfileNodeImage();
  const metrics = await (await fetch(`${url}/metrics`)).text();
  assert.match(metrics, new RegExp(`^jitrunner_nodejs_version_info\\{[^}]*major="${major}"`, "m"), `the containerised jitrunner runs on Node ${major}`);

  const logs = await compose(["logs", "--no-color", "jitrunner"], 60_000);
  assert.ok(logs.includes(String(runnerName)), `the containerised jitrunner's logs name runner ${runnerName}`);
  // It read the root-owned secrets as root, then ran as `node` with the socket's group, whatever its id here.
  const dropped = /"uid":(\d+),"gid":(\d+),"groups":\[([\d,]*)\][^\n]*config and secrets read as root; running on as this user/.exec(logs);
  assert.ok(dropped, "the image ran jitrunner on as its user");
  assert.deepEqual([Number(dropped[1]), Number(dropped[2])], [NODE_UID, NODE_UID]);
  assert.ok(dropped[3]!.split(",").map(Number).includes(statSync("/var/run/docker.sock").gid), "with the Docker socket's group");
  // No secret, token or JIT config in the container's logs, its /metrics or its status page.
  const checked = await assertNoSecrets(fake, { texts: { "container logs": logs }, sys: { url } });
  assert.ok(checked.jitConfigs >= 1 && checked.places.includes("status page"), JSON.stringify(checked));
});

test("the containerised jitrunner is healthy by the real file's healthcheck (/readyz)", { timeout: 3 * 60_000 }, async () => {
  const [svc] = await docker.listContainers({ filters: { label: [...projectFilter.label, "com.docker.compose.service=jitrunner"] } });
  assert.ok(svc, "the jitrunner service's container runs");
  const container = docker.getContainer(svc.Id);
  assert.match(((await container.inspect()).Config.Healthcheck?.Test ?? []).join(" "), /\/readyz/, "the healthcheck of docker-compose.yml");
  // The first check runs an interval (30 s) after the start: by now, or soon.
  const health = await withLogs(
    waitFor(
      async () => {
        const h = (await container.inspect()).State.Health;
        return h?.Status === "healthy" ? h : undefined;
      },
      120_000,
      "the jitrunner service to be healthy",
    ),
  );
  assert.equal(health.Log.at(-1)?.ExitCode, 0);
});

test("docker-compose down -v leaves no container, volume or network of the project", { timeout: 5 * 60_000 }, async () => {
  const containers = await docker.listContainers({ all: true, filters: projectFilter });
  assert.deepEqual(containers.map((c) => c.Labels["com.docker.compose.service"]).sort(), ["jitrunner", "redis", "runner-image"]);
  const mounted = containers.flatMap((c) => (c.Mounts ?? []).filter((m) => m.Type === "volume" && m.Name).map((m) => m.Name!));
  const named = ((await docker.listVolumes({ filters: projectFilter })).Volumes ?? []).map((v) => v.Name);
  assert.deepEqual(named, [`${project}_redis-data`], "Redis keeps its data in the named volume");
  assert.ok(mounted.length >= 2, `the named volume and the runner image's anonymous /var/lib/docker volume are mounted: ${mounted.join(", ")}`);
  const networks = (await docker.listNetworks({ filters: projectFilter })).map((n) => n.Name);
  assert.deepEqual(networks, [`${project}_default`], "the project's default network exists");

  progress("docker-compose down -v");
  await compose(["down", "-v", "--timeout", "10"], 3 * 60_000);
  downDone = true;

  assert.deepEqual(await docker.listContainers({ all: true, filters: projectFilter }), [], "no container of the project");
  assert.deepEqual((await docker.listVolumes({ filters: projectFilter })).Volumes ?? [], [], "no named volume of the project");
  const existing = new Set(((await docker.listVolumes()).Volumes ?? []).map((v) => v.Name));
  assert.deepEqual(
    [...new Set([...named, ...mounted])].filter((v) => existing.has(v)),
    [],
    "no volume the project's containers had",
  );
  assert.deepEqual(await docker.listNetworks({ filters: projectFilter }), [], "no network of the project");
  assert.deepEqual(await containersOf(hostId), [], "no runner container");
  assert.deepEqual(fake.runners(), [], "no runner registration on the fake GitHub");
});
