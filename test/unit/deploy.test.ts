/**
 * deploy/prometheus and deploy/grafana stay true to the code: the files parse, and every metric
 * and label they query exists in src/metrics/metrics.ts (read from the real registry, so
 * histogram series and process metrics count too).
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { parse as parseYaml } from "yaml";
import { Metrics } from "../../src/metrics/metrics.ts";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const read = (path: string) => readFileSync(`${ROOT}${path}`, "utf8");

/** Metrics the files may use that are not ours: Prometheus's own and the blackbox exporter's. */
const EXTERNAL: Record<string, string[]> = { up: [], probe_success: [] };
/** Labels every scraped series has, or that our scrape config adds. */
const TARGET_LABELS = ["job", "instance", "role"];
const KEYWORDS = new Set(["by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset", "inf", "nan"]);

/** Our metric families and their labels, as the registry has them. */
function knownSeries(): Map<string, string[]> {
  const known = new Map<string, string[]>();
  for (const m of new Metrics().registry.getMetricsAsArray()) {
    const labels = (m as unknown as { labelNames?: string[] }).labelNames ?? [];
    if (String(m.type) === "histogram") {
      known.set(`${m.name}_bucket`, [...labels, "le"]);
      known.set(`${m.name}_sum`, labels);
      known.set(`${m.name}_count`, labels);
    } else known.set(m.name, labels);
  }
  for (const [name, labels] of Object.entries(EXTERNAL)) known.set(name, labels);
  return known;
}
const KNOWN = knownSeries();

/** Problems with one PromQL expression: unknown metrics, labels that the metrics do not have. */
function checkExpr(expr: string): string[] {
  const problems: string[] = [];
  const text = expr.replace(/"(?:[^"\\]|\\.)*"/g, '""');
  const used = new Set<string>();
  // Selectors with matchers: name{label="..."}
  for (const m of text.matchAll(/([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}/g)) {
    const [, name, matchers] = m;
    used.add(name!);
    const labels = KNOWN.get(name!);
    for (const lm of matchers!.matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)/g)) {
      if (labels && !labels.includes(lm[1]!) && !TARGET_LABELS.includes(lm[1]!)) problems.push(`${name} has no label ${lm[1]}`);
    }
  }
  const groupings = [...text.matchAll(/\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)/g)].flatMap((g) =>
    g[1]!.split(",").map((l) => l.trim()).filter(Boolean),
  );
  const bare = text
    .replace(/\{[^}]*\}/g, " ")
    .replace(/\[[^\]]*\]/g, " ")
    .replace(/\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, " ");
  for (const m of bare.matchAll(/([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?/g)) {
    if (m[2] || KEYWORDS.has(m[1]!.toLowerCase())) continue; // a function call or a keyword
    const before = bare.slice(0, m.index);
    if (/[0-9.]$/.test(before)) continue; // the unit of a number such as 1e3
    used.add(m[1]!);
  }
  for (const name of used) if (!KNOWN.has(name)) problems.push(`unknown metric ${name}`);
  const available = new Set([...TARGET_LABELS, ...[...used].flatMap((n) => KNOWN.get(n) ?? [])]);
  for (const label of groupings) if (!available.has(label)) problems.push(`no metric in the expression has label ${label}`);
  if (used.size === 0) problems.push("references no metric");
  return problems;
}

interface Rule {
  alert?: string;
  record?: string;
  expr: string;
  for?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}

const rulesFile = parseYaml(read("deploy/prometheus/jitrunner-alerts.yml")) as { groups: Array<{ name: string; rules: Rule[] }> };
const rules = rulesFile.groups.flatMap((g) => g.rules);

test("the metric checker is not vacuous", () => {
  assert.deepEqual(checkExpr('sum by (pool) (rate(jitrunner_launch_failures_total{reason="x"}[5m])) > 0'), []);
  assert.deepEqual(checkExpr("jitrunner_invented_total > 0"), ["unknown metric jitrunner_invented_total"]);
  assert.deepEqual(checkExpr('jitrunner_demand_pending{state="busy"}'), ["jitrunner_demand_pending has no label state"]);
  assert.deepEqual(checkExpr("sum by (repo) (jitrunner_demand_pending)"), ["no metric in the expression has label repo"]);
  assert.deepEqual(checkExpr("histogram_quantile(0.9, sum by (le) (rate(jitrunner_pickup_latency_seconds_bucket[5m])))"), []);
  assert.deepEqual(checkExpr("jitrunner_pickup_latency_seconds > 1"), ["unknown metric jitrunner_pickup_latency_seconds"]);
});

test("the alert rules parse, are complete, and query only metrics and labels that exist", () => {
  assert.ok(rules.length >= 8);
  const names = new Set<string>();
  for (const r of rules) {
    assert.ok(r.alert && /^Jitrunner[A-Z][A-Za-z]+$/.test(r.alert), `alert name ${r.alert}`);
    assert.ok(!names.has(r.alert), `duplicate ${r.alert}`);
    names.add(r.alert);
    assert.equal(typeof r.expr, "string");
    assert.deepEqual(checkExpr(r.expr), [], `${r.alert}: ${r.expr}`);
    if (r.for !== undefined) assert.match(r.for, /^\d+[smh]$/, `${r.alert} for`);
    assert.ok(["warning", "critical"].includes(r.labels?.severity ?? ""), `${r.alert} severity`);
    assert.ok(r.annotations?.summary && r.annotations.description, `${r.alert} annotations`);
  }
  // What operators asked to be woken for, each covered by some rule.
  const covers = (re: RegExp) => rules.some((r) => re.test(r.expr));
  for (const [what, re] of Object.entries({
    "jobs waiting too long": /jitrunner_demand_pending/,
    "pickup latency": /jitrunner_pickup_latency_seconds_(bucket|count)/,
    "launch failures": /jitrunner_launch_failures_total/,
    "rate limit low": /jitrunner_github_rate_limit_remaining\S*\)\s*</,
    "worker unready or down": /probe_success|\bup\{/,
    "host gone (heartbeat)": /jitrunner_host_heartbeat_age_seconds\S*\)\s*>/,
    "demand out of launch attempts": /increase\(jitrunner_demand_failed_total\[/,
  })) {
    assert.ok(covers(re), what);
  }
});

test("promtool accepts the rules and their unit tests pass (every alert fires where its test says)", () => {
  const dir = `${ROOT}deploy/prometheus`;
  const promtool = spawnSync("promtool", ["--version"], { encoding: "utf8" });
  assert.equal(promtool.error, undefined, "promtool is needed: install Debian's prometheus package (.ci/run does)");
  for (const args of [["check", "rules", "jitrunner-alerts.yml"], ["test", "rules", "jitrunner-alerts.test.yml"]]) {
    const r = spawnSync("promtool", args, { cwd: dir, encoding: "utf8" });
    assert.equal(r.status, 0, `promtool ${args.join(" ")}:\n${r.stdout}${r.stderr}`);
  }
  // Every alert has a unit test.
  const tested = parseYaml(read("deploy/prometheus/jitrunner-alerts.test.yml")) as { tests: Array<{ alert_rule_test: Array<{ alertname: string }> }> };
  const names = new Set(tested.tests.flatMap((t) => t.alert_rule_test.map((a) => a.alertname)));
  assert.deepEqual(rules.map((r) => r.alert!).filter((a) => !names.has(a)), []);
});

test("the scrape config loads the rules file and scrapes jitrunner", () => {
  const config = parseYaml(read("deploy/prometheus/prometheus.yml")) as {
    rule_files: string[];
    scrape_configs: Array<{ job_name: string; metrics_path?: string }>;
  };
  for (const file of config.rule_files) assert.ok(existsSync(`${ROOT}deploy/prometheus/${file}`), file);
  const jobs = config.scrape_configs.map((s) => s.job_name);
  assert.ok(jobs.includes("jitrunner") && jobs.includes("jitrunner-readyz"));
  // The rules' job selectors name jobs that the scrape config defines.
  for (const r of rules) for (const m of r.expr.matchAll(/job="([^"]+)"/g)) assert.ok(jobs.includes(m[1]!), `${r.alert}: job ${m[1]}`);
  // promtool's unit tests of the rules name only alerts that exist.
  const promtoolTests = parseYaml(read("deploy/prometheus/jitrunner-alerts.test.yml")) as { tests: Array<{ alert_rule_test: Array<{ alertname: string }> }> };
  for (const t of promtoolTests.tests) for (const a of t.alert_rule_test) assert.ok(rules.some((r) => r.alert === a.alertname), a.alertname);
});

test("the Grafana dashboard parses and every panel queries metrics and labels that exist", () => {
  const dash = JSON.parse(read("deploy/grafana/jitrunner.json")) as {
    uid: string;
    title: string;
    templating: { list: Array<{ name: string; query: unknown; definition?: string }> };
    panels: Array<{ id: number; type: string; title: string; gridPos: { w: number; h: number; x: number; y: number }; targets?: Array<{ expr: string; refId: string }> }>;
  };
  assert.equal(dash.uid, "jitrunner");
  const ids = dash.panels.map((p) => p.id);
  assert.equal(new Set(ids).size, ids.length, "panel ids are unique");
  let queries = 0;
  for (const p of dash.panels) {
    assert.ok(p.gridPos.x + p.gridPos.w <= 24, `${p.title} fits the grid`);
    if (p.type === "row") continue;
    assert.ok(p.targets?.length, `${p.title} has queries`);
    for (const t of p.targets!) {
      queries++;
      assert.deepEqual(checkExpr(t.expr), [], `${p.title}: ${t.expr}`);
    }
  }
  assert.ok(queries >= 15);
  const pool = dash.templating.list.find((v) => v.name === "pool");
  const metric = /label_values\((\w+), (\w+)\)/.exec(pool?.definition ?? "");
  assert.ok(metric && KNOWN.get(metric[1]!)?.includes(metric[2]!), "the pool variable reads a real label");
});

/**
 * Series that every `server`/`all` process exports with the same value (the queue's counts and the
 * hosts' heartbeats, read from Redis) or every worker for the same installation: adding them up
 * across processes counts the same jobs once per process.
 */
const FLEET_GAUGES = ["jitrunner_demand_pending", "jitrunner_queue_jobs", "jitrunner_host_capacity", "jitrunner_host_heartbeat_age_seconds", "jitrunner_github_rate_limit_remaining"];

/** Sums of a fleet gauge straight across processes (no `by (instance)`, no max/min per series first). */
function sumsAcrossProcesses(expr: string): string[] {
  const problems: string[] = [];
  for (const m of expr.matchAll(/\bsum\s*(?:by\s*\(([^)]*)\))?\s*\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)/g)) {
    const by = (m[1] ?? "").split(",").map((l) => l.trim());
    if (FLEET_GAUGES.includes(m[2]!) && !by.includes("instance")) problems.push(`sums ${m[2]} over every process exporting it`);
  }
  return problems;
}

test("the dashboard never adds up a series that each server process exports alike (the queue counted once per server)", () => {
  assert.deepEqual(sumsAcrossProcesses('sum(jitrunner_demand_pending{pool=~"$pool"})'), ["sums jitrunner_demand_pending over every process exporting it"]);
  assert.deepEqual(sumsAcrossProcesses('sum(max by (pool) (jitrunner_demand_pending{pool=~"$pool"}))'), []);
  assert.deepEqual(sumsAcrossProcesses("max by (state) (sum by (instance, state) (jitrunner_queue_jobs))"), []);
  const dash = JSON.parse(read("deploy/grafana/jitrunner.json")) as { panels: Array<{ title: string; targets?: Array<{ expr: string }> }> };
  for (const p of dash.panels) for (const t of p.targets ?? []) assert.deepEqual(sumsAcrossProcesses(t.expr), [], `${p.title}: ${t.expr}`);
});

test("README lists every metric with its labels", () => {
  const readme = read("README.md");
  const missing: string[] = [];
  for (const m of new Metrics().registry.getMetricsAsArray()) {
    if (/^jitrunner_(process|nodejs)_/.test(m.name)) continue; // the default metrics, listed by their prefixes
    const labels = (m as unknown as { labelNames?: string[] }).labelNames ?? [];
    const listed = labels.length ? `\`${m.name}{${labels.join(",")}}\`` : `\`${m.name}\``;
    if (!readme.includes(listed)) missing.push(listed);
  }
  assert.deepEqual(missing, []);
});
