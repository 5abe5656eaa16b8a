// GitHub-shaped JSON bodies (checked against GitHub's OpenAPI description by
// test/integration/fake-github-openapi.test.ts).
import type { AccountType } from "./installations.ts";
import type { FakeJob, FakeRunner, FakeState, RepoInfo } from "./state.ts";

export interface Urls {
  api: string; // the fake's base url (GHES-style api base)
  html: string;
}

export const APP_SLUG = "jitrunner-fake";
export const PERMISSIONS = {
  actions: "read",
  administration: "write",
  metadata: "read",
  organization_self_hosted_runners: "write",
} as const;
const CREATED = "2024-01-01T00:00:00Z";
const READ_ONLY_LABELS = new Set(["self-hosted", "linux", "x64", "arm64", "arm", "windows", "macos"]);

const nodeId = (kind: string, id: number): string => Buffer.from(`${kind}${id}`).toString("base64");

export function account(u: Urls, login: string, id: number, type: "User" | "Organization") {
  const a = `${u.api}/users/${login}`;
  return {
    login,
    id,
    node_id: nodeId(type === "User" ? "04:User" : "012:Organization", id),
    avatar_url: `https://avatars.githubusercontent.com/u/${id}?v=4`,
    gravatar_id: "",
    url: a,
    html_url: `${u.html}/${login}`,
    followers_url: `${a}/followers`,
    following_url: `${a}/following{/other_user}`,
    gists_url: `${a}/gists{/gist_id}`,
    starred_url: `${a}/starred{/owner}{/repo}`,
    subscriptions_url: `${a}/subscriptions`,
    organizations_url: `${a}/orgs`,
    repos_url: `${a}/repos`,
    events_url: `${a}/events{/privacy}`,
    received_events_url: `${a}/received_events`,
    type,
    site_admin: false,
    user_view_type: "public",
  };
}

/** GitHub's "minimal-repository" (what runs and installations embed). */
export function repository(u: Urls, info: RepoInfo, ownerType: AccountType = "Organization") {
  const r = `${u.api}/repos/${info.owner}/${info.name}`;
  const t = (path: string): string => `${r}${path}`;
  return {
    id: info.id,
    node_id: nodeId("010:Repository", info.id),
    name: info.name,
    full_name: `${info.owner}/${info.name}`,
    owner: account(u, info.owner, info.ownerId, ownerType),
    private: info.private,
    visibility: info.private ? "private" : "public",
    html_url: `${u.html}/${info.owner}/${info.name}`,
    description: null,
    fork: false,
    url: r,
    archive_url: t("/{archive_format}{/ref}"),
    assignees_url: t("/assignees{/user}"),
    blobs_url: t("/git/blobs{/sha}"),
    branches_url: t("/branches{/branch}"),
    collaborators_url: t("/collaborators{/collaborator}"),
    comments_url: t("/comments{/number}"),
    commits_url: t("/commits{/sha}"),
    compare_url: t("/compare/{base}...{head}"),
    contents_url: t("/contents/{+path}"),
    contributors_url: t("/contributors"),
    deployments_url: t("/deployments"),
    downloads_url: t("/downloads"),
    events_url: t("/events"),
    forks_url: t("/forks"),
    git_commits_url: t("/git/commits{/sha}"),
    git_refs_url: t("/git/refs{/sha}"),
    git_tags_url: t("/git/tags{/sha}"),
    hooks_url: t("/hooks"),
    issue_comment_url: t("/issues/comments{/number}"),
    issue_events_url: t("/issues/events{/number}"),
    issues_url: t("/issues{/number}"),
    keys_url: t("/keys{/key_id}"),
    labels_url: t("/labels{/name}"),
    languages_url: t("/languages"),
    merges_url: t("/merges"),
    milestones_url: t("/milestones{/number}"),
    notifications_url: t("/notifications{?since,all,participating}"),
    pulls_url: t("/pulls{/number}"),
    releases_url: t("/releases{/id}"),
    stargazers_url: t("/stargazers"),
    statuses_url: t("/statuses/{sha}"),
    subscribers_url: t("/subscribers"),
    subscription_url: t("/subscription"),
    tags_url: t("/tags"),
    teams_url: t("/teams"),
    trees_url: t("/git/trees{/sha}"),
  };
}

/**
 * GitHub's "full-repository" (`GET /repos/{owner}/{repo}`): the minimal one plus the counts,
 * settings and times it requires, all of a fresh, empty repository.
 */
export function fullRepository(u: Urls, info: RepoInfo, ownerType: AccountType = "Organization") {
  const base = repository(u, info, ownerType);
  const host = new URL(u.html).host;
  return {
    ...base,
    clone_url: `${u.html}/${info.owner}/${info.name}.git`,
    git_url: `git://${host}/${info.owner}/${info.name}.git`,
    ssh_url: `git@${host}:${info.owner}/${info.name}.git`,
    svn_url: `${u.html}/${info.owner}/${info.name}`,
    mirror_url: null,
    homepage: null,
    language: null,
    default_branch: "main",
    forks: 0,
    forks_count: 0,
    stargazers_count: 0,
    watchers: 0,
    watchers_count: 0,
    open_issues: 0,
    open_issues_count: 0,
    size: 0,
    has_issues: true,
    has_projects: true,
    has_wiki: true,
    has_pages: false,
    has_discussions: false,
    archived: false,
    disabled: false,
    license: null,
    pushed_at: CREATED,
    created_at: CREATED,
    updated_at: CREATED,
    network_count: 0,
    subscribers_count: 0,
  };
}

function steps(job: FakeJob) {
  const setUp = { name: "Set up job", number: 1, started_at: job.started_at };
  if (job.status === "queued" || job.runner_id === null) return [];
  if (job.status === "in_progress") return [{ ...setUp, status: "in_progress", conclusion: null, completed_at: null }];
  return [
    { ...setUp, status: "completed", conclusion: "success", completed_at: job.started_at },
    { name: "Run fake-job", number: 2, status: "completed", conclusion: job.conclusion, started_at: job.started_at, completed_at: job.completed_at },
  ];
}

/** The REST job object; webhooks carry the same fields as `workflow_job`. */
export function job(u: Urls, j: FakeJob) {
  const r = `${u.api}/repos/${j.owner}/${j.repo}`;
  return {
    id: j.id,
    run_id: j.run_id,
    workflow_name: "CI",
    head_branch: "main",
    run_url: `${r}/actions/runs/${j.run_id}`,
    run_attempt: j.run_attempt,
    node_id: nodeId("CR_", j.id),
    head_sha: j.head_sha,
    url: `${r}/actions/jobs/${j.id}`,
    html_url: `${u.html}/${j.owner}/${j.repo}/actions/runs/${j.run_id}/job/${j.id}`,
    status: j.status,
    conclusion: j.conclusion,
    created_at: j.created_at,
    started_at: j.started_at,
    completed_at: j.completed_at,
    name: j.name,
    steps: steps(j),
    check_run_url: `${r}/check-runs/${j.id}`,
    labels: j.labels,
    runner_id: j.runner_id,
    runner_name: j.runner_name,
    runner_group_id: j.runner_group_id,
    runner_group_name: j.runner_group_name,
  };
}

export function runner(state: FakeState, r: FakeRunner) {
  return {
    id: r.id,
    runner_group_id: r.runner_group_id,
    name: r.name,
    os: r.os,
    status: r.status,
    busy: r.busy,
    ephemeral: true,
    labels: r.labels.map((name) => ({
      id: state.labelId(name),
      name,
      type: READ_ONLY_LABELS.has(name.toLowerCase()) ? "read-only" : "custom",
    })),
  };
}

function runStatus(jobs: FakeJob[]): { status: string; conclusion: string | null } {
  if (jobs.every((j) => j.status === "queued")) return { status: "queued", conclusion: null };
  // A job waiting for an environment's approval makes its run `waiting`, whatever its siblings
  // do (queued or running): GitHub lists such a run under `status=waiting` only.
  if (jobs.some((j) => j.status === "waiting")) return { status: "waiting", conclusion: null };
  if (!jobs.every((j) => j.status === "completed")) return { status: "in_progress", conclusion: null };
  for (const c of ["failure", "cancelled", "timed_out"] as const) {
    if (jobs.some((j) => j.conclusion === c)) return { status: "completed", conclusion: c };
  }
  return { status: "completed", conclusion: "success" };
}

/** A workflow run, derived from its jobs (all of one repository). */
export function run(u: Urls, state: FakeState, runJobs: FakeJob[], ownerType: AccountType = "Organization") {
  const first = runJobs[0];
  if (!first) throw new Error("a run needs at least one job");
  const repo = repository(u, state.repoInfo(first.owner, first.repo), ownerType);
  const r = `${u.api}/repos/${first.owner}/${first.repo}/actions/runs/${first.run_id}`;
  const attempt = Math.max(...runJobs.map((j) => j.run_attempt));
  const updated = runJobs.map((j) => j.completed_at ?? j.started_at).sort().at(-1) ?? first.created_at;
  const who = { name: "Octo Cat", email: "octocat@example.com" };
  return {
    id: first.run_id,
    name: "CI",
    node_id: nodeId("WFR_", first.run_id),
    check_suite_id: first.run_id + 1,
    check_suite_node_id: nodeId("CS_", first.run_id + 1),
    head_branch: "main",
    head_sha: first.head_sha,
    path: ".github/workflows/ci.yml",
    display_title: "CI",
    run_number: (first.run_id % 100_000) + 1,
    run_attempt: attempt,
    event: "push",
    ...runStatus(runJobs),
    workflow_id: 161_335,
    url: r,
    html_url: `${u.html}/${first.owner}/${first.repo}/actions/runs/${first.run_id}`,
    pull_requests: [],
    created_at: first.created_at,
    updated_at: updated,
    run_started_at: first.created_at,
    jobs_url: `${r}/jobs`,
    logs_url: `${r}/logs`,
    check_suite_url: `${u.api}/repos/${first.owner}/${first.repo}/check-suites/${first.run_id + 1}`,
    artifacts_url: `${r}/artifacts`,
    cancel_url: `${r}/cancel`,
    rerun_url: `${r}/rerun`,
    previous_attempt_url: attempt > 1 ? `${r}/attempts/${attempt - 1}` : null,
    workflow_url: `${u.api}/repos/${first.owner}/${first.repo}/actions/workflows/161335`,
    head_commit: { id: first.head_sha, tree_id: first.head_sha, message: "Fake commit", timestamp: first.created_at, author: who, committer: who },
    repository: repo,
    head_repository: repo,
  };
}

export function installation(u: Urls, o: { id: number; appId: number; login: string; ownerId: number; type: "Organization" | "User" }) {
  return {
    id: o.id,
    client_id: `Iv1.fake${o.appId}`,
    account: account(u, o.login, o.ownerId, o.type),
    repository_selection: "all",
    access_tokens_url: `${u.api}/app/installations/${o.id}/access_tokens`,
    repositories_url: `${u.api}/installation/repositories`,
    // GitHub's settings page of an installation: under the organization's settings, or the user's own.
    html_url: o.type === "User" ? `${u.html}/settings/installations/${o.id}` : `${u.html}/organizations/${o.login}/settings/installations/${o.id}`,
    app_id: o.appId,
    app_slug: APP_SLUG,
    target_id: o.ownerId,
    target_type: o.type,
    permissions: PERMISSIONS,
    events: ["workflow_job", "repository"],
    created_at: CREATED,
    updated_at: CREATED,
    single_file_name: null,
    has_multiple_single_files: false,
    single_file_paths: [],
    suspended_by: null,
    suspended_at: null,
  };
}

export function app(u: Urls, appId: number, installationsCount: number) {
  return {
    id: appId,
    slug: APP_SLUG,
    node_id: nodeId("A_", appId),
    client_id: `Iv1.fake${appId}`,
    owner: account(u, "jitrunner-fake-owner", 90_000_000, "Organization"),
    name: "jitrunner (fake)",
    description: "The GitHub App of jitrunner's tests",
    external_url: "https://example.invalid/jitrunner",
    html_url: `${u.html}/apps/${APP_SLUG}`,
    created_at: CREATED,
    updated_at: CREATED,
    permissions: PERMISSIONS,
    events: ["workflow_job", "repository"],
    installations_count: installationsCount,
  };
}

/** GitHub's "runner-groups-org"; `selected_repositories_url` only with visibility `selected`, as GitHub sends it. */
export function runnerGroup(u: Urls, org: string, state: FakeState, id: number) {
  const base = `${u.api}/orgs/${org}/actions/runner-groups/${id}`;
  const selected = state.selectedRunnerGroups.has(id);
  const workflows = state.workflowRunnerGroups.get(id);
  return {
    id,
    name: state.runnerGroups.get(id) ?? `group-${id}`,
    visibility: selected ? "selected" : state.privateRunnerGroups.has(id) ? "private" : "all",
    default: id === 1,
    ...(selected ? { selected_repositories_url: `${base}/repositories` } : {}),
    runners_url: `${base}/runners`,
    inherited: false,
    allows_public_repositories: state.publicRunnerGroups.has(id),
    restricted_to_workflows: workflows !== undefined,
    selected_workflows: workflows ?? [],
    workflow_restrictions_read_only: false,
  };
}
