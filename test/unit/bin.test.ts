/**
 * bin/jitrunner.js, the installed command, in a copy of the package layout: before a build (no
 * dist/cli.js) it says what to run and exits 1, with no stack; a build that is there runs, and
 * any other import error of it is left as Node reports it.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { fileURLToPath } from "node:url";

const BIN = fileURLToPath(new URL("../../bin/jitrunner.js", import.meta.url));
const root = mkdtempSync(join(tmpdir(), "jitrunner-bin-"));
after(() => rmSync(root, { recursive: true, force: true }));

/** A package like ours (ESM, bin/jitrunner.js) whose dist/ holds `files`. */
function layout(name: string, files: Record<string, string>): string {
  const dir = join(root, name);
  mkdirSync(join(dir, "bin"), { recursive: true });
  writeFileSync(join(dir, "package.json"), JSON.stringify({ type: "module" }));
  copyFileSync(BIN, join(dir, "bin", "jitrunner.js"));
  for (const [file, text] of Object.entries(files)) {
    mkdirSync(join(dir, "dist"), { recursive: true });
    writeFileSync(join(dir, "dist", file), text);
  }
  return dir;
}

function run(dir: string, ...args: string[]) {
  return spawnSync(process.execPath, [join(dir, "bin", "jitrunner.js"), ...args], { encoding: "utf8" });
}

test("before `npm run build`: what to run instead, exit 1, no stack", () => {
  const r = run(layout("unbuilt", {}), "check-config");
  assert.equal(r.status, 1);
  assert.equal(r.stderr, 'jitrunner: dist/ is missing: run "npm run build" first, or use "npm run start -- <command>"\n');
  assert.equal(r.stdout, "");
});

test("a build runs, with its arguments; another module missing is Node's own error", () => {
  const built = run(layout("built", { "cli.js": "process.stdout.write(`ran ${process.argv.slice(2).join(' ')}`);\n" }), "status", "--json");
  assert.equal(built.status, 0, built.stderr);
  assert.equal(built.stdout, "ran status --json");
  const broken = run(layout("broken", { "cli.js": 'import "./main.js";\n' }));
  assert.notEqual(broken.status, 0);
  assert.match(broken.stderr, /ERR_MODULE_NOT_FOUND/);
  assert.match(broken.stderr, /dist\/main\.js/);
  assert.doesNotMatch(broken.stderr, /dist\/ is missing/);
});
