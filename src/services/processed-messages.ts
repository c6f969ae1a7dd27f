import type { Kysely } from 'kysely';
import type { Database } from '../stores/sql/schema.ts';

/**
 * Records, in the caller's transaction, that `consumer` has applied the messages `ids`; resolves
 * with the ids it had not applied before. Written in the transaction of the side effect, it makes
 * an at-least-once delivery apply once: a redelivered message finds its row and changes nothing,
 * and two deliveries racing each other meet at the primary key.
 */
export async function firstDeliveries(trx: Kysely<Database>, consumer: string, ids: readonly string[]): Promise<Set<string>> {
  if (ids.length === 0) return new Set();
  const rows = await trx
    .insertInto('processed_messages')
    .values(ids.map((message_id) => ({ consumer, message_id })))
    .onConflict((oc) => oc.doNothing())
    .returning('message_id')
    .execute();
  return new Set(rows.map((r) => r.message_id));
}
