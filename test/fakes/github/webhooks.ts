// workflow_job webhooks: payloads built from GitHub's own examples
// (@octokit/webhooks-examples), signed with @octokit/webhooks, delivered in
// event order, one at a time per job.
import { createHmac, randomUUID } from "node:crypto";
import { request } from "node:http";
import { createRequire } from "node:module";
import { Webhooks } from "@octokit/webhooks";
import { job as restJob, type Urls } from "./shapes.ts";
import type { FakeJob, FakeState } from "./state.ts";

export type JobAction = "queued" | "waiting" | "in_progress" | "completed";
type Json = Record<string, unknown>;
interface Example extends Json {
  action: string;
  workflow_job: Json & { status: string; conclusion: string | null };
  installation?: Json;
  organization?: Json;
  repository: Json;
}

const DELIVERY_TIMEOUT_MS = 10_000; // what GitHub gives a receiver
const examples: Example[] =
  (createRequire(import.meta.url)("@octokit/webhooks-examples") as Array<{ name: string; examples: Example[] }>).find(
    (d) => d.name === "workflow_job",
  )?.examples ?? [];

function example(pick: (e: Example) => boolean, what: string): Example {
  const found = examples.find(pick);
  if (!found) throw new Error(`@octokit/webhooks-examples has no workflow_job example for ${what}`);
  return found;
}

const TEMPLATES: Record<JobAction, Example> = {
  queued: example((e) => e.action === "queued" && e.workflow_job.status === "queued", "queued"),
  waiting: example((e) => e.action === "waiting", "waiting"),
  in_progress: example((e) => e.action === "in_progress" && e.installation !== undefined, "in_progress"),
  completed: example((e) => e.action === "completed" && e.workflow_job.conclusion === "success", "completed"),
};
const ORGANIZATION = example((e) => e.organization !== undefined, "organization").organization ?? {};
const PUBLICIZED = (() => {
  const all = createRequire(import.meta.url)("@octokit/webhooks-examples") as Array<{ name: string; examples: Example[] }>;
  const found = all.find((d) => d.name === "repository")?.examples.find((e) => e.action === "publicized");
  if (!found) throw new Error("@octokit/webhooks-examples has no repository example for publicized");
  return found;
})();

/** Deep copy with every string passed through `fn`. */
function mapStrings<T>(value: T, fn: (s: string) => string): T {
  if (typeof value === "string") return fn(value) as T;
  if (Array.isArray(value)) return value.map((v: unknown) => mapStrings(v, fn)) as T;
  if (value && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, mapStrings(v, fn)])) as T;
  }
  return value;
}

/**
 * The `workflow_job` payload of `job` now. `installation`: the one covering the job's owner (its id
 * is what a receiver mints a token for); a user's account has no `organization` and an owner of
 * type `User`, as GitHub sends for a personal repository.
 */
export function workflowJobPayload(u: Urls, state: FakeState, installation: { id: number; type: "Organization" | "User" }, job: FakeJob, action: JobAction): Json {
  const t = TEMPLATES[action];
  return {
    action,
    workflow_job: { ...structuredClone(t.workflow_job), ...restJob(u, job) },
    ...ownerParts(u, state, installation, job.owner, job.repo, t),
  };
}

/**
 * The `repository` `publicized` payload GitHub sends an App subscribed to Repository events when
 * `owner/repo` is made public (from GitHub's own example, as the workflow_job ones).
 */
export function publicizedPayload(u: Urls, state: FakeState, installation: { id: number; type: "Organization" | "User" }, owner: string, repo: string): Json {
  return { action: "publicized", ...ownerParts(u, state, installation, owner, repo, PUBLICIZED) };
}

/** The repository, organization, sender and installation of a payload about `owner/repo`, from template `t`. */
function ownerParts(u: Urls, state: FakeState, installation: { id: number; type: "Organization" | "User" }, owner: string, repo: string, t: Example): Json {
  const info = state.repoInfo(owner, repo);
  const fullName = `${info.owner}/${info.name}`;
  const rewrite = (s: string): string =>
    s
      .replaceAll("https://api.github.com", u.api)
      .replaceAll(String(t.repository.full_name), fullName)
      .replaceAll(String((t.repository.owner as Json).login), info.owner);
  const repository = mapStrings(t.repository, rewrite);
  Object.assign(repository, {
    id: info.id,
    node_id: Buffer.from(`010:Repository${info.id}`).toString("base64"),
    name: info.name,
    full_name: fullName,
    private: info.private,
    visibility: info.private ? "private" : "public",
  });
  Object.assign(repository.owner as Json, { login: info.owner, id: info.ownerId, type: installation.type });
  const orgLogin = String(ORGANIZATION.login);
  const organization = mapStrings(ORGANIZATION, (s) => s.replaceAll("https://api.github.com", u.api).replaceAll(orgLogin, info.owner));
  Object.assign(organization, { login: info.owner, id: info.ownerId, description: null });
  return {
    repository,
    ...(installation.type === "Organization" ? { organization } : {}),
    sender: structuredClone(t.sender),
    installation: { id: installation.id, node_id: Buffer.from(`023:IntegrationInstallation${installation.id}`).toString("base64") },
  };
}

export interface DeliveryRecord {
  id: string;
  event: string;
  action: string;
  status: number; // 0: not delivered (no URL, connection failed or timed out)
  jobId: number;
  /** The attempt's own id (GitHub's numeric delivery id; `id` is the event's GUID). */
  attemptId: number;
  deliveredAt: string;
  durationMs: number;
  redelivery: boolean;
  installationId: number | null;
  repositoryId: number | null;
}

interface Sent {
  body: string;
  /** The X-GitHub-Event: `workflow_job`, or `repository` for a repository's own events. */
  event: string;
  action: string;
  jobId: number;
  installationId: number | null;
  repositoryId: number | null;
}

/** An event built and signed-to-be but not yet sent (see `WebhookSender.holding`). */
export interface HeldDelivery {
  id: string;
  jobId: number;
  action: string;
}

export class WebhookSender {
  readonly deliveries: DeliveryRecord[] = [];
  url: string | undefined;
  /**
   * While true, new events are held back instead of sent, until `sendHeld` sends them: GitHub
   * does not promise any order, so a test can deliver them late, shuffled or several times. Each
   * payload is built when its event happens, as GitHub does, not when it is sent.
   */
  holding = false;
  private readonly sent = new Map<string, Sent>();
  private readonly held = new Map<string, Sent>();
  private readonly chains = new Map<number, Promise<unknown>>();
  private readonly webhooks: Webhooks;
  private nextAttemptId = 90_000_000_001;

  constructor(private readonly o: { secret: string; appId: number; hookId: number; url?: string }) {
    this.webhooks = new Webhooks({ secret: o.secret });
    this.url = o.url;
  }

  /**
   * Queue a new delivery behind the job's earlier ones (an event of no job, `jobId` 0, behind the
   * other such); resolves to the receiver's status.
   */
  deliver(jobId: number, action: string, payload: Json, event = "workflow_job"): Promise<number> {
    const [id, sent] = this.newEvent(jobId, action, payload, event);
    if (this.holding) {
      this.held.set(id, sent);
      return Promise.resolve(0);
    }
    return this.enqueue(id, sent);
  }

  /**
   * An attempt GitHub made before the test began, recorded and not sent: a new event (its own
   * X-GitHub-Delivery) whose delivery at `deliveredAt` (ms) got `status` (0: no answer). Its
   * payload is kept, so a redelivery sends it. Attempt ids follow the calls, as GitHub's follow
   * time: record the oldest first, before any delivery made now.
   */
  past(o: { jobId: number; action: string; payload: Json; status: number; deliveredAt: number }): DeliveryRecord {
    const [id, sent] = this.newEvent(o.jobId, o.action, o.payload, "workflow_job");
    return this.attempt(id, sent, { status: o.status, startedAt: o.deliveredAt, durationMs: 0, redelivery: false });
  }

  /** Events held back and not yet sent, oldest first. */
  heldDeliveries(): HeldDelivery[] {
    return [...this.held].map(([id, s]) => ({ id, jobId: s.jobId, action: s.action }));
  }

  /**
   * Sends a held event `times` times, one after the other: the first is its delivery, the others
   * redeliveries (same X-GitHub-Delivery, listed with `redelivery: true`, as GitHub lists them).
   * Resolves with the receiver's statuses.
   */
  async sendHeld(id: string, times = 1): Promise<number[]> {
    const sent = this.held.get(id);
    if (!sent) throw new Error(`no held delivery ${id}`);
    this.held.delete(id);
    const statuses: number[] = [];
    for (let i = 0; i < times; i++) statuses.push(await this.enqueue(id, sent, i > 0));
    return statuses;
  }

  redeliver(id: string): Promise<number> {
    const sent = this.sent.get(id);
    if (!sent) return Promise.reject(new Error(`no delivery ${id}`));
    return this.enqueue(id, sent, true);
  }

  /** Resolves once every queued delivery has been attempted. */
  async idle(): Promise<void> {
    while (this.chains.size > 0) await Promise.allSettled([...this.chains.values()]);
  }

  private enqueue(id: string, sent: Sent, redelivery = false): Promise<number> {
    const previous = this.chains.get(sent.jobId) ?? Promise.resolve();
    const next = previous.then(() => this.post(id, sent, redelivery));
    const tail = next.catch(() => undefined);
    this.chains.set(sent.jobId, tail);
    void tail.then(() => {
      if (this.chains.get(sent.jobId) === tail) this.chains.delete(sent.jobId);
    });
    return next;
  }

  /** A new event of `payload` under a new X-GitHub-Delivery, kept for redeliveries. */
  private newEvent(jobId: number, action: string, payload: Json, event: string): [string, Sent] {
    const id = randomUUID();
    const ids = payload as { installation?: { id?: number }; repository?: { id?: number } };
    const sent = { body: JSON.stringify(payload), event, action, jobId, installationId: ids.installation?.id ?? null, repositoryId: ids.repository?.id ?? null };
    this.sent.set(id, sent);
    return [id, sent];
  }

  private async post(id: string, sent: Sent, redelivery: boolean): Promise<number> {
    const startedAt = Date.now();
    const status = this.url ? await this.send(this.url, id, sent.event, sent.body) : 0;
    return this.attempt(id, sent, { status, startedAt, durationMs: Date.now() - startedAt, redelivery }).status;
  }

  /** Lists an attempt of event `id` (under the next attempt id). */
  private attempt(id: string, sent: Sent, o: { status: number; startedAt: number; durationMs: number; redelivery: boolean }): DeliveryRecord {
    const record: DeliveryRecord = {
      id,
      event: sent.event,
      action: sent.action,
      status: o.status,
      jobId: sent.jobId,
      attemptId: this.nextAttemptId++,
      deliveredAt: new Date(o.startedAt).toISOString().replace(/\.\d{3}Z$/, "Z"),
      durationMs: o.durationMs,
      redelivery: o.redelivery,
      installationId: sent.installationId,
      repositoryId: sent.repositoryId,
    };
    this.deliveries.push(record);
    return record;
  }

  private async send(url: string, id: string, event: string, body: string): Promise<number> {
    const headers = {
      accept: "*/*",
      "content-type": "application/json",
      "content-length": String(Buffer.byteLength(body)),
      "user-agent": "GitHub-Hookshot/8e03811",
      "x-github-delivery": id,
      "x-github-event": event,
      "x-github-hook-id": String(this.o.hookId),
      "x-github-hook-installation-target-id": String(this.o.appId),
      "x-github-hook-installation-target-type": "integration",
      "x-hub-signature": `sha1=${createHmac("sha1", this.o.secret).update(body).digest("hex")}`,
      "x-hub-signature-256": await this.webhooks.sign(body),
    };
    return new Promise<number>((resolve) => {
      const signal = AbortSignal.timeout(DELIVERY_TIMEOUT_MS);
      const req = request(url, { method: "POST", headers, signal }, (res) => {
        res.resume();
        res.on("end", () => resolve(res.statusCode ?? 0));
        res.on("error", () => resolve(0));
      });
      req.on("error", () => resolve(0));
      req.end(body);
    });
  }
}
