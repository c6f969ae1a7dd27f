import { sql, type Generated, type Kysely } from 'kysely';
import type { SqlStore } from '../sql/port.ts';
import type { Database } from '../sql/schema.ts';
import type { Delivery, EventStream, GroupInfo, StartAt, StreamEvent, Subscription } from './port.ts';

/** The tables of migration 0008_event_log, typed here: `schema.ts` describes the app's own tables. */
type EventLogTables = {
  event_log: {
    seq: number;
    event_id: string;
    type: string;
    event: StreamEvent;
    appended_at: Generated<Date>;
  };
  stream_groups: {
    name: string;
    position: number;
    epoch: Generated<number>;
    updated_at: Generated<Date>;
  };
};

type LogDb = Kysely<Database & EventLogTables>;

/** Options of the event log in the deployment's own database. */
export interface PostgresLogOptions {
  /** The deployment's database, migrated; the log never closes it. */
  readonly store: SqlStore;
  /** How long a delivery may stay unacknowledged before its subscription delivers it again (default 30 s). */
  readonly ackWaitMs?: number;
  /** How often a waiting fetch looks for events that another process published (default 100 ms). */
  readonly pollMs?: number;
}

const DEFAULT_ACK_WAIT_MS = 30_000;
const DEFAULT_POLL_MS = 100;

/**
 * Every publish takes this transaction-scoped advisory lock (two-key form: its key space is not
 * the one of the single-key schedule locks) before it reads the head. Publishers therefore append
 * one after another, each numbering its events after the last committed one, and commit in the
 * order of their numbers. A reader's snapshot thus always holds a prefix of the log: once it sees
 * `seq` n, every event before n is committed, and no later commit can fill a gap below n. So a
 * consumer may move past everything it has seen. (A lock rather than a sequence: sequence values
 * are taken in one order and committed in another, and rolled-back inserts leave holes.)
 */
const PUBLISH_LOCK = sql.raw(`select pg_advisory_xact_lock(${0x64626b00}, 1)`);

/**
 * The event stream as a table in the deployment's own PostgreSQL, embedded (PGlite) or server.
 * Every statement is short and no transaction stays open while a fetch waits: the embedded engine
 * has one connection, which a waiting transaction would take from everyone else.
 *
 * Waiting fetches poll (every `pollMs`); a publish through this same object wakes them at once.
 */
export function openPostgresLog(options: PostgresLogOptions): EventStream {
  return new PostgresLog(options);
}

class PostgresLog implements EventStream {
  readonly kind = 'postgres';
  readonly db: LogDb;
  readonly ackWaitMs: number;
  readonly pollMs: number;
  private readonly subscriptions = new Set<LogSubscription>();
  private readonly waiters = new Set<() => void>();
  private closed = false;

  constructor(options: PostgresLogOptions) {
    this.db = options.store.db.withTables<EventLogTables>();
    this.ackWaitMs = options.ackWaitMs ?? DEFAULT_ACK_WAIT_MS;
    this.pollMs = options.pollMs ?? DEFAULT_POLL_MS;
  }

  async publish(events: readonly StreamEvent[]): Promise<void> {
    this.assertOpen();
    const batch = firstOfEachId(events);
    if (batch.length === 0) return;
    await this.db.transaction().execute(async (trx) => {
      await PUBLISH_LOCK.execute(trx);
      // A statement of its own after the lock: its snapshot must include the previous holder's commit.
      // row_number() counts only the rows left after the duplicates are filtered out, so the
      // numbers stay consecutive; `on conflict` is the unique index's last word on duplicates.
      await sql`
        insert into event_log (seq, event_id, type, event)
        select head.seq + row_number() over (order by e.ord), (e.value->>'id')::uuid, e.value->>'type', e.value
        from jsonb_array_elements(${JSON.stringify(batch)}::jsonb) with ordinality as e(value, ord)
        cross join (select coalesce(max(seq), 0) as seq from event_log) as head
        where not exists (select 1 from event_log l where l.event_id = (e.value->>'id')::uuid)
        on conflict (event_id) do nothing`.execute(trx);
    });
    this.wake();
  }

  async subscribe(group: string, startAt: StartAt): Promise<Subscription> {
    this.assertOpen();
    checkGroup(group);
    await sql`
      insert into stream_groups (name, position) values (${group}, ${startPosition(startAt)})
      on conflict (name) do nothing`.execute(this.db);
    const state = await this.groupState(group);
    if (!state) throw groupGone(group);
    const subscription = new LogSubscription(this, group, state, () => this.subscriptions.delete(subscription));
    this.subscriptions.add(subscription);
    return subscription;
  }

  async resetGroup(group: string, startAt: StartAt): Promise<void> {
    this.assertOpen();
    checkGroup(group);
    await sql`
      insert into stream_groups (name, position) values (${group}, ${startPosition(startAt)})
      on conflict (name) do update
      set position = excluded.position, epoch = stream_groups.epoch + 1, updated_at = now()`.execute(this.db);
    this.wake();
  }

  async deleteGroup(group: string): Promise<boolean> {
    this.assertOpen();
    const result = await this.db.deleteFrom('stream_groups').where('name', '=', group).executeTakeFirst();
    return result.numDeletedRows > 0n;
  }

  async groups(): Promise<GroupInfo[]> {
    this.assertOpen();
    const { rows } = await sql<GroupInfo>`
      select name as "group", position, (select coalesce(max(seq), 0) from event_log) - position as lag
      from stream_groups order by name collate "C"`.execute(this.db);
    return rows;
  }

  async head(): Promise<number> {
    this.assertOpen();
    const { rows } = await sql<{ head: number }>`select coalesce(max(seq), 0) as head from event_log`.execute(this.db);
    return rows[0]?.head ?? 0;
  }

  async read(fromSeq: number, limit: number): Promise<Array<{ seq: number; event: StreamEvent }>> {
    this.assertOpen();
    checkCount(fromSeq, 'fromSeq', 0);
    checkCount(limit, 'limit', 0);
    if (limit === 0) return [];
    return this.db.selectFrom('event_log').select(['seq', 'event']).where('seq', '>=', fromSeq).orderBy('seq').limit(limit).execute();
  }

  async close(): Promise<void> {
    this.closed = true;
    await Promise.all([...this.subscriptions].map((s) => s.close()));
  }

  /** The group's position and reset count; undefined when the group does not exist. */
  groupState(group: string): Promise<GroupState | undefined> {
    return this.db.selectFrom('stream_groups').select(['position', 'epoch']).where('name', '=', group).executeTakeFirst();
  }

  /** Waits `ms`, or less when events are published here, a subscription closes or `signal` aborts. */
  pause(ms: number, signal?: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', done);
        this.waiters.delete(done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      signal?.addEventListener('abort', done, { once: true });
      this.waiters.add(done);
    });
  }

  wake(): void {
    for (const waiter of [...this.waiters]) waiter();
  }

  private assertOpen(): void {
    if (this.closed) throw new Error('the event stream is closed');
  }
}

interface GroupState {
  readonly position: number;
  readonly epoch: number;
}

/**
 * One consumer of a group. `cursor` is the last event handed out, so a second fetch before an ack
 * goes on from there; the acknowledged position lives in the database, so the next subscription
 * after a crash starts from it. Fetches take turns: two at once would hand out the same events.
 */
class LogSubscription implements Subscription {
  private cursor: number;
  private epoch: number;
  /** One entry per fetch not yet acknowledged to its end, oldest first. */
  private inFlight: Array<{ readonly upTo: number; readonly at: number }> = [];
  private turn: Promise<unknown> = Promise.resolve();
  private closed = false;

  constructor(
    private readonly log: PostgresLog,
    private readonly group: string,
    state: GroupState,
    private readonly onClose: () => void,
  ) {
    this.cursor = state.position;
    this.epoch = state.epoch;
  }

  fetch(max: number, waitMs: number, signal?: AbortSignal): Promise<Delivery[]> {
    if (this.closed) return Promise.reject(new Error(`the subscription of group "${this.group}" is closed`));
    const run = this.turn.then(() => {
      checkCount(max, 'max', 1);
      checkWait(waitMs);
      return this.fetchInTurn(max, waitMs, signal);
    });
    this.turn = run.catch(() => undefined);
    return run;
  }

  async close(): Promise<void> {
    this.closed = true;
    this.onClose();
    this.log.wake();
  }

  private async fetchInTurn(max: number, waitMs: number, signal?: AbortSignal): Promise<Delivery[]> {
    const deadline = Date.now() + waitMs;
    for (;;) {
      if (this.closed || signal?.aborted) return [];
      const rows = await this.next(max);
      if (rows.length > 0) {
        const epoch = this.epoch;
        return rows.map(({ seq, event }) => ({ seq, event, ack: () => this.ack(seq, epoch) }));
      }
      const left = deadline - Date.now();
      if (left <= 0) return [];
      await this.log.pause(Math.min(this.log.pollMs, left), signal);
    }
  }

  /** The events after the cursor, once the cursor has caught up with the group's state. */
  private async next(max: number): Promise<Array<{ seq: number; event: StreamEvent }>> {
    const state = await this.log.groupState(this.group);
    if (!state) throw groupGone(this.group);
    const oldest = this.inFlight[0];
    if (state.epoch !== this.epoch || (oldest && Date.now() - oldest.at >= this.log.ackWaitMs)) {
      // Reset by resetGroup, or an ack overdue: everything after the acknowledged position again.
      this.epoch = state.epoch;
      this.cursor = state.position;
      this.inFlight = [];
    } else {
      // Another subscription of the group may have acknowledged further.
      this.cursor = Math.max(this.cursor, state.position);
    }
    const rows = await this.log.db
      .selectFrom('event_log')
      .select(['seq', 'event'])
      .where('seq', '>', this.cursor)
      .orderBy('seq')
      .limit(max)
      .execute();
    const last = rows.at(-1);
    if (last) {
      this.cursor = last.seq;
      this.inFlight.push({ upTo: last.seq, at: Date.now() });
    }
    return rows;
  }

  /** Moves the group to `seq` unless a reset (another epoch) has made this delivery stale. */
  private async ack(seq: number, epoch: number): Promise<void> {
    await this.log.db
      .updateTable('stream_groups')
      .set({ position: sql<number>`greatest(position, ${seq})`, updated_at: sql<Date>`now()` })
      .where('name', '=', this.group)
      .where('epoch', '=', epoch)
      .execute();
    this.inFlight = this.inFlight.filter((f) => f.upTo > seq);
  }
}

/** The position a new group starts at: before the first event, or after the last one. */
function startPosition(startAt: StartAt) {
  if (startAt !== 'start' && startAt !== 'end') throw new RangeError(`startAt must be 'start' or 'end', got ${String(startAt)}`);
  return startAt === 'start' ? sql<number>`0` : sql<number>`(select coalesce(max(seq), 0) from event_log)`;
}

/** The batch without repeated ids (the first occurrence wins), so one publish cannot append an event twice. */
function firstOfEachId(events: readonly StreamEvent[]): StreamEvent[] {
  const seen = new Set<string>();
  return events.filter((e) => !seen.has(e.id) && seen.add(e.id));
}

function checkGroup(group: string): void {
  if (typeof group !== 'string' || group.length === 0) throw new RangeError('a consumer group name must be a non-empty string');
}

function checkCount(value: number, name: string, min: number): void {
  if (!Number.isSafeInteger(value) || value < min) throw new RangeError(`${name} must be an integer of at least ${min}, got ${value}`);
}

function checkWait(waitMs: number): void {
  if (!Number.isFinite(waitMs) || waitMs < 0) throw new RangeError(`waitMs must be a finite number of at least 0, got ${waitMs}`);
}

function groupGone(group: string): Error {
  return new Error(`consumer group "${group}" does not exist: it was deleted while subscribed`);
}
