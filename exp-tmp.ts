import { Redis } from "ioredis";
import { DemandConsumer, DemandQueues } from "./src/queue/demand-queue.ts";
const prefix = "exp" + Date.now();
const settings = { redisUrl: "redis://127.0.0.1:6390", prefix, attempts: 3 };
const r1 = new Redis("redis://127.0.0.1:6390", { maxRetriesPerRequest: null });
const r2 = new Redis("redis://127.0.0.1:6390", { maxRetriesPerRequest: null });
const q = new DemandQueues(settings as never, r1);
const c = new DemandConsumer(settings as never, r2, "default", "w1");
await c.start();
const took: Record<number, number> = {};
let stop = false;
const loop = (async () => { while (!stop) { const l = await c.next(); if (l) { took[l.demand.jobId] = Date.now() - l.demand.receivedAt; await new Promise((r) => setTimeout(r, Number(process.argv[3] ?? 0))); } } })();
await new Promise((r) => setTimeout(r, 2500));
const mk = (jobId: number) => ({ pool: "default", jobId, runId: 1, runAttempt: 1, owner: "o", repo: "r", installationId: 1, labels: ["x"], receivedAt: Date.now(), deliveryId: String(jobId) });
for (let round = 0; round < 5; round++) {
  for (let i = 0; i < 3; i++) { await q.add(mk(round * 10 + i)); await new Promise((r) => setTimeout(r, Number(process.argv[2] ?? 10))); }
  await new Promise((r) => setTimeout(r, 4500));
}
console.log(JSON.stringify(took));
stop = true; await loop; await c.close(); await q.close(); r1.disconnect(); r2.disconnect();
