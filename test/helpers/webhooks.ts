import { createHmac, randomUUID } from "node:crypto";
import examples from "@octokit/webhooks-examples";

export type Example = Record<string, any>;

/** GitHub's own example payloads for an event (from @octokit/webhooks-examples). */
export function examplesOf(event: string): Example[] {
  const entry = (examples as unknown as Array<{ name: string; examples: Example[] }>).find((e) => e.name === event);
  if (!entry) throw new Error(`no examples for ${event}`);
  return entry.examples;
}

/** Headers GitHub sends with a delivery, signed over the exact body. */
export function signedHeaders(event: string, body: string, secret: string, deliveryId: string = randomUUID()): Record<string, string> {
  return {
    "content-type": "application/json",
    "x-github-event": event,
    "x-github-delivery": deliveryId,
    "x-hub-signature-256": `sha256=${createHmac("sha256", secret).update(body).digest("hex")}`,
    "user-agent": "GitHub-Hookshot/test",
  };
}

/** A `workflow_job` queued payload built from GitHub's example, with the given fields. */
export function queuedPayload(o: { jobId: number; labels: string[]; owner?: string; repo?: string; runAttempt?: number; installationId?: number; ownerType?: "Organization" | "User" }): Example {
  const base = structuredClone(examplesOf("workflow_job").find((e) => e.action === "queued" && e.workflow_job.status === "queued")!);
  const owner = o.owner ?? "acme";
  const repo = o.repo ?? "app";
  base.workflow_job = { ...base.workflow_job, id: o.jobId, labels: o.labels, run_attempt: o.runAttempt ?? 1, runner_name: null, runner_id: null };
  base.repository = { ...base.repository, name: repo, full_name: `${owner}/${repo}`, private: true, visibility: "private", owner: { ...base.repository.owner, login: owner, type: o.ownerType ?? base.repository.owner.type } };
  base.installation = { id: o.installationId ?? 1 };
  return base;
}
