import { DatabankError } from './errors.ts';

const ISO_DATE = /^[0-9]{4}-[0-9]{2}-[0-9]{2}$/;
/** The earliest date of birth the bank accepts. */
export const EARLIEST_BIRTH_DATE = '1900-01-01';

/**
 * A calendar date that exists (no 2023-02-30), written YYYY-MM-DD; DATABANK_ERR_VALIDATION
 * naming `field` otherwise.
 */
export function assertRealDate(value: string, field: string): void {
  if (!ISO_DATE.test(value)) throw new DatabankError('DATABANK_ERR_VALIDATION', `${field} must be YYYY-MM-DD`);
  const [y, m, d] = value.split('-').map(Number) as [number, number, number];
  // setUTCFullYear, unlike Date.UTC, takes years 0-99 literally instead of as 1900-1999.
  const date = new Date(0);
  date.setUTCFullYear(y, m - 1, d);
  // PostgreSQL has no year 0.
  if (y < 1 || date.getUTCFullYear() !== y || date.getUTCMonth() !== m - 1 || date.getUTCDate() !== d) {
    throw new DatabankError('DATABANK_ERR_VALIDATION', `${field} is not a calendar date`);
  }
}

/** A date of birth: a real date from 1900-01-01 to today (UTC). */
export function assertBirthDate(value: string, today: Date = new Date()): void {
  assertRealDate(value, 'date_of_birth');
  if (value < EARLIEST_BIRTH_DATE || value > today.toISOString().slice(0, 10)) {
    throw new DatabankError('DATABANK_ERR_VALIDATION', `date_of_birth must be between ${EARLIEST_BIRTH_DATE} and today`);
  }
}
