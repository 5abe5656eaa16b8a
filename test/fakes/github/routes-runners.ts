// Self-hosted runner routes, repository and organization scope: JIT config,
// list/get/delete runners, runner groups.
import { paginate, type Ctx } from "./context.ts";
import { ghError, type Reply, type Req, type Route } from "./http.ts";
import { repository, runner as runnerBody, runnerGroup } from "./shapes.ts";
import { ConflictError, type RunnerScope } from "./state.ts";

const DOCS = "https://docs.github.com/rest/actions/self-hosted-runners";
const GROUPS_DOCS = "https://docs.github.com/rest/actions/self-hosted-runner-groups";

function scopeOf(req: Req): RunnerScope {
  const p = req.params;
  return p.org !== undefined ? { kind: "org", org: p.org } : { kind: "repo", owner: p.owner ?? "", repo: p.repo ?? "" };
}

/**
 * GitHub's message for a body the request schema lets through but GitHub still refuses, or
 * undefined when it is fine. The schema itself (required fields, types, 1 to 100 labels, no unknown
 * field) is checked by the Router against GitHub's OpenAPI description before this runs.
 */
function invalidJitBody(ctx: Ctx, b: Record<string, unknown>): string | undefined {
  if (typeof b.name !== "string" || b.name.trim() === "") return `For 'properties/name', ${JSON.stringify(b.name)} is not a non-empty string.`;
  const labels = Array.isArray(b.labels) ? (b.labels as unknown[]) : [];
  if (!labels.every((l) => typeof l === "string" && l.trim() !== "")) return "For 'items', each label must be a non-empty string.";
  if (!ctx.state.runnerGroups.has(b.runner_group_id as number)) return `Runner group ${String(b.runner_group_id)} does not exist.`;
  return undefined;
}

function generateJitConfig(ctx: Ctx, req: Req): Reply {
  const problem = invalidJitBody(ctx, req.body);
  if (problem) return ghError(422, `Invalid request.\n\n${problem}`, `${DOCS}#create-configuration-for-a-just-in-time-runner-for-a-repository`);
  const { name, runner_group_id: groupId, labels } = req.body as { name: string; runner_group_id: number; labels: string[] };
  try {
    const { runner, token } = ctx.state.createRunner(scopeOf(req), name, groupId, labels);
    const encoded = Buffer.from(JSON.stringify({ fake: true, runnerId: runner.id, name, labels, token })).toString("base64");
    ctx.state.issuedJitConfigs.push(encoded);
    return { status: 201, body: { runner: runnerBody(ctx.state, runner), encoded_jit_config: encoded } };
  } catch (err) {
    if (err instanceof ConflictError) return ghError(409, `Already exists - A runner with the name ${name} already exists.`, DOCS);
    throw err;
  }
}

function findRunner(ctx: Ctx, req: Req) {
  const id = Number(req.params.runner_id);
  return ctx.state.runnersIn(scopeOf(req)).find((r) => r.id === id);
}

export function runnerRoutes(ctx: Ctx): Route[] {
  const routes: Route[] = [];
  for (const prefix of ["/repos/{owner}/{repo}", "/orgs/{org}"]) {
    const base = `${prefix}/actions/runners`;
    routes.push(
      { method: "POST", template: `${base}/generate-jitconfig`, auth: "installation", handle: (req) => generateJitConfig(ctx, req) },
      {
        method: "GET",
        template: base,
        auth: "installation",
        handle: (req) => {
          const name = req.query.get("name");
          const all = ctx.state.runnersIn(scopeOf(req)).filter((r) => name === null || r.name === name);
          const page = paginate(ctx, req, all);
          const runners = page.items.map((r) => runnerBody(ctx.state, r));
          return { status: 200, body: { total_count: all.length, runners }, headers: page.headers };
        },
      },
      {
        method: "GET",
        template: `${base}/{runner_id}`,
        auth: "installation",
        handle: (req) => {
          const runner = findRunner(ctx, req);
          return runner ? { status: 200, body: runnerBody(ctx.state, runner) } : ghError(404, "Not Found", DOCS);
        },
      },
      {
        method: "DELETE",
        template: `${base}/{runner_id}`,
        auth: "installation",
        handle: (req) => {
          const runner = findRunner(ctx, req);
          if (!runner) return ghError(404, "Not Found", DOCS);
          if (runner.busy) return ghError(422, `Bad request - Runner "${runner.name}" is still running a job"`, DOCS);
          ctx.state.deleteRunner(runner.id);
          return { status: 204 };
        },
      },
    );
  }
  routes.push({
    method: "GET",
    template: "/orgs/{org}/actions/runner-groups",
    auth: "installation",
    handle: (req) => {
      const groups = [...ctx.state.runnerGroups.keys()].map((id) => runnerGroup(ctx.urls, req.params.org ?? "", ctx.state, id));
      const page = paginate(ctx, req, groups);
      return { status: 200, body: { total_count: groups.length, runner_groups: page.items }, headers: page.headers };
    },
  });
  routes.push({
    method: "GET",
    template: "/orgs/{org}/actions/runner-groups/{runner_group_id}/repositories",
    auth: "installation",
    handle: (req) => {
      const id = Number(req.params.runner_group_id);
      if (!ctx.state.runnerGroups.has(id)) return ghError(404, "Not Found", `${GROUPS_DOCS}#list-repository-access-to-a-self-hosted-runner-group-in-an-organization`);
      // A group that admits all repositories lists none here (GitHub lists only selected ones).
      const org = (req.params.org ?? "").toLowerCase();
      const names = [...(ctx.state.selectedRunnerGroups.get(id) ?? [])].filter((n) => n.startsWith(`${org}/`));
      const repos = names.map((n) => ctx.state.repos.get(n)).filter((r) => r !== undefined);
      const page = paginate(ctx, req, repos);
      return { status: 200, body: { total_count: repos.length, repositories: page.items.map((r) => repository(ctx.urls, r)) }, headers: page.headers };
    },
  });
  return routes;
}
