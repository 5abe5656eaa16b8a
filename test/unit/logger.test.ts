/**
 * The logger: secret keys censored wherever the second guard promises (top level, one level down,
 * child bindings) without touching the caller's objects, and the default destination's batching
 * losing nothing: a quiet process's line still comes out while it runs, and what is held when it
 * exits is written before it goes.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { connect } from "node:net";
import { Writable } from "node:stream";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import Fastify, { type FastifyBaseLogger } from "fastify";
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

test("an error's text is redacted, as a logged message and as an Error with causes, its frames kept and a Redis command's arguments left out", () => {
  const { sink, lines } = capture();
  const log = createLogger("info", sink);
  const token = `ghs_${"A1b2C3".repeat(7)}`;
  const jit = Buffer.from(JSON.stringify({ ".runner": "x".repeat(80) })).toString("base64");
  log.warn({ err: `Bad credentials: Bearer ${token}` }, "as a message");
  const cause = new Error(`runner config ${jit} refused`);
  const err = Object.assign(new Error(`token=${token} failed`, { cause }), { command: { name: "set", args: ["k", token] } });
  log.error({ err }, "as an Error");
  const text = lines().map((l) => JSON.stringify(l)).join("\n");
  assert.ok(!text.includes(token) && !text.includes(jit), text);
  const [asMessage, asError] = lines();
  assert.equal(asMessage?.err, "Bad credentials: Bearer [redacted]");
  const e = asError?.err as { message: string; stack: string; command: unknown };
  assert.equal(e.message, "token=[redacted] failed: runner config [redacted] refused");
  assert.match(e.stack, /^Error: token=\[redacted\] failed\n {4}at /);
  assert.match(e.stack, /caused by: Error: runner config \[redacted\] refused/);
  assert.match(e.stack, /logger\.test\.ts:\d+/, "the frames are kept");
  assert.deepEqual(e.command, { name: "set" });
});

test("at trace level, a request the HTTP parser refuses is logged without its raw bytes (its Authorization header)", async () => {
  const { sink, lines } = capture();
  const app = Fastify({ loggerInstance: createLogger("trace", sink) as FastifyBaseLogger });
  await app.listen({ host: "127.0.0.1", port: 0 });
  try {
    const { port } = app.server.address() as { port: number };
    const token = "admin-token-Q8w2e4r6t8y0";
    // A header line without a colon: Node's parser fails it, and the error it gives Fastify's
    // client error handler carries the bytes read so far (rawPacket).
    const answer = await new Promise<string>((resolve, reject) => {
      const socket = connect(port, "127.0.0.1", () => socket.write(`GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\nbroken header\r\n\r\n`));
      let got = "";
      socket.on("data", (d: Buffer) => (got += d.toString()));
      socket.on("close", () => resolve(got));
      socket.on("error", reject);
    });
    assert.match(answer, /^HTTP\/1\.1 400/);
    await waitFor(() => lines().some((l) => l.msg === "client error"), 5000, "the client error's log line");
    const line = lines().find((l) => l.msg === "client error")!;
    assert.equal((line.err as { code?: string }).code, "HPE_INVALID_HEADER_TOKEN");
    // A Buffer is logged as its bytes ({ type: "Buffer", data: [...] }): read them as text too.
    const text = JSON.stringify(lines(), (_key, value: unknown) =>
      value !== null && typeof value === "object" && (value as { type?: string }).type === "Buffer" ? Buffer.from((value as { data: number[] }).data).toString() : value,
    );
    assert.ok(!text.includes(token), `the token was logged: ${text}`);
  } finally {
    await app.close();
  }
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
