import assert from "node:assert/strict";
import { test } from "node:test";
import { COMMAND_HELP, USAGE } from "../../src/cli/help.ts";
import { appManifest } from "../../src/cli/manifest.ts";

test("the App manifest asks for exactly the permissions and events jitrunner needs", () => {
  const m = appManifest({ url: "https://ci.example.com/jitrunner/" });
  assert.deepEqual(m, {
    name: "jitrunner",
    url: "https://ci.example.com/jitrunner",
    description: m.description,
    hook_attributes: { url: "https://ci.example.com/jitrunner/webhooks/github", active: true },
    public: false,
    default_permissions: { administration: "write", actions: "read", organization_self_hosted_runners: "write" },
    default_events: ["workflow_job", "repository"],
  });
  assert.equal(typeof m.description, "string");
});

test("the manifest takes a name and a redirect URL, and refuses what GitHub would", () => {
  const m = appManifest({ url: "http://127.0.0.1:8080", name: "acme-runners", redirectUrl: "http://127.0.0.1:9999/done" });
  assert.equal(m.name, "acme-runners");
  assert.equal(m.redirect_url, "http://127.0.0.1:9999/done");
  assert.equal(appManifest().hook_attributes.url, "https://YOUR-HOST/webhooks/github");
  assert.throws(() => appManifest({ url: "ftp://x" }), /--url: must be an http\(s\) URL/);
  assert.throws(() => appManifest({ url: "not a url" }), /--url: not a URL/);
  assert.throws(() => appManifest({ url: "https://x/?a=1" }), /no query/);
  assert.throws(() => appManifest({ name: "x".repeat(35) }), /--name/);
});

test("every command in the overview has its own help", () => {
  const listed = [...USAGE.matchAll(/^ {2}([a-z-]+) {2,}/gm)].map((m) => m[1]);
  assert.deepEqual(listed.sort(), Object.keys(COMMAND_HELP).sort());
  for (const [command, text] of Object.entries(COMMAND_HELP)) assert.match(text, new RegExp(`^Usage: jitrunner ${command}\\b`), command);
});
