import { sql, type Kysely } from 'kysely';
import type { Currency, SystemAccount } from '../domain/money.ts';
import type { LedgerKind } from '../domain/types.ts';
import type { Database } from '../stores/sql/schema.ts';

/**
 * One side of a movement: a customer account, or one of the bank's own system accounts. The
 * currency must be the account's: the schema refuses anything else.
 */
export type EntryTarget =
  | { readonly account_id: number; readonly amount: number }
  | { readonly system_account: SystemAccount; readonly amount: number };

export interface Movement {
  readonly kind: LedgerKind;
  /** Every entry's currency: a movement stays in one currency, and sums to zero in it. */
  readonly currency: Currency;
  readonly reference: string | null;
  readonly entries: readonly EntryTarget[];
  /** The type of the movement's outbox events (docs/events.md). */
  readonly type: string;
  /** Its events, in order; each payload gets `transaction_id` and `created_at` added. */
  readonly events: readonly MovementEvent[];
}

/** One outbox event of a movement. */
export interface MovementEvent {
  readonly aggregate_id: number;
  /** The customers whose activity the event is part of. */
  readonly customer_ids: readonly number[];
  readonly payload: Readonly<Record<string, unknown>>;
}

export interface Recorded {
  readonly transaction_id: number;
  readonly created_at: string;
  /** New balance of each customer account the movement touched. */
  readonly balances: ReadonlyMap<number, number>;
}

/**
 * Writes a movement in one statement: the ledger transaction, its entries (which must sum to zero
 * in their currency, and be in their accounts' currency: the schema refuses otherwise; their time
 * is the transaction's, which puts them in its month's partition), the new balances and the outbox
 * event. The caller has locked the accounts and checked the rules; this keeps the round trips per
 * movement to one.
 */
export async function recordMovement(trx: Kysely<Database>, m: Movement): Promise<Recorded> {
  const accountIds = m.entries.map((e) => ('account_id' in e ? e.account_id : null));
  const systems = m.entries.map((e) => ('system_account' in e ? e.system_account : null));
  const amounts = m.entries.map((e) => e.amount);
  const result = await sql<{ id: number; created_at: Date; balances: Record<string, number> }>`
    with t as (
      insert into ledger_transactions (kind, reference) values (${m.kind}, ${m.reference})
      returning id, created_at
    ),
    d as (
      select * from unnest(${accountIds}::bigint[], ${systems}::text[], ${amounts}::bigint[])
        as d(account_id, system_account, amount)
    ),
    u as (
      update accounts a set balance = a.balance + d.amount
      from d where a.account_id = d.account_id
      returning a.account_id, a.balance
    ),
    e as (
      insert into ledger_entries (transaction_id, account_id, system_account, currency, amount, created_at)
      select t.id, d.account_id, d.system_account, ${m.currency}, d.amount, t.created_at from t, d
    ),
    o as (
      insert into outbox (type, aggregate_id, customer_ids, payload)
      select ${m.type}, ev ->> 'aggregate_id',
        array(select jsonb_array_elements_text(ev -> 'customer_ids')::bigint),
        (ev -> 'payload') || jsonb_build_object('transaction_id', t.id,
          'created_at', to_char(t.created_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'))
      from t, jsonb_array_elements(${JSON.stringify(m.events)}::text::jsonb) with ordinality as x(ev, n)
      order by x.n
    )
    select t.id, t.created_at,
      (select coalesce(jsonb_object_agg(u.account_id::text, u.balance), '{}'::jsonb) from u) as balances
    from t
  `.execute(trx);
  const row = result.rows[0];
  if (!row) throw new Error('ledger insert returned no row');
  return {
    transaction_id: row.id,
    created_at: row.created_at.toISOString(),
    balances: new Map(Object.entries(row.balances).map(([k, v]) => [Number(k), Number(v)])),
  };
}
