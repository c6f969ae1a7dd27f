/**
 * DuckDB answers BIGINT, and the HUGEINT of `sum(bigint)`, as JavaScript bigints. databank's JSON
 * holds integers as numbers, and refuses one that a number cannot hold exactly (as the PostgreSQL
 * type parsers do, `stores/sql/type-parsers.ts`): so does this.
 */
export function toSafeNumber(value: unknown): number {
  if (typeof value === 'number') {
    if (Number.isSafeInteger(value)) return value;
    throw new RangeError(`${value} is not a whole number in the safe range`);
  }
  if (typeof value === 'bigint') {
    if (value > BigInt(Number.MAX_SAFE_INTEGER) || value < BigInt(Number.MIN_SAFE_INTEGER)) {
      throw new RangeError(`integer ${value} is outside the safe range`);
    }
    return Number(value);
  }
  if (value === null || value === undefined) return 0;
  throw new TypeError(`expected an integer, got ${typeof value}`);
}

/** `toSafeNumber`, keeping null. */
export function toSafeNumberOrNull(value: unknown): number | null {
  return value === null || value === undefined ? null : toSafeNumber(value);
}

/**
 * A value of an arbitrary query's answer as JSON, from its JavaScript form (`js`) and DuckDB's
 * JSON form (`json`): integers as numbers when exact, otherwise as decimal text; other numbers as
 * numbers (NaN and infinities as text); everything else (dates, times, decimals, lists) as DuckDB
 * writes it.
 */
export function jsonValue(js: unknown, json: unknown): unknown {
  if (typeof js === 'bigint') {
    return js <= BigInt(Number.MAX_SAFE_INTEGER) && js >= BigInt(Number.MIN_SAFE_INTEGER) ? Number(js) : js.toString();
  }
  if (typeof js === 'number') return Number.isFinite(js) ? js : String(js);
  return json;
}
