import type { Redis } from "ioredis";
import type { PoolConfig } from "../config/load.ts";
import type { RunnerScope } from "../github/client.ts";

export type RunnerState = "registering" | "starting" | "idle" | "busy" | "completed";

/** What Redis holds about one runner we created. */
export interface RunnerRecord {
  name: string;
  pool: string;
  host: string;
  state: RunnerState;
  installationId: number;
  owner: string;
  /** Empty for organization-scoped runners. */
  repo: string;
  runnerId?: number;
  containerId?: string;
  demandId: string;
  createdAt: number;
  jobId?: number;
  /** When a webhook marked it busy (ms since epoch); written by `mark`. */
  busyAt?: number;
  /**
   * When a host loop last asked GitHub about it as a busy runner of a gone host (ms since epoch):
   * shared by every worker, so that the fleet asks about it once an interval, not once per worker.
   */
  askedAt?: number;
  /**
   * When one of our processes last set out to delete its registration (ms since epoch), written
   * before the call: GitHub's 404 to a later deletion then says we deleted it (the process died
   * or stopped before removing the record), not that the runner ran a job and removed itself.
   */
  deregisteringAt?: number;
  /**
   * The worker process that launched or adopted the runner (Launcher.instance). While that
   * process lives, only it tears down a record with no container: it may still be launching.
   */
  instance?: string;
}

/** Where a runner registers: its installation, owner and repository (empty for an organization). */
type Place = Pick<RunnerRecord, "installationId" | "owner" | "repo">;

/**
 * Whether a runner of `pool` registered at `at` is registered at `where`: the same installation
 * and owner, and in a repository pool the same repository (names compared as GitHub does, ignoring
 * case). A demand is a place too: where its runner registers.
 */
export function registeredAt(pool: Pick<PoolConfig, "scope">, at: Place, where: Place): boolean {
  const same = (a: string, b: string) => a.toLowerCase() === b.toLowerCase();
  if (at.installationId !== where.installationId || !same(at.owner, where.owner)) return false;
  return pool.scope !== "repository" || same(at.repo, where.repo);
}

/** Where the runner is registered at GitHub. */
export function scopeOf(record: Pick<RunnerRecord, "installationId" | "owner" | "repo">): RunnerScope {
  return { installationId: record.installationId, owner: record.owner, repo: record.repo || undefined };
}

/** starting -> idle, and nothing else: a `busy` a webhook already wrote stays. */
const STARTED = `
if redis.call('HGET', KEYS[1], 'state') == 'starting' then return redis.call('HSET', KEYS[1], 'state', 'idle') end
return 0`;

/** Deletes KEYS[1] only while it still names ARGV[1]: a newer runner's claim survives. */
export const DEL_IF_EQUALS = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0`;

/** Sets one field of an existing record; a record removed meanwhile stays removed. */
const SET_IF_EXISTS = `
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
return redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])`;

/**
 * Sets fields (ARGV: field, value, ...) of an existing record: 1, or 0 and nothing written when
 * there is none. A plain HSET would bring a removed record back as a partial hash: no `name` (so
 * read as absent), no index entry, nothing that ever removes it.
 */
const UPDATE_IF_EXISTS = `
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1`;

/**
 * findByDemand's read (KEYS: demand claim; ARGV: the runner keys' prefix): nil when no runner
 * answers for the demand, else its name and its record's fields (none once it is gone). One
 * script, as `remove` deletes the claim before the record: two round trips could read the claim,
 * then no record, as "served", while a failed runner was being forgotten in between.
 */
const FIND_BY_DEMAND = `
local name = redis.call('GET', KEYS[1])
if not name then return nil end
return {name, redis.call('HGETALL', ARGV[1] .. name)}`;

/** claimDemand's write (KEYS: record, demand claim; ARGV: demandId, name, ttl): 1, or 0 and nothing written when the record is gone. */
const CLAIM_IF_EXISTS = `
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'demandId', ARGV[1])
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
return 1`;

/**
 * Marks an existing record (ARGV: state, jobId, at): 0 when there is none, 2 when it is completed
 * and the mark is not (it stays completed), else 1. With ARGV[4] == '1', from a webhook: 3, and
 * nothing written, when the delivery is about a namesake (see RunnerStore.markFromWebhook): its
 * runner id (ARGV[5], '' if none) differs from the record's, where both have one; or its
 * installation (ARGV[6]), owner (ARGV[7]) or repository (ARGV[8]) from the record's, where the
 * record has one (installation 0 is unknown, repository '' an organization runner). Logins and
 * names compare case-insensitively, as GitHub's do. A jobId of 0 (not known: a deletion GitHub
 * refused as busy, a leader's loop) keeps the one recorded: a demand of that job must still find
 * its runner by it (the worker's hand-over and adoption of warm runners).
 */
const MARK_IF_EXISTS = `
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local state, runnerId, installationId, owner, repo, jobId = unpack(redis.call('HMGET', KEYS[1], 'state', 'runnerId', 'installationId', 'owner', 'repo', 'jobId'))
if ARGV[4] == '1' then
  if runnerId and runnerId ~= '' and ARGV[5] ~= '' and runnerId ~= ARGV[5] then return 3 end
  if installationId and installationId ~= '' and installationId ~= '0' and installationId ~= ARGV[6] then return 3 end
  if owner and owner ~= '' and string.lower(owner) ~= string.lower(ARGV[7]) then return 3 end
  if repo and repo ~= '' and string.lower(repo) ~= string.lower(ARGV[8]) then return 3 end
end
if state == 'completed' and ARGV[1] ~= 'completed' then return 2 end
if ARGV[2] ~= '0' or not jobId or jobId == '' then jobId = ARGV[2] end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'jobId', jobId, ARGV[1] .. 'At', ARGV[3])
return 1`;

/** Who a webhook delivery says ran its job: `workflow_job.runner_id`, `installation.id`, `repository`. */
export interface DeliveredBy {
  /** Absent when the delivery carries none. */
  runnerId?: number;
  /** Absent when the delivery carries none. */
  installationId?: number;
  owner: string;
  repo: string;
}

/**
 * Redis records of runners, keyed by runner name, with one index set per host and one of every
 * runner (for operators: the status page and `jitrunner status`). Records are written by workers;
 * the server only marks existing ones busy or completed from webhooks and publishes the change so
 * the owning worker reacts at once.
 */
export class RunnerStore {
  readonly #redis: Redis;
  readonly #prefix: string;

  constructor(redis: Redis, prefix: string) {
    this.#redis = redis;
    this.#prefix = prefix;
    redis.defineCommand("jitrunnerMarkIfExists", { numberOfKeys: 1, lua: MARK_IF_EXISTS });
    redis.defineCommand("jitrunnerDelIfEquals", { numberOfKeys: 1, lua: DEL_IF_EQUALS });
    redis.defineCommand("jitrunnerStarted", { numberOfKeys: 1, lua: STARTED });
    redis.defineCommand("jitrunnerSetIfExists", { numberOfKeys: 1, lua: SET_IF_EXISTS });
    redis.defineCommand("jitrunnerUpdateIfExists", { numberOfKeys: 1, lua: UPDATE_IF_EXISTS });
    redis.defineCommand("jitrunnerClaimIfExists", { numberOfKeys: 2, lua: CLAIM_IF_EXISTS });
    redis.defineCommand("jitrunnerFindByDemand", { numberOfKeys: 1, lua: FIND_BY_DEMAND });
  }

  get eventsChannel(): string {
    return `${this.#prefix}:runner-events`;
  }

  #key(name: string): string {
    return `${this.#prefix}:runner:${name}`;
  }
  #hostKey(host: string): string {
    return `${this.#prefix}:host:${host}:runners`;
  }

  /** Every runner's name, whatever its host. */
  get #allKey(): string {
    return `${this.#prefix}:runners`;
  }

  #demandKey(demandId: string): string {
    return `${this.#prefix}:demand-runner:${demandId}`;
  }

  async put(record: RunnerRecord): Promise<void> {
    const fields: Record<string, string> = {};
    for (const [k, v] of Object.entries(record)) if (v !== undefined) fields[k] = String(v);
    const tx = this.#redis
      .multi()
      .hset(this.#key(record.name), fields)
      .sadd(this.#hostKey(record.host), record.name)
      .sadd(this.#allKey, record.name);
    // A warm runner has no demand until one adopts it.
    if (record.demandId) tx.set(this.#demandKey(record.demandId), record.name, "EX", 7 * 24 * 3600);
    await tx.exec();
  }

  /**
   * A warm runner now answers for a demand: as if it had been launched for it. False, and nothing
   * written, when its record is gone (removed meanwhile: see UPDATE_IF_EXISTS).
   */
  async claimDemand(name: string, demandId: string): Promise<boolean> {
    const redis = this.#redis as Redis & { jitrunnerClaimIfExists(key: string, claim: string, demandId: string, name: string, ttl: number): Promise<number> };
    return (await redis.jitrunnerClaimIfExists(this.#key(name), this.#demandKey(demandId), demandId, name, 7 * 24 * 3600)) === 1;
  }

  /**
   * The runner launched for a demand, if any: `record` while it lives, only `name` once it is gone
   * (the demand was served). A demand taken over from a stopped worker needs no second runner.
   */
  async findByDemand(demandId: string): Promise<{ name: string; record?: RunnerRecord } | undefined> {
    const redis = this.#redis as Redis & { jitrunnerFindByDemand(key: string, runnerPrefix: string): Promise<[string, string[]] | null> };
    const found = await redis.jitrunnerFindByDemand(this.#demandKey(demandId), this.#key(""));
    if (!found) return undefined;
    const [name, flat] = found;
    const fields: Record<string, string> = {};
    for (let i = 0; i + 1 < flat.length; i += 2) fields[flat[i]!] = flat[i + 1]!;
    return { name, record: parseRecord(fields) };
  }

  /**
   * Sets fields of an existing record. False, and nothing written, when the record is gone: removed
   * meanwhile (a teardown, a sweep of a host taken for gone), it stays removed (UPDATE_IF_EXISTS).
   */
  async update(name: string, fields: Partial<Omit<RunnerRecord, "name">>): Promise<boolean> {
    const values: string[] = [];
    for (const [k, v] of Object.entries(fields)) if (v !== undefined) values.push(k, String(v));
    if (values.length === 0) return (await this.#redis.exists(this.#key(name))) === 1;
    const redis = this.#redis as Redis & { jitrunnerUpdateIfExists(key: string, ...fieldsAndValues: string[]): Promise<number> };
    return (await redis.jitrunnerUpdateIfExists(this.#key(name), ...values)) === 1;
  }

  async get(name: string): Promise<RunnerRecord | undefined> {
    return parseRecord(await this.#redis.hgetall(this.#key(name)));
  }

  /**
   * Every runner on every host, oldest first: what operators see. Runners recorded before this
   * index existed are not listed (they are short-lived: gone after one job or the idle timeout).
   */
  async listAll(): Promise<RunnerRecord[]> {
    const names = await this.#redis.smembers(this.#allKey);
    if (names.length === 0) return [];
    const pipeline = this.#redis.pipeline();
    for (const name of names) pipeline.hgetall(this.#key(name));
    const records: RunnerRecord[] = [];
    for (const [err, h] of (await pipeline.exec()) ?? []) {
      if (err) throw err;
      const record = parseRecord(h as Record<string, string>);
      if (record) records.push(record);
    }
    return records.sort((a, b) => a.createdAt - b.createdAt || a.name.localeCompare(b.name));
  }

  async listHost(host: string): Promise<string[]> {
    return this.#redis.smembers(this.#hostKey(host));
  }

  /**
   * Forgets a runner. `demandServed` keeps the note that its demand got a runner (so a redelivered
   * lease launches no second one); a failed launch clears it so the retry launches again.
   */
  async remove(record: Pick<RunnerRecord, "name" | "host" | "demandId">, demandServed: boolean): Promise<void> {
    // The claim goes first: whoever sees the record gone then sees the demand unserved too.
    if (!demandServed) await this.releaseDemand(record);
    const tx = this.#redis
      .multi()
      .del(this.#key(record.name))
      .srem(this.#hostKey(record.host), record.name)
      .srem(this.#allKey, record.name);
    await tx.exec();
  }

  /** The worker process `instance` took the runner over (see RunnerRecord.instance), if it is still recorded. */
  async adopt(name: string, instance: string): Promise<void> {
    const redis = this.#redis as Redis & { jitrunnerSetIfExists(key: string, field: string, value: string): Promise<number> };
    await redis.jitrunnerSetIfExists(this.#key(name), "instance", instance);
  }

  /** A host loop asked GitHub about this busy runner of a gone host (see RunnerRecord.askedAt), if it is still recorded. */
  async asked(name: string, at: number): Promise<void> {
    const redis = this.#redis as Redis & { jitrunnerSetIfExists(key: string, field: string, value: string): Promise<number> };
    await redis.jitrunnerSetIfExists(this.#key(name), "askedAt", String(at));
  }

  /**
   * We set out to delete the runner's registration (see RunnerRecord.deregisteringAt), if it is
   * still recorded.
   */
  async deregistering(name: string, at: number): Promise<void> {
    const redis = this.#redis as Redis & { jitrunnerSetIfExists(key: string, field: string, value: string): Promise<number> };
    await redis.jitrunnerSetIfExists(this.#key(name), "deregisteringAt", String(at));
  }

  /** The deletion set out (deregistering) surely deleted nothing: GitHub refused it. */
  async deregisteringUndone(name: string): Promise<void> {
    // HDEL creates nothing: a record removed meanwhile stays removed.
    await this.#redis.hdel(this.#key(name), "deregisteringAt");
  }

  /** The container started: idle until a webhook says busy (unless one already has). */
  async started(name: string): Promise<void> {
    const redis = this.#redis as Redis & { jitrunnerStarted(key: string): Promise<number> };
    await redis.jitrunnerStarted(this.#key(name));
  }

  /**
   * Forgets that runner `name` served a demand: the demand is to be served anew. Only while the
   * note still names it, in one step: a note of a runner launched for the demand since (added
   * again meanwhile, and taken) stays.
   */
  async forgetDemand(demandId: string, name: string): Promise<void> {
    await this.releaseDemand({ name, demandId });
  }

  /** This runner no longer answers for its demand (its launch failed): a retry launches anew. */
  async releaseDemand(record: Pick<RunnerRecord, "name" | "demandId">): Promise<void> {
    if (!record.demandId) return;
    const redis = this.#redis as Redis & { jitrunnerDelIfEquals(key: string, name: string): Promise<number> };
    await redis.jitrunnerDelIfEquals(this.#demandKey(record.demandId), record.name);
  }

  /**
   * From our own loops, which know the runner is ours (GitHub listed or answered for it by id):
   * mark a runner busy or completed and tell its worker. Returns false when no record exists (it
   * is gone). `completed` is terminal: a later `busy` does not undo it. `jobId` 0 (not known)
   * leaves a job id already recorded.
   */
  async mark(name: string, state: "busy" | "completed", jobId: number): Promise<boolean> {
    return (await this.#mark(name, state, jobId, ["0"])) !== 0;
  }

  /**
   * From a webhook: mark as `mark` does, if the delivery is about this very runner. GitHub makes
   * runner names unique only per repository or organization: an admin of any repository the App
   * is installed on can register a runner under one of our names (the status page shows them)
   * and get genuinely signed deliveries naming it. Such a delivery would have our runner torn down
   * (`completed`) or kept past its idle timeout (`in_progress`). So the delivery must carry the
   * record's runner id (unless the record has none yet, or the delivery none), installation
   * (unless recorded as 0: unknown) and owner, and for a repository runner its repository; an
   * organization runner takes jobs of any repository of the organization. Checked in the same
   * script as the write: "not_ours" leaves the record as it was.
   */
  async markFromWebhook(name: string, state: "busy" | "completed", jobId: number, by: DeliveredBy): Promise<"marked" | "unknown" | "not_ours"> {
    const result = await this.#mark(name, state, jobId, ["1", String(by.runnerId ?? ""), String(by.installationId ?? ""), by.owner, by.repo]);
    return result === 0 ? "unknown" : result === 3 ? "not_ours" : "marked";
  }

  async #mark(name: string, state: "busy" | "completed", jobId: number, check: string[]): Promise<number> {
    const redis = this.#redis as Redis & {
      jitrunnerMarkIfExists(key: string, state: string, jobId: string, at: string, ...check: string[]): Promise<number>;
    };
    const result = await redis.jitrunnerMarkIfExists(this.#key(name), state, String(jobId), String(Date.now()), ...check);
    if (result === 1) await this.#redis.publish(this.eventsChannel, JSON.stringify({ name, state }));
    return result;
  }

  /**
   * Tells every worker that GitHub made `owner/repo` public (a `repository` `publicized` webhook),
   * on the runner events' channel: workers whose warm runners register there ask GitHub again at
   * once (RunnerEvents.onPublicized). Workers of earlier versions find no runner by that message.
   */
  async announcePublicized(owner: string, repo: string): Promise<void> {
    await this.#redis.publish(this.eventsChannel, JSON.stringify({ publicized: { owner, repo } }));
  }
}

function parseRecord(h: Record<string, string>): RunnerRecord | undefined {
  if (!h.name) return undefined;
  return {
    name: h.name,
    pool: h.pool ?? "",
    host: h.host ?? "",
    state: (h.state ?? "registering") as RunnerState,
    installationId: Number(h.installationId),
    owner: h.owner ?? "",
    repo: h.repo ?? "",
    runnerId: h.runnerId ? Number(h.runnerId) : undefined,
    containerId: h.containerId || undefined,
    demandId: h.demandId ?? "",
    createdAt: Number(h.createdAt),
    jobId: h.jobId ? Number(h.jobId) : undefined,
    busyAt: h.busyAt ? Number(h.busyAt) : undefined,
    askedAt: h.askedAt ? Number(h.askedAt) : undefined,
    deregisteringAt: h.deregisteringAt ? Number(h.deregisteringAt) : undefined,
    instance: h.instance || undefined,
  };
}
