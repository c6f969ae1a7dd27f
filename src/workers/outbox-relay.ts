import { sql, type Kysely } from 'kysely';
import type { Database } from '../stores/sql/schema.ts';
import type { EventStream, StreamEvent } from '../stores/stream/port.ts';
import type { ScheduleLock } from './schedule-lock.ts';
import { polling } from './polling.ts';
import type { Worker } from './worker.ts';

export interface RelayOptions {
  readonly db: Kysely<Database>;
  readonly stream: EventStream;
  /** One relay at a time across processes: two would publish the same rows in interleaved order. */
  readonly lock: ScheduleLock;
  /** Events per publish; default 500. */
  readonly batchSize?: number;
  /** The pause when the outbox is empty; default 100 ms. */
  readonly idleMs?: number;
  /** Told how many events each batch published (metrics). */
  readonly onPublished?: (count: number) => void;
}

/**
 * The transactional outbox's relay: reads committed, unsent outbox rows in id order, publishes
 * them to the event stream, and marks them sent only once `publish` resolved (the stream has them
 * durably). A crash between the two publishes them again on the next turn; the stream drops ids it
 * has (JetStream's duplicate window, the log's unique key) and consumers deduplicate by event id.
 * A publish that fails (the broker down) is a failed run: the host logs it and the loop tries again.
 */
export function outboxRelay(options: RelayOptions): Worker {
  const batch = options.batchSize ?? 500;
  return polling({
    name: 'outbox-relay',
    lock: options.lock,
    batch,
    idleMs: options.idleMs ?? 100,
    turn: async () => {
      const published = await relayOnce(options.db, options.stream, batch);
      if (published > 0) options.onPublished?.(published);
      return published;
    },
  });
}

/** One batch: publish up to `limit` unsent events in id order, then mark them sent. Resolves with how many. */
export async function relayOnce(db: Kysely<Database>, stream: EventStream, limit: number): Promise<number> {
  const rows = await db
    .selectFrom('outbox')
    .select(['id', 'event_id', 'type', 'version', 'aggregate_id', 'customer_ids', 'payload', 'created_at'])
    .where('published_at', 'is', null)
    .orderBy('id')
    .limit(limit)
    .execute();
  if (rows.length === 0) return 0;
  await stream.publish(rows.map(toStreamEvent));
  await db
    .updateTable('outbox')
    .set({ published_at: sql<Date>`now()` })
    .where(
      'id',
      'in',
      rows.map((r) => r.id),
    )
    .execute();
  return rows.length;
}

/** An outbox row as the stream carries it (docs/events.md). */
export function toStreamEvent(row: {
  event_id: string;
  type: string;
  version: number;
  aggregate_id: string;
  customer_ids: readonly (number | string)[];
  payload: unknown;
  created_at: Date;
}): StreamEvent {
  return {
    id: row.event_id,
    type: row.type,
    version: row.version,
    occurred_at: row.created_at.toISOString(),
    aggregate_id: row.aggregate_id,
    customer_ids: row.customer_ids.map(Number),
    payload: (typeof row.payload === 'string' ? JSON.parse(row.payload) : row.payload) as Record<string, unknown>,
  };
}
