import type { Kysely } from 'kysely';
import type { Database } from '../stores/sql/schema.ts';

/** An event as a service writes it; the outbox adds its id, version and time (docs/events.md). */
export interface NewEvent {
  readonly type: EventType;
  readonly aggregate_id: number;
  /** The customers whose activity the event is part of. */
  readonly customer_ids: readonly number[];
  readonly payload: Readonly<Record<string, unknown>>;
}

/** Every event type the bank writes (docs/events.md); money movements write theirs in `recordMovement`. */
export type EventType =
  | 'customer.registered'
  | 'customer.updated'
  | 'account.opened'
  | 'money.deposited'
  | 'money.withdrawn'
  | 'transfer.completed'
  | 'fee.charged'
  | 'file.uploaded'
  | 'file.deleted'
  | 'document.created'
  | 'document.updated'
  | 'document.deleted';

/**
 * Appends events to the outbox in the caller's transaction: they commit with the change they
 * describe, or not at all (the transactional outbox). The relay publishes them after the commit.
 */
export async function appendEvents(trx: Kysely<Database>, events: readonly NewEvent[]): Promise<void> {
  if (events.length === 0) return;
  await trx
    .insertInto('outbox')
    .values(
      events.map((e) => ({
        type: e.type,
        aggregate_id: String(e.aggregate_id),
        customer_ids: [...e.customer_ids],
        payload: JSON.stringify(e.payload),
      })),
    )
    .execute();
}
