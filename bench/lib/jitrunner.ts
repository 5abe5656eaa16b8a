/** Config files for the real `jitrunner` processes the benchmark runs, and starting them. */
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { stringify } from "yaml";
import { DEFAULT_CONCURRENT_STARTS } from "../../src/config/schema.ts";
import { DEFAULT_CONCURRENT_CALLS } from "../../src/github/request-gates.ts";
import type { FakeGitHub } from "../../test/fakes/github/index.ts";
import { WEBHOOK_SECRET } from "../../test/helpers/config.ts";
import { freePort } from "../../test/helpers/ports.ts";
import { waitFor } from "../../test/helpers/process.ts";
import { spawnJitrunner, type Child } from "./procs.ts";

export const RUNNER_IMAGE = process.env.JITRUNNER_TEST_RUNNER_IMAGE ?? "jitrunner-test-runner:latest";
export const POOL = "default";
export const JOB_LABELS = ["self-hosted", "linux"];

/** A scratch directory for configs, secrets and logs of one benchmark run. */
export function scratchDir(): string {
  return mkdtempSync(join(tmpdir(), "jitrunner-bench-"));
}

/**
 * The e2e test's pool: real DinD runner containers, `capabilities` profile, network none.
 * `socketDir`: the directory mounted as /fake-github (default: the fake's own; a RunnerProxy's to
 * time job hand-overs); `extra`: more pool fields (name, labels, minIdle, maxRunners, ...).
 */
export function runnerPool(fake: FakeGitHub, o: { socketDir?: string; env?: Record<string, string>; extra?: Record<string, unknown> } = {}) {
  return {
    name: POOL,
    labels: ["self-hosted", "linux", "x64"],
    image: RUNNER_IMAGE,
    isolation: "capabilities" as const,
    networkMode: "none",
    resources: { memoryMb: 1024, pidsLimit: 2048 },
    mounts: [{ source: o.socketDir ?? dirname(fake.socketPath), target: "/fake-github", readOnly: false }],
    env: { FAKE_GITHUB_SOCKET: "/fake-github/github.sock", ...o.env },
    ...o.extra,
  };
}

export interface JitrunnerOptions {
  dir: string;
  name: string;
  mode: "server" | "worker" | "all";
  redisUrl: string;
  prefix: string;
  privateKey: string;
  appId: number;
  apiUrl: string;
  pools: unknown[];
  hostId?: string;
  capacity?: number;
  /** The worker's Docker engine (default: the default socket). */
  dockerSocket?: string;
  logLevel?: string;
}

export interface RunningJitrunner {
  url: string;
  proc: Child;
  logFile: string;
}

/** `worker.concurrentStarts` of the workers the bench starts: BENCH_CONCURRENT_STARTS, else the default. */
export const CONCURRENT_STARTS = process.env.BENCH_CONCURRENT_STARTS ? Number(process.env.BENCH_CONCURRENT_STARTS) : DEFAULT_CONCURRENT_STARTS;
/** `github.concurrentCalls` of the jitrunner processes the bench starts: BENCH_CONCURRENT_CALLS, else the default. */
export const CONCURRENT_CALLS = process.env.BENCH_CONCURRENT_CALLS ? Number(process.env.BENCH_CONCURRENT_CALLS) : DEFAULT_CONCURRENT_CALLS;

/** Writes the config and secrets, starts `jitrunner MODE`, waits for /readyz. */
export async function startJitrunner(o: JitrunnerOptions): Promise<RunningJitrunner> {
  const port = await freePort();
  const keyFile = join(o.dir, `${o.name}.pem`);
  const secretFile = join(o.dir, `${o.name}.secret`);
  writeFileSync(keyFile, o.privateKey, { mode: 0o600 });
  writeFileSync(secretFile, WEBHOOK_SECRET, { mode: 0o600 });
  const config = {
    github: { appId: o.appId, apiUrl: o.apiUrl, privateKeyFile: keyFile, webhookSecretFile: secretFile, concurrentCalls: CONCURRENT_CALLS },
    redis: { url: o.redisUrl, prefix: o.prefix },
    server: { host: "127.0.0.1", port },
    worker: {
      hostId: o.hostId ?? `bench-${o.name}`,
      capacity: o.capacity ?? 4,
      ...(o.dockerSocket ? { docker: { socketPath: o.dockerSocket } } : {}),
      completedGraceSeconds: 5,
      reconcileIntervalSeconds: 30,
      // Starts in flight at once on the engine (worker.concurrentStarts), for comparing settings.
      concurrentStarts: CONCURRENT_STARTS,
    },
    logLevel: o.logLevel ?? "info",
    pools: o.pools,
  };
  const configFile = join(o.dir, `${o.name}.yml`);
  writeFileSync(configFile, stringify(config));
  const logFile = join(o.dir, `${o.name}.log`);
  const proc = spawnJitrunner(o.mode, configFile, logFile);
  const url = `http://127.0.0.1:${port}`;
  await waitFor(
    async () => {
      if (proc.child.exitCode !== null) throw new Error(`jitrunner ${o.mode} exited with ${proc.child.exitCode}; see its log`);
      return (await fetch(`${url}/readyz`)).ok;
    },
    30_000,
    `jitrunner ${o.mode} (${o.name}) to be ready`,
  );
  return { url, proc, logFile };
}

/** One sample of a Prometheus text exposition: the value of the first series matching `pattern`. */
export async function scrape(url: string, pattern: RegExp): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const m = pattern.exec(text);
  return m ? Number(m[1]) : Number.NaN;
}
