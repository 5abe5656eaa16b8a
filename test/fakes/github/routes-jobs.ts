// Workflow runs and jobs of a repository (what reconciliation reads).
import { paginate, type Ctx } from "./context.ts";
import { ghError, type Req, type Route } from "./http.ts";
import type { AccountType } from "./installations.ts";
import { job as jobBody, run as runBody } from "./shapes.ts";
import type { FakeJob } from "./state.ts";

const DOCS = "https://docs.github.com/rest/actions/workflow-jobs";

function repoJobs(ctx: Ctx, req: Req): FakeJob[] {
  const owner = (req.params.owner ?? "").toLowerCase();
  const repo = (req.params.repo ?? "").toLowerCase();
  return [...ctx.state.jobs.values()].filter((j) => j.owner.toLowerCase() === owner && j.repo.toLowerCase() === repo);
}

/** The type of the repository owner's account, as the installation on it says: runs embed it. */
function ownerType(ctx: Ctx, req: Req): AccountType {
  return ctx.installations.forOwner(req.params.owner ?? "").type;
}

/** Jobs grouped by run, newest run first (GitHub's order). */
function runsOf(jobs: FakeJob[]): FakeJob[][] {
  const byRun = new Map<number, FakeJob[]>();
  for (const j of jobs) byRun.set(j.run_id, [...(byRun.get(j.run_id) ?? []), j]);
  return [...byRun.values()].sort((a, b) => (b[0]?.run_id ?? 0) - (a[0]?.run_id ?? 0));
}

export function jobRoutes(ctx: Ctx): Route[] {
  const repo = "/repos/{owner}/{repo}/actions";
  return [
    {
      method: "GET",
      template: `${repo}/jobs/{job_id}`,
      auth: "installation",
      handle: (req) => {
        const job = repoJobs(ctx, req).find((j) => j.id === Number(req.params.job_id));
        return job ? { status: 200, body: jobBody(ctx.urls, job) } : ghError(404, "Not Found", DOCS);
      },
    },
    {
      method: "GET",
      template: `${repo}/runs`,
      auth: "installation",
      handle: (req) => {
        const status = req.query.get("status");
        const runs = runsOf(repoJobs(ctx, req))
          .map((jobs) => runBody(ctx.urls, ctx.state, jobs, ownerType(ctx, req)))
          .filter((r) => status === null || r.status === status || r.conclusion === status);
        const page = paginate(ctx, req, runs);
        return { status: 200, body: { total_count: runs.length, workflow_runs: page.items }, headers: page.headers };
      },
    },
    {
      method: "GET",
      template: `${repo}/runs/{run_id}`,
      auth: "installation",
      handle: (req) => {
        const jobs = repoJobs(ctx, req).filter((j) => j.run_id === Number(req.params.run_id));
        return jobs.length > 0 ? { status: 200, body: runBody(ctx.urls, ctx.state, jobs, ownerType(ctx, req)) } : ghError(404, "Not Found", DOCS);
      },
    },
    {
      method: "GET",
      template: `${repo}/runs/{run_id}/jobs`,
      auth: "installation",
      handle: (req) => {
        let jobs = repoJobs(ctx, req).filter((j) => j.run_id === Number(req.params.run_id));
        if (jobs.length === 0) return ghError(404, "Not Found", DOCS);
        if (req.query.get("filter") !== "all") {
          const latest = Math.max(...jobs.map((j) => j.run_attempt));
          jobs = jobs.filter((j) => j.run_attempt === latest);
        }
        const page = paginate(ctx, req, jobs);
        return { status: 200, body: { total_count: jobs.length, jobs: page.items.map((j) => jobBody(ctx.urls, j)) }, headers: page.headers };
      },
    },
  ];
}
