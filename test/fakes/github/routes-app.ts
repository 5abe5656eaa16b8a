// App-level routes: the App itself, installations, installation access tokens; and the
// repository itself (its visibility).
import type { Ctx } from "./context.ts";
import { ghError, type Route } from "./http.ts";
import { app, fullRepository, installation, PERMISSIONS } from "./shapes.ts";

export function appRoutes(ctx: Ctx): Route[] {
  const inst = (login: string) =>
    installation(ctx.urls, { id: ctx.installationId, appId: ctx.appId, login, ownerId: ctx.state.ownerId(login) });
  return [
    { method: "GET", template: "/app", auth: "app", handle: () => ({ status: 200, body: app(ctx.urls, ctx.appId) }) },
    {
      method: "POST",
      template: "/app/installations/{installation_id}/access_tokens",
      auth: "app",
      handle: (req) => {
        if (Number(req.params.installation_id) !== ctx.installationId) return ghError(404, "Not Found");
        // What GitHub answers a second, byte-identical App JWT (terraform-aws-github-runner#5025).
        if (ctx.auth.replayed(req.headers.authorization)) return ghError(404, "Not Found");
        const { token, expiresAt } = ctx.auth.issueToken();
        return { status: 201, body: { token, expires_at: expiresAt, permissions: PERMISSIONS, repository_selection: "all" } };
      },
    },
    {
      method: "GET",
      template: "/repos/{owner}/{repo}/installation",
      auth: "app",
      handle: (req) => ({ status: 200, body: inst(req.params.owner ?? "") }),
    },
    {
      // Any repository exists, as for the runner routes: one the fake has not met yet is private
      // (FakeState.repoInfo), as jobs' repositories are unless a test says otherwise.
      method: "GET",
      template: "/repos/{owner}/{repo}",
      auth: "installation",
      handle: (req) => ({ status: 200, body: fullRepository(ctx.urls, ctx.state.repoInfo(req.params.owner ?? "", req.params.repo ?? "")) }),
    },
    {
      method: "GET",
      template: "/orgs/{org}/installation",
      auth: "app",
      handle: (req) => ({ status: 200, body: inst(req.params.org ?? "") }),
    },
  ];
}
