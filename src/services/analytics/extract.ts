import { DuckDBTimestampValue } from '@duckdb/node-api';
import type { Kysely, RawBuilder } from 'kysely';
import type { Database } from '../../stores/sql/schema.ts';

/** What the ETL's extraction queries share: times as microseconds, rows of a raw query. */

/** created_at of the row aliased `t`, in microseconds since the epoch. */
export const MICROS = `(extract(epoch from t.created_at) * 1000000)::int8 as us`;

/** A DuckDB TIMESTAMP from microseconds since the epoch. */
export const timestamp = (us: number) => new DuckDBTimestampValue(BigInt(us));

/** The rows of a raw query, typed by the caller. */
export async function rows<R>(trx: Kysely<Database>, query: RawBuilder<unknown>): Promise<R[]> {
  return (await query.execute(trx)).rows as R[];
}
