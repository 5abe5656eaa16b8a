import type { Redis } from "ioredis";
import { createLogger } from "../../src/logger.ts";
import { Metrics } from "../../src/metrics/metrics.ts";
import type { DemandQueues } from "../../src/queue/demand-queue.ts";
import { githubQueuedLoop, type GitHubQueuedDeps } from "../../src/reconcile/github-queued.ts";
import { ActiveRepos } from "../../src/state/active-repos.ts";
import { RunnerStore } from "../../src/state/runners.ts";
import type { FakeGitHub } from "../fakes/github/index.ts";
import { testConfig } from "./config.ts";
import { githubFor } from "./github.ts";

/**
 * The real ActiveRepos on the test's Redis, with `repos` noted as active now, as the ingress notes
 * a repository whose queued job it took: what the reconcile loops read, with their window and cap.
 */
export async function activeRepos(
  conn: Redis,
  prefix: string,
  repos: ReadonlyArray<{ installationId: number; owner: string; repo: string; scope?: "repository" | "organization" }>,
): Promise<ActiveRepos> {
  const active = new ActiveRepos(conn, prefix);
  for (const r of repos) await active.touch({ installationId: r.installationId, owner: r.owner, repo: r.repo, scope: r.scope ?? "repository" });
  return active;
}

/**
 * The github-queued loop on the real client against `fake`, with `queues` and the stores on `conn`
 * under `prefix`, over `repos`: 10 repositories and 10 runs a pass, silent, unless `over` says otherwise.
 */
export function queuedLoop(fake: FakeGitHub, conn: Redis, prefix: string, queues: DemandQueues, repos: ActiveRepos, over: Partial<GitHubQueuedDeps> = {}) {
  return githubQueuedLoop({
    config: testConfig(),
    github: githubFor(fake),
    demand: queues,
    runners: new RunnerStore(conn, prefix),
    repos,
    intervalMs: 60_000,
    windowMs: 3600_000,
    maxRepositories: 10,
    maxRunsPerPass: 10,
    retryFailedAfterMs: 0,
    metrics: new Metrics({ processMetrics: false }),
    logger: createLogger("silent"),
    ...over,
  });
}
