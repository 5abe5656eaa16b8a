import type { Logger } from "pino";
import type { PoolConfig } from "../config/load.ts";
import { errorMessage } from "../errors.ts";
import type { GitHubClient, RepositoryVisibility, RunnerGroupSummary } from "../github/client.ts";
import { isPublicRepository } from "../ingress/policy.ts";

/**
 * Why a pool's warm runners may not be registered now: where they register, GitHub would hand
 * them jobs of a public repository (`public_repository`: the warm repository is public;
 * `public_runner_group`: the organization pool's runner group admits public repositories), the
 * organization has no such runner group (`runner_group_missing`), or GitHub could not be asked
 * (`visibility_unknown`: the lookup failed).
 */
export type WarmRefusal = "public_repository" | "public_runner_group" | "runner_group_missing" | "visibility_unknown";

/**
 * Why a pool's runner may not be launched for a job: a warm refusal, or the organization pool's
 * runner group does not admit the job's repository, so GitHub would never hand the job to that
 * runner: `repository_not_in_group`, the group admits only selected repositories and not the
 * job's; `public_repository_not_admitted`, the job's repository is public and the group admits no
 * public repository (admitsPublicRepositories).
 */
export type Refusal = WarmRefusal | AdmissionRefusal;

/** The refusals that say the group does not admit a job's repository (see Refusal). */
export type AdmissionRefusal = "repository_not_in_group" | "public_repository_not_admitted";

function isAdmissionRefusal(refusal: Refusal | undefined): refusal is AdmissionRefusal {
  return refusal === "repository_not_in_group" || refusal === "public_repository_not_admitted";
}

/**
 * Whether GitHub hands the group's runners jobs of the organization's public repositories: only
 * when the group allows public repositories (`allows_public_repositories`, off by default) and its
 * repository access is not "Private repositories" (`visibility: private`, which admits private and
 * internal repositories only). A public repository a group of selected repositories lists is not
 * admitted either without `allows_public_repositories`.
 */
export function admitsPublicRepositories(group: Pick<RunnerGroupSummary, "allowsPublicRepositories" | "visibility">): boolean {
  return group.allowsPublicRepositories && group.visibility !== "private";
}

/** What GitHub said about where a pool's warm runners register. */
export type WarmTargetFacts =
  | { kind: "repository"; repository: RepositoryVisibility }
  /**
   * `group` undefined: the organization has no such group. `repositories`: the names (lower
   * case) of the repositories a group of visibility `selected` admits; undefined when it admits
   * all (or more than the client lists: then none is refused).
   */
  | { kind: "organization"; group: RunnerGroupSummary | undefined; repositories?: ReadonlySet<string> }
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
      if (!facts.group) return "runner_group_missing";
      // On the safe side: GitHub's own word that the group allows public repositories, whatever
      // its visibility says (that "Private repositories" keeps them out is what GitHub's UI says,
      // not its API), refuses a pool that serves no public repository.
      return facts.group.allowsPublicRepositories ? "public_runner_group" : undefined;
    case "unknown":
      return "visibility_unknown";
  }
}

/** How long GitHub's answer is trusted: a repository made public is noticed within this long. */
export const WARM_CHECK_TTL_MS = 5 * 60_000;
/**
 * A job's launch that finds an answer this far into its life (4 of its 5 minutes) takes it and has
 * GitHub asked again meanwhile: in an organization that keeps launching, no launch waits for the
 * lookup, and no answer is trusted longer than WARM_CHECK_TTL_MS for it.
 */
export const WARM_CHECK_REFRESH_AT = 0.8;
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
  /** The repositories the organization pool's runner group admits, when it admits only some (WarmTargetFacts). */
  admits?: ReadonlySet<string>;
  /** False when the organization pool's runner group admits no public repository (admitsPublicRepositories); undefined when not known. */
  admitsPublic?: boolean;
  /** When GitHub was asked (ms since epoch). */
  asked: number;
  /** Asked again after this (ms since epoch). */
  until: number;
}

/** Where a pool's runners register: its warm target, or for a job, the job's installation and organization. */
export interface ExposureTarget {
  installationId: number;
  owner: string;
  repo?: string;
  /**
   * For a job's target: whether its repository is public (Demand.publicRepository). Undefined (a
   * warm target, a demand queued before it was recorded): no public repository is refused for it.
   */
  publicRepository?: boolean;
}

/**
 * Whether a pool's runners may register where they would, asked of GitHub at most once per
 * WARM_CHECK_TTL_MS per pool and target (once per WARM_CHECK_RETRY_MS while the lookup fails), not
 * per launch, and once at a time: `GET /repos/{owner}/{repo}` for a repository pool's warm
 * runners, `GET /orgs/{org}/actions/runner-groups` for an organization pool's runners, warm or
 * launched for a job (its runner group is per organization), and for a group that admits only
 * selected repositories, `GET /orgs/{org}/actions/runner-groups/{id}/repositories` with it. A
 * repository pool that allows public repositories costs no call; an organization pool that does
 * has its group looked at all the same, for its jobs and its warm runners: which repositories the
 * group admits decides which jobs it launches for, and which its warm runners are adopted for
 * (notAdmitted, which asks nothing). Each change of a verdict is logged once.
 */
export class WarmExposure {
  readonly #d: WarmExposureDeps;
  readonly #verdicts = new Map<string, Verdict>();
  /** When a recheck was last asked for, by pool (see recheck). */
  readonly #rechecks = new Map<string, number>();
  /** Lookups under way, by key: callers at once share one. */
  readonly #asking = new Map<string, Promise<Verdict>>();
  /** The refusal last logged per key ("" for none): a repeat is not logged again. */
  readonly #said = new Map<string, string>();
  /** What was logged once per runner group (#sayOnce), by organization, group id and topic. */
  readonly #saidOnce = new Set<string>();

  constructor(deps: WarmExposureDeps) {
    this.#d = deps;
  }

  /**
   * Why `pool`'s runners may not be launched at `target` now (default: its warm target), or
   * undefined when they may. Never throws: a failed lookup is a refusal (fail closed). A lookup cut
   * short by `signal` (the worker stopping) is a refusal that is neither kept nor logged.
   * `forJob`: for a job's launch, on its pickup path. A failed lookup kept from before is not
   * trusted, GitHub is asked again (its retries come sooner than the minute a failure is kept); an
   * answer past WARM_CHECK_REFRESH_AT of its life is taken, and GitHub asked again in the background.
   * A `target` with a repository, for an organization pool (a job's), is also refused when the
   * pool's runner group admits only selected repositories and not that one
   * (`repository_not_in_group`), or when the repository is public and the group admits no public
   * repository (`public_repository_not_admitted`), whether or not the pool allows public
   * repositories: such a pool is launched for when the lookup fails, as it was before groups'
   * repositories were asked.
   */
  async refusal(pool: PoolConfig, signal?: AbortSignal, target: ExposureTarget | undefined = pool.warm, forJob = false): Promise<Refusal | undefined> {
    if (!target) return undefined;
    // A pool that allows public repositories is refused nothing for exposure; in an organization
    // pool, its group is looked at all the same (its warm runners' too, so that a job is not
    // handed a warm runner its group would never give it: notAdmitted).
    if (pool.allowPublicRepositories && pool.scope !== "organization") return undefined;
    const key = keyOf(pool, target);
    const now = this.#d.now ?? Date.now;
    const kept = this.#verdicts.get(key);
    // For a job, a kept "not admitted" is not trusted past WARM_RECHECK_MIN_MS either: the
    // refusal tells the operator to change the group, and a job re-run then must not fail for
    // good (and wait for the retry of failed demand) on an answer from before.
    const staleRefusal = forJob && kept !== undefined && isAdmissionRefusal(verdictFor(kept, target)) && now() >= kept.asked + (this.#d.recheckMinMs ?? WARM_RECHECK_MIN_MS);
    if (kept && now() < kept.until && !staleRefusal && !(forJob && kept.refusal === "visibility_unknown")) {
      // Not for an answer a recheck cut short, whose end comes sooner anyway (asked again then, not
      // sooner than WARM_RECHECK_MIN_MS after the last ask), nor for a failure's minute.
      if (forJob && now() >= kept.asked + (this.#d.ttlMs ?? WARM_CHECK_TTL_MS) * WARM_CHECK_REFRESH_AT) void this.#asked(pool, target, key, signal).catch(() => undefined);
      return verdictFor(kept, target);
    }
    return verdictFor(await this.#asked(pool, target, key, signal), target);
  }

  /**
   * Whether an answer kept now says the organization pool's runner group does not admit
   * `target`'s repository (not listed, or public); asks nothing of GitHub (for a warm runner's
   * adoption, which must not wait: a job GitHub would not hand the runner must not hold it until
   * its idle timeout).
   */
  notAdmitted(pool: PoolConfig, target: ExposureTarget): boolean {
    if (pool.scope !== "organization" || target.repo === undefined) return false;
    const kept = this.#verdicts.get(keyOf(pool, target));
    return kept !== undefined && isAdmissionRefusal(verdictFor(kept, target));
  }

  /** The lookup under way for `key`, or one started now. */
  #asked(pool: PoolConfig, target: ExposureTarget, key: string, signal: AbortSignal | undefined): Promise<Verdict> {
    let asking = this.#asking.get(key);
    if (!asking) {
      asking = this.#ask(pool, target, key, signal).finally(() => this.#asking.delete(key));
      this.#asking.set(key, asking);
    }
    return asking;
  }

  async #ask(pool: PoolConfig, target: ExposureTarget, key: string, signal: AbortSignal | undefined): Promise<Verdict> {
    const now = this.#d.now ?? Date.now;
    const started = now();
    let facts: WarmTargetFacts;
    let failure: string | undefined;
    try {
      facts = await this.#facts(pool, target, signal);
    } catch (err) {
      if (signal?.aborted) return { refusal: "visibility_unknown", asked: started, until: started };
      facts = { kind: "unknown" };
      failure = errorMessage(err);
    }
    const kept = this.#verdicts.get(key);
    // A lookup ahead of its answer's end (see refusal) that failed leaves that answer to its end.
    if (failure !== undefined && kept && kept.refusal !== "visibility_unknown" && now() < kept.until) return kept;
    const refusal = warmRefusal(pool, facts);
    // A pool that allows public repositories is refused nothing on a failed lookup: asked again a minute on.
    const failed = failure !== undefined || refusal === "visibility_unknown" || refusal === "runner_group_missing";
    const ttl = failed ? (this.#d.retryMs ?? WARM_CHECK_RETRY_MS) : (this.#d.ttlMs ?? WARM_CHECK_TTL_MS);
    const asked = now();
    // A recheck asked for while GitHub was being asked may be about a change after its answer.
    const recheckedSince = (this.#rechecks.get(pool.name) ?? -Infinity) >= started;
    const until = recheckedSince ? Math.min(asked + ttl, asked + (this.#d.recheckMinMs ?? WARM_RECHECK_MIN_MS)) : asked + ttl;
    const verdict: Verdict = {
      refusal,
      asked,
      until,
      ...(facts.kind === "organization" && facts.repositories ? { admits: facts.repositories } : {}),
      ...(facts.kind === "organization" && facts.group ? { admitsPublic: admitsPublicRepositories(facts.group) } : {}),
    };
    this.#verdicts.set(key, verdict);
    this.#say(pool, target, key, refusal, failure);
    if (failure !== undefined && refusal === undefined) {
      this.#d.logger.debug({ pool: pool.name, owner: target.owner, err: failure }, "could not learn which repositories the pool's runner group admits: its jobs are launched for (asked again in a minute)");
    }
    return verdict;
  }

  /**
   * Has the pool's next `refusal` ask GitHub again, not before WARM_RECHECK_MIN_MS after the last
   * time it did: GitHub said its warm repository was made public (a `repository` webhook). A lookup
   * under way keeps its answer only that long too. True when a kept answer was cut short.
   */
  recheck(poolName: string): boolean {
    const now = this.#d.now ?? Date.now;
    this.#rechecks.set(poolName, now());
    let sooner = false;
    for (const [key, kept] of this.#verdicts) {
      if (!key.startsWith(`${poolName}\0`)) continue;
      const until = Math.min(kept.until, kept.asked + (this.#d.recheckMinMs ?? WARM_RECHECK_MIN_MS));
      sooner ||= until < kept.until;
      kept.until = until;
    }
    return sooner;
  }

  async #facts(pool: PoolConfig, target: ExposureTarget, signal: AbortSignal | undefined): Promise<WarmTargetFacts> {
    const { installationId, owner, repo } = target;
    if (pool.scope === "repository") {
      return { kind: "repository", repository: await this.#d.github.getRepositoryVisibility(installationId, owner, repo ?? "", { signal }) };
    }
    const scope = { installationId, owner };
    const group = await this.#d.github.getRunnerGroup(scope, pool.runnerGroup === undefined ? { id: pool.runnerGroupId ?? 1 } : { name: pool.runnerGroup }, { signal });
    if (!group) return { kind: "organization", group };
    this.#sayRestricted(owner, group);
    if (group.visibility !== "selected") return { kind: "organization", group };
    // A listing that fails refuses nothing: the group itself is known, and such a pool launched for
    // its jobs before groups' repositories were asked (a GHES without the route, a group an
    // enterprise shares). Said once per group; asked again with the group's next lookup.
    const listed = await this.#d.github.listRunnerGroupRepositories(scope, group.id, { signal }).catch((err: unknown) => {
      if (signal?.aborted) throw err;
      this.#sayOnce(`${owner.toLowerCase()}\0${group.id}\0unlisted`, () =>
        this.#d.logger.warn(
          { owner, runnerGroup: group.name, err: errorMessage(err) },
          "could not list the repositories the runner group admits: jobs of repositories it does not admit are not refused, and their runners idle out",
        ),
      );
      return undefined;
    });
    if (!listed) return { kind: "organization", group };
    if (!listed.complete) {
      // Past what the client reads: a repository not listed may be admitted, so none is refused.
      this.#sayOnce(`${owner.toLowerCase()}\0${group.id}\0many`, () =>
        this.#d.logger.warn(
          { owner, runnerGroup: group.name, listed: listed.names.length },
          "runner group admits more selected repositories than are listed: jobs of repositories it does not admit are not refused, and their runners idle out",
        ),
      );
      return { kind: "organization", group };
    }
    return { kind: "organization", group, repositories: new Set(listed.names.map((n) => n.toLowerCase())) };
  }

  /**
   * Logs once per group that it takes only jobs of selected workflows: a job of another workflow
   * is not told apart (its webhook does not say which workflow file and ref it runs), so its
   * runner idles out. Said again if the group is restricted again after it was not.
   */
  #sayRestricted(owner: string, group: RunnerGroupSummary): void {
    const key = `${owner.toLowerCase()}\0${group.id}\0workflows`;
    if (!group.restrictedToWorkflows) {
      this.#saidOnce.delete(key);
      return;
    }
    this.#sayOnce(key, () =>
      this.#d.logger.warn(
        { owner, runnerGroup: group.name, selectedWorkflows: group.selectedWorkflows },
        "runner group takes only jobs of its selected workflows: a runner launched for a job of another workflow gets no job and idles out; serve such jobs with a pool of another group",
      ),
    );
  }

  #sayOnce(key: string, say: () => void): void {
    if (this.#saidOnce.has(key)) return;
    this.#saidOnce.add(key);
    say();
  }

  /** Logs a verdict when it differs from the one logged last for its key (the first allowed one is not news). */
  #say(pool: PoolConfig, target: ExposureTarget, key: string, refusal: WarmRefusal | undefined, failure: string | undefined): void {
    const before = this.#said.get(key) ?? "";
    this.#said.set(key, refusal ?? "");
    if ((refusal ?? "") === before) return;
    const { owner, repo } = target;
    const where = pool.scope === "repository" ? { owner, repo } : { owner, runnerGroup: pool.runnerGroup ?? pool.runnerGroupId ?? 1 };
    const log = this.#d.logger.child({ pool: pool.name, ...where });
    if (refusal === undefined) {
      log.info(
        pool.scope === "repository"
          ? "warm runners allowed again: their repository is not public"
          : "runners allowed again: their runner group admits no public repository",
      );
    } else if (refusal === "runner_group_missing") {
      log.warn(
        { reason: refusal },
        "the pool's runner group does not exist in this organization: no runners launched there; check runnerGroup or runnerGroupId (asked again every minute)",
      );
    } else if (refusal === "visibility_unknown") {
      log.warn(
        { reason: refusal, err: failure },
        pool.scope === "repository"
          ? "no warm runners launched until GitHub says whether public repositories' jobs could reach them (asked again every minute)"
          : "no runners launched until GitHub says whether public repositories' jobs could reach them (asked again every minute)",
      );
    } else {
      log.warn(
        { reason: refusal },
        refusal === "public_repository"
          ? "warm repository is public: no warm runners launched and idle ones removed (anyone's pull request could run on them); set allowPublicRepositories to allow it"
          : "runner group admits public repositories: no runners launched in it, for jobs or warm, and idle warm ones removed (anyone's pull request could run on them); restrict the group, or set allowPublicRepositories to allow it",
      );
    }
  }
}

/**
 * A kept verdict's refusal for `target`: a job's repository is checked when the group admits no
 * public repository (if it is public: even one the group lists) or only some repositories.
 */
function verdictFor(verdict: Verdict, target: ExposureTarget): Refusal | undefined {
  if (verdict.refusal) return verdict.refusal;
  if (target.repo === undefined) return undefined;
  if (target.publicRepository === true && verdict.admitsPublic === false) return "public_repository_not_admitted";
  if (verdict.admits && !verdict.admits.has(target.repo.toLowerCase())) return "repository_not_in_group";
  return undefined;
}

/** A verdict's key: the pool, and where its runners register (an organization's name is any case). */
function keyOf(pool: PoolConfig, target: ExposureTarget): string {
  return `${pool.name}\0${target.owner.toLowerCase()}/${pool.scope === "repository" ? (target.repo ?? "").toLowerCase() : ""}`;
}
