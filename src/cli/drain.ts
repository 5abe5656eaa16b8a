import type { Redis } from "ioredis";
import type { Config } from "../config/load.ts";
import { redisAddressOf, redisTarget } from "../queue/redis-address.ts";
import { HostStore } from "../state/hosts.ts";
import { RunnerStore } from "../state/runners.ts";
import { cliRedis, connectCli, isUnreachable, unreachableReason } from "./redis.ts";

/** `drain`'s exit code when the host stopped answering with runners of its own still recorded. */
export const DRAIN_EXIT_HOST_VANISHED = 3;

/**
 * `jitrunner drain --host ID`: the host takes no new demand, lets its running jobs finish, then
 * its worker exits 0. The host stays drained (HostStore DrainMark `left`): a worker started on it
 * again, by a restart policy or by hand, takes no demand until `drain --undo` (undoDrain). With
 * `wait`, returns once the host's worker has drained and exited (the mark says `left`, or the host left the fleet), with a progress line every 10 s. Each call to Redis waits at most CLI_REDIS_TIMEOUT_MS (cliRedis), the wait itself as
 * long as the jobs take. Exits 1 when Redis cannot be reached, and DRAIN_EXIT_HOST_VANISHED when
 * the host's worker stopped beating with runners still recorded (see #ended). `origins`: the
 * options the environment set, for the error naming where the Redis URL came from (redisTarget).
 */
export async function drainHost(
  config: Config,
  host: string,
  wait: boolean,
  out: NodeJS.WritableStream,
  err: NodeJS.WritableStream = process.stderr,
  origins?: ReadonlyMap<string, string>,
): Promise<number> {
  const unreachable = (e: unknown, note = ""): number => {
    err.write(`jitrunner drain: cannot reach Redis at ${redisTarget(redisAddressOf(config), origins)}: ${unreachableReason(e)}${note}\n`);
    return 1;
  };
  const redis = await connected(config, unreachable);
  if (typeof redis === "number") return redis;
  let told = false;
  try {
    const hosts = new HostStore(redis, config.redis.prefix);
    const known = (await hosts.list()).find((h) => h.id === host);
    if (!known?.record) {
      out.write(`jitrunner drain: no live host '${host}' (known: ${(await hosts.list()).map((h) => h.id).join(", ") || "none"})\n`);
      return 1;
    }
    await hosts.drain(host);
    told = true;
    out.write(`draining ${host}: it takes no new demand; running jobs finish, then its worker exits\n`);
    if (!wait) return 0;
    let lastLine = 0;
    for (;;) {
      const now = (await hosts.list()).find((h) => h.id === host);
      // The worker left: a restart policy may have started the next one on the host already,
      // listed again but drained still. Or it drained and exited with a runner still recorded (its
      // last teardown failed): the host stays listed for the fleet's host loops to clean up, with
      // the mark `left` all the same, and no job runs. Looked at after the list, which reads the
      // host's index and then its record: a worker leaving sets the mark and drops the record in
      // one step, so one that left between those two reads is not taken for one that stopped beating.
      const mark = await hosts.drainMark(host);
      if (mark === "left") {
        out.write(`${host} drained\n${stays(host)}`);
        return 0;
      }
      if (!now?.record) return await ended(host, now !== undefined, mark !== undefined, new RunnerStore(redis, config.redis.prefix), out, err);
      if (Date.now() - lastLine >= 10_000) {
        out.write(`  ${host}: ${now.record.used} runner slot(s) in use\n`);
        lastLine = Date.now();
      }
      await new Promise((r) => setTimeout(r, 1000));
    }
  } catch (e) {
    if (!isUnreachable(e)) throw e;
    return unreachable(e, told ? `; ${host} was told to drain and still does: run drain again to wait for it` : "");
  } finally {
    redis.disconnect();
  }
}

/**
 * The host's record is gone, and its drain mark does not say `left`: it left, or it vanished. A
 * drained worker removes its last runner's record, then leaves the fleet (HostPresence.stop:
 * HostStore.forget takes it out of the host list), so a host no longer `listed` has left (one
 * whose last teardown failed stays listed, but marks the host `left`: HostStore.leftDrained). A
 * worker that stopped beating (killed, crashed, stopped with runners left running) is still
 * listed once its record lapses, and so are its runners' records until other workers sweep them:
 * the sweep keeps a gone host listed while any runner of it is recorded, busy ones until their job
 * is known to be over.
 */
async function ended(host: string, listed: boolean, marked: boolean, runners: RunnerStore, out: NodeJS.WritableStream, err: NodeJS.WritableStream): Promise<number> {
  let recorded = 0;
  if (listed) for (const name of await runners.listHost(host)) if (await runners.get(name)) recorded++;
  if (recorded > 0) {
    err.write(
      `jitrunner drain: ${host} stopped answering with ${recorded} runner(s) still recorded; they may still be running jobs ` +
        `(its worker stopped beating before they finished: see jitrunner status)\n`,
    );
    return DRAIN_EXIT_HOST_VANISHED;
  }
  // Left with no drain mark: `drain --undo` took it away while the drain went on.
  const after = marked ? stays(host) : "its drain mark was removed (drain --undo): a worker started on it takes demand\n";
  out.write(listed ? `${host} drained (its worker stopped beating, but no runner of it is recorded)\n` : `${host} drained\n${after}`);
  return 0;
}

/** How a drained host stays. */
function stays(host: string): string {
  return `it stays drained: a worker started on it takes no demand until \`jitrunner drain --host ${host} --undo\`\n`;
}

/**
 * `jitrunner drain --host ID --undo`: removes the host's drain mark, so that its worker takes
 * demand again (one asked to drain and still running its jobs stays draining, and exits). Exits 1
 * when the host has no drain mark, or Redis cannot be reached (`origins` as for drainHost).
 */
export async function undoDrain(
  config: Config,
  host: string,
  out: NodeJS.WritableStream,
  err: NodeJS.WritableStream = process.stderr,
  origins?: ReadonlyMap<string, string>,
): Promise<number> {
  const unreachable = (e: unknown): number => {
    err.write(`jitrunner drain --undo: cannot reach Redis at ${redisTarget(redisAddressOf(config), origins)}: ${unreachableReason(e)}\n`);
    return 1;
  };
  const redis = await connected(config, unreachable);
  if (typeof redis === "number") return redis;
  try {
    const hosts = new HostStore(redis, config.redis.prefix);
    const mark = await hosts.drainMark(host);
    if (!(await hosts.undrain(host))) {
      err.write(`jitrunner drain --undo: host '${host}' is not drained (it has no drain mark); nothing to undo\n`);
      return 1;
    }
    const live = (await hosts.list()).find((h) => h.id === host)?.record;
    if (mark === "asked" && live) out.write(`${host}: drain mark removed; its worker was draining already and still exits once its jobs finish\n`);
    else if (live) out.write(`${host}: drain mark removed; its worker takes demand again within a heartbeat\n`);
    else out.write(`${host}: drain mark removed; a worker started on it takes demand\n`);
    return 0;
  } catch (e) {
    if (!isUnreachable(e)) throw e;
    return unreachable(e);
  } finally {
    redis.disconnect();
  }
}

/** The CLI's Redis connection, connected; or, when it cannot connect, what `unreachable` returns for it. */
async function connected(config: Config, unreachable: (e: unknown) => number): Promise<Redis | number> {
  const redis = cliRedis(redisAddressOf(config));
  try {
    await connectCli(redis);
    return redis;
  } catch (e) {
    redis.disconnect();
    return unreachable(e);
  }
}
