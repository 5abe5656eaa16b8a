import type { Logger } from "pino";
import type { PoolConfig } from "../config/load.ts";
import { errorMessage } from "../errors.ts";
import type { GitHubClient, RepositoryVisibility, RunnerGroupSummary } from "../github/client.ts";
import { isPublicRepository } from "../ingress/policy.ts";

/**
 * Why a pool's warm runners may not be registered now: where they register, GitHub would hand
 * them jobs of a public repository (`public_repository`: the warm repository is public;
 * `public_runner_group`: the organization pool's runner group admits public repositories), or
 * GitHub could not be asked (`visibility_unknown`: the lookup failed, or the group is not there).
 */
export type WarmRefusal = "public_repository" | "public_runner_group" | "visibility_unknown";

/** What GitHub said about where a pool's warm runners register. */
export type WarmTargetFacts =
  | { kind: "repository"; repository: RepositoryVisibility }
  /** `group` undefined: the organization has no such group. */
  | { kind: "organization"; group: RunnerGroupSummary | undefined }
  /** The lookup failed: nothing is known. */
  | { kind: "unknown" };

/**
 * Whether warm runners of `pool` may register where `facts` say they would. A job's refusal of a
 * public repository (decideQueued) never sees the jobs GitHub hands a warm runner: GitHub routes
 * by labels, so an idle registered runner takes any matching job of its repository (or of any
 * repository its runner group admits), a fork's pull request included. So the registration itself
 * is refused, by the same rule: unless the pool allows public repositories. Pure.
 */
export function warmRefusal(pool: Pick<PoolConfig, "allowPublicRepositories">, facts: WarmTargetFacts): WarmRefusal | undefined {
  if (pool.allowPublicRepositories) return undefined;
  switch (facts.kind) {
    case "repository":
      return isPublicRepository(facts.repository) ? "public_repository" : undefined;
    case "organization":
      if (!facts.group) return "visibility_unknown";
      return facts.group.allowsPublicRepositories ? "public_runner_group" : undefined;
    case "unknown":
      return "visibility_unknown";
  }
}

/** How long GitHub's answer is trusted: a repository made public is noticed within this long. */
export const WARM_CHECK_TTL_MS = 5 * 60_000;
/** How soon a lookup that failed is tried again (warm launches wait meanwhile). */
export const WARM_CHECK_RETRY_MS = 60_000;
/**
 * How soon after GitHub was asked a recheck (a repository made public, see `recheck`) asks again:
 * whoever replays one signed `publicized` delivery costs each worker one call per pool this often.
 */
export const WARM_RECHECK_MIN_MS = 10_000;

export interface WarmExposureDeps {
  github: GitHubClient;
  logger: Logger;
  ttlMs?: number;
  retryMs?: number;
  recheckMinMs?: number;
  now?: () => number;
}

interface Verdict {
  refusal: WarmRefusal | undefined;
  /** When GitHub was asked (ms since epoch). */
  asked: number;
  /** Asked again after this (ms since epoch). */
  until: number;
}

/**
 * The warm-runner check of every pool, asked of GitHub at most once per WARM_CHECK_TTL_MS per pool
 * (once per WARM_CHECK_RETRY_MS while the lookup fails), not per launch: `GET /repos/{owner}/{repo}`
 * for a repository pool, `GET /orgs/{org}/actions/runner-groups` for an organization pool. A pool
 * that allows public repositories costs no call. Each change of a pool's verdict is logged once.
 */
export class WarmExposure {
  readonly #d: WarmExposureDeps;
  readonly #verdicts = new Map<string, Verdict>();
  /** The refusal last logged per pool ("" for none): a repeat is not logged again. */
  readonly #said = new Map<string, string>();

  constructor(deps: WarmExposureDeps) {
    this.#d = deps;
  }

  /**
   * Why `pool`'s warm runners may not be launched now, or undefined when they may. Never throws:
   * a failed lookup is a refusal (fail closed). One caller per pool (its warm loop). A lookup cut
   * short by `signal` (the worker stopping) is a refusal that is neither kept nor logged.
   */
  async refusal(pool: PoolConfig, signal?: AbortSignal): Promise<WarmRefusal | undefined> {
    if (pool.allowPublicRepositories || !pool.warm) return undefined;
    const now = this.#d.now ?? Date.now;
    const kept = this.#verdicts.get(pool.name);
    if (kept && now() < kept.until) return kept.refusal;
    let facts: WarmTargetFacts;
    let failure: string | undefined;
    try {
      facts = await this.#facts(pool, signal);
    } catch (err) {
      if (signal?.aborted) return "visibility_unknown";
      facts = { kind: "unknown" };
      failure = errorMessage(err);
    }
    const refusal = warmRefusal(pool, facts);
    const ttl = refusal === "visibility_unknown" ? (this.#d.retryMs ?? WARM_CHECK_RETRY_MS) : (this.#d.ttlMs ?? WARM_CHECK_TTL_MS);
    const asked = now();
    this.#verdicts.set(pool.name, { refusal, asked, until: asked + ttl });
    this.#say(pool, refusal, failure);
    return refusal;
  }

  /**
   * Has the pool's next `refusal` ask GitHub again, not before WARM_RECHECK_MIN_MS after the last
   * time it did: GitHub said its warm repository was made public (a `repository` webhook).
   */
  recheck(poolName: string): void {
    const kept = this.#verdicts.get(poolName);
    if (kept) kept.until = Math.min(kept.until, kept.asked + (this.#d.recheckMinMs ?? WARM_RECHECK_MIN_MS));
  }

  async #facts(pool: PoolConfig, signal: AbortSignal | undefined): Promise<WarmTargetFacts> {
    const { installationId, owner, repo } = pool.warm!;
    if (pool.scope === "repository") {
      return { kind: "repository", repository: await this.#d.github.getRepositoryVisibility(installationId, owner, repo ?? "", { signal }) };
    }
    const group = pool.runnerGroup === undefined ? { id: pool.runnerGroupId ?? 1 } : { name: pool.runnerGroup };
    return { kind: "organization", group: await this.#d.github.getRunnerGroup({ installationId, owner }, group, { signal }) };
  }

  /** Logs a pool's verdict when it differs from the one logged last (the first allowed one is not news). */
  #say(pool: PoolConfig, refusal: WarmRefusal | undefined, failure: string | undefined): void {
    const before = this.#said.get(pool.name) ?? "";
    this.#said.set(pool.name, refusal ?? "");
    if ((refusal ?? "") === before) return;
    const { owner, repo } = pool.warm!;
    const where = pool.scope === "repository" ? { owner, repo } : { owner, runnerGroup: pool.runnerGroup ?? pool.runnerGroupId ?? 1 };
    const log = this.#d.logger.child({ pool: pool.name, ...where });
    if (refusal === undefined) {
      log.info("warm runners allowed again: their repository or runner group admits no public repository");
    } else if (refusal === "visibility_unknown") {
      log.warn(
        { reason: refusal, err: failure ?? "runner group not found" },
        "no warm runners launched until GitHub says whether public repositories' jobs could reach them (asked again every minute)",
      );
    } else {
      log.warn(
        { reason: refusal },
        refusal === "public_repository"
          ? "warm repository is public: no warm runners launched and idle ones removed (anyone's pull request could run on them); set allowPublicRepositories to allow it"
          : "runner group admits public repositories: no warm runners launched and idle ones removed (anyone's pull request could run on them); set allowPublicRepositories to allow it",
      );
    }
  }
}
