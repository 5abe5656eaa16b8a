import { readFileSync, statSync } from "node:fs";

/**
 * The control-plane image sets JITRUNNER_USER=1000:1000 (its `node`), and the Compose files start
 * it as root. Once jitrunner has read its config and secrets, it goes on as that user, with the
 * group of the Docker socket its worker uses added: so the secret files need not be made readable
 * to uid 1000, nor the socket's group id, which differs from host to host, be given to Compose
 * (`group_add`). Nothing is started before: no listener, no connection. Elsewhere (not root, or no
 * JITRUNNER_USER: the image's own `node`, a systemd unit's user, a Kubernetes pod's runAsUser) it
 * changes nothing.
 */
export interface DropResult {
  uid: number;
  gid: number;
  /** The supplementary groups: the user's group, and the socket's when there is one. */
  groups: number[];
  /** The socket whose group was added, if any. */
  socket?: string;
  /** The socket's group when it was not added: 0, root's own group. */
  socketGroupSkipped?: number;
}

/** Where the worker's Docker engine socket is, when it is a local one (as DockerodeDriver picks it). */
export function localDockerSocket(socketPath: string | undefined, host: string | undefined, env: NodeJS.ProcessEnv): string | undefined {
  if (socketPath) return socketPath;
  if (host) return undefined;
  const dockerHost = env.DOCKER_HOST;
  if (!dockerHost) return "/var/run/docker.sock";
  return dockerHost.startsWith("unix://") ? dockerHost.slice("unix://".length) : undefined;
}

/**
 * Runs the process on as `spec` ("UID:GID", numbers) if it runs as root, adding the group of
 * `socket` (if it exists) to its groups. Undefined when there was nothing to do. Throws, saying
 * what is wrong, for a spec that is not two numbers, a user of id 0 or a group of id 0.
 */
export function dropPrivileges(spec: string | undefined, socket: string | undefined): DropResult | undefined {
  if (!spec || process.getuid?.() !== 0) return undefined;
  const m = /^(\d+):(\d+)$/.exec(spec.trim());
  if (!m) throw new Error(`JITRUNNER_USER must be UID:GID in numbers (the image's is 1000:1000), not '${spec}'`);
  const uid = Number(m[1]);
  const gid = Number(m[2]);
  if (uid === 0) throw new Error("JITRUNNER_USER names root: unset it to run as root");
  // Root's group would give back much of what leaving root takes away (files only root's group may write).
  if (gid === 0) throw new Error("JITRUNNER_USER names root's group (GID 0): give a group of its own, as the image's 1000:1000");
  const groups = [gid];
  let found: string | undefined;
  let skipped: number | undefined;
  if (socket) {
    try {
      const st = statSync(socket);
      if (st.isSocket()) found = socket;
      // Root's group would give back much of what leaving root takes away.
      if (st.isSocket() && st.gid === 0) skipped = 0;
      else if (st.isSocket() && !groups.includes(st.gid)) groups.push(st.gid);
    } catch {
      // No socket there (a server, or an engine reached over TCP): nothing to add; a worker says
      // at start that it cannot reach its engine.
    }
  }
  // Groups first: once the uid is not root, they can no longer be changed.
  process.setgroups!(groups);
  process.setgid!(gid);
  process.setuid!(uid);
  if (process.getuid!() !== uid || process.geteuid!() !== uid) throw new Error(`could not run on as uid ${uid}`);
  // The user's own home (~/.ssh/known_hosts of an SSH engine), not root's.
  const home = homeOf(uid);
  if (home) process.env.HOME = home;
  return { uid, gid, groups, ...(found ? { socket: found } : {}), ...(skipped !== undefined ? { socketGroupSkipped: skipped } : {}) };
}

/** `uid`'s home directory from /etc/passwd, if it is listed there. */
function homeOf(uid: number): string | undefined {
  try {
    const line = readFileSync("/etc/passwd", "utf8").split("\n").find((l) => l.split(":")[2] === String(uid));
    return line?.split(":")[5] || undefined;
  } catch {
    return undefined;
  }
}
