/**
 * The runner image's entrypoint (images/runner/entrypoint.sh, in the fake runner image) in runner
 * containers made as the worker makes them (createOptions: the capabilities isolation, network
 * none, a data volume of their own), at both ends of a runner's life:
 *
 * - a dockerd that makes its socket but never answers (hung in its initialisation): the wait for
 *   it gives up at DOCKERD_WAIT_SECONDS and says so, and a `docker stop` during that wait ends the
 *   container at once, not at the end of its grace period;
 * - a job that leaves a container running in the runner's engine, one that ignores SIGTERM: the
 *   runner container still ends within a few seconds of the runner's exit, not after the inner
 *   engine's 10 s stop timeout.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import type Docker from "dockerode";
import { Secret } from "../../src/config/secret.ts";
import { createOptions } from "../../src/docker/dockerode-driver.ts";
import { runnerLabels } from "../../src/docker/labels.ts";
import { waitFor } from "../helpers/process.ts";
import { docker, removeContainersOf, RUNNER_IMAGE, uniqueHost } from "../helpers/system.ts";

const host = uniqueHost("entrypoint");
const IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

// Stands in for a dockerd stuck in its initialisation: the API socket exists, nothing ever answers.
// The image has node (the fake runner's).
const standIn = mkdtempSync(join(tmpdir(), "jitrunner-hung-dockerd-"));
chmodSync(standIn, 0o755);
writeFileSync(
  join(standIn, "dockerd"),
  [
    "#!/bin/sh",
    "echo 'stand-in dockerd: listening, never answering'",
    `exec node -e 'require("net").createServer(() => {}).listen("/var/run/docker.sock")'`,
    "",
  ].join("\n"),
  { mode: 0o755 },
);
const HUNG_DOCKERD = { mounts: [{ source: standIn, target: "/fakebin", readOnly: true }], env: { PATH: `/fakebin:${IMAGE_PATH}` } };

after(async () => {
  await removeContainersOf(host);
  rmSync(standIn, { recursive: true, force: true });
});

/** A runner container of the fake runner image, started, with `env` and `mounts` added. */
async function startRunner(tag: string, env: Record<string, string>, mounts: Array<{ source: string; target: string; readOnly: boolean }> = []): Promise<Docker.Container> {
  const name = `jitrunner-entry-${tag}-${randomBytes(3).toString("hex")}`;
  const container = await docker.createContainer(
    createOptions({
      name,
      image: RUNNER_IMAGE,
      jitConfig: new Secret("not-used-here"),
      env,
      labels: runnerLabels({ pool: "default", host, runnerName: name, demandId: "" }),
      isolation: "capabilities",
      capDrop: ["SYS_RESOURCE"],
      resources: { memoryMb: 1024, pidsLimit: 2048 },
      networkMode: "none",
      mounts,
    }),
  );
  await container.start();
  return container;
}

/** The container's output (stdout and stderr), each line with Docker's timestamp in front. */
async function logLines(container: Docker.Container): Promise<Array<{ at: number; text: string }>> {
  const raw = (await container.logs({ stdout: true, stderr: true, timestamps: true, follow: false })) as unknown as Buffer;
  // Without a TTY, Docker frames each chunk: 1 byte stream, 3 zero bytes, 4 bytes length.
  let text = "";
  for (let i = 0; i + 8 <= raw.length; ) {
    const size = raw.readUInt32BE(i + 4);
    text += raw.subarray(i + 8, i + 8 + size).toString("utf8");
    i += 8 + size;
  }
  return text
    .split("\n")
    .filter((l) => l !== "")
    .map((l) => {
      const space = l.indexOf(" ");
      return { at: isoMs(l.slice(0, space)), text: l.slice(space + 1) };
    });
}

/** Docker's RFC 3339 time with nanoseconds, in milliseconds. */
function isoMs(t: string): number {
  const m = /^(.*T\d\d:\d\d:\d\d)(?:\.(\d+))?Z$/.exec(t);
  assert.ok(m, `a Docker timestamp: ${t}`);
  return Date.parse(`${m[1]}Z`) + Number(`0.${m[2] ?? "0"}`) * 1000;
}

/** The container's exit code, once it has exited: fails after `ms`, with its output. */
async function exitOf(container: Docker.Container, ms: number): Promise<number> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      void logLines(container).then(
        (lines) => reject(new Error(`still running after ${ms} ms:\n${lines.map((l) => l.text).join("\n")}`)),
        reject,
      );
    }, ms);
  });
  try {
    return ((await Promise.race([container.wait(), late])) as { StatusCode: number }).StatusCode;
  } finally {
    clearTimeout(timer);
  }
}

test("a dockerd that makes its socket but never answers: the runner container gives up at DOCKERD_WAIT_SECONDS and says so", async (t) => {
  const started = Date.now();
  const container = await startRunner("hung-wait", { ...HUNG_DOCKERD.env, DOCKERD_WAIT_SECONDS: "3", RUNNER_CMD: "sleep 3600" }, HUNG_DOCKERD.mounts);
  // Without a bound on each probe, `docker info` waits on the socket for ever and this never ends.
  const code = await exitOf(container, 20_000);
  const seconds = (Date.now() - started) / 1000;
  const out = (await logLines(container)).map((l) => l.text).join("\n");
  assert.equal(code, 1, out);
  t.diagnostic(`ended ${seconds.toFixed(1)} s after its start`);
  assert.ok(seconds < 15, `ended ${seconds.toFixed(1)} s after its start`);
  assert.match(out, /dockerd did not answer within 3s/);
  assert.match(out, /last lines of \/var\/log\/dockerd\.log:\n[^]*stand-in dockerd: listening, never answering/, "dockerd's log shown");
  assert.doesNotMatch(out, /runner started/);
});

test("a dockerd that never answers: a docker stop during the wait for it ends the runner container at once, not at the end of its grace period", async (t) => {
  const container = await startRunner("hung-stop", { ...HUNG_DOCKERD.env, DOCKERD_WAIT_SECONDS: "60", RUNNER_CMD: "sleep 3600" }, HUNG_DOCKERD.mounts);
  // The socket exists, so the entrypoint's probes now wait on it.
  await waitFor(
    async () => {
      const exec = await container.exec({ Cmd: ["test", "-S", "/var/run/docker.sock"] });
      await new Promise((resolve, reject) => void exec.start({}).then((s) => (s.on("end", resolve), s.on("error", reject), s.resume()), reject));
      return (await exec.inspect()).ExitCode === 0;
    },
    30_000,
    "the stand-in dockerd's socket",
  );
  await new Promise((resolve) => setTimeout(resolve, 1000));
  const stopping = Date.now();
  await container.stop({ t: 10 });
  const seconds = (Date.now() - stopping) / 1000;
  const state = (await container.inspect()).State;
  const out = (await logLines(container)).map((l) => l.text).join("\n");
  t.diagnostic(`docker stop took ${seconds.toFixed(1)} s`);
  assert.ok(seconds < 4, `docker stop took ${seconds.toFixed(1)} s (grace period 10 s)\n${out}`);
  assert.equal(state.ExitCode, 143, "it ended on the SIGTERM, not on the SIGKILL at the end of the grace period");
  assert.match(out, /got SIGTERM before the runner started; stopping/);
});

test("a job that leaves a container running in the runner's engine: the runner container ends within seconds of the runner's exit", async (t) => {
  const container = await startRunner("left-running", { RUNNER_CMD: "fake-job", FAKE_JOB_LEAVE_RUNNING: "1" });
  const code = await exitOf(container, 120_000);
  const lines = await logLines(container);
  const out = lines.map((l) => l.text).join("\n");
  assert.equal(code, 0, out);
  assert.match(out, /^left running: [0-9a-f]{64}$/m, "the job left its container running");
  const exited = lines.find((l) => /^\[entrypoint\] runner exited with status 0; stopping dockerd$/.test(l.text));
  assert.ok(exited, out);
  // Docker's clock on both sides. Measured: 1.6 s alone, 2.6 s beside another file's DinD runners;
  // the inner engine's own stop waits 10 s for that container (9 s or more here without the kill).
  const finished = isoMs((await container.inspect()).State.FinishedAt);
  const seconds = (finished - exited.at) / 1000;
  t.diagnostic(`ended ${seconds.toFixed(1)} s after the runner's exit`);
  assert.ok(seconds < 5, `the container ended ${seconds.toFixed(1)} s after the runner's exit\n${out}`);
  assert.match(out, /killed 1 container\(s\) left running in the runner's engine/);
  assert.doesNotMatch(out, /did not stop within/);
});
