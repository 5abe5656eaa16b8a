#!/usr/bin/env node
import { existsSync } from "node:fs";

// The command runs the build in dist/. Before `npm run build` there is none: say so and how to go
// on, instead of Node's ERR_MODULE_NOT_FOUND and its stack. Only dist/cli.js is checked: an error
// of any other import (a build half-made, a dependency not installed) is shown as Node shows it.
const cli = new URL("../dist/cli.js", import.meta.url);
if (!existsSync(cli)) {
  process.stderr.write('jitrunner: dist/ is missing: run "npm run build" first, or use "npm run start -- <command>"\n');
  process.exit(1);
}
await import(cli.href);
