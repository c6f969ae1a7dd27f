/**
 * How PostgreSQL values become JavaScript values, the same for the embedded engine and the
 * server: bigint and numeric become numbers (refusing any that would lose precision), dates stay
 * `YYYY-MM-DD` strings so that no time zone can shift a birthday.
 */
export const OID = { int8: 20, numeric: 1700, date: 1082 } as const;

export function parseInt8(value: string): number {
  const n = Number(value);
  if (!Number.isSafeInteger(n)) throw new RangeError(`integer ${value} is outside the safe range`);
  return n;
}

export function parseDate(value: string): string {
  return value;
}

export const PARSERS: Readonly<Record<number, (value: string) => unknown>> = {
  [OID.int8]: parseInt8,
  [OID.numeric]: parseInt8,
  [OID.date]: parseDate,
};
