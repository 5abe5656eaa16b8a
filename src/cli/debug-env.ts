/**
 * Whether the `DEBUG` environment variable (the `debug` package's namespaces: comma- or
 * space-separated, `*` a wildcard, a leading `-` skipping) turns on docker-modem's namespace,
 * `modem`. That output prints each request's options and each engine answer whole: a runner's
 * create carries its JIT config, an inspect its environment, and a TLS connection's key.
 */
export function debugShowsDockerRequests(value: string | undefined): boolean {
  const parts = (value ?? "").split(/[\s,]+/).filter(Boolean);
  const matches = (pattern: string) => new RegExp(`^${pattern.replace(/[.+?^${}()|[\]\\]/g, "\\$&").replace(/\*/g, ".*")}$`).test("modem");
  if (parts.some((p) => p.startsWith("-") && matches(p.slice(1)))) return false;
  return parts.some((p) => !p.startsWith("-") && matches(p));
}
