import { describeJob, formatAge, RUNNER_STATES, type StateCounts, type StatusSnapshot } from "../state/status.ts";

const CELL_MAX = 60;

/**
 * Terminal-safe text: job and repository names come from other people's workflows, so control
 * characters (escape sequences) are replaced and long values cut.
 */
export function clean(value: unknown): string {
  const text = value === undefined || value === null ? "" : String(value);
  // eslint-disable-next-line no-control-regex
  return text.replace(/[\u0000-\u001f\u007f-\u009f]/g, "?");
}

export function cell(value: unknown): string {
  const safe = clean(value);
  return safe.length > CELL_MAX ? `${safe.slice(0, CELL_MAX - 1)}…` : safe;
}

export function table(headers: string[], rows: unknown[][]): string {
  const cells = [headers, ...rows.map((r) => r.map(cell))];
  const widths = headers.map((_, i) => Math.max(...cells.map((r) => (r[i] ?? "").length)));
  return cells.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join("  ").trimEnd()).join("\n");
}

function counts(c: StateCounts): string {
  const parts = RUNNER_STATES.filter((s) => c[s] > 0).map((s) => `${c[s]} ${s}`);
  return parts.length ? parts.join(", ") : "none";
}

function ago(now: number, at: number): string {
  return Number.isFinite(at) ? `${formatAge((now - at) / 1000)} ago` : "";
}

/** What `jitrunner status` prints: the status page's facts as plain tables. */
export function renderStatusText(s: StatusSnapshot): string {
  const now = s.generatedAt;
  const out: string[] = [`jitrunner status at ${new Date(now).toISOString().slice(0, 19).replace("T", " ")} UTC`];
  const pending = s.pools.every((p) => p.pending !== undefined) ? String(s.pools.reduce((n, p) => n + (p.pending ?? 0), 0)) : "?";
  out.push(`${s.runners.length} runner(s), ${s.runners.filter((r) => r.state === "busy").length} busy; ${pending} job(s) waiting; ${s.hosts.length} host(s)`);
  if (s.problems.length) out.push("", "PROBLEMS", ...s.problems.map((p) => `  ${clean(p)}`));

  const section = (title: string, headers: string[], rows: unknown[][], empty: string) => {
    out.push("", title, rows.length ? table(headers, rows) : `  (${empty})`);
  };
  section(
    "POOLS",
    ["POOL", "LABELS", "IMAGE", "ISOLATION", "SCOPE", "WAITING", "RUNNERS"],
    s.pools.map((p) => [p.name, p.labels.join(","), p.image, p.isolation, p.scope, p.pending ?? "?", counts(p.runners)]),
    "no pools",
  );
  section(
    "HOSTS",
    ["HOST", "HEALTH", "SLOTS", "HEARTBEAT", "RUNNERS", "POOLS SERVED", "OLDEST RUNNER"],
    s.hosts.map((h) => [
      h.id,
      h.health ?? "unknown",
      h.capacity === undefined ? "" : `${h.used ?? 0}/${h.capacity}`,
      h.heartbeatAgeSeconds === undefined ? "" : `${formatAge(h.heartbeatAgeSeconds)} ago`,
      counts(h.runners),
      h.pools.join(","),
      ago(now, h.oldestCreatedAt),
    ]),
    "no worker host has a heartbeat or a runner now",
  );
  section(
    "RUNNERS",
    ["RUNNER", "POOL", "HOST", "STATE", "AGE", "FOR", "JOB", "CONTAINER"],
    s.runners.map((r) => [r.name, r.pool, r.host, r.state, formatAge(r.ageSeconds), r.scope, r.jobId ?? "", r.container ?? ""]),
    "no runners",
  );
  section(
    "RECENT JOBS",
    ["WHEN", "JOB", "REPOSITORY", "JOB NAME", "POOL", "STATUS", "RUNNER"],
    s.jobs.map((j) => [
      ago(now, j.lastAt),
      j.runAttempt > 1 ? `${j.jobId} (attempt ${j.runAttempt})` : j.jobId,
      j.repo,
      j.name ?? "",
      j.pool ?? "none",
      describeJob(j),
      j.runner ?? "",
    ]),
    "no jobs seen yet",
  );
  section(
    "RECENT LAUNCH FAILURES",
    ["WHEN", "POOL", "JOB", "REPOSITORY", "ATTEMPT", "REASON", "MESSAGE"],
    s.failures.map((f) => [ago(now, f.at), f.pool, f.jobId, f.repo, `${f.attempt}${f.retryable ? "" : " (final)"}`, f.reason, f.message]),
    "none recorded",
  );
  return `${out.join("\n")}\n`;
}
