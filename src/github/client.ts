import type { Secret } from "../config/secret.ts";

/** Where a runner registers: a repository, or an organization when `repo` is undefined. */
export interface RunnerScope {
  installationId: number;
  owner: string;
  repo?: string;
}

/** A JIT registration. The labels are always sent as given (GitHub adds no defaults to JIT runners). */
export interface JitRequest {
  name: string;
  labels: string[];
  /** Runner group by id; without it and without `runnerGroup`, 1 ("Default"). */
  runnerGroupId?: number;
  /** Runner group by name (organization scope): resolved to its id once per organization, then cached. */
  runnerGroup?: string;
}

export interface JitRunner {
  runnerId: number;
  encodedJitConfig: Secret;
}

export interface JobStatus {
  status: string;
  conclusion: string | null;
  runnerName: string | null;
}

/** A registered self-hosted runner, as GitHub lists it. */
export interface RegisteredRunner {
  id: number;
  name: string;
  status: string;
  busy: boolean;
}

/** A workflow run, as the reconciler needs it. */
export interface WorkflowRunSummary {
  id: number;
  owner: string;
  /** The owner's account type (`Organization`, `User`): which pools can serve its jobs (servesOwner). */
  ownerType: string;
  repo: string;
  private: boolean;
  visibility?: string;
}

/** A job of a workflow run, as the reconciler needs it. */
export interface WorkflowJobSummary {
  id: number;
  runId: number;
  runAttempt: number;
  status: string;
  conclusion: string | null;
  labels: string[];
  runnerName: string | null;
}

/** Who may see a repository, as GitHub says now (`GET /repos/{owner}/{repo}`). */
export interface RepositoryVisibility {
  private: boolean;
  /** `public`, `private` or `internal`; GitHub Enterprise Server before 3.x may leave it out. */
  visibility?: string;
}

/** An organization's runner group, as the runner group check (WarmExposure) needs it. */
export interface RunnerGroupSummary {
  id: number;
  name: string;
  /** Whether jobs of the organization's public repositories may run on the group's runners. */
  allowsPublicRepositories: boolean;
  /**
   * Which of the organization's repositories the group admits: `all`, `private`, or `selected`
   * (only those listRunnerGroupRepositories names). GitHub hands a job of any other repository to
   * none of the group's runners.
   */
  visibility: string;
  /** Whether the group's runners take only jobs of the workflows in `selectedWorkflows`. */
  restrictedToWorkflows: boolean;
  selectedWorkflows: string[];
}

/** One attempt to deliver one webhook event (`guid` is the X-GitHub-Delivery id, shared by redeliveries). */
export interface HookDelivery {
  id: number;
  guid: string;
  deliveredAt: string;
  statusCode: number;
  event: string;
  action: string | null;
}

/** Bounds a call: aborted calls reject. */
export interface CallOptions {
  signal?: AbortSignal;
  /**
   * Reads only: how long the call may wait out a rate-limit wait GitHub asked of its installation
   * (shared by every process on the same Redis) before it is sent, or after GitHub refuses it. A
   * longer wait fails it at once with RateLimitPausedError, unsent or not retried. Without it, a
   * read waits as long as GitHub asks, up to about an hour (a primary limit's window): what a
   * launch needs. The leader's loops give a few seconds, so one installation out of its budget
   * does not hold the other installations' checks for the hour.
   */
  maxWaitMs?: number;
}

/** How far listRunJobs reads (see there). */
export interface RunJobsOptions extends CallOptions {
  pages?: number;
  enough?: (jobs: readonly WorkflowJobSummary[]) => boolean;
}

/** The GitHub API as jitrunner needs it. One real implementation: OctokitGitHub. */
export interface GitHubClient {
  /**
   * 409 (a GitHubError with that status): a runner with this name exists in the scope. When
   * `opts.signal` aborts while the call still waits for its turn in the write budget, it fails at
   * once with NotSentError and is never sent; once sent, its answer is waited for (only the answer
   * says whether the registration exists).
   */
  generateJitConfig(scope: RunnerScope, req: JitRequest, opts?: CallOptions): Promise<JitRunner>;
  /**
   * `busy`: GitHub refused (422) because the runner is running a job. `not_found`: GitHub has no
   * runner with this id (404), and no attempt of this call may have deleted it; a 404 after an
   * attempt whose answer was lost (5xx, 408, no answer; retried) is `deleted`. A 422 is `busy` only
   * when GitHub, asked about the runner then, says it is busy (it answers 422 to invalid or spammed
   * requests too); when it says the runner is not busy, the call fails (retryable): try it later.
   */
  deleteRunner(scope: RunnerScope, runnerId: number): Promise<"deleted" | "not_found" | "busy">;
  /** Deletes the registration with this name, if there is one (one whose creation answer was lost). */
  deleteRunnerNamed(scope: RunnerScope, name: string): Promise<"deleted" | "not_found" | "busy">;
  getJob(installationId: number, owner: string, repo: string, jobId: number): Promise<JobStatus>;
  /** One registered runner; undefined when GitHub has none with this id (404). */
  getRunner(scope: RunnerScope, runnerId: number, opts?: CallOptions): Promise<RegisteredRunner | undefined>;
  /** A repository's visibility now: whether a runner registered on it can be handed jobs of anyone's pull request. */
  getRepositoryVisibility(installationId: number, owner: string, repo: string, opts?: CallOptions): Promise<RepositoryVisibility>;
  /**
   * An organization's runner group by id or by name (a name as generateJitConfig resolves it);
   * undefined when the organization has none such. `scope` must be an organization's.
   */
  getRunnerGroup(scope: RunnerScope, group: { id: number } | { name: string }, opts?: CallOptions): Promise<RunnerGroupSummary | undefined>;
  /**
   * The names of the repositories a runner group of visibility `selected` admits (all pages);
   * `complete` false when there were more than the client reads. `scope` must be an organization's.
   */
  listRunnerGroupRepositories(scope: RunnerScope, groupId: number, opts?: CallOptions): Promise<{ names: string[]; complete: boolean }>;
  /** Every runner registered in a scope (all pages, up to a bound). */
  listRunners(scope: RunnerScope, opts?: CallOptions): Promise<RegisteredRunner[]>;
  /** Runs of a repository with this status (`queued`, `in_progress`, `waiting`), newest first, up to a bound. */
  listRuns(installationId: number, owner: string, repo: string, status: string, opts?: CallOptions): Promise<WorkflowRunSummary[]>;
  /**
   * Jobs of the latest attempt of a run, 100 a page: all pages up to a bound, or up to `opts.pages`,
   * or until `opts.enough` says the jobs read so far are enough.
   */
  listRunJobs(installationId: number, owner: string, repo: string, runId: number, opts?: RunJobsOptions): Promise<WorkflowJobSummary[]>;
  /** The App itself (`GET /app`, App JWT): its id and slug. A 401 says GitHub refuses the App's JWT (a wrong App id or key). */
  getApp(opts?: CallOptions): Promise<{ id: number; slug?: string }>;
  /** The App's webhook deliveries, newest first, one page; `cursor` continues (App JWT). */
  listHookDeliveries(opts?: CallOptions & { cursor?: string }): Promise<{ deliveries: HookDelivery[]; next?: string }>;
  /** Asks GitHub to deliver a past delivery again (App JWT). */
  redeliverHookDelivery(id: number, opts?: CallOptions): Promise<void>;
  /**
   * Closes the client once its users have stopped: writes still waiting for the write budget
   * (launches given up by a stopping worker) fail with NotSentError and are never sent.
   */
  close(): void;
}
