/**
 * The `debug` package's namespaces whose output carries secrets: docker-modem's (`modem`) prints
 * each request's options and each engine answer whole (a runner's create carries its JIT config,
 * an inspect its environment, a TLS connection its key); ioredis's print each command's
 * arguments (an installation token in the shared token cache, the Redis password at AUTH).
 */
const SECRET_BEARING = ["modem", "ioredis:redis", "ioredis:connection", "ioredis:dataHandler", "ioredis:cluster", "ioredis:SentinelConnector"];

/**
 * The namespaces of SECRET_BEARING that `DEBUG` turns on (comma- or space-separated patterns, `*` a
 * wildcard, a leading `-` skipping, as the `debug` package reads them).
 */
export function debugShowsSecrets(value: string | undefined): string[] {
  const parts = (value ?? "").split(/[\s,]+/).filter(Boolean);
  const matches = (pattern: string, name: string) => new RegExp(`^${pattern.replace(/[.+?^${}()|[\]\\]/g, "\\$&").replace(/\*/g, ".*")}$`).test(name);
  return SECRET_BEARING.filter(
    (name) => !parts.some((p) => p.startsWith("-") && matches(p.slice(1), name)) && parts.some((p) => !p.startsWith("-") && matches(p, name)),
  );
}

/** What keeps DEBUG's other output: the patterns that skip the secret-bearing namespaces. */
export const DEBUG_SKIP_SECRETS = "-modem,-ioredis:*";
