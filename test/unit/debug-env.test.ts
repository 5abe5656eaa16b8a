import assert from "node:assert/strict";
import { test } from "node:test";
import { debugShowsDockerRequests } from "../../src/cli/debug-env.ts";

test("DEBUG turns on docker-modem's output by its namespace or a wildcard that takes it, unless it is skipped", () => {
  for (const on of ["*", "modem", "mod*", "ioredis:*,modem", "bullmq modem", "*,-ioredis"]) assert.equal(debugShowsDockerRequests(on), true, on);
  for (const off of [undefined, "", "ioredis:*", "modem:x", "*,-modem", "-modem,*", "bull*", "-*"]) assert.equal(debugShowsDockerRequests(off), false, String(off));
});
