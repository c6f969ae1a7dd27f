import { sql } from 'kysely';
import { DatabankError } from '../domain/errors.ts';
import type { Principal } from '../domain/types.ts';
import type { Db } from '../stores/sql/port.ts';
import type { StreamEvent } from '../stores/stream/port.ts';
import { assertOwns } from './access.ts';
import { firstDeliveries } from './processed-messages.ts';
import { inTransaction, read } from './transaction.ts';

/** One line of a customer's activity (`GET /customers/:id/activity`). */
export interface ActivityItem {
  readonly event_id: string;
  readonly type: string;
  readonly occurred_at: string;
  readonly payload: unknown;
}

/** The consumer group (and `processed_messages` consumer) of the audit projection. */
export const AUDIT_GROUP = 'audit';

/**
 * The audit log: a projection of the event stream, one row per event and customer it concerns,
 * kept by the `audit` consumer group. A batch of events, their `processed_messages` rows and their
 * rows here commit together, so a redelivered event changes nothing. `reset` empties it for
 * `databank events replay`, which reads the stream again from its start.
 */
export class ActivityService {
  constructor(private readonly db: Db) {}

  async apply(events: readonly StreamEvent[]): Promise<void> {
    if (events.length === 0) return;
    await inTransaction(this.db.writer, async (trx) => {
      const fresh = await firstDeliveries(trx, AUDIT_GROUP, events.map((e) => e.id));
      const rows = events
        .filter((e) => fresh.has(e.id))
        .flatMap((e) =>
          e.customer_ids.map((customer_id) => ({
            customer_id,
            event_id: e.id,
            type: e.type,
            occurred_at: e.occurred_at,
            payload: JSON.stringify(e.payload),
          })),
        );
      if (rows.length > 0) await trx.insertInto('audit_events').values(rows).onConflict((oc) => oc.doNothing()).execute();
    });
  }

  /** Empties the projection and its `processed_messages`, in one transaction. */
  async reset(): Promise<void> {
    await inTransaction(this.db.writer, async (trx) => {
      await trx.deleteFrom('audit_events').execute();
      await trx.deleteFrom('processed_messages').where('consumer', '=', AUDIT_GROUP).execute();
    });
  }

  /** A customer's events, newest first. */
  async page(principal: Principal, customerId: number, query: { limit: number; cursor?: string }) {
    assertOwns(principal, customerId);
    const customer = await read(() => this.db.reader.selectFrom('customers').select('id').where('id', '=', customerId).executeTakeFirst());
    if (!customer) throw new DatabankError('DATABANK_ERR_NOT_FOUND', `customer ${customerId} does not exist`);
    const after = decodeActivityCursor(query.cursor);
    const rows = await read(() =>
      this.db.reader
        .selectFrom('audit_events')
        .select(['event_id', 'type', 'occurred_at', 'payload'])
        .where('customer_id', '=', customerId)
        .$if(after !== null, (q) =>
          q.where(sql<boolean>`(occurred_at, event_id) < (${(after as Cursor).at}::timestamptz, ${(after as Cursor).id}::uuid)`),
        )
        .orderBy('occurred_at', 'desc')
        .orderBy('event_id', 'desc')
        .limit(query.limit + 1)
        .execute(),
    );
    const result: ActivityItem[] = rows.slice(0, query.limit).map((r) => ({
      event_id: r.event_id,
      type: r.type,
      occurred_at: r.occurred_at.toISOString(),
      payload: r.payload,
    }));
    const last = result[result.length - 1];
    return { result, next_cursor: rows.length > query.limit && last ? encodeActivityCursor(last) : null };
  }
}

interface Cursor {
  readonly at: string;
  readonly id: string;
}

/** 8 bytes of the time in milliseconds and the 16 bytes of the event id, base64url: 32 characters. */
function encodeActivityCursor(item: ActivityItem): string {
  const bytes = Buffer.alloc(24);
  bytes.writeBigInt64BE(BigInt(Date.parse(item.occurred_at)), 0);
  Buffer.from(item.event_id.replaceAll('-', ''), 'hex').copy(bytes, 8);
  return bytes.toString('base64url');
}

function decodeActivityCursor(cursor: string | undefined): Cursor | null {
  if (cursor === undefined) return null;
  const bytes = Buffer.from(cursor, 'base64url');
  if (bytes.length !== 24 || bytes.toString('base64url') !== cursor) throw new DatabankError('DATABANK_ERR_INVALID_CURSOR');
  const ms = Number(bytes.readBigInt64BE(0));
  if (!(ms >= 0 && ms < 8.64e15)) throw new DatabankError('DATABANK_ERR_INVALID_CURSOR');
  const hex = bytes.subarray(8).toString('hex');
  const id = `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
  return { at: new Date(ms).toISOString(), id };
}
