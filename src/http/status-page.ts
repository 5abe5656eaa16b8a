import { createHash } from "node:crypto";
import { describeJob, formatAge, RUNNER_STATES, type StateCounts, type StatusSnapshot } from "../state/status.ts";
import { html, Html } from "./html.ts";

/** Seconds between reloads of the page in the browser. */
export const REFRESH_SECONDS = 15;

const STYLE = `
:root { color-scheme: light; --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --bg: #f6f8fa; --card: #fff; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; color: var(--fg); background: var(--bg); }
header { display: flex; align-items: baseline; gap: 16px; padding: 14px 24px; background: #24292f; color: #fff; }
header h1 { margin: 0; font-size: 20px; }
header p { margin: 0; color: #d1d9e0; font-size: 13px; }
main { padding: 16px 24px 40px; max-width: 1400px; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(150px, 1fr)); gap: 12px; margin-bottom: 8px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; }
.card .n { font-size: 26px; font-weight: 600; }
.card .k { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
section { margin-top: 22px; }
h2 { font-size: 16px; margin: 0 0 8px; }
table { width: 100%; border-collapse: collapse; background: var(--card); border: 1px solid var(--line); border-radius: 8px; overflow: hidden; }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { background: #eef1f4; font-size: 12px; color: var(--muted); text-transform: uppercase; letter-spacing: .04em; }
tr:last-child td { border-bottom: 0; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.num, td.when { white-space: nowrap; }
code { font: 12px/1.4 ui-monospace, "DejaVu Sans Mono", monospace; }
.label { display: inline-block; margin: 1px 3px 1px 0; padding: 0 7px; border-radius: 10px; background: #ddf4ff; color: #0a3069; font-size: 12px; }
.state { display: inline-block; padding: 0 8px; border-radius: 10px; font-size: 12px; font-weight: 600; }
.state-busy { background: #dafbe1; color: #116329; }
.state-idle { background: #ddf4ff; color: #0550ae; }
.state-starting, .state-registering { background: #fff8c5; color: #7d4e00; }
.state-completed, .state-stopped { background: #eef1f4; color: #59636e; }
.state-up { background: #dafbe1; color: #116329; }
.state-draining { background: #fff8c5; color: #7d4e00; }
.state-engine_down, .state-gone { background: #ffebe9; color: #cf222e; }
.empty { color: var(--muted); font-style: italic; padding: 10px; background: var(--card); border: 1px solid var(--line); border-radius: 8px; }
.problems { background: #fff1e5; border: 1px solid #fb8f44; border-radius: 8px; padding: 8px 14px; margin-bottom: 12px; }
.bad { color: #cf222e; font-weight: 600; }
.muted { color: var(--muted); }
`;

/** The CSP allows this one stylesheet and nothing else: no scripts, no external anything. */
export const CONTENT_SECURITY_POLICY = `default-src 'none'; style-src 'sha256-${createHash("sha256").update(STYLE).digest("base64")}'; img-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'`;

/** The status page: one server-rendered document, no scripts, every value escaped. */
export function renderStatusPage(s: StatusSnapshot): string {
  const runnersTotal = s.runners.length;
  const busy = s.runners.filter((r) => r.state === "busy").length;
  const pendingKnown = s.pools.every((p) => p.pending !== undefined);
  const pendingTotal = s.pools.reduce((n, p) => n + (p.pending ?? 0), 0);
  const page = html`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="${REFRESH_SECONDS}">
<meta name="referrer" content="no-referrer">
<title>jitrunner status</title>
<style>${new Html(STYLE)}</style>
</head>
<body>
<header><h1>jitrunner</h1><p>status at ${time(s.generatedAt)} · refreshes every ${REFRESH_SECONDS} s</p></header>
<main>
${s.problems.length ? html`<div class="problems" role="alert"><strong>Some facts could not be read:</strong><ul>${s.problems.map((p) => html`<li>${p}</li>`)}</ul></div>` : ""}
<div class="cards">
  ${card("Runners", runnersTotal, "runners")}
  ${card("Busy", busy, "busy")}
  ${card("Jobs waiting", pendingKnown ? pendingTotal : "?", "pending")}
  ${card("Pools", s.pools.length, "pools")}
  ${card("Hosts", s.hosts.length, "hosts")}
  ${card("Recent failures", s.failures.length, "failures")}
</div>
${poolsSection(s)}
${hostsSection(s)}
${runnersSection(s)}
${jobsSection(s)}
${failuresSection(s)}
</main>
</body>
</html>
`;
  return page.value;
}

function card(title: string, value: number | string, id: string): Html {
  return html`<div class="card" data-card="${id}"><div class="k">${title}</div><div class="n">${value}</div></div>`;
}

function time(ms: number): Html {
  if (!Number.isFinite(ms)) return html`<span class="muted">unknown</span>`;
  const iso = new Date(ms).toISOString();
  return html`<time datetime="${iso}">${iso.slice(0, 19).replace("T", " ")} UTC</time>`;
}

function ago(now: number, ms: number | undefined): Html {
  if (ms === undefined || !Number.isFinite(ms)) return html``;
  return html`<span title="${new Date(ms).toISOString()}">${formatAge((now - ms) / 1000)} ago</span>`;
}

function labels(list: readonly string[]): Html {
  return html`${list.map((l) => html`<span class="label">${l}</span>`)}`;
}

function state(value: string): Html {
  return html`<span class="state state-${value}">${value}</span>`;
}

function counts(c: StateCounts): Html {
  const parts = RUNNER_STATES.filter((st) => c[st] > 0).map((st) => html`${c[st]} ${st}`);
  if (parts.length === 0) return html`<span class="muted">none</span>`;
  return html`${parts.map((p, i) => html`${i ? ", " : ""}${p}`)}`;
}

function section(id: string, title: string, rows: number, table: () => Html, empty: string): Html {
  return html`<section id="${id}"><h2>${title}</h2>${rows ? table() : html`<div class="empty">${empty}</div>`}</section>`;
}

function poolsSection(s: StatusSnapshot): Html {
  return section("pools", "Pools", s.pools.length, () => html`<table>
<thead><tr><th>Pool</th><th>Labels</th><th>Image</th><th>Isolation</th><th>Scope</th><th class="num">Waiting</th><th>Runners</th></tr></thead>
<tbody>${s.pools.map(
    (p) => html`<tr><td><strong>${p.name}</strong></td><td>${labels(p.labels)}</td><td><code>${p.image}</code></td><td>${p.isolation}</td><td>${p.scope}</td><td class="num">${p.pending ?? "?"}</td><td>${counts(p.runners)}</td></tr>`,
  )}</tbody></table>`, "No pools configured.");
}

function hostsSection(s: StatusSnapshot): Html {
  return section("hosts", "Hosts", s.hosts.length, () => html`<table>
<thead><tr><th>Host</th><th>Health</th><th class="num">Slots used</th><th class="num">Heartbeat</th><th>Runners</th><th>Pools served</th><th>Oldest runner</th></tr></thead>
<tbody>${s.hosts.map(
    (h) => html`<tr data-host="${h.id}"><td><strong>${h.id}</strong></td><td>${h.health ? state(h.health) : html`<span class="muted">unknown</span>`}</td><td class="num">${h.capacity === undefined ? "" : `${h.used ?? 0} / ${h.capacity}`}</td><td class="num">${h.heartbeatAgeSeconds === undefined ? "" : `${formatAge(h.heartbeatAgeSeconds)} ago`}</td><td>${counts(h.runners)}</td><td>${h.pools.join(", ")}</td><td class="when">${ago(s.generatedAt, h.oldestCreatedAt)}</td></tr>`,
  )}</tbody></table>`, "No worker host has a heartbeat or a runner now.");
}

function runnersSection(s: StatusSnapshot): Html {
  return section("runners", "Runners", s.runners.length, () => html`<table>
<thead><tr><th>Runner</th><th>Pool</th><th>Host</th><th>State</th><th class="num">Age</th><th>For</th><th>Job</th><th>Container</th></tr></thead>
<tbody>${s.runners.map(
    (r) => html`<tr data-runner="${r.name}"><td><code>${r.name}</code></td><td>${r.pool}</td><td>${r.host}</td><td>${state(r.state)}</td><td class="num">${formatAge(r.ageSeconds)}</td><td>${r.scope}</td><td>${r.jobId ?? ""}</td><td><code>${r.container ?? ""}</code></td></tr>`,
  )}</tbody></table>`, "No runners.");
}

function jobsSection(s: StatusSnapshot): Html {
  return section("jobs", "Recent jobs", s.jobs.length, () => html`<table>
<thead><tr><th>When</th><th>Job</th><th>Repository</th><th>Workflow / job</th><th>Pool</th><th>Status</th><th>Runner</th></tr></thead>
<tbody>${s.jobs.map(
    (j) => html`<tr><td class="when">${ago(s.generatedAt, j.lastAt)}</td><td>${j.jobId}${j.runAttempt > 1 ? html` <span class="muted">(attempt ${j.runAttempt})</span>` : ""}</td><td>${j.repo}</td><td>${j.workflow ?? ""}${j.workflow && j.name ? " / " : ""}${j.name ?? ""}</td><td>${j.pool ?? html`<span class="muted">none</span>`}</td><td class="${(j.conclusion && j.conclusion !== "success") || j.launchFailed ? "bad" : ""}">${describeJob(j)}</td><td><code>${j.runner ?? ""}</code></td></tr>`,
  )}</tbody></table>`, "No jobs seen yet.");
}

function failuresSection(s: StatusSnapshot): Html {
  return section("failures", "Recent launch failures", s.failures.length, () => html`<table>
<thead><tr><th>When</th><th>Pool</th><th>Job</th><th>Repository</th><th class="num">Attempt</th><th>Reason</th><th>Message</th></tr></thead>
<tbody>${s.failures.map(
    (f) => html`<tr><td class="when">${ago(s.generatedAt, f.at)}</td><td>${f.pool}</td><td>${f.jobId}</td><td>${f.repo}</td><td class="num">${f.attempt}${f.retryable ? "" : " (final)"}</td><td class="bad">${f.reason}</td><td>${f.message}</td></tr>`,
  )}</tbody></table>`, "No launch failures recorded.");
}
