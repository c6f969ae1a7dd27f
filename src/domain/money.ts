import { DatabankError } from './errors.ts';

/**
 * Money is an integer count of the currency's minor units. Amounts that move are positive and at
 * most 10^12, so that sums over many accounts stay exactly representable in a JavaScript number.
 */
export const MAX_AMOUNT = 1_000_000_000_000;

export const CURRENCIES = ['USD', 'EUR', 'GBP'] as const;
export type Currency = (typeof CURRENCIES)[number];

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
