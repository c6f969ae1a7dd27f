import { DuckDBDateValue, type DuckDBAppender, type DuckDBConnection } from '@duckdb/node-api';
import { sql, type Kysely } from 'kysely';
import type { Database } from '../../stores/sql/schema.ts';
import { MICROS, rows, timestamp } from './extract.ts';

/**
 * The refresh of the two small mutable tables (`etl.ts` does the ledger): customers and accounts
 * are read whole, in the refresh's snapshot, into staging tables, and the copy is made equal to
 * them; the counts are of rows new or changed.
 */

/** Days since 1970-01-01 of a `YYYY-MM-DD` date. */
function days(date: string): number {
  const [y, m, d] = date.split('-').map(Number) as [number, number, number];
  return Math.round(Date.UTC(y, m - 1, d) / 86_400_000);
}

export async function reloadCustomers(trx: Kysely<Database>, duck: DuckDBConnection): Promise<number> {
  const all = await rows<{ id: number; name: string; date_of_birth: string; us: number }>(
    trx,
    sql`select t.id, t.name, t.date_of_birth, ${sql.raw(MICROS)} from customers t order by t.id`,
  );
  return applyStaged(duck, 'customers', 'id', ['name', 'date_of_birth', 'created_at'], all, (a, r) => {
    a.appendBigInt(BigInt(r.id));
    a.appendVarchar(r.name);
    a.appendDate(new DuckDBDateValue(days(r.date_of_birth)));
    a.appendTimestamp(timestamp(r.us));
  });
}

export async function reloadAccounts(trx: Kysely<Database>, duck: DuckDBConnection): Promise<number> {
  const all = await rows<{ account_id: number; customer_id: number; account_type: string; currency: string; us: number }>(
    trx,
    sql`select t.account_id, t.customer_id, t.account_type, t.currency, ${sql.raw(MICROS)} from accounts t order by t.account_id`,
  );
  return applyStaged(duck, 'accounts', 'account_id', ['customer_id', 'account_type', 'currency', 'created_at'], all, (a, r) => {
    a.appendBigInt(BigInt(r.account_id));
    a.appendBigInt(BigInt(r.customer_id));
    a.appendVarchar(r.account_type);
    a.appendVarchar(r.currency);
    a.appendTimestamp(timestamp(r.us));
  });
}

/**
 * Puts `all` into the staging copy of `table`, then makes `table` equal to it: rows that changed
 * or went away are deleted, rows new or changed are inserted. Returns how many were inserted.
 */
async function applyStaged<R>(
  duck: DuckDBConnection,
  table: 'customers' | 'accounts',
  key: string,
  columns: readonly string[],
  all: readonly R[],
  append: (appender: DuckDBAppender, row: R) => void,
): Promise<number> {
  const stage = `stage_${table}`;
  await duck.run(`delete from ${stage}`);
  const appender = await duck.createAppender(stage);
  try {
    for (const row of all) {
      append(appender, row);
      appender.endRow();
    }
    appender.flushSync();
  } finally {
    appender.closeSync();
  }
  const same = columns.map((c) => `s.${c} is not distinct from t.${c}`).join(' and ');
  await duck.run(`delete from ${table} t where not exists (select 1 from ${stage} s where s.${key} = t.${key} and ${same})`);
  const inserted = await duck.run(
    `insert into ${table} select * from ${stage} s where not exists (select 1 from ${table} t where t.${key} = s.${key})`,
  );
  return inserted.rowsChanged;
}
