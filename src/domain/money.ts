/**
 * Money is an integer count of the currency's minor units. Amounts that move are positive and at
 * most 10^12, so that sums over many accounts stay exactly representable in a JavaScript number.
 */
export const MAX_AMOUNT = 1_000_000_000_000;

export const CURRENCIES = ['USD', 'EUR', 'GBP'] as const;
export type Currency = (typeof CURRENCIES)[number];

export const ACCOUNT_TYPES = ['checking', 'savings'] as const;
export type AccountType = (typeof ACCOUNT_TYPES)[number];
