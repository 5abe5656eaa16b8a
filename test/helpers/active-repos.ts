import type { Redis } from "ioredis";
import { ActiveRepos } from "../../src/state/active-repos.ts";

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
