import { DatabankError } from './errors.ts';

/**
 * Money is an integer count of the currency's minor units. Amounts that move are positive and at
 * most 10^14, the largest balance an account may hold (`DATABANK_MAX_BALANCE` may lower that
 * bound, the database holds it too): with at most `DATABANK_MAX_ACCOUNTS_PER_CUSTOMER` accounts
 * each, every balance, customer total and amount the API returns is an exact JSON number.
 */
export const MAX_AMOUNT = 100_000_000_000_000;

/** The bank's base currency: a customer's `balance` sums its accounts in this currency only. */
export const BASE_CURRENCY = 'USD';

export const CURRENCIES = ['USD', 'EUR', 'GBP'] as const;
export type Currency = (typeof CURRENCIES)[number];

/** The bank's own side of a movement, one per currency: `cash:USD`, `fee_income:EUR`, … */
export type SystemAccount = `${'cash' | 'fee_income'}:${Currency}`;

export const ACCOUNT_TYPES = ['checking', 'savings'] as const;
export type AccountType = (typeof ACCOUNT_TYPES)[number];

/**
 * An amount that moves: a whole number of minor units from 1 to MAX_AMOUNT. Services check it
 * too, so that a caller other than the HTTP layer cannot move 0, a negative or a fraction.
 */
export function assertAmount(amount: number, field = 'amount'): void {
  if (!Number.isSafeInteger(amount) || amount < 1 || amount > MAX_AMOUNT) {
    throw new DatabankError('DATABANK_ERR_VALIDATION', `${field} must be a whole number from 1 to ${MAX_AMOUNT}`);
  }
}

/**
 * The largest balance `DATABANK_MAX_BALANCE` allows: a deposit or transfer that would take an
 * account past `maxBalance` is refused with DATABANK_ERR_BALANCE_LIMIT and nothing moves.
 */
export function assertWithinBalance(accountId: number, balance: number, amount: number, maxBalance: number): void {
  if (balance > maxBalance - amount) throw balanceLimit(accountId, maxBalance);
}

export function balanceLimit(accountId: number, maxBalance: number): DatabankError {
  return new DatabankError('DATABANK_ERR_BALANCE_LIMIT', `account ${accountId} would hold more than ${maxBalance} (DATABANK_MAX_BALANCE)`);
}
