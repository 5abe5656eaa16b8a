// App-level routes: the App itself, installations, installation access tokens; and the
// repository itself (its visibility).
import type { Ctx } from "./context.ts";
import { ghError, type Reply, type Route } from "./http.ts";
import { app, fullRepository, installation } from "./shapes.ts";

export function appRoutes(ctx: Ctx): Route[] {
  /**
   * The installation on `login`'s account. The default one covers any account no other
   * installation does, under the login asked for, as it always has (its tests use any owner).
   * `orgsOnly`: a user's account is no organization, and GET /orgs/{org}/installation answers 404.
   */
  const inst = (login: string, orgsOnly = false): Reply => {
    const found = ctx.installations.forOwner(login);
    if (orgsOnly && found.type === "User") return ghError(404, "Not Found");
    const body = installation(ctx.urls, { id: found.id, appId: ctx.appId, login: found.account ?? login, ownerId: ctx.state.ownerId(login), type: found.type });
    return { status: 200, body };
  };
  return [
    { method: "GET", template: "/app", auth: "app", handle: () => ({ status: 200, body: app(ctx.urls, ctx.appId, ctx.installations.list().length) }) },
    {
      method: "POST",
      template: "/app/installations/{installation_id}/access_tokens",
      auth: "app",
      handle: (req) => {
        const found = ctx.installations.byId(Number(req.params.installation_id));
        if (!found) return ghError(404, "Not Found");
        // What GitHub answers a second, byte-identical App JWT (terraform-aws-github-runner#5025).
        if (ctx.auth.replayed(req.headers.authorization)) return ghError(404, "Not Found");
        const { token, expiresAt } = ctx.auth.issueToken(found.id, found.permissions);
        return { status: 201, body: { token, expires_at: expiresAt, permissions: { ...found.permissions }, repository_selection: "all" } };
      },
    },
    {
      method: "GET",
      template: "/repos/{owner}/{repo}/installation",
      auth: "app",
      handle: (req) => inst(req.params.owner ?? ""),
    },
    {
      // Any repository exists, as for the runner routes: one the fake has not met yet is private
      // (FakeState.repoInfo), as jobs' repositories are unless a test says otherwise.
      method: "GET",
      template: "/repos/{owner}/{repo}",
      auth: "installation",
      handle: (req) => {
        const owner = req.params.owner ?? "";
        // The owner's account type, as the installation on it says (a user's, or an organization's).
        return { status: 200, body: fullRepository(ctx.urls, ctx.state.repoInfo(owner, req.params.repo ?? ""), ctx.installations.forOwner(owner).type) };
      },
    },
    {
      method: "GET",
      template: "/orgs/{org}/installation",
      auth: "app",
      handle: (req) => inst(req.params.org ?? "", true),
    },
    {
      // Served for any account, an organization's too: GitHub's /users/{username} resolves
      // organizations as well, and the fake does not guess that this route would refuse them.
      method: "GET",
      template: "/users/{username}/installation",
      auth: "app",
      handle: (req) => inst(req.params.username ?? ""),
    },
  ];
}
