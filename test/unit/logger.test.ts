/**
 * The logger: secret keys censored wherever the second guard promises (top level, one level down,
 * child bindings) without touching the caller's objects, and the default destination's batching
 * losing nothing: a quiet process's line still comes out while it runs, and what is held when it
 * exits is written before it goes.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { Writable } from "node:stream";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { createLogger } from "../../src/logger.ts";
import { waitFor } from "../helpers/process.ts";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));

function capture(): { sink: Writable; lines: () => Array<Record<string, unknown>> } {
  const out: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      out.push(chunk.toString());
      done();
    },
  });
  const lines = () =>
    out
      .join("")
      .split("\n")
      .filter(Boolean)
      .map((l) => JSON.parse(l) as Record<string, unknown>);
  return { sink, lines };
}

test("secret keys are censored at the top level, one level down and in child bindings; other fields and the caller's objects are untouched", () => {
  const { sink, lines } = capture();
  const log = createLogger("info", sink);
  const nested = { token: "ghs_nested", repo: "acme/app" };
  const fields = { privateKey: "-----BEGIN KEY", jitConfig: "eyJjb25m", runner: "jr-1", github: nested, jobId: 7 };
  log.info(fields, "one");
  log.child({ webhookSecret: "shh", pool: "default" }).info({ encoded_jit_config: "abc", status: { token: "t2" } }, "two");
  const [one, two] = lines();
  assert.deepEqual(one, { ...one, privateKey: "[redacted]", jitConfig: "[redacted]", runner: "jr-1", jobId: 7, github: { token: "[redacted]", repo: "acme/app" }, msg: "one" });
  assert.deepEqual(two, { ...two, webhookSecret: "[redacted]", pool: "default", encoded_jit_config: "[redacted]", status: { token: "[redacted]" }, msg: "two" });
  // The caller's objects keep their values.
  assert.equal(fields.privateKey, "-----BEGIN KEY");
  assert.equal(nested.token, "ghs_nested");
  const all = JSON.stringify(lines());
  for (const secret of ["-----BEGIN KEY", "eyJjb25m", "ghs_nested", "shh", "abc", "t2"]) assert.ok(!all.includes(secret), `${secret} logged`);
});

/** A process that makes the default logger and runs `body` (TypeScript, `log` in scope). */
function loggingProcess(body: string) {
  const script = `import { createLogger } from "./src/logger.ts"; const log = createLogger("info"); ${body}`;
  const child = spawn(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  child.stdout.on("data", (d: Buffer) => (out += d.toString()));
  child.stderr.on("data", (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  return { child, output: () => out, exited };
}

test("a line logged by a process that then stays quiet is written while the process runs", async () => {
  const p = loggingProcess(`log.info({ step: 1 }, "quiet line"); setTimeout(() => undefined, 60_000);`);
  try {
    await waitFor(() => p.output().includes("quiet line"), 20_000, "the line to be written while the process runs");
    assert.equal(p.child.exitCode, null, "the process is still running");
  } finally {
    p.child.kill("SIGKILL");
    await p.exited;
  }
});

test("lines held when the process exits, by process.exit or by an uncaught error, are written first", async () => {
  const lines = Array.from({ length: 5 }, (_, i) => `log.info({ n: ${i} }, "line ${i}");`).join(" ");
  for (const [ending, code] of [
    ["process.exit(3);", 3],
    ["setImmediate(() => { throw new Error('boom'); });", 1],
  ] as const) {
    const p = loggingProcess(`${lines} ${ending}`);
    assert.equal(await p.exited, code);
    for (let i = 0; i < 5; i++) assert.match(p.output(), new RegExp(`"msg":"line ${i}"`), `${ending}: line ${i}`);
  }
});
