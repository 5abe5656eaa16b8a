import assert from "node:assert/strict";
import { test } from "node:test";
import { DEBUG_SKIP_SECRETS, debugShowsSecrets } from "../../src/cli/debug-env.ts";

test("DEBUG turns on secret-bearing output (docker-modem's, ioredis's) by namespace or a wildcard that takes it, unless skipped", () => {
  for (const [value, shown] of [
    ["*", ["modem", "ioredis:redis", "ioredis:connection", "ioredis:dataHandler", "ioredis:cluster", "ioredis:SentinelConnector"]],
    ["modem", ["modem"]],
    ["mod*", ["modem"]],
    ["ioredis:*", ["ioredis:redis", "ioredis:connection", "ioredis:dataHandler", "ioredis:cluster", "ioredis:SentinelConnector"]],
    ["bullmq ioredis:redis", ["ioredis:redis"]],
    ["*,-modem", ["ioredis:redis", "ioredis:connection", "ioredis:dataHandler", "ioredis:cluster", "ioredis:SentinelConnector"]],
  ] as const) {
    assert.deepEqual(debugShowsSecrets(value), shown, value);
  }
  for (const off of [undefined, "", "modem:x", "bull*", "-*", `*,${DEBUG_SKIP_SECRETS}`, `${DEBUG_SKIP_SECRETS},*`]) assert.deepEqual(debugShowsSecrets(off), [], String(off));
});
