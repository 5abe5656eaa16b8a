import type { Secret } from "../config/secret.ts";

/** Where a runner registers: a repository, or an organization when `repo` is undefined. */
export interface RunnerScope {
  installationId: number;
  owner: string;
  repo?: string;
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

/** The GitHub API as jitrunner needs it. One real implementation: OctokitGitHub. */
export interface GitHubClient {
  generateJitConfig(scope: RunnerScope, req: { name: string; labels: string[]; runnerGroupId: number }): Promise<JitRunner>;
  /** `busy`: GitHub refused (422) because the runner is running a job. */
  deleteRunner(scope: RunnerScope, runnerId: number): Promise<"deleted" | "not_found" | "busy">;
  getJob(installationId: number, owner: string, repo: string, jobId: number): Promise<JobStatus>;
}
