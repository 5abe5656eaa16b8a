// In-memory GitHub state: repositories, runs, jobs, runners, runner groups.
// Pure bookkeeping; HTTP and webhooks live elsewhere.
import { randomBytes } from "node:crypto";

/** `waiting`: held for an environment's approval (no runner may take it) until approved, then `queued`. */
export type JobStatus = "waiting" | "queued" | "in_progress" | "completed";
export const CONCLUSIONS = ["success", "failure", "cancelled", "skipped", "neutral", "timed_out", "action_required"] as const;
export type Conclusion = (typeof CONCLUSIONS)[number];

export interface FakeJob {
  id: number;
  run_id: number;
  run_attempt: number;
  owner: string;
  repo: string;
  private: boolean;
  labels: string[];
  name: string;
  status: JobStatus;
  conclusion: Conclusion | null;
  runner_id: number | null;
  runner_name: string | null;
  runner_group_id: number | null;
  runner_group_name: string | null;
  created_at: string;
  started_at: string;
  completed_at: string | null;
  head_sha: string;
}

export type RunnerScope = { kind: "repo"; owner: string; repo: string } | { kind: "org"; org: string };

export interface FakeRunner {
  id: number;
  name: string;
  os: string;
  status: "online" | "offline";
  busy: boolean;
  labels: string[];
  scope: RunnerScope;
  runner_group_id: number;
  job_id: number | null;
  created_at: string;
}

export interface RepoInfo {
  id: number;
  ownerId: number;
  owner: string;
  name: string;
  private: boolean;
}

export class ConflictError extends Error {}

const lower = (s: string): string => s.toLowerCase();
const now = (): string => new Date().toISOString().replace(/\.\d{3}Z$/, "Z");

export function labelsMatch(jobLabels: string[], runnerLabels: string[]): boolean {
  const have = new Set(runnerLabels.map(lower));
  return jobLabels.every((l) => have.has(lower(l)));
}

export function scopeHoldsRepo(scope: RunnerScope, owner: string, repo: string): boolean {
  if (scope.kind === "org") return lower(scope.org) === lower(owner);
  return lower(scope.owner) === lower(owner) && lower(scope.repo) === lower(repo);
}

function sameScope(a: RunnerScope, b: RunnerScope): boolean {
  if (a.kind === "org" && b.kind === "org") return lower(a.org) === lower(b.org);
  if (a.kind === "repo" && b.kind === "repo") return scopeHoldsRepo(a, b.owner, b.repo);
  return false;
}

export class FakeState {
  // Ids above 2^32 for jobs and runs, as on github.com today, so int32 mistakes show up.
  private nextJobId = 40_000_000_001;
  private nextRunId = 12_000_000_001;
  private nextRunnerId = 1001;
  private nextRepoId = 700_000_001;
  private nextLabelId = 1;
  private readonly labelIds = new Map<string, number>();
  private readonly ownerIds = new Map<string, number>();
  readonly repos = new Map<string, RepoInfo>();
  readonly jobs = new Map<number, FakeJob>();
  /** Jobs only one runner may take, by job id (QueueJobOptions.onlyRunner). */
  readonly pinned = new Map<number, string>();
  readonly runners = new Map<number, FakeRunner>();
  readonly runnerTokens = new Map<number, string>();
  /** Every encoded JIT config handed out, for tests that grep output for secrets. */
  readonly issuedJitConfigs: string[] = [];
  readonly runnerGroups = new Map<number, string>([[1, "Default"]]);
  /** Runner groups whose runners may take jobs of public repositories (GitHub's default: none). */
  readonly publicRunnerGroups = new Set<number>();
  /**
   * Runner groups of visibility `selected`: the repositories ("owner/name", lower case) whose jobs
   * their runners may take. A group not here admits every repository of the organization.
   */
  readonly selectedRunnerGroups = new Map<number, Set<string>>();
  /**
   * Runner groups of visibility `private` ("Private repositories"): their runners take jobs of the
   * organization's private (and internal) repositories only.
   */
  readonly privateRunnerGroups = new Set<number>();
  /** Runner groups restricted to selected workflows, and those workflows (shown, not enforced: a fake job has no workflow file). */
  readonly workflowRunnerGroups = new Map<number, string[]>();

  repoInfo(owner: string, name: string, isPrivate?: boolean): RepoInfo {
    const key = `${lower(owner)}/${lower(name)}`;
    let info = this.repos.get(key);
    if (!info) {
      let ownerId = this.ownerIds.get(lower(owner));
      if (ownerId === undefined) this.ownerIds.set(lower(owner), (ownerId = 90_000_000 + this.ownerIds.size + 1));
      info = { id: this.nextRepoId++, ownerId, owner, name, private: isPrivate ?? true };
      this.repos.set(key, info);
    }
    if (isPrivate !== undefined) info.private = isPrivate;
    return info;
  }

  ownerId(owner: string): number {
    return this.ownerIds.get(lower(owner)) ?? 90_000_000;
  }

  labelId(name: string): number {
    let id = this.labelIds.get(lower(name));
    if (id === undefined) this.labelIds.set(lower(name), (id = this.nextLabelId++));
    return id;
  }

  createJob(o: { owner: string; repo: string; labels: string[]; private?: boolean; runAttempt?: number; runId?: number; name?: string; waiting?: boolean }): FakeJob {
    const repo = this.repoInfo(o.owner, o.repo, o.private);
    const at = now();
    const job: FakeJob = {
      id: this.nextJobId++,
      run_id: o.runId ?? this.nextRunId++,
      run_attempt: o.runAttempt ?? 1,
      owner: repo.owner,
      repo: repo.name,
      private: repo.private,
      labels: [...o.labels],
      name: o.name ?? "build",
      status: o.waiting ? "waiting" : "queued",
      conclusion: null,
      runner_id: null,
      runner_name: null,
      runner_group_id: null,
      runner_group_name: null,
      created_at: at,
      started_at: at,
      completed_at: null,
      head_sha: randomBytes(20).toString("hex"),
    };
    this.jobs.set(job.id, job);
    return job;
  }

  createRunner(scope: RunnerScope, name: string, runnerGroupId: number, labels: string[]): { runner: FakeRunner; token: string } {
    for (const r of this.runners.values()) {
      if (sameScope(r.scope, scope) && r.name === name) throw new ConflictError(name);
    }
    const runner: FakeRunner = {
      id: this.nextRunnerId++,
      name,
      os: "Linux",
      status: "offline",
      busy: false,
      labels: [...labels],
      scope,
      runner_group_id: runnerGroupId,
      job_id: null,
      created_at: now(),
    };
    const token = randomBytes(24).toString("hex");
    this.runners.set(runner.id, runner);
    this.runnerTokens.set(runner.id, token);
    return { runner, token };
  }

  runnersIn(scope: RunnerScope): FakeRunner[] {
    return [...this.runners.values()].filter((r) => sameScope(r.scope, scope));
  }

  deleteRunner(id: number): void {
    this.runners.delete(id);
    this.runnerTokens.delete(id);
  }

  /** Oldest queued job this runner may take, marked in_progress; undefined when none. */
  acquire(runner: FakeRunner): FakeJob | undefined {
    if (runner.job_id !== null) return this.jobs.get(runner.job_id);
    const job = [...this.jobs.values()].find(
      (j) =>
        j.status === "queued" &&
        (this.pinned.get(j.id) ?? runner.name) === runner.name &&
        scopeHoldsRepo(runner.scope, j.owner, j.repo) &&
        this.groupAdmits(runner, j) &&
        labelsMatch(j.labels, runner.labels),
    );
    if (!job) return undefined;
    job.status = "in_progress";
    job.started_at = now();
    job.runner_id = runner.id;
    job.runner_name = runner.name;
    job.runner_group_id = runner.runner_group_id;
    job.runner_group_name = this.runnerGroups.get(runner.runner_group_id) ?? `group-${runner.runner_group_id}`;
    runner.busy = true;
    runner.status = "online";
    runner.job_id = job.id;
    return job;
  }

  /**
   * Whether the runner's group admits the job's repository (GitHub hands it no job of another): a
   * public repository only when the group allows public repositories and its visibility is not
   * `private`, whatever else it admits (a public repository a `selected` group lists included);
   * for a `selected` group, only the repositories it lists.
   */
  groupAdmits(runner: FakeRunner, job: FakeJob): boolean {
    if (runner.scope.kind !== "org") return true;
    const id = runner.runner_group_id;
    const key = `${lower(job.owner)}/${lower(job.repo)}`;
    // The repository as it is now: one made public since the job was queued counts as public.
    const isPublic = !(this.repos.get(key)?.private ?? job.private);
    if (isPublic && (!this.publicRunnerGroups.has(id) || this.privateRunnerGroups.has(id))) return false;
    const selected = this.selectedRunnerGroups.get(id);
    return selected === undefined || selected.has(key);
  }

  /** Lets a job waiting for approval be taken (`queued`); false when it was not waiting. */
  approve(job: FakeJob): boolean {
    if (job.status !== "waiting") return false;
    job.status = "queued";
    return true;
  }

  /** Marks a job completed; false when it already was (e.g. cancelled earlier). */
  complete(job: FakeJob, conclusion: Conclusion): boolean {
    if (job.status === "completed") return false;
    job.status = "completed";
    job.conclusion = conclusion;
    job.completed_at = now();
    return true;
  }
}
