#!/usr/bin/env node
// The fake runner of test/fakes/PROTOCOL.md: registers online with the fake
// GitHub over its unix socket, takes one job, runs `fake-job`, reports, exits 0.
// Plain Node ESM, node: built-ins only. Never prints the JIT config or its token.
import { spawn } from "node:child_process";
import { request } from "node:http";
import { setTimeout as sleep } from "node:timers/promises";

const POLL_MS = 250;
const CALL_TIMEOUT_MS = 10_000;
const CONNECT_ATTEMPTS = 5;

const log = (msg) => console.log(`[fake-runner] ${new Date().toISOString()} ${msg}`);

function fatal(msg) {
  console.error(`[fake-runner] fatal: ${msg}`);
  process.exit(1);
}

function readJitConfig() {
  const raw = process.env.ACTIONS_RUNNER_INPUT_JITCONFIG;
  delete process.env.ACTIONS_RUNNER_INPUT_JITCONFIG; // as the real runner does: not passed on to the job
  if (!raw) fatal("ACTIONS_RUNNER_INPUT_JITCONFIG is not set");
  let config;
  try {
    config = JSON.parse(Buffer.from(raw, "base64").toString("utf8"));
  } catch {
    fatal("ACTIONS_RUNNER_INPUT_JITCONFIG is not base64-encoded JSON"); // the parser's message could quote the secret
  }
  const ok = config?.fake === true && Number.isInteger(config.runnerId) && typeof config.token === "string" && typeof config.name === "string";
  if (!ok) fatal("ACTIONS_RUNNER_INPUT_JITCONFIG is not a fake JIT config (needs fake, runnerId, name, token)");
  return config;
}

function post(socketPath, path, body) {
  const text = JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = request(
      {
        socketPath,
        path,
        method: "POST",
        headers: { "content-type": "application/json", "content-length": Buffer.byteLength(text) },
        signal: AbortSignal.timeout(CALL_TIMEOUT_MS),
      },
      (res) => {
        const chunks = [];
        res.on("data", (c) => chunks.push(c));
        res.on("end", () => {
          const data = Buffer.concat(chunks).toString("utf8");
          let json;
          try {
            json = data ? JSON.parse(data) : undefined;
          } catch {
            json = undefined;
          }
          resolve({ status: res.statusCode ?? 0, json });
        });
        res.on("error", reject);
      },
    );
    req.on("error", reject);
    req.end(text);
  });
}

/** POST to the fake; retries only when the socket cannot be reached, a bounded number of times. */
async function call(socketPath, path, body) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await post(socketPath, path, body);
    } catch (err) {
      const transient = ["ENOENT", "ECONNREFUSED", "ECONNRESET"].includes(err?.code);
      if (!transient || attempt >= CONNECT_ATTEMPTS) fatal(`cannot reach fake GitHub at ${socketPath} (${path}): ${err?.code ?? err?.name ?? "error"}`);
      await sleep(200 * attempt);
    }
  }
}

function expectOk(res, what) {
  if (res.status === 200 || res.status === 204) return;
  fatal(`${what} failed: HTTP ${res.status} ${res.json?.message ?? ""}`.trim());
}

function runJob(job, timeoutSeconds) {
  return new Promise((resolve) => {
    const env = { ...process.env, FAKE_JOB_ID: String(job.id), FAKE_JOB_REPOSITORY: `${job.owner}/${job.repo}` };
    const child = spawn("fake-job", [], { stdio: ["ignore", "inherit", "inherit"], env });
    const timer = setTimeout(() => {
      log(`fake-job still running after ${timeoutSeconds}s; killing it`);
      child.kill("SIGKILL");
    }, timeoutSeconds * 1000);
    child.on("error", (err) => {
      clearTimeout(timer);
      log(`fake-job could not start: ${err.code ?? err.message}`);
      resolve(1);
    });
    child.on("exit", (code, signal) => {
      clearTimeout(timer);
      resolve(code ?? (signal ? 128 : 1));
    });
  });
}

async function main() {
  const config = readJitConfig();
  const socketPath = process.env.FAKE_GITHUB_SOCKET || "/fake-github/github.sock";
  const idleSeconds = Number(process.env.FAKE_RUNNER_IDLE_SECONDS || 600);
  const jobTimeoutSeconds = Number(process.env.FAKE_JOB_TIMEOUT_SECONDS || 3600);
  const base = `/_fake/runners/${config.runnerId}`;
  const auth = { token: config.token };

  log(`runner ${config.name} (id ${config.runnerId}) starting, labels ${config.labels?.join(",") ?? ""}`);
  expectOk(await call(socketPath, `${base}/online`, auth), "going online");
  log("online; waiting for a job");

  const deadline = Date.now() + idleSeconds * 1000;
  let job;
  while (!job && Date.now() < deadline) {
    const res = await call(socketPath, `${base}/acquire`, auth);
    expectOk(res, "acquiring a job");
    if (res.status === 200) job = res.json?.job;
    else await sleep(POLL_MS);
  }
  if (!job) {
    log(`no job within ${idleSeconds}s; exiting`);
    return;
  }
  if (!Number.isInteger(job.id)) fatal("acquire answered 200 without a job id");
  log(`acquired job ${job.id} of ${job.owner}/${job.repo} (run ${job.run_id}, attempt ${job.run_attempt}); running fake-job`);

  const code = await runJob(job, jobTimeoutSeconds);
  const conclusion = code === 0 ? "success" : "failure";
  log(`fake-job exited ${code}; reporting ${conclusion}`);
  expectOk(await call(socketPath, `${base}/complete`, { ...auth, jobId: job.id, conclusion }), "reporting completion");
  log("reported; exiting");
}

main().catch((err) => fatal(err?.message ?? String(err)));
