import type { ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Redis } from "ioredis";
import { waitFor } from "./process.ts";
import { startOnFreePort } from "./redis.ts";

/**
 * A Redis Sentinel group of the test's own, on loopback: a master, its replica, and one sentinel
 * that monitors them (quorum 1), each a redis-server on a free port, in a temporary directory.
 */
export interface SentinelGroup {
  /** The master's name, as the sentinel monitors it (redis.sentinelName). */
  name: string;
  /** The sentinel's address, host:port (for redis.sentinels). */
  sentinel: string;
  /** The master's port at the start, and its replica's. */
  ports: { master: number; replica: number };
  /** The master's port, as the sentinel says it now. */
  masterPort(): Promise<number>;
  /** A connection to the data node on `port` (with the group's password); the caller disconnects it. */
  node(port: number): Redis;
  /**
   * Has the sentinel fail over (SENTINEL FAILOVER) and waits until the sentinel names the replica
   * as master and the old master is its replica: the sentinel has closed the old master's clients.
   */
  failover(): Promise<void>;
  /** Stops every process by its pid and removes the directory. */
  stop(): Promise<void>;
}

export interface SentinelGroupOptions {
  /** The data nodes' password (requirepass and masterauth): redis.url carries it. */
  password: string;
  /** The sentinel's own password (its requirepass): redis.sentinelPasswordFile holds it. */
  sentinelPassword: string;
}

export async function startSentinelGroup(o: SentinelGroupOptions): Promise<SentinelGroup> {
  const name = "jrtest-master";
  const dir = mkdtempSync(join(tmpdir(), "jitrunner-sentinel-"));
  const children: ChildProcess[] = [];
  const stop = async () => {
    await Promise.all(
      children.map(async (child) => {
        if (child.exitCode !== null || child.signalCode !== null) return;
        const exited = new Promise((r) => child.once("exit", r));
        child.kill("SIGTERM");
        await exited;
      }),
    );
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    const nodeArgs = (port: number, role: string) => [
      ...["--port", String(port), "--bind", "127.0.0.1", "--dir", dir, "--dbfilename", `${role}.rdb`, "--save", "", "--appendonly", "no"],
      ...["--maxmemory-policy", "noeviction", "--requirepass", o.password, "--masterauth", o.password],
    ];
    const nodeUrl = (port: number) => `redis://:${encodeURIComponent(o.password)}@127.0.0.1:${port}`;
    const master = await startOnFreePort((port) => nodeArgs(port, "master"), nodeUrl);
    children.push(master.child);
    const replica = await startOnFreePort((port) => [...nodeArgs(port, "replica"), "--replicaof", "127.0.0.1", String(master.port)], nodeUrl);
    children.push(replica.child);
    // Sentinel rewrites its config file: one of its own, written afresh for each port tried.
    const conf = join(dir, "sentinel.conf");
    const sentinel = await startOnFreePort(
      (port) => {
        writeFileSync(
          conf,
          [
            `port ${port}`,
            "bind 127.0.0.1",
            `dir ${dir}`,
            `requirepass ${o.sentinelPassword}`,
            `sentinel monitor ${name} 127.0.0.1 ${master.port} 1`,
            `sentinel auth-pass ${name} ${o.password}`,
            `sentinel down-after-milliseconds ${name} 5000`,
            `sentinel failover-timeout ${name} 10000`,
            "",
          ].join("\n"),
        );
        return [conf, "--sentinel"];
      },
      (port) => `redis://:${encodeURIComponent(o.sentinelPassword)}@127.0.0.1:${port}`,
    );
    children.push(sentinel.child);
    const ask = async <T>(fn: (c: Redis) => Promise<T>): Promise<T> => {
      const c = new Redis(sentinel.url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
      c.on("error", () => undefined);
      try {
        await c.connect();
        return await fn(c);
      } finally {
        c.disconnect();
      }
    };
    const masterPort = async () => Number(((await ask((c) => c.call("SENTINEL", "GET-MASTER-ADDR-BY-NAME", name))) as string[])[1]);
    const node = (port: number) => new Redis(nodeUrl(port), { maxRetriesPerRequest: 0, retryStrategy: () => null });
    const roleOf = async (port: number) => {
      const c = node(port);
      c.on("error", () => undefined);
      try {
        return await c.info("replication");
      } finally {
        c.disconnect();
      }
    };
    return {
      name,
      sentinel: `127.0.0.1:${sentinel.port}`,
      ports: { master: master.port, replica: replica.port },
      masterPort,
      node,
      failover: async () => {
        const from = await masterPort();
        const to = from === master.port ? replica.port : master.port;
        // Refused (NOGOODSLAVE) until the sentinel has seen the replica up, in sync: tried again.
        await waitFor(async () => (await ask((c) => c.call("SENTINEL", "FAILOVER", name))) === "OK", 60_000, "the sentinel to start a failover");
        await waitFor(async () => (await masterPort()) === to, 60_000, `the sentinel to name the replica (port ${to}) the master`);
        await waitFor(async () => new RegExp(`^role:slave\\r?$[\\s\\S]*^master_port:${to}\\r?$`, "m").test(await roleOf(from)), 60_000, `the old master (port ${from}) to be the new one's replica`);
      },
      stop,
    };
  } catch (err) {
    await stop();
    throw err;
  }
}
