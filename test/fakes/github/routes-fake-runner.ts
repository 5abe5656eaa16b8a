// The runner-facing protocol of test/fakes/PROTOCOL.md (not GitHub's API):
// online, acquire (oldest matching queued job), complete.
import { timingSafeEqual } from "node:crypto";
import type { Ctx } from "./context.ts";
import { ghError, type Reply, type Req, type Route } from "./http.ts";
import { CONCLUSIONS, type Conclusion, type FakeRunner } from "./state.ts";

type Handler = (runner: FakeRunner, req: Req) => Reply;

function authed(ctx: Ctx, handler: Handler): (req: Req) => Reply {
  return (req) => {
    const id = Number(req.params.runner_id);
    const runner = ctx.state.runners.get(id);
    const expected = ctx.state.runnerTokens.get(id);
    if (!runner || expected === undefined) return ghError(404, `Runner ${id} is not registered (deleted?)`);
    const given = Buffer.from(typeof req.body.token === "string" ? req.body.token : "");
    const want = Buffer.from(expected);
    if (given.length !== want.length || !timingSafeEqual(given, want)) return ghError(401, "Bad runner credentials");
    return handler(runner, req);
  };
}

export function fakeRunnerRoutes(ctx: Ctx): Route[] {
  const route = (action: string, handler: Handler): Route => ({
    method: "POST",
    template: `/_fake/runners/{runner_id}/${action}`,
    auth: "none",
    internal: true,
    handle: authed(ctx, handler),
  });
  return [
    route("online", (runner) => {
      runner.status = "online";
      return { status: 200, body: {} };
    }),
    route("acquire", (runner) => {
      const before = runner.job_id;
      const job = ctx.state.acquire(runner);
      if (!job) return { status: 204 };
      if (before === null) void ctx.emit(job, "in_progress");
      return { status: 200, body: { job: { id: job.id, run_id: job.run_id, run_attempt: job.run_attempt, owner: job.owner, repo: job.repo } } };
    }),
    route("complete", (runner, req) => {
      const { jobId, conclusion } = req.body;
      if (runner.job_id === null || jobId !== runner.job_id) return ghError(409, `Runner ${runner.id} does not hold job ${String(jobId)}`);
      if (!CONCLUSIONS.includes(conclusion as Conclusion)) return ghError(422, `Invalid conclusion ${JSON.stringify(conclusion)}`);
      const job = ctx.state.jobs.get(runner.job_id);
      // A job cancelled while running already had its completed webhook.
      if (job && ctx.state.complete(job, conclusion as Conclusion)) void ctx.emit(job, "completed");
      ctx.state.deleteRunner(runner.id); // ephemeral: GitHub removes a JIT runner after its job
      return { status: 200, body: {} };
    }),
  ];
}
