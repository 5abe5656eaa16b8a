// The GitHub options of a pool: runner group by id or by name, never both; names only where groups exist.
import assert from "node:assert/strict";
import { test } from "node:test";
import { loadConfig } from "../../src/config/load.ts";
import { ConfigError } from "../../src/errors.ts";
import { testPrivateKey } from "../helpers/config.ts";

const env = { JITRUNNER_GITHUB_PRIVATE_KEY: testPrivateKey(), JITRUNNER_GITHUB_WEBHOOK_SECRET: "s3cret-value-0123456789" };
const noFiles = (): string => {
  throw new Error("no files");
};

function load(pool: Record<string, unknown>, apiUrl?: string) {
  const config = {
    github: { appId: 42, ...(apiUrl ? { apiUrl } : {}) },
    pools: [{ name: "default", labels: ["self-hosted", "linux"], image: "runner:1", ...pool }],
  };
  return loadConfig({ text: JSON.stringify(config), env, readFile: noFiles });
}

function problems(pool: Record<string, unknown>): string[] {
  try {
    load(pool);
  } catch (err) {
    assert.ok(err instanceof ConfigError);
    return err.problems;
  }
  assert.fail("expected a ConfigError");
}

test("runner group: the Default group (1) unless given by id or by name", () => {
  assert.equal(load({}).pools[0]!.runnerGroupId, 1);
  assert.equal(load({ scope: "organization", runnerGroupId: 7 }).pools[0]!.runnerGroupId, 7);
  const byName = load({ scope: "organization", runnerGroup: " ci-runners " }).pools[0]!;
  assert.deepEqual([byName.runnerGroup, byName.runnerGroupId], ["ci-runners", undefined]);
});

test("runner group: by id and by name at once is refused, and so is a group other than the Default for repository runners", () => {
  assert.deepEqual(problems({ scope: "organization", runnerGroupId: 2, runnerGroup: "ci" }), [
    "pools[0]: give runnerGroup (a name) or runnerGroupId, not both (line 1)",
  ]);
  assert.deepEqual(problems({ runnerGroup: "ci" }), ["pools[0].runnerGroup: runner groups are for organization runners; set scope: organization (line 1)"]);
  assert.deepEqual(problems({ runnerGroupId: 7 }), [
    "pools[0].runnerGroupId: runner groups are for organization runners (a repository's runners are in group 1, the Default); set scope: organization (line 1)",
  ]);
  assert.equal(load({ runnerGroupId: 1 }).pools[0]!.runnerGroupId, 1, "the Default group, as the schema sets it");
  assert.match(problems({ scope: "organization", runnerGroup: "" }).join("\n"), /pools\[0\]\.runnerGroup/);
  assert.match(problems({ scope: "enterprise" }).join("\n"), /pools\[0\]\.scope/, "enterprise runners cannot be registered with App tokens");
});

test("labels are kept exactly as configured (they are sent as they are)", () => {
  assert.deepEqual(load({ labels: ["self-hosted", "Linux", "GPU-a100"] }).pools[0]!.labels, ["self-hosted", "Linux", "GPU-a100"]);
});

test("apiUrl: a GitHub Enterprise Server base with its path", () => {
  assert.equal(load({}, "https://ghes.example.com/api/v3").github.apiUrl, "https://ghes.example.com/api/v3");
});
