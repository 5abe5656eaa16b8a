/**
 * The check of an SSH engine's host key against OpenSSH's known_hosts. The keys, the hashed
 * entries and the fingerprints below were made by OpenSSH's own ssh-keygen (`-t`, `-H`, `-lf`).
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { connectionWarnings } from "../../src/docker/dockerode-driver.ts";
import { blobKeyType, checkHostKey, fingerprint, hostKeyAlgorithms, hostKeyVerifier, knownKeyTypes, parseKnownHosts } from "../../src/docker/known-hosts.ts";

const ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMb3Rs/fS8YstzsxbIWUFzOhWRvIjjEZqrEU824CmbIO";
const ECDSA =
  "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBPmPVdXxGbiA4DBSDYsJa/zjdJllGv4ojn1l468IZRduNSHPWMT2vgvmDuwru4pSm3MioqT4XOKL/HRlwqFzj/8=";
const RSA =
  "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQCw2PQt6qTYI94cwEuOHIlRwZhcUhymaXgeywtWUl2gDYIvNQDBcIifQonxI9WoJpEok+JaaosogeST2Tizs88cubdkZ6AWLd5JPKpYBb7bvH7T5upxDuLx0FPRvsPkVoPyfXcqC9xza5p6LMkl5tqrXTzp1cctRTOgf++in8v991TPZ1BsrBsQujcgeP771WFsl4r9rHyzeYLvbm48324LmHLoZn+mpQEkmVFGJZTCeJhQ2WMhqyGIOTzJX0dBCU9Tb71mmr2wi9wG/8mj6WTcpZ0IKBLuenYD0BNP+6AzBM8mwgjlO6iEtK8qo6exo3VCBCImVDxWcS4v4N5f04pt";
/** `ssh-keygen -H` of `engine.example ED25519` and `[127.0.0.1]:2222 ECDSA`. */
const HASHED_ENGINE = `|1|6tz9JiKUM7kg2+xnrMXJD9FStY4=|kOyLN6jp1lIqqkfKFxfVDOP+N7o= ${ED25519}`;
const HASHED_PORT = `|1|J+9RAIwqjZbYNN3LDPEK32RG0dk=|BhGfoS02SQcT4UzV/IqbTor1tuE= ${ECDSA}`;

/** The key blob a server presents (what ssh2's hostVerifier is given). */
const blob = (line: string) => Buffer.from(line.split(" ")[1]!, "base64");
const check = (text: string, host: string, port: number, key: string) => checkHostKey(parseKnownHosts(text), host, port, blob(key));

test("a plain entry: its host on port 22 only, names case-insensitive, among other names", () => {
  assert.deepEqual(check(`engine.example ${ED25519}\n`, "engine.example", 22, ED25519), { ok: true });
  assert.deepEqual(check(`other,ENGINE.example,10.0.0.5 ${ED25519} comment here\n`, "Engine.Example", 22, ED25519), { ok: true });
  assert.deepEqual(check(`other,engine.example,10.0.0.5 ${ED25519}\n`, "10.0.0.5", 22, ED25519), { ok: true });
  // On another port, OpenSSH looks up `[host]:port` only.
  assert.deepEqual(check(`engine.example ${ED25519}\n`, "engine.example", 2222, ED25519), { ok: false, reason: "unknown" });
});

test("a [host]:port entry: that port only", () => {
  const text = `[127.0.0.1]:2222 ${ECDSA}\n[::1]:2200 ${RSA}\n`;
  assert.deepEqual(check(text, "127.0.0.1", 2222, ECDSA), { ok: true });
  assert.deepEqual(check(text, "::1", 2200, RSA), { ok: true });
  assert.deepEqual(check(text, "127.0.0.1", 2223, ECDSA), { ok: false, reason: "unknown" });
  assert.deepEqual(check(text, "127.0.0.1", 22, ECDSA), { ok: false, reason: "unknown" });
});

test("hashed entries (ssh-keygen -H): host on port 22 and [host]:port", () => {
  const text = `${HASHED_ENGINE}\n${HASHED_PORT}\n`;
  assert.deepEqual(check(text, "engine.example", 22, ED25519), { ok: true });
  assert.deepEqual(check(text, "ENGINE.example", 22, ED25519), { ok: true });
  assert.deepEqual(check(text, "127.0.0.1", 2222, ECDSA), { ok: true });
  assert.deepEqual(check(text, "127.0.0.1", 2223, ECDSA), { ok: false, reason: "unknown" });
  assert.deepEqual(check(text, "engine2.example", 22, ED25519), { ok: false, reason: "unknown" });
  assert.deepEqual(check(text, "engine.example", 22, ECDSA), { ok: false, reason: "changed" });
});

test("a host known by another key is refused as changed; one known by none as unknown", () => {
  assert.deepEqual(check(`engine.example ${ED25519}\n`, "engine.example", 22, ECDSA), { ok: false, reason: "changed" });
  assert.deepEqual(check(`engine.example ${ED25519}\nengine.example ${RSA}\n`, "engine.example", 22, RSA), { ok: true });
  assert.deepEqual(check(`other.example ${ED25519}\n`, "engine.example", 22, ED25519), { ok: false, reason: "unknown" });
  assert.deepEqual(check("", "engine.example", 22, ED25519), { ok: false, reason: "unknown" });
  // The key of one host does not vouch for another.
  assert.deepEqual(check(`other.example ${ED25519}\nengine.example ${ECDSA}\n`, "engine.example", 22, ED25519), { ok: false, reason: "changed" });
});

test("wildcards and negations, comments and junk, markers", () => {
  assert.deepEqual(check(`*.example ${ED25519}\n`, "engine.example", 22, ED25519), { ok: true });
  assert.deepEqual(check(`engine?.example ${ED25519}\n`, "engine1.example", 22, ED25519), { ok: true });
  assert.deepEqual(check(`*.example,!engine.example ${ED25519}\n`, "engine.example", 22, ED25519), { ok: false, reason: "unknown" });
  // A dot in a pattern is a dot.
  assert.deepEqual(check(`engine.example ${ED25519}\n`, "enginexexample", 22, ED25519), { ok: false, reason: "unknown" });
  assert.deepEqual(check(`# engine.example ${ED25519}\n\n   \nengine.example\nengine.example ssh-ed25519 not*base64\n`, "engine.example", 22, ED25519), {
    ok: false,
    reason: "unknown",
  });
  // @cert-authority: ignored (host certificates are not checked); @revoked: refused.
  assert.deepEqual(check(`@cert-authority *.example ${ED25519}\n`, "engine.example", 22, ED25519), { ok: false, reason: "unknown" });
  assert.deepEqual(check(`engine.example ${ED25519}\n@revoked * ${ED25519}\n`, "engine.example", 22, ED25519), { ok: false, reason: "revoked" });
  assert.deepEqual(check(`@unknown engine.example ${ED25519}\n`, "engine.example", 22, ED25519), { ok: false, reason: "unknown" });
});

test("fingerprints and key types as ssh-keygen -lf shows them", () => {
  assert.equal(fingerprint(blob(ED25519)), "SHA256:DUKlJ3X639yaxfRmh1f26VErxXIhVP8EUvJ+IbzsxWw");
  assert.equal(fingerprint(blob(ECDSA)), "SHA256:3L4yLQpPDw7IPUL9rCKvuX+B6V3bWxio0w09A1XLPCU");
  assert.equal(fingerprint(blob(RSA)), "SHA256:SDQYO8IpCRysSOOkB+eQIs3KGDjWUuuzf9vA91xCch4");
  assert.equal(blobKeyType(blob(RSA)), "ssh-rsa");
  assert.equal(blobKeyType(Buffer.from("junk")), "unknown");
});

test("the host key algorithms offered put those of keys known for the host first", () => {
  const known = parseKnownHosts(`engine.example ${RSA}\nengine.example ${ECDSA}\nother ${ED25519}\n`);
  assert.deepEqual(knownKeyTypes(known, "engine.example", 22), ["ssh-rsa", "ecdsa-sha2-nistp256"]);
  assert.deepEqual(hostKeyAlgorithms(knownKeyTypes(known, "engine.example", 22))?.slice(0, 5), [
    "rsa-sha2-512",
    "rsa-sha2-256",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ssh-ed25519",
  ]);
  assert.equal(hostKeyAlgorithms([]), undefined);
  assert.equal(hostKeyAlgorithms(["ssh-dss"]), undefined);
});

test("the verifier reads its files on each connection and says why it refused, naming the host and the fix", () => {
  const files: Record<string, string> = { "/kh": "" };
  const readFile = (p: string) => {
    if (!(p in files)) throw Object.assign(new Error(`ENOENT: ${p}`), { code: "ENOENT" });
    return files[p]!;
  };
  const v = hostKeyVerifier({ host: "127.0.0.1", port: 2222, files: ["/kh"], readFile });
  assert.equal(v.verify(blob(ED25519)), false);
  assert.match(v.refusal!, /SSH host key of 127\.0\.0\.1 port 2222 \(ssh-ed25519 SHA256:DUKlJ3X639yaxfRmh1f26VErxXIhVP8EUvJ\+IbzsxWw\) is not in known_hosts \(\/kh;/);
  assert.match(v.refusal!, /ssh-keyscan -p 2222 127\.0\.0\.1 >> \/kh/);
  files["/kh"] = `[127.0.0.1]:2222 ${ECDSA}\n`;
  assert.equal(v.verify(blob(ED25519)), false);
  assert.match(v.refusal!, /differs from the one known_hosts .* holds for it: someone may be impersonating the host/);
  assert.match(v.refusal!, /ssh-keygen -R '\[127\.0\.0\.1\]:2222' -f \/kh/);
  assert.deepEqual(v.algorithms(), { serverHostKey: hostKeyAlgorithms(["ecdsa-sha2-nistp256"]) });
  files["/kh"] = `[127.0.0.1]:2222 ${ED25519}\n`;
  assert.equal(v.verify(blob(ED25519)), true);

  const missing = hostKeyVerifier({ host: "engine.example", files: ["/nowhere"], readFile });
  assert.equal(missing.verify(blob(ED25519)), false);
  assert.match(missing.refusal!, /\/nowhere \(missing\)/);
  assert.match(missing.refusal!, /ssh-keyscan engine\.example >> \/nowhere/);
  assert.equal(missing.algorithms(), undefined);
});

test("a known_hosts file the process can no longer read counts as read at start; one it never read is refused, saying why", () => {
  const readFile = (p: string): string => {
    throw Object.assign(new Error(`EACCES: permission denied, open '${p}'`), { code: "EACCES" });
  };
  const readAtStart = new Map([["/kh", `[127.0.0.1]:2222 ${ED25519}\n`]]);
  const kept = hostKeyVerifier({ host: "127.0.0.1", port: 2222, files: ["/kh"], readFile, readAtStart });
  assert.equal(kept.verify(blob(ED25519)), true);
  assert.deepEqual(kept.algorithms(), { serverHostKey: hostKeyAlgorithms(["ssh-ed25519"]) });
  assert.equal(kept.verify(blob(ECDSA)), false);
  assert.match(kept.refusal!, /differs from the one known_hosts \(\/kh \(as read at start: this user cannot read it\);/);

  const never = hostKeyVerifier({ host: "127.0.0.1", port: 2222, files: ["/kh"], readFile });
  assert.equal(never.verify(blob(ED25519)), false);
  assert.match(never.refusal!, /\/kh \(unreadable: EACCES\)/);
  // Only a file that cannot be read now falls back: a missing one is one with no entries.
  const gone = hostKeyVerifier({ host: "127.0.0.1", port: 2222, files: ["/kh"], readFile: () => { throw Object.assign(new Error("ENOENT"), { code: "ENOENT" }); }, readAtStart });
  assert.equal(gone.verify(blob(ED25519)), false);
  assert.match(gone.refusal!, /\/kh \(missing\)/);
});

test("plain HTTP to an engine on another machine is warned about; loopback, TLS, SSH and sockets are not", () => {
  const warned = (c: Parameters<typeof connectionWarnings>[0], env: NodeJS.ProcessEnv = {}) => connectionWarnings(c, env).length > 0;
  assert.equal(warned({ host: "engine.example", port: 2375, protocol: "http" }), true);
  assert.match(connectionWarnings({ host: "10.1.2.3", protocol: "http" }, {})[0]!, /10\.1\.2\.3 is reached over plain HTTP/);
  // docker-modem's default for a host: http, unless given all three TLS files.
  assert.equal(warned({ host: "engine.example", port: 2375 }), true);
  assert.equal(warned({ host: "engine.example", caFile: "ca", certFile: "c", keyFile: "k" }), false);
  assert.equal(warned({ host: "engine.example", protocol: "https" }), false);
  assert.equal(warned({ host: "engine.example", protocol: "ssh" }), false);
  for (const host of ["127.0.0.1", "127.8.9.10", "localhost", "::1", "[::1]"]) assert.equal(warned({ host, protocol: "http" }), false, host);
  assert.equal(warned({ socketPath: "/var/run/docker.sock" }, { DOCKER_HOST: "tcp://engine.example:2375" }), false);
  // Nothing configured: DOCKER_HOST, as docker-modem reads it.
  assert.equal(warned({}, { DOCKER_HOST: "tcp://engine.example:2375" }), true);
  assert.equal(warned({}, { DOCKER_HOST: "engine.example:2375" }), true);
  assert.equal(warned({}, { DOCKER_HOST: "tcp://engine.example:2375", DOCKER_TLS_VERIFY: "1" }), false);
  assert.equal(warned({}, { DOCKER_HOST: "tcp://engine.example:2376" }), false);
  assert.equal(warned({}, { DOCKER_HOST: "tcp://127.0.0.1:2375" }), false);
  assert.equal(warned({}, { DOCKER_HOST: "ssh://root@engine.example" }), false);
  assert.equal(warned({}, { DOCKER_HOST: "unix:///run/docker.sock" }), false);
  assert.equal(warned({}, {}), false);
});
