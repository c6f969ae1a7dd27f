import type { AccountType, Currency } from './money.ts';

/**
 * A customer as the API shows it. `balances` sums the customer's accounts per currency held;
 * `balance` is the sum of its accounts in the base currency (USD) only, as the chapter's query
 * `sum(balance)` over a customer's accounts expects: amounts of different currencies never add up.
 */
export interface Customer {
  readonly id: number;
  readonly name: string;
  readonly date_of_birth: string;
  readonly balance: number;
  readonly balances: Readonly<Partial<Record<Currency, number>>>;
}

export interface Account {
  readonly account_id: number;
  readonly account_type: AccountType;
  readonly balance: number;
  readonly customer_id: number;
  readonly currency: Currency;
}

export interface LedgerEntry {
  readonly entry_id: number;
  readonly transaction_id: number;
  readonly kind: LedgerKind;
  readonly amount: number;
  readonly reference: string | null;
  readonly created_at: string;
}

export type LedgerKind = 'deposit' | 'withdrawal' | 'transfer' | 'fee';

export interface Transfer {
  readonly transfer_id: number;
  readonly from_account_id: number;
  readonly to_account_id: number;
  readonly amount: number;
  readonly created_at: string;
}

export interface Movement {
  readonly transaction_id: number;
  readonly account_id: number;
  readonly kind: 'deposit' | 'withdrawal';
  readonly amount: number;
  readonly balance: number;
  readonly created_at: string;
}

export interface FeeRun {
  readonly reference: string;
  readonly amount: number;
  readonly currency: Currency;
  /** The first ledger transaction of the run (null when nothing was charged). */
  readonly transaction_id: number | null;
  /** Every ledger transaction of the run, one per batch that charged something. */
  readonly transaction_ids: readonly number[];
  readonly charged: readonly number[];
  readonly insufficient_funds: readonly number[];
  readonly already_charged: readonly number[];
}

/** Who is calling: an admin key, or a customer key bound to one customer. */
export type Principal =
  | { readonly role: 'admin'; readonly keyId: number }
  | { readonly role: 'customer'; readonly keyId: number; readonly customerId: number };

export interface Page<T> {
  readonly result: readonly T[];
  readonly next_cursor?: string;
}
