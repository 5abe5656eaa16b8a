import type { Redis } from "ioredis";

/** GitHub keeps deliveries, and lets them be redelivered, for 3 days. */
const TTL_SECONDS = 3 * 24 * 3600;

/**
 * Older pages of the App's delivery list not read yet (the backlog): GitHub's cursor of the next
 * one, and the delivery time (ms) the read goes down to.
 */
export interface ReadResume {
  cursor: string;
  floor: number;
}

/**
 * Notes an accepted redelivery of attempt ARGV[1] of an event (KEYS[1], its GUID ARGV[3]): one more
 * try, unless that attempt (or a later one) is noted already. A note whose reply a dropped
 * connection lost is sent again by ioredis once reconnected: counted twice, an event was given up
 * after fewer tries than it has. 1: noted; 0: it was already.
 */
const NOTE_ASKED = `
if tonumber(redis.call('HGET', KEYS[1], 'asked') or '0') >= tonumber(ARGV[1]) then return 0 end
redis.call('HINCRBY', KEYS[1], 'tries', 1)
redis.call('HSET', KEYS[1], 'asked', ARGV[1])
redis.call('HDEL', KEYS[1], 'failures', 'failedBy', 'attempt')
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[3])
return 1`;

/**
 * Counts a failed redelivery request (ARGV[1], an id of the request's own) of an event (KEYS[1]),
 * unless that request is the one counted last (the same note sent again: see NOTE_ASKED); the
 * failures so far.
 */
const NOTE_FAILED = `
if redis.call('HGET', KEYS[1], 'failedBy') == ARGV[1] then return tonumber(redis.call('HGET', KEYS[1], 'failures') or '0') end
local n = redis.call('HINCRBY', KEYS[1], 'failures', 1)
redis.call('HSET', KEYS[1], 'failedBy', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return n`;

/** What the redelivery loop has done about one event (delivery GUID). */
export interface EventTries {
  /** Redeliveries GitHub accepted. */
  tries: number;
  /** The latest attempt whose redelivery GitHub accepted (0: none). */
  asked: number;
  /** Redelivery requests that failed (GitHub erred, rate-limited, unreachable) since the last accepted one. */
  failures: number;
  /** Set while the event waits for its next try: not before this time (ms). */
  waitingUntil?: number;
  /** Passed over for good (out of tries, or GitHub refused the request). */
  gaveUp: boolean;
}

/** An event whose time for its next try has come, and the attempt to ask GitHub to redeliver. */
export interface DueEvent {
  guid: string;
  attemptId: number;
}

/**
 * What the leader's redelivery loop remembers across passes and leaders: the newest delivery read,
 * which older pages are still to read (the backlog), and, per event (delivery GUID),
 * its redeliveries and failed requests and, while it waits for its next try, when that is due
 * (a sorted set by time, so a waiting event needs no re-read of the list).
 */
export class RedeliveryLog {
  readonly #redis: Redis & {
    jitrunnerNoteAsked(event: string, due: string, attemptId: string, ttl: string, guid: string): Promise<number>;
    jitrunnerNoteFailed(event: string, request: string, ttl: string): Promise<number>;
  };
  readonly #prefix: string;

  constructor(redis: Redis, prefix: string) {
    redis.defineCommand("jitrunnerNoteAsked", { numberOfKeys: 2, lua: NOTE_ASKED });
    redis.defineCommand("jitrunnerNoteFailed", { numberOfKeys: 1, lua: NOTE_FAILED });
    this.#redis = redis as never;
    this.#prefix = prefix;
  }

  #eventKey(guid: string): string {
    return `${this.#prefix}:redelivery:event:${guid}`;
  }

  get #dueKey(): string {
    return `${this.#prefix}:redelivery:due`;
  }

  /** Newest delivery time (ms) the last pass read at the top of the list; 0 before the first. */
  async readUpTo(): Promise<number> {
    return Number(await this.#redis.get(`${this.#prefix}:redelivery:read-up-to`)) || 0;
  }

  async setReadUpTo(ms: number): Promise<void> {
    await this.#redis.set(`${this.#prefix}:redelivery:read-up-to`, String(ms), "EX", TTL_SECONDS);
  }

  /**
   * The backlog, if any. One saved by an older jitrunner (`{cursor, top}`: it moved the mark only
   * once a read got all the way down) is not one: the next read from the top covers its pages.
   */
  async resume(): Promise<ReadResume | undefined> {
    const raw = await this.#redis.get(`${this.#prefix}:redelivery:resume`);
    if (!raw) return undefined;
    try {
      const r = JSON.parse(raw) as Partial<ReadResume>;
      return typeof r.cursor === "string" && typeof r.floor === "number" ? { cursor: r.cursor, floor: r.floor } : undefined;
    } catch {
      return undefined;
    }
  }

  /**
   * How far (ms) below the newest delivery read the list may still hold deliveries not read: from
   * the mark down to the backlog's floor; 0 with no backlog.
   */
  async readLagMs(): Promise<number> {
    const [upTo, backlog] = await Promise.all([this.readUpTo(), this.resume()]);
    return upTo > 0 && backlog ? Math.max(0, upTo - backlog.floor) : 0;
  }

  /** Saves the backlog (`undefined`: none). */
  async setResume(r: ReadResume | undefined): Promise<void> {
    const key = `${this.#prefix}:redelivery:resume`;
    if (r) await this.#redis.set(key, JSON.stringify(r), "EX", TTL_SECONDS);
    else await this.#redis.del(key);
  }

  /** What was done about `guid` so far. */
  async event(guid: string): Promise<EventTries> {
    const [fields, score] = await Promise.all([this.#redis.hgetall(this.#eventKey(guid)), this.#redis.zscore(this.#dueKey, guid)]);
    return {
      tries: Number(fields.tries) || 0,
      asked: Number(fields.asked) || 0,
      failures: Number(fields.failures) || 0,
      ...(score === null ? {} : { waitingUntil: Number(score) }),
      gaveUp: fields.gaveUp === "1",
    };
  }

  /**
   * Notes that GitHub accepted a redelivery of `guid`'s attempt `attemptId`: one more try, and the
   * event no longer waits (its new attempt, once listed, says whether it is done). Once per
   * attempt, however often sent (NOTE_ASKED).
   */
  async asked(guid: string, attemptId: number): Promise<void> {
    await this.#redis.jitrunnerNoteAsked(this.#eventKey(guid), this.#dueKey, String(attemptId), String(TTL_SECONDS), guid);
  }

  /** `guid` waits until `notBefore` (ms), when attempt `attemptId` is to be redelivered. */
  async wait(guid: string, attemptId: number, notBefore: number): Promise<void> {
    const key = this.#eventKey(guid);
    await this.#redis
      .multi()
      .hset(key, "attempt", String(attemptId))
      .expire(key, TTL_SECONDS)
      .zadd(this.#dueKey, notBefore, guid)
      .expire(this.#dueKey, TTL_SECONDS)
      .exec();
  }

  /**
   * Counts a failed redelivery request for `guid` (no try: nothing was redelivered), `request`
   * being an id of that request's own: once, however often sent (NOTE_FAILED). The count so far.
   */
  async failed(guid: string, request: string): Promise<number> {
    return Number(await this.#redis.jitrunnerNoteFailed(this.#eventKey(guid), request, String(TTL_SECONDS)));
  }

  /** `guid` is passed over from now on. */
  async giveUp(guid: string): Promise<void> {
    const key = this.#eventKey(guid);
    await this.#redis.multi().hset(key, "gaveUp", "1").hdel(key, "attempt", "failedBy").expire(key, TTL_SECONDS).zrem(this.#dueKey, guid).exec();
  }

  /** Events that arrived after all (an attempt succeeded): none of them waits any longer. */
  async settled(guids: readonly string[]): Promise<void> {
    if (guids.length > 0) await this.#redis.zrem(this.#dueKey, ...guids);
  }

  /** Up to `limit` waiting events whose time has come by `now`, longest due first. */
  async due(now: number, limit: number): Promise<DueEvent[]> {
    if (limit <= 0) return [];
    const guids = await this.#redis.zrangebyscore(this.#dueKey, "-inf", now, "LIMIT", 0, limit);
    const out: DueEvent[] = [];
    for (const guid of guids) {
      const attemptId = Number(await this.#redis.hget(this.#eventKey(guid), "attempt"));
      // Its record expired (3 days, as GitHub keeps deliveries): nothing left to redeliver.
      if (attemptId > 0) out.push({ guid, attemptId });
      else await this.#redis.zrem(this.#dueKey, guid);
    }
    return out;
  }
}
