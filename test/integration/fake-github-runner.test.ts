// The fake runner (test/fakes/runner/run.mjs) against the fake GitHub, as a
// host child process over the unix socket: one job end to end, with signed
// webhooks checked by a local receiver.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { chmod, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { FakeGitHubClient } from "../fakes/github/client.ts";
import { FakeGitHub } from "../fakes/github/index.ts";
import { startReceiver, type Receiver } from "../fakes/github/receiver.ts";

const SECRET = "runner-test-secret";
const RUN_MJS = fileURLToPath(new URL("../fakes/runner/run.mjs", import.meta.url));
const RUNNER_TIMEOUT_MS = 30_000;

let fake: FakeGitHub;
let receiver: Receiver;
let client: FakeGitHubClient;
let bin: string;

before(async () => {
  receiver = await startReceiver(SECRET);
  fake = await FakeGitHub.start({ webhookSecret: SECRET, webhookUrl: receiver.url });
  client = new FakeGitHubClient(fake);
  bin = await mkdtemp(join(tmpdir(), "fake-job-bin-"));
  // Records what the runner gave the job, then exits as told.
  const script = [
    "#!/bin/sh",
    'printf "%s %s\\n" "$FAKE_JOB_ID" "${ACTIONS_RUNNER_INPUT_JITCONFIG:-unset}" > "$FAKE_TEST_MARKER"',
    'exit "${FAKE_TEST_JOB_EXIT:-0}"',
    "",
  ].join("\n");
  await writeFile(join(bin, "fake-job"), script);
  await chmod(join(bin, "fake-job"), 0o755);
});

after(async () => {
  await fake?.close();
  await receiver?.close();
  if (bin) await rm(bin, { recursive: true, force: true });
});

async function register(name: string, labels: string[]): Promise<{ id: number; jit: string }> {
  const res = await client.call("POST", "/repos/acme/widgets/actions/runners/generate-jitconfig", {
    body: { name, runner_group_id: 1, labels },
  });
  assert.equal(res.status, 201, JSON.stringify(res.body));
  const body = res.body as { runner: { id: number }; encoded_jit_config: string };
  return { id: body.runner.id, jit: body.encoded_jit_config };
}

function runRunner(jit: string, env: Record<string, string> = {}): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [RUN_MJS], {
      env: {
        ...process.env,
        PATH: `${bin}:${process.env.PATH ?? ""}`,
        ACTIONS_RUNNER_INPUT_JITCONFIG: jit,
        FAKE_GITHUB_SOCKET: fake.socketPath,
        FAKE_TEST_MARKER: join(bin, "marker"),
        ...env,
      },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    let err = "";
    child.stdout.on("data", (c: Buffer) => (out += c.toString()));
    child.stderr.on("data", (c: Buffer) => (err += c.toString()));
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`run.mjs did not exit within ${RUNNER_TIMEOUT_MS} ms\n${out}\n${err}`));
    }, RUNNER_TIMEOUT_MS);
    child.on("error", reject);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, out, err });
    });
  });
}

const hooksFor = (jobId: number) => receiver.received.filter((r) => (r.payload.workflow_job as { id?: number } | undefined)?.id === jobId);

test("a queued job runs on the fake runner: queued, in_progress, completed webhooks, registration gone", async () => {
  const job = await fake.queueJob({ owner: "acme", repo: "widgets", labels: ["self-hosted", "linux"] });
  const runner = await register("jr-e2e-1", ["self-hosted", "Linux", "X64"]);
  const token = (JSON.parse(Buffer.from(runner.jit, "base64").toString()) as { token: string }).token;

  const result = await runRunner(runner.jit);
  assert.equal(result.code, 0, `${result.out}\n${result.err}`);
  assert.match(result.out, new RegExp(`acquired job ${job.id}`));
  assert.match(result.out, /reporting success/);
  for (const secret of [runner.jit, token]) {
    assert.ok(!result.out.includes(secret) && !result.err.includes(secret), "the runner never prints its JIT config or token");
  }
  assert.equal(await readFile(join(bin, "marker"), "utf8"), `${job.id} unset\n`, "fake-job ran for this job, without the JIT config");

  const hooks = await fake.waitFor(() => hooksFor(job.id).length >= 3 && hooksFor(job.id), 5000, "three webhooks for the job");
  assert.deepEqual(hooks.map((h) => h.payload.action), ["queued", "in_progress", "completed"]);
  for (const h of hooks) {
    assert.ok(h.signatureOk, `signature of ${String(h.payload.action)}`);
    assert.equal(h.headers["x-github-event"], "workflow_job");
    assert.equal(h.headers["content-type"], "application/json");
    assert.match(String(h.headers["user-agent"]), /^GitHub-Hookshot\//);
    assert.equal((h.payload.installation as { id: number }).id, fake.installationId);
  }
  const [queued, started, completed] = hooks.map((h) => h.payload.workflow_job as Record<string, unknown>);
  assert.deepEqual([queued?.status, queued?.runner_name, queued?.labels], ["queued", null, ["self-hosted", "linux"]]);
  assert.deepEqual([started?.status, started?.runner_name, started?.runner_id], ["in_progress", "jr-e2e-1", runner.id]);
  assert.deepEqual([completed?.status, completed?.conclusion, completed?.runner_name], ["completed", "success", "jr-e2e-1"]);
  assert.deepEqual(fake.deliveries.filter((d) => d.jobId === job.id).map((d) => [d.action, d.status]), [
    ["queued", 200],
    ["in_progress", 200],
    ["completed", 200],
  ]);

  assert.equal(fake.runners().find((r) => r.id === runner.id), undefined);
  const listed = await client.call("GET", "/repos/acme/widgets/actions/runners");
  assert.equal((listed.body as { total_count: number }).total_count, 0);
  assert.equal((await client.call("GET", `/repos/acme/widgets/actions/runners/${runner.id}`)).status, 404);
  assert.deepEqual(
    fake.jobs().filter((j) => j.id === job.id).map((j) => [j.status, j.conclusion]),
    [["completed", "success"]],
  );
});

test("a failing fake-job is reported as conclusion failure and the runner still exits 0", async () => {
  const job = await fake.queueJob({ owner: "acme", repo: "widgets", labels: ["self-hosted"] });
  const runner = await register("jr-e2e-2", ["self-hosted", "linux"]);
  const result = await runRunner(runner.jit, { FAKE_TEST_JOB_EXIT: "3" });
  assert.equal(result.code, 0, result.err);
  assert.match(result.out, /fake-job exited 3; reporting failure/);
  const completed = await fake.waitFor(
    () => hooksFor(job.id).find((h) => h.payload.action === "completed"),
    5000,
    "the completed webhook",
  );
  assert.equal((completed.payload.workflow_job as { conclusion: string }).conclusion, "failure");
});

test("a runner that gets no job exits 0 after FAKE_RUNNER_IDLE_SECONDS and stays registered", async () => {
  const runner = await register("jr-idle", ["gpu-nobody-asks-for"]);
  const started = Date.now();
  const result = await runRunner(runner.jit, { FAKE_RUNNER_IDLE_SECONDS: "1" });
  assert.equal(result.code, 0, result.err);
  assert.match(result.out, /no job within 1s/);
  assert.ok(Date.now() - started < 10_000);
  const after = fake.runners().find((r) => r.id === runner.id);
  assert.deepEqual([after?.status, after?.busy], ["online", false]);
  assert.equal((await client.call("DELETE", `/repos/acme/widgets/actions/runners/${runner.id}`)).status, 204);
});

test("a wrong runner token is a fatal protocol error: exit 1, clear message, no secret printed", async () => {
  const runner = await register("jr-bad-token", ["self-hosted"]);
  const config = JSON.parse(Buffer.from(runner.jit, "base64").toString()) as Record<string, unknown>;
  const forged = Buffer.from(JSON.stringify({ ...config, token: "forged-token-value" })).toString("base64");
  const result = await runRunner(forged);
  assert.equal(result.code, 1);
  assert.match(result.err, /fatal: going online failed: HTTP 401/);
  assert.ok(!`${result.out}${result.err}`.includes("forged-token-value"));

  const missing = await runRunner("");
  assert.equal(missing.code, 1);
  assert.match(missing.err, /ACTIONS_RUNNER_INPUT_JITCONFIG is not set/);
});
