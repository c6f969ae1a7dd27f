import { sql, type Kysely } from 'kysely';
import type { Database } from '../../src/stores/sql/schema.ts';

export interface LedgerCheck {
  /** Sum of every customer account's balance. */
  readonly total: number;
  /** Accounts whose balance differs from the sum of their entries. */
  readonly mismatched: readonly number[];
  /** Accounts with a negative balance. */
  readonly negative: readonly number[];
  /** Ledger transactions whose entries do not sum to zero in one of their currencies. */
  readonly unbalanced: readonly number[];
  /** Entries whose currency is not their account's (system accounts: the suffix of their name). */
  readonly wrongCurrency: readonly number[];
}

/** The money invariants, read straight from the database. */
export async function checkLedger(db: Kysely<Database>): Promise<LedgerCheck> {
  const accounts = await sql<{ account_id: number; balance: number; entries: number }>`
    select a.account_id, a.balance,
      coalesce((select sum(e.amount) from ledger_entries e where e.account_id = a.account_id), 0)::bigint as entries
    from accounts a order by a.account_id`.execute(db);
  const unbalanced = await sql<{ transaction_id: number }>`
    select distinct transaction_id from ledger_entries group by transaction_id, currency
    having sum(amount) <> 0 or count(*) < 2 order by transaction_id`.execute(db);
  const wrongCurrency = await sql<{ id: number }>`
    select e.id from ledger_entries e left join accounts a on a.account_id = e.account_id
    where e.currency is distinct from coalesce(a.currency, split_part(e.system_account, ':', 2)) order by e.id`.execute(db);
  return {
    total: accounts.rows.reduce((s, a) => s + a.balance, 0),
    mismatched: accounts.rows.filter((a) => a.balance !== a.entries).map((a) => a.account_id),
    negative: accounts.rows.filter((a) => a.balance < 0).map((a) => a.account_id),
    unbalanced: unbalanced.rows.map((r) => r.transaction_id),
    wrongCurrency: wrongCurrency.rows.map((r) => r.id),
  };
}

/** Balances by account id. */
export async function balances(db: Kysely<Database>): Promise<Record<number, number>> {
  const rows = await db.selectFrom('accounts').select(['account_id', 'balance']).orderBy('account_id').execute();
  return Object.fromEntries(rows.map((r) => [r.account_id, r.balance]));
}
