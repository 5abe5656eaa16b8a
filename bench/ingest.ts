/**
 * Ingest: signed `workflow_job` queued deliveries through the real `jitrunner server` (its real
 * start(), Ingress and BullMQ DemandQueues on a real Redis) against a bare Fastify route that only
 * reads the body. Same payloads, same load generator (autocannon, loopback, keep-alive), bounded
 * in count and in time. Every delivery carries a job id and a delivery id never sent before, so
 * each one is new demand that must reach BullMQ.
 */
import { createHmac, randomUUID } from "node:crypto";
import { statSync } from "node:fs";
import { join } from "node:path";
import autocannon from "autocannon";
import { Queue } from "bullmq";
import { Redis } from "ioredis";
import { testPrivateKey, WEBHOOK_SECRET } from "../test/helpers/config.ts";
import { freePort } from "../test/helpers/ports.ts";
import { waitFor } from "../test/helpers/process.ts";
import { queuedPayload } from "../test/helpers/webhooks.ts";
import { JOB_LABELS, POOL, startJitrunner } from "./lib/jitrunner.ts";
import { commandDelta, machineCpu, sample, spawnNode, type BenchRedis, type Child, type ProcSample } from "./lib/procs.ts";
import { summarize, type Summary } from "./lib/stats.ts";

const ROUNDS = Number(process.env.BENCH_INGEST_ROUNDS ?? 5);
const SATURATION_AMOUNT = Number(process.env.BENCH_INGEST_AMOUNT ?? 12_000);
const SATURATION_CONNECTIONS = Number(process.env.BENCH_INGEST_CONNECTIONS ?? 32);
/** One request at a time on one connection: latency with no queueing anywhere. */
const SERIAL_AMOUNT = 2_000;
/**
 * Deliveries to each target before the first measured round. With 2,000, both targets' CPU per
 * delivery still fell over the first rounds (jitrunner's from about 0.2 ms to 0.12 ms by its
 * 30,000th delivery, the bare route's by half), so the first round measured a process still warming up.
 */
const WARMUP_AMOUNT = Number(process.env.BENCH_INGEST_WARMUP ?? 30_000);
const WARMUP_PIECE = 5_000;
const RUN_TIMEOUT_S = 45;

interface Prepared {
  body: Buffer;
  headers: Record<string, string>;
}

export interface LoadRun {
  target: "bare" | "real";
  mode: "saturation" | "serial";
  connections: number;
  sent: number;
  ok: number;
  other: number;
  errors: number;
  /** bodies taken more than once (a pool wrap); 0 means every request was new demand */
  reused: number;
  seconds: number;
  rps: number;
  latency: Summary;
  /** CPU of the target process (and of Redis) per request, ms */
  cpuMsPerReq: number;
  redisCpuMsPerReq: number;
  /** CPU of the load generator (this process) per request, ms */
  generatorCpuMsPerReq: number;
  /** CPU cores used by processes other than target, Redis and generator during the run (other work on the machine) */
  otherCores: number;
  /** share of the machine's CPU time stolen by the hypervisor during the run */
  stealPct: number;
  redisCommandsPerReq: number;
  /** socket reads Redis served per request: how many separate writes its clients made (batched commands count once) */
  redisReadsPerReq: number;
  redisByCommand: Map<string, number>;
  stoppedByTimeout: boolean;
}

export interface IngestResult {
  bodyBytes: number;
  runs: LoadRun[];
  /** demand in BullMQ after all real runs, against 202s the real server gave */
  queuedInBullmq: number;
  acceptedByReal: number;
  metricQueued: number;
  serverAfter: ProcSample;
  bareAfter: ProcSample;
  logBytes: number;
  config: { warmupAmount: number; rounds: number; saturationAmount: number; saturationConnections: number; serialAmount: number };
}

// Job ids far above anything GitHub's examples use, and unique for the whole run.
let nextJobId = 61_000_000_001;
const SENTINEL = 999_999_999_999;

/**
 * `n` deliveries' bodies and headers, made once and given new job ids, delivery ids and signatures
 * in place for each use (restamp). Each round needs some 100 MB of bodies: made anew for each, the
 * last round's became garbage that the generator (this process) collected during the next load,
 * costing whichever target came first in a round half as much again of the generator's CPU per
 * request (the bare route, bound by the generator, ran 20-40% slower then).
 */
class Deliveries {
  readonly items: Prepared[] = [];
  /** Where the job id is in every body (one template, ids of one length). */
  readonly #offsets: number[];
  readonly #idLength: number;

  constructor(n: number) {
    const template = JSON.stringify(queuedPayload({ jobId: SENTINEL, labels: JOB_LABELS, owner: "acme", repo: "app" }));
    if (!template.includes(String(SENTINEL))) throw new Error("payload template lost its job id");
    const first = String(nextJobId);
    this.#idLength = first.length;
    const text = template.replaceAll(String(SENTINEL), first);
    this.#offsets = [];
    for (let at = text.indexOf(first); at !== -1; at = text.indexOf(first, at + first.length)) this.#offsets.push(Buffer.byteLength(text.slice(0, at)));
    for (let i = 0; i < n; i++) this.items.push({ body: Buffer.from(text), headers: {} });
  }

  /** Gives every item a job id and a delivery id never sent before, and its signature: before each use. */
  restamp(): this {
    for (const item of this.items) {
      const id = String(nextJobId++);
      if (id.length !== this.#idLength) throw new Error("job ids outgrew the template's width");
      for (const at of this.#offsets) item.body.write(id, at, "latin1");
      item.headers = {
        "content-type": "application/json",
        "user-agent": "GitHub-Hookshot/bench",
        "x-github-event": "workflow_job",
        "x-github-delivery": randomUUID(),
        "x-hub-signature-256": `sha256=${createHmac("sha256", WEBHOOK_SECRET).update(item.body).digest("hex")}`,
      };
    }
    return this;
  }
}

async function load(
  target: "bare" | "real",
  url: string,
  bodies: Prepared[],
  opts: { mode: "saturation" | "serial"; connections: number; amount: number },
  proc: Child,
  redis: BenchRedis,
): Promise<LoadRun> {
  let taken = 0;
  let reused = 0;
  const latencies: number[] = [];
  let ok = 0;
  let other = 0;
  let errors = 0;
  const before = {
    proc: sample(proc.pid),
    redisCpu: await redis.cpuMs(),
    redisReads: await redis.readsProcessed(),
    cmds: await redis.commandstats(),
    gen: process.cpuUsage(),
    machine: machineCpu(),
  };
  const started = performance.now();
  // autocannon ends a run on its next 1-second tick, so its own duration is rounded up to whole
  // seconds: the run's length here is first request to last response.
  let lastResponse = started;
  let stoppedByTimeout = false;
  await new Promise<void>((resolve, reject) => {
    const instance = autocannon(
      {
        url: `${url}/webhooks/github`,
        connections: opts.connections,
        pipelining: 1,
        amount: opts.amount,
        timeout: 10,
        requests: [
          {
            method: "POST",
            path: "/webhooks/github",
            setupRequest: (req) => {
              if (taken >= bodies.length) reused++;
              const p = bodies[taken++ % bodies.length]!;
              return { ...req, method: "POST", path: "/webhooks/github", headers: p.headers, body: p.body };
            },
          },
        ],
      },
      (err) => {
        clearTimeout(timer);
        if (err) reject(err);
        else resolve();
      },
    );
    const timer = setTimeout(() => {
      stoppedByTimeout = true;
      instance.stop();
    }, RUN_TIMEOUT_S * 1000);
    const events = instance as unknown as NodeJS.EventEmitter;
    events.on("response", (_client: unknown, status: number, _bytes: number, responseTime: number) => {
      lastResponse = performance.now();
      if (status >= 200 && status < 300) {
        ok++;
        latencies.push(responseTime);
      } else other++;
    });
    events.on("reqError", () => errors++);
  });
  const seconds = (lastResponse - started) / 1000;
  const wallSeconds = (performance.now() - started) / 1000;
  const gen = process.cpuUsage(before.gen);
  const machine = machineCpu();
  const after = { proc: sample(proc.pid), redisCpu: await redis.cpuMs(), redisReads: await redis.readsProcessed(), cmds: await redis.commandstats() };
  const sent = ok + other + errors;
  const cmds = commandDelta(before.cmds, after.cmds);
  return {
    target,
    mode: opts.mode,
    connections: opts.connections,
    sent,
    ok,
    other,
    errors,
    // The pool holds `amount` + a margin; builds beyond it would be repeats.
    reused,
    seconds,
    rps: ok / seconds,
    latency: summarize(latencies),
    cpuMsPerReq: (after.proc.cpuMs - before.proc.cpuMs) / Math.max(1, sent),
    redisCpuMsPerReq: (after.redisCpu - before.redisCpu) / Math.max(1, sent),
    generatorCpuMsPerReq: (gen.user + gen.system) / 1000 / Math.max(1, sent),
    otherCores: Math.max(
      0,
      (machine.processMs - before.machine.processMs - (after.proc.cpuMs - before.proc.cpuMs) - (after.redisCpu - before.redisCpu) - (gen.user + gen.system) / 1000) /
        (wallSeconds * 1000),
    ),
    stealPct: (100 * (machine.stealMs - before.machine.stealMs)) / Math.max(1, machine.totalMs - before.machine.totalMs),
    redisCommandsPerReq: cmds.total / Math.max(1, sent),
    redisReadsPerReq: (after.redisReads - before.redisReads) / Math.max(1, sent),
    redisByCommand: cmds.byCommand,
    stoppedByTimeout,
  };
}

export async function runIngest(dir: string, redis: BenchRedis, progress: (msg: string) => void): Promise<IngestResult> {
  const prefix = "bench-ingest";
  const barePort = await freePort();
  const bareLog = join(dir, "bare-route.log");
  const bare = spawnNode(["bench/bare-route.ts", String(barePort)], bareLog);
  const bareUrl = `http://127.0.0.1:${barePort}`;
  await waitFor(async () => (await fetch(`${bareUrl}/healthz`)).ok, 30_000, "bare route to listen");
  const server = await startJitrunner({
    dir,
    name: "ingest-server",
    mode: "server",
    redisUrl: redis.url,
    prefix,
    privateKey: testPrivateKey(),
    appId: 1,
    apiUrl: "http://127.0.0.1:9/",
    pools: [{ name: POOL, labels: ["self-hosted", "linux", "x64"], image: "unused-by-the-server:latest" }],
  });
  const targets = { bare: { url: bareUrl, proc: bare }, real: { url: server.url, proc: server.proc } } as const;
  const runs: LoadRun[] = [];
  try {
    // Every load's bodies are new to jitrunner, and both targets of a round get the same ones (the
    // bare route keeps nothing); made once, and restamped for each round and warm-up piece.
    const margin = 4 * SATURATION_CONNECTIONS + 100;
    const saturation = new Deliveries(Math.max(SATURATION_AMOUNT, WARMUP_PIECE) + margin);
    const serial = new Deliveries(SERIAL_AMOUNT + margin);
    progress(`ingest: warm-up, ${WARMUP_AMOUNT} deliveries to each target`);
    let warmAccepted = 0;
    for (let left = WARMUP_AMOUNT; left > 0; left -= WARMUP_PIECE) {
      const amount = Math.min(left, WARMUP_PIECE);
      const warm = saturation.restamp().items;
      for (const t of ["bare", "real"] as const) {
        const w = await load(t, targets[t].url, warm, { mode: "saturation", connections: SATURATION_CONNECTIONS, amount }, targets[t].proc, redis);
        if (t === "real") warmAccepted += w.ok;
      }
    }
    for (let round = 1; round <= ROUNDS; round++) {
      const satBodies = saturation.restamp().items;
      const serialBodies = serial.restamp().items;
      const order: Array<"bare" | "real"> = round % 2 === 1 ? ["bare", "real"] : ["real", "bare"];
      for (const t of order) {
        progress(`ingest: round ${round}/${ROUNDS}, ${t === "bare" ? "bare Fastify route" : "jitrunner server"}: ${SATURATION_AMOUNT} deliveries, ${SATURATION_CONNECTIONS} connections`);
        runs.push(
          await load(t, targets[t].url, satBodies, { mode: "saturation", connections: SATURATION_CONNECTIONS, amount: SATURATION_AMOUNT }, targets[t].proc, redis),
        );
        progress(`ingest: round ${round}/${ROUNDS}, ${t}: ${SERIAL_AMOUNT} deliveries one at a time`);
        runs.push(
          await load(t, targets[t].url, serialBodies, { mode: "serial", connections: 1, amount: SERIAL_AMOUNT }, targets[t].proc, redis),
        );
      }
    }
    // Every 2xx of the real server must be one demand item in BullMQ.
    const conn = new Redis(redis.url, { maxRetriesPerRequest: null });
    const queue = new Queue(`demand-${POOL}`, { connection: conn, prefix: `${prefix}:bull` });
    const counts = await queue.getJobCounts("wait", "delayed", "prioritized", "active", "completed", "failed");
    await queue.close();
    conn.disconnect();
    const queuedInBullmq = Object.values(counts).reduce((a, b) => a + b, 0);
    const metricQueued = await fetch(`${server.url}/metrics`)
      .then((r) => r.text())
      .then((t) => Number(/jitrunner_webhook_deliveries_total\{event="workflow_job",action="queued",outcome="queued"\} (\d+)/.exec(t)?.[1] ?? Number.NaN));
    return {
      bodyBytes: serial.items[0]!.body.length,
      runs,
      queuedInBullmq,
      acceptedByReal: runs.filter((r) => r.target === "real").reduce((a, r) => a + r.ok, 0) + warmAccepted,
      metricQueued,
      serverAfter: sample(server.proc.pid),
      bareAfter: sample(bare.pid),
      logBytes: statSync(server.logFile).size,
      config: {
        warmupAmount: WARMUP_AMOUNT,
        rounds: ROUNDS,
        saturationAmount: SATURATION_AMOUNT,
        saturationConnections: SATURATION_CONNECTIONS,
        serialAmount: SERIAL_AMOUNT,
      },
    };
  } finally {
    await server.proc.stop();
    await bare.stop();
  }
}
