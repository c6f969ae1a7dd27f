import type { Currency } from '../domain/money.ts';
import type { Tx } from './transaction.ts';

export interface LockedAccount {
  readonly account_id: number;
  readonly customer_id: number;
  readonly currency: Currency;
  readonly balance: number;
}

/**
 * Locks accounts for update in ascending id order. Every writer locks in this one order, so two
 * movements over the same accounts queue instead of deadlocking.
 */
export async function lockAccounts(trx: Tx, ids: readonly number[]): Promise<Map<number, LockedAccount>> {
  const rows = await trx
    .selectFrom('accounts')
    .select(['account_id', 'customer_id', 'currency', 'balance'])
    .where('account_id', 'in', [...ids])
    .orderBy('account_id')
    .forUpdate()
    .execute();
  return new Map(rows.map((r) => [r.account_id, r]));
}
