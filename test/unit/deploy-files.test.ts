/**
 * The deployment files stay usable: every YAML under deploy/ parses; the Compose files (the root
 * docker-compose.yml and deploy/compose*.yml) use nothing Compose v1.29 lacks (and, where
 * `docker-compose` is installed, v1.29 itself accepts them); the Kubernetes manifests run
 * `jitrunner server` only, non-root, with probes on routes the real HTTP app serves; the systemd
 * unit runs a worker that is given time to finish its launches.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join, relative } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { pino } from "pino";
import { parseAllDocuments, parse as parseYaml } from "yaml";
import { loadConfig } from "../../src/config/load.ts";
import { buildApp } from "../../src/http/app.ts";
import { Metrics } from "../../src/metrics/metrics.ts";
import { dockerfileNodeImage } from "../helpers/local-images.ts";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const DEPLOY = join(ROOT, "deploy");
const read = (path: string) => readFileSync(join(ROOT, path), "utf8");

type Obj = Record<string, any>;

function walk(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? walk(path) : [path];
  });
}

const yamlFiles = walk(DEPLOY)
  .filter((p) => /\.ya?ml$/.test(p))
  .map((p) => relative(ROOT, p))
  .sort();

/** All documents of a YAML file; fails on any parse error or warning (unknown tags and the like). */
function parseYamlFile(path: string): Obj[] {
  const docs = parseAllDocuments(read(path));
  const list = Array.isArray(docs) ? docs : [docs];
  for (const d of list) {
    assert.deepEqual(d.errors.map(String), [], `${path}: YAML errors`);
    assert.deepEqual(d.warnings.map(String), [], `${path}: YAML warnings`);
  }
  return list.map((d) => d.toJS() as Obj).filter((d) => d != null);
}

test("every YAML file under deploy/ parses", () => {
  assert.ok(yamlFiles.length >= 6, `found ${yamlFiles.join(", ")}`);
  for (const path of yamlFiles) assert.ok(parseYamlFile(path).length > 0, `${path} has a document`);
});

// --- Compose ---------------------------------------------------------------------------------------

const composeFiles = ["docker-compose.yml", ...yamlFiles.filter((p) => /^deploy\/compose[^/]*\.ya?ml$/.test(p))];

/** Top-level keys Compose v1.29 knows (file format 3.x). `name`, `include`, `models` are v2-only. */
const V1_TOP_LEVEL = new Set(["version", "services", "volumes", "networks", "secrets", "configs"]);
/** Service keys only Compose v2 understands (v1.29: "Unsupported config option"). */
const V2_ONLY_SERVICE_KEYS = ["develop", "post_start", "pre_stop", "attach", "label_file", "models", "provider", "use_api_socket", "gpus"];
/** build: keys only Compose v2 (BuildKit/bake) understands. */
const V2_ONLY_BUILD_KEYS = ["additional_contexts", "dockerfile_inline", "secrets", "ssh", "tags", "platforms", "privileged", "no_cache", "pull", "provenance", "sbom", "entitlements"];

/** Problems that would make Compose v1.29 refuse or misread a file. */
function v1Problems(path: string, text: string, doc: Obj): string[] {
  const problems: string[] = [];
  for (const key of Object.keys(doc)) if (!V1_TOP_LEVEL.has(key) && !key.startsWith("x-")) problems.push(`top-level key '${key}'`);
  if (!/^[23](\.\d+)?$/.test(String(doc.version ?? ""))) problems.push(`version: '${doc.version}' (v1.29 needs "2.x" or "3.x"; without it, v1 reads the legacy v1 format)`);
  if (/!(reset|override)\b/.test(text)) problems.push("YAML merge tags !reset/!override");
  // Interpolation: v1 knows ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, ${VAR?err}.
  for (const m of text.matchAll(/\$\{([^}]*)\}/g)) {
    const inner = m[1]!;
    if (!/^[A-Za-z_][A-Za-z0-9_]*(?:(?::?-|:?\?)[^$]*)?$/.test(inner)) problems.push(`interpolation '${m[0]}' (v1 has no :+, + or nesting)`);
  }
  for (const [name, svc] of Object.entries((doc.services ?? {}) as Obj)) {
    for (const key of V2_ONLY_SERVICE_KEYS) if (key in svc) problems.push(`services.${name}.${key}`);
    if (svc.build && typeof svc.build === "object") {
      for (const key of V2_ONLY_BUILD_KEYS) if (key in svc.build) problems.push(`services.${name}.build.${key}`);
    }
    if (svc.depends_on && !Array.isArray(svc.depends_on)) {
      for (const [dep, spec] of Object.entries(svc.depends_on as Obj)) {
        for (const key of ["required", "restart"]) if (spec && key in spec) problems.push(`services.${name}.depends_on.${dep}.${key}`);
      }
    }
    for (const f of [svc.env_file].flat()) {
      if (f && typeof f === "object") problems.push(`services.${name}.env_file long syntax (path/required)`);
    }
    for (const p of svc.ports ?? []) {
      if (p && typeof p === "object" && ("name" in p || "app_protocol" in p)) problems.push(`services.${name}.ports name/app_protocol`);
    }
  }
  return problems;
}

test("Compose files use no v2-only keys or syntax", () => {
  assert.ok(composeFiles.includes("deploy/compose.worker.yml"), `compose files: ${composeFiles.join(", ")}`);
  for (const path of composeFiles) {
    const [doc] = parseYamlFile(path);
    assert.deepEqual(v1Problems(path, read(path), doc!), [], `${path}: not readable by Compose v1.29`);
  }
});

test("Compose builds the control plane on the Dockerfile's default Node image", () => {
  const { image } = dockerfileNodeImage();
  const built = composeFiles.flatMap((path) =>
    Object.entries((parseYamlFile(path)[0]!.services ?? {}) as Obj)
      .filter(([, s]) => s.build?.args?.NODE_IMAGE !== undefined)
      .map(([name, s]) => [`${path} ${name}`, String(s.build.args.NODE_IMAGE)]),
  );
  assert.ok(built.length >= 2, `services building the control plane: ${built.map(([w]) => w).join(", ")}`);
  for (const [where, arg] of built) assert.equal(arg, `\${NODE_IMAGE:-${image}}`, where);
});

test("the checker itself catches v2-only syntax", () => {
  const bad = { version: "3.8", name: "x", services: { a: { image: "i", develop: {}, build: { context: ".", additional_contexts: {} } } } };
  const problems = v1Problems("bad.yml", "image: ${A:+b} ${A:-${B}} !reset", bad);
  for (const want of ["top-level key 'name'", "services.a.develop", "services.a.build.additional_contexts", "${A:+b}", "${A:-${B}"]) {
    assert.ok(problems.some((p) => p.includes(want)), `caught ${want}: ${problems.join("; ")}`);
  }
  assert.deepEqual(v1Problems("ok.yml", "x: ${A} ${B:-c} ${C-d} ${D:?set D} ${E?e}", { version: "3.8", services: {} }), []);
});

const dockerCompose = spawnSync("docker-compose", ["version", "--short"], { encoding: "utf8" });
test(
  "docker-compose (v1) accepts the Compose files",
  // CI installs docker-compose, so there a missing one fails the test; elsewhere it is skipped.
  { skip: dockerCompose.status === 0 || process.env.CI ? false : "docker-compose is not installed" },
  () => {
    for (const path of composeFiles) {
      const r = spawnSync("docker-compose", ["-f", join(ROOT, path), "config", "-q"], {
        encoding: "utf8",
        // compose.worker.yml requires these (${VAR:?...}); they are the operator's to set.
        env: { ...process.env, JITRUNNER_REDIS_URL: "redis://redis.internal:6379", JITRUNNER_HOST_ID: "docker-02" },
      });
      assert.equal(r.status, 0, `docker-compose ${dockerCompose.stdout.trim()} refuses ${path}: ${r.stderr}`);
    }
  },
);

test("docker-compose.yml gives its worker a host id that survives a re-create, not the container's hostname", () => {
  const [doc] = parseYamlFile("docker-compose.yml");
  const svc = (doc!.services as Obj).jitrunner;
  assert.equal(svc.command[0], "all");
  // A fixed default: a re-created container gets a new hostname, and its runners would be left.
  assert.match(String(svc.environment.JITRUNNER_HOST_ID), /^\$\{JITRUNNER_HOST_ID:-[A-Za-z0-9][A-Za-z0-9_.-]*\}$/);
  assert.equal(svc.hostname, undefined, "one way to name the host");
});

test("docker-compose.yml takes the Redis URL from the environment, Compose's Redis by default, so an operator can point it elsewhere", () => {
  const [doc] = parseYamlFile("docker-compose.yml");
  const svc = (doc!.services as Obj).jitrunner;
  // The variable wins over redis.url in jitrunner.yml (load.ts): a fixed value would hide the file's.
  assert.equal(svc.environment.JITRUNNER_REDIS_URL, "${JITRUNNER_REDIS_URL:-redis://redis:6379}");
  assert.ok("redis" in (doc!.services as Obj), "the default names the file's own Redis service");
});

test("deploy/compose.worker.yml runs a worker against the central Redis with this host's engine", () => {
  const [doc] = parseYamlFile("deploy/compose.worker.yml");
  const services = Object.entries(doc!.services as Obj);
  assert.equal(services.length, 1, "one service: the worker");
  const [, svc] = services[0]!;
  assert.equal(svc.command[0], "worker");
  assert.match(String(svc.environment.JITRUNNER_REDIS_URL), /^\$\{JITRUNNER_REDIS_URL:\?/, "Redis URL required from the operator");
  assert.match(String(svc.environment.JITRUNNER_HOST_ID), /^\$\{JITRUNNER_HOST_ID:\?/, "host id required from the operator");
  assert.ok(svc.volumes.includes("/var/run/docker.sock:/var/run/docker.sock"), "the host's Docker socket");
  assert.equal(svc.group_add, undefined, "no group id to guess: the image adds the socket's group itself");
  assert.equal(svc.stop_signal, "SIGTERM");
  assert.ok(!Object.keys(doc!.services).includes("redis"), "no Redis of its own");
});

// --- Kubernetes ------------------------------------------------------------------------------------

const k8sDocs = yamlFiles.filter((p) => p.startsWith("deploy/kubernetes/")).flatMap((p) => parseYamlFile(p).map((d) => ({ path: p, doc: d })));

test("the Kubernetes manifests run `jitrunner server` only, non-root", () => {
  const kinds = k8sDocs.map((d) => d.doc.kind).sort();
  assert.deepEqual(kinds, ["ConfigMap", "Deployment", "Secret", "Service"]);
  const deployment = k8sDocs.find((d) => d.doc.kind === "Deployment")!.doc;
  const pod = deployment.spec.template.spec;
  assert.equal(pod.containers.length, 1);
  const c = pod.containers[0];
  assert.equal(c.args[0], "server", "servers only: workers belong on Docker hosts");
  const mounts = JSON.stringify([pod.volumes, c.volumeMounts]);
  assert.doesNotMatch(mounts, /docker\.sock|hostPath/, "no Docker socket, no host paths");
  assert.equal(pod.securityContext.runAsNonRoot, true);
  assert.ok(pod.securityContext.runAsUser > 0);
  assert.equal(c.securityContext.allowPrivilegeEscalation, false);
  assert.deepEqual(c.securityContext.capabilities.drop, ["ALL"]);
  // A rolling restart: the pod keeps serving while it leaves the endpoints, within its grace period.
  const command: string[] = c.lifecycle?.preStop?.exec?.command ?? [];
  const wait = /^setTimeout\(\(\) => \{\}, (\d+)\)$/.exec(command[2] ?? "");
  assert.ok(command[0] === "node" && command[1] === "-e" && wait, "a preStop wait, with the node every image of ours has");
  assert.ok(Number(wait[1]) >= 3000 && Number(wait[1]) / 1000 + 10 < (pod.terminationGracePeriodSeconds ?? 30), "a few seconds, well within the grace period");
  // The Service reaches the container's port, and the labels select the Deployment's pods.
  const service = k8sDocs.find((d) => d.doc.kind === "Service")!.doc;
  assert.deepEqual(service.spec.selector, deployment.spec.selector.matchLabels);
  assert.ok(c.ports.some((p: Obj) => p.name === service.spec.ports[0].targetPort));
});

test("the Deployment's probes hit routes the real app serves, on the port it listens on", async () => {
  const deployment = k8sDocs.find((d) => d.doc.kind === "Deployment")!.doc;
  const c = deployment.spec.template.spec.containers[0];
  const port = (ref: unknown) => (typeof ref === "number" ? ref : c.ports.find((p: Obj) => p.name === ref)?.containerPort);
  assert.equal(c.readinessProbe.httpGet.path, "/readyz");
  assert.equal(c.livenessProbe.httpGet.path, "/healthz");

  // The config the ConfigMap mounts is valid and listens where the probes look.
  const configMap = k8sDocs.find((d) => d.doc.kind === "ConfigMap")!.doc;
  const mount = c.volumeMounts.find((m: Obj) => m.name === "config");
  assert.equal(`${mount.mountPath}/jitrunner.yml`, c.args[c.args.indexOf("--config") + 1]);
  const secretVolume = deployment.spec.template.spec.volumes.find((v: Obj) => v.secret);
  const secretMount = c.volumeMounts.find((m: Obj) => m.name === secretVolume.name);
  const provided = secretVolume.secret.items.map((i: Obj) => `${secretMount.mountPath}/${i.path}`);
  // Loaded as `jitrunner server` loads it, reading only the files the Secret volume provides.
  const config = loadConfig({
    text: configMap.data["jitrunner.yml"],
    env: { JITRUNNER_REDIS_URL: "redis://redis.internal:6379" },
    readFile: (p) => (provided.includes(p) ? "secret-value-0123456789" : assert.fail(`the server reads ${p}, which is not mounted`)),
    secretsFor: c.args[0],
  });
  for (const probe of [c.readinessProbe, c.livenessProbe]) assert.equal(port(probe.httpGet.port), config.server.port);
  assert.ok(provided.includes(config.github.webhookSecretFile), `${config.github.webhookSecretFile} is mounted`);
  const secret = k8sDocs.find((d) => d.doc.kind === "Secret")!.doc;
  for (const i of secretVolume.secret.items) assert.ok(i.key in secret.stringData, `the Secret template has ${i.key}`);

  const app = await buildApp({ logger: pino({ level: "silent" }), metrics: new Metrics(), readiness: async () => [] });
  try {
    for (const probe of [c.readinessProbe, c.livenessProbe]) {
      const res = await app.inject({ method: "GET", url: probe.httpGet.path });
      assert.equal(res.statusCode, 200, `GET ${probe.httpGet.path}`);
    }
    const unready = await buildApp({ logger: pino({ level: "silent" }), metrics: new Metrics(), readiness: async () => ["redis unreachable"] });
    assert.equal((await unready.inject({ method: "GET", url: "/readyz" })).statusCode, 503, "readiness fails when unready");
    assert.equal((await unready.inject({ method: "GET", url: "/healthz" })).statusCode, 200, "liveness does not");
    await unready.close();
  } finally {
    await app.close();
  }
});

test("the Kubernetes servers, reachable through an Ingress, require tokens for the status page and /metrics, mounted from the Secret", () => {
  const deployment = k8sDocs.find((d) => d.doc.kind === "Deployment")!.doc;
  const c = deployment.spec.template.spec.containers[0];
  const configMap = k8sDocs.find((d) => d.doc.kind === "ConfigMap")!.doc;
  const secretVolume = deployment.spec.template.spec.volumes.find((v: Obj) => v.secret);
  const secretMount = c.volumeMounts.find((m: Obj) => m.name === secretVolume.name);
  const files = new Map<string, string>(secretVolume.secret.items.map((i: Obj) => [`${secretMount.mountPath}/${i.path}`, `value-of-${i.key}-0123456789`]));
  const config = loadConfig({
    text: configMap.data["jitrunner.yml"],
    env: { JITRUNNER_REDIS_URL: "redis://redis.internal:6379" },
    readFile: (p) => files.get(p) ?? assert.fail(`the server reads ${p}, which is not mounted`),
    secretsFor: c.args[0],
  });
  assert.equal(config.secrets.adminToken?.reveal(), "value-of-admin-token-0123456789");
  assert.equal(config.secrets.metricsToken?.reveal(), "value-of-metrics-token-0123456789");
  const secret = k8sDocs.find((d) => d.doc.kind === "Secret")!.doc;
  for (const key of ["admin-token", "metrics-token"]) assert.ok(key in secret.stringData, `the Secret template has ${key}`);
});

// --- Secrets: each part gets only those it uses -----------------------------------------------------

test("the internet-facing server never gets the App's private key; worker-only deployments never get the webhook secret", () => {
  // Kubernetes runs servers only: no key in its Secret, its volume, its env or its config.
  for (const { path, doc } of k8sDocs) {
    const config = doc.kind === "ConfigMap" ? (parseYaml(doc.data["jitrunner.yml"]) as Obj) : undefined;
    assert.equal(config?.github?.privateKeyFile, undefined, `${path}: the servers' config names a private key file`);
    assert.doesNotMatch(JSON.stringify(doc.kind === "ConfigMap" ? config : doc), /github-app-key|PRIVATE KEY|GITHUB_PRIVATE_KEY/, `${path} gives the server the private key`);
  }
  // The extra worker host's Compose file mounts the key alone, not the secrets directory.
  const [worker] = parseYamlFile("deploy/compose.worker.yml");
  const mounts = (Object.values(worker!.services as Obj)[0] as Obj).volumes as string[];
  assert.ok(mounts.some((m) => /github-app-key/.test(m)), "the worker gets the key");
  assert.ok(!mounts.some((m) => /webhook-secret|secrets:\/run\/secrets/.test(m)), `the worker gets no webhook secret: ${mounts.join(", ")}`);
  // The systemd worker's environment file holds no webhook secret.
  assert.doesNotMatch(read("deploy/systemd/jitrunner-worker.service"), /JITRUNNER_GITHUB_WEBHOOK_SECRET|webhookSecretFile/);
});

// --- Stopping: launches in flight finish before the supervisor kills -------------------------------

/** Compose's duration (`300s`, `5m`, `1m30s`, `1h`) in seconds. */
function seconds(duration: string): number {
  const parts = [...duration.matchAll(/(\d+(?:\.\d+)?)(h|m|s|ms|us)/g)];
  assert.equal(parts.map((p) => p[0]).join(""), duration, `a Compose duration: ${duration}`);
  const unit: Record<string, number> = { h: 3600, m: 60, s: 1, ms: 1e-3, us: 1e-6 };
  return parts.reduce((sum, p) => sum + Number(p[1]) * unit[p[2]!]!, 0);
}

test("every Compose service that runs a worker (worker, all) gives its launches minutes to finish after SIGTERM, not Docker's 10 s", () => {
  assert.equal(seconds("1m30s"), 90);
  const workers = composeFiles.flatMap((path) =>
    Object.entries((parseYamlFile(path)[0]!.services ?? {}) as Obj)
      .filter(([, s]) => Array.isArray(s.command) && ["worker", "all"].includes(s.command[0]))
      .map(([name, s]) => ({ where: `${path} ${name}`, svc: s as Obj })),
  );
  assert.deepEqual(workers.map((w) => w.where), ["docker-compose.yml jitrunner", "deploy/compose.worker.yml worker"]);
  for (const { where, svc } of workers) {
    assert.ok(svc.stop_grace_period, `${where}: stop_grace_period`);
    assert.ok(seconds(String(svc.stop_grace_period)) >= 120, `${where}: stop_grace_period ${svc.stop_grace_period} is at least 2m`);
    assert.equal(svc.stop_signal ?? "SIGTERM", "SIGTERM");
  }
});

test("every Compose service that runs jitrunner has a healthcheck on /readyz, so one stuck unready shows as unhealthy", () => {
  const services = composeFiles.flatMap((path) =>
    Object.entries((parseYamlFile(path)[0]!.services ?? {}) as Obj)
      .filter(([, s]) => Array.isArray(s.command) && ["server", "worker", "all"].includes(s.command[0]))
      .map(([name, s]) => ({ where: `${path} ${name}`, svc: s as Obj })),
  );
  assert.deepEqual(services.map((s) => s.where), ["docker-compose.yml jitrunner", "deploy/compose.worker.yml worker"]);
  for (const { where, svc } of services) {
    const check = svc.healthcheck as Obj | undefined;
    assert.ok(check, `${where}: healthcheck`);
    assert.equal(check.test[0], "CMD", `${where}: run without a shell (the image has none to spare)`);
    assert.match(check.test.join(" "), /http:\/\/127\.0\.0\.1:[^/]*\/readyz\b/, `${where}: /readyz, which says unready, not /healthz`);
  }
});

// --- systemd ---------------------------------------------------------------------------------------

test("the systemd unit runs a worker that may finish its launches on stop", () => {
  const unit = read("deploy/systemd/jitrunner-worker.service");
  const directives = new Map<string, string>();
  for (const line of unit.split("\n")) {
    const m = /^([A-Za-z]+)=(.*)$/.exec(line.trim());
    if (m) directives.set(m[1]!, m[2]!);
  }
  assert.match(directives.get("ExecStart") ?? "", /\bnode \S*bin\/jitrunner\.js worker\b/);
  assert.ok(directives.has("EnvironmentFile"));
  assert.equal(directives.get("Restart"), "on-failure");
  assert.equal(directives.get("KillSignal"), "SIGTERM");
  assert.ok(Number(directives.get("TimeoutStopSec")) >= 120, "a long stop timeout: launches in flight finish");
  assert.notEqual(directives.get("User") ?? "root", "root");
  // Stopping docker must not stop the worker for good (Requires= would, and no start of docker brings it back).
  assert.ok(!directives.has("Requires") && !directives.has("BindsTo"), "nothing ties the worker's life to docker.service");
  assert.match(directives.get("Wants") ?? "", /\bdocker\.service\b/);
});

test("the control-plane image runs as `node`; the Compose files start it as root to run on as `node` (JITRUNNER_USER), so they need no socket group id", () => {
  const dockerfile = readFileSync(join(ROOT, "Dockerfile"), "utf8");
  const final = dockerfile.slice(dockerfile.lastIndexOf("\nFROM "));
  assert.match(final, /^USER node$/m, "not root unless asked: Kubernetes' runAsNonRoot and hardened setups keep working");
  assert.match(final, /^ENV JITRUNNER_USER=1000:1000$/m);
  for (const file of ["docker-compose.yml", "deploy/compose.worker.yml"]) {
    const [doc] = parseYamlFile(file);
    const svc = Object.values(doc!.services as Obj).find((s) => String(s.command?.[0]).match(/^(all|worker)$/));
    assert.equal(svc.user, "root", `${file}: started as root, to read the secrets and find the socket's group`);
    assert.doesNotMatch(readFileSync(join(ROOT, file), "utf8"), /DOCKER_GID|group_add/, `${file} asks for no socket group id`);
  }
});
