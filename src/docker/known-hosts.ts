import { createHash, createHmac } from "node:crypto";
import { readFileSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import { errorMessage } from "../errors.ts";

/**
 * An engine reached over `ssh://` is trusted only with a host key that OpenSSH's known_hosts
 * holds for it, as the `docker` CLI (which runs `ssh`) does: the connection carries every
 * container-create body, and with it each runner's JIT config, to whoever answers.
 *
 * Read here: plain host names and addresses, `[host]:port` for a port other than 22, `*` and `?`
 * wildcards, `!` negations, hashed entries (`|1|salt|hmac`, `ssh-keygen -H`), any key type (the
 * key blob is compared). `@revoked` keys are refused; `@cert-authority` lines are ignored (host
 * certificates are not checked: a host known only through its CA is refused).
 */

/** One known_hosts line. */
export interface KnownHost {
  marker?: "cert-authority" | "revoked";
  /** The comma-separated host patterns, or one hashed entry. */
  hosts: string;
  keyType: string;
  key: Buffer;
}

/** Where OpenSSH looks when no file is configured (`UserKnownHostsFile`, `GlobalKnownHostsFile`). */
export function defaultKnownHostsFiles(): string[] {
  return [join(homedir(), ".ssh", "known_hosts"), "/etc/ssh/ssh_known_hosts"];
}

export function parseKnownHosts(text: string): KnownHost[] {
  const found: KnownHost[] = [];
  for (const raw of text.split("\n")) {
    const fields = raw.trim().split(/\s+/);
    if (!fields[0] || fields[0].startsWith("#")) continue;
    let marker: KnownHost["marker"];
    if (fields[0].startsWith("@")) {
      const m = fields.shift()!;
      if (m !== "@cert-authority" && m !== "@revoked") continue;
      marker = m.slice(1) as KnownHost["marker"];
    }
    const [hosts, keyType, base64] = fields;
    if (!hosts || !keyType || !base64 || !/^[A-Za-z0-9+/]+=*$/.test(base64)) continue;
    found.push({ ...(marker ? { marker } : {}), hosts, keyType, key: Buffer.from(base64, "base64") });
  }
  return found;
}

/** The name known_hosts holds a host under: `host` on port 22, `[host]:port` on any other. */
export function lookupName(host: string, port: number): string {
  const h = host.toLowerCase();
  return port === 22 ? h : `[${h}]:${port}`;
}

/** Whether a line's hosts field names `name` (as made by `lookupName`). */
export function hostsMatch(hosts: string, name: string): boolean {
  if (hosts.startsWith("|")) return hashedMatch(hosts, name);
  let matched = false;
  for (const pattern of hosts.split(",")) {
    const negated = pattern.startsWith("!");
    if (!globMatch(negated ? pattern.slice(1) : pattern, name)) continue;
    if (negated) return false;
    matched = true;
  }
  return matched;
}

function hashedMatch(entry: string, name: string): boolean {
  const [, magic, salt, hash] = entry.split("|");
  if (magic !== "1" || !salt || !hash) return false;
  return createHmac("sha1", Buffer.from(salt, "base64")).update(name).digest("base64") === hash;
}

function globMatch(pattern: string, name: string): boolean {
  const re = pattern.toLowerCase().replace(/[.+^${}()|[\]\\]/g, "\\$&").replace(/\*/g, ".*").replace(/\?/g, ".");
  return new RegExp(`^${re}$`).test(name);
}

export type HostKeyCheck = { ok: true } | { ok: false; reason: "unknown" | "changed" | "revoked" };

/** Whether `key` (the SSH wire-format blob the server presented) is known for `host`:`port`. */
export function checkHostKey(known: KnownHost[], host: string, port: number, key: Buffer): HostKeyCheck {
  const name = lookupName(host, port);
  const forHost = known.filter((k) => k.marker !== "cert-authority" && hostsMatch(k.hosts, name));
  if (forHost.some((k) => k.marker === "revoked" && k.key.equals(key))) return { ok: false, reason: "revoked" };
  const keys = forHost.filter((k) => k.marker === undefined);
  if (keys.some((k) => k.key.equals(key))) return { ok: true };
  return { ok: false, reason: keys.length ? "changed" : "unknown" };
}

/** The key types known for `host`:`port`, in file order. */
export function knownKeyTypes(known: KnownHost[], host: string, port: number): string[] {
  const name = lookupName(host, port);
  return [...new Set(known.filter((k) => k.marker === undefined && hostsMatch(k.hosts, name)).map((k) => k.keyType))];
}

/** ssh2's default host key algorithms (lib/protocol/constants.js). */
const HOST_KEY_ALGORITHMS = ["ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"];

/**
 * The host key algorithms to offer, those of keys known for the host first (as OpenSSH orders
 * them), so that a host known by its RSA key only is not asked for its ed25519 key and refused;
 * undefined (ssh2's default) when none is known.
 */
export function hostKeyAlgorithms(knownTypes: string[]): string[] | undefined {
  const first = knownTypes.flatMap((t) => (t === "ssh-rsa" ? ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"] : HOST_KEY_ALGORITHMS.includes(t) ? [t] : []));
  return first.length ? [...new Set([...first, ...HOST_KEY_ALGORITHMS])] : undefined;
}

/** OpenSSH's fingerprint of a key blob: `SHA256:` and the unpadded base64 of its SHA-256. */
export function fingerprint(key: Buffer): string {
  return `SHA256:${createHash("sha256").update(key).digest("base64").replace(/=+$/, "")}`;
}

/** The type written at the start of a key blob (`ssh-ed25519`, ...). */
export function blobKeyType(key: Buffer): string {
  if (key.length < 4) return "unknown";
  const len = key.readUInt32BE(0);
  return len > 0 && len < 64 && key.length >= 4 + len ? key.subarray(4, 4 + len).toString("latin1") : "unknown";
}

export interface HostKeyVerifier {
  /** ssh2's `hostVerifier`, given the raw key: true to go on, false to refuse the connection. */
  verify(key: Buffer): boolean;
  /** ssh2's `algorithms` option for the host (see `hostKeyAlgorithms`), or undefined. */
  algorithms(): { serverHostKey: string[] } | undefined;
  /** Why the last connection was refused, for an error to show (names no secret), if one was. */
  readonly refusal: string | undefined;
}

/**
 * A verifier of `host`:`port`'s key against `files` (OpenSSH's defaults when none). The files are
 * read again on each connection, as `ssh` does: a key added (or replaced) counts from the next
 * connection, with no restart; but the driver asks `algorithms` once, when it is made, so a key of
 * another type replacing the only one known is offered last until the worker restarts. A missing file is one with no entries. A file this process may no
 * longer read (EACCES: it ran on as another user, JITRUNNER_USER) counts as `readAtStart` holds it,
 * read before that, if it does.
 */
export function hostKeyVerifier(o: { host: string; port?: number; files?: string[]; readFile?: (path: string) => string; readAtStart?: ReadonlyMap<string, string> }): HostKeyVerifier {
  const port = o.port ?? 22;
  const files = o.files?.length ? o.files : defaultKnownHostsFiles();
  const read = o.readFile ?? ((p: string) => readFileSync(p, "utf8"));
  /** The entries of every file, and the files as an error should name them. */
  const load = (): { known: KnownHost[]; named: string[] } => {
    const known: KnownHost[] = [];
    const named: string[] = [];
    for (const f of files) {
      try {
        known.push(...parseKnownHosts(read(f)));
        named.push(f);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        const atStart = code === "EACCES" ? o.readAtStart?.get(f) : undefined;
        if (atStart !== undefined) {
          known.push(...parseKnownHosts(atStart));
          named.push(`${f} (as read at start: this user cannot read it)`);
          continue;
        }
        named.push(`${f} (${code === "ENOENT" ? "missing" : `unreadable: ${code ?? errorMessage(err)}`})`);
      }
    }
    return { known, named };
  };
  let refusal: string | undefined;
  return {
    get refusal() {
      return refusal;
    },
    algorithms() {
      const types = knownKeyTypes(load().known, o.host, port);
      const serverHostKey = hostKeyAlgorithms(types);
      return serverHostKey ? { serverHostKey } : undefined;
    },
    verify(key) {
      const { known, named } = load();
      const check = checkHostKey(known, o.host, port, key);
      if (check.ok) return true;
      refusal = refusalMessage({ host: o.host, port, file: files[0]!, named, key, reason: check.reason });
      return false;
    },
  };
}

function refusalMessage(r: { host: string; port: number; file: string; named: string[]; key: Buffer; reason: "unknown" | "changed" | "revoked" }): string {
  const where = r.port === 22 ? r.host : `${r.host} port ${r.port}`;
  const head = `SSH host key of ${where} (${blobKeyType(r.key)} ${fingerprint(r.key)})`;
  const files = `known_hosts (${r.named.join(", ")}; worker.docker.knownHostsFile)`;
  const scan = `ssh-keyscan ${r.port === 22 ? "" : `-p ${r.port} `}${r.host} >> ${r.file}`;
  const check = "compare the fingerprint with `ssh-keygen -lf` of the host key on the host itself";
  switch (r.reason) {
    case "unknown":
      return `${head} is not in ${files}: refusing to send it anything. If it is the engine's host, ${check}, then add it: ${scan}`;
    case "changed":
      return `${head} differs from the one ${files} holds for it: someone may be impersonating the host, or its key was changed; refusing to send it anything. If the change is expected, ${check}, remove the old entry (ssh-keygen -R '${lookupName(r.host, r.port)}' -f ${r.file}) and add the new one: ${scan}`;
    case "revoked":
      return `${head} is marked @revoked in ${files}: refusing to send it anything`;
  }
}
