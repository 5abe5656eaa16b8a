// The App's installations, one per account (GitHub allows an App one installation per
// organization or user), and what an installation token may reach: a token works only on the
// owner its installation covers, as on GitHub.
import { ghError, type Reply } from "./http.ts";
import { PERMISSIONS } from "./shapes.ts";
import type { FakeState } from "./state.ts";

export type AccountType = "Organization" | "User";

export interface FakeInstallation {
  id: number;
  /** The account's login; undefined for the default installation, which covers every owner no other installation does. */
  account: string | undefined;
  type: AccountType;
  /**
   * The permissions the account's owner has granted the App (GitHub's names and levels). A token
   * keeps those it was minted with (GitHub's token answer lists them): one minted before a change
   * does not follow it.
   */
  permissions: Record<string, string>;
}

const lower = (s: string): string => s.toLowerCase();

export class Installations {
  /**
   * The installation every fake starts with. Tests written before there could be several use any
   * owner they like ("acme", "someuser", ...) with its token, so it keeps covering every owner that
   * no added installation claims.
   */
  readonly fallback: FakeInstallation;
  private readonly byAccount = new Map<string, FakeInstallation>();
  private readonly ids = new Map<number, FakeInstallation>();

  constructor(defaultId: number) {
    this.fallback = { id: defaultId, account: undefined, type: "Organization", permissions: { ...PERMISSIONS } };
    this.ids.set(defaultId, this.fallback);
  }

  add(owner: string, o: { id?: number; type?: AccountType } = {}): FakeInstallation {
    if (!/^[\w.-]+$/.test(owner)) throw new Error(`addInstallation: ${JSON.stringify(owner)} is no account login`);
    const taken = this.byAccount.get(lower(owner));
    if (taken) throw new Error(`addInstallation: ${taken.account ?? owner} already has installation ${taken.id} (GitHub allows one per account)`);
    const id = o.id ?? Math.max(...this.ids.keys()) + 1;
    if (!Number.isSafeInteger(id) || id <= 0) throw new Error(`addInstallation: id ${id} is not a positive integer`);
    if (this.ids.has(id)) throw new Error(`addInstallation: installation ${id} exists`);
    const installation: FakeInstallation = { id, account: owner, type: o.type ?? "Organization", permissions: { ...PERMISSIONS } };
    this.byAccount.set(lower(owner), installation);
    this.ids.set(id, installation);
    return installation;
  }

  byId(id: number): FakeInstallation | undefined {
    return this.ids.get(id);
  }

  /** The installation on `owner`'s account (logins are case-insensitive): its own, else the default one. */
  forOwner(owner: string): FakeInstallation {
    return this.byAccount.get(lower(owner)) ?? this.fallback;
  }

  list(): FakeInstallation[] {
    return [...this.ids.values()];
  }

  /**
   * What GitHub answers a call with a token of installation `tokenOf` to a route of `owner` (an
   * organization route when `org`), or undefined when the token may make it.
   *
   * - An organization's routes answer 403 "Resource not accessible by integration" to a token of
   *   another installation: an organization is public (its existence is no secret), and GitHub
   *   answers so when an App that is not installed on an organization asks for its self-hosted
   *   runners (actions-runner-controller#42 and #931: "403 Resource not accessible by integration"
   *   on /orgs/{org}/actions/runners/... until the App is installed on the organization).
   * - A user account has no organization routes at all: 404, whoever asks.
   * - A private repository outside the installation answers 404 "Not Found": GitHub does not tell
   *   who cannot see a private repository that it exists (REST docs, "Troubleshooting", "404 error
   *   for an existing repository": a 404 where you might expect a 403). The fake's repositories
   *   are private unless a test says otherwise (FakeState.repoInfo).
   * - A public repository outside the installation: any token reads its public data (the
   *   repository, its workflow runs and jobs), as a workflow's GITHUB_TOKEN (an installation token)
   *   reads other public repositories; its self-hosted runners need the Administration permission
   *   on it, which the installation does not have there: 403 "Resource not accessible by
   *   integration", GitHub's answer to a permission the installation lacks.
   */
  refusal(tokenOf: number, method: string, template: string, params: Record<string, string>, state: FakeState, tokenPermissions: Record<string, string> = {}): Reply | undefined {
    const owner = params.org ?? params.owner;
    if (owner === undefined) return undefined;
    // Self-hosted runners need Administration (a repository's) or Self-hosted runners (an
    // organization's), read to list, write to change; a token without it: 403, as GitHub answers
    // a permission the installation lacks, or lacked when the token was minted.
    if (template.includes("/actions/runners")) {
      const level = tokenPermissions[params.org !== undefined ? "organization_self_hosted_runners" : "administration"];
      if (level !== "write" && (method !== "GET" || level !== "read")) return ghError(403, "Resource not accessible by integration");
    }
    const covering = this.forOwner(owner);
    if (params.org !== undefined) {
      if (covering.type === "User") return ghError(404, "Not Found");
      return covering.id === tokenOf ? undefined : ghError(403, "Resource not accessible by integration");
    }
    if (covering.id === tokenOf) return undefined;
    const repo = state.repos.get(`${lower(owner)}/${lower(params.repo ?? "")}`);
    if (repo?.private ?? true) return ghError(404, "Not Found");
    if (method === "GET" && !template.includes("/actions/runners")) return undefined;
    return ghError(403, "Resource not accessible by integration");
  }
}
