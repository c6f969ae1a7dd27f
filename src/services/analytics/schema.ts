import type { DuckDBConnection } from '@duckdb/node-api';

/**
 * The analytics database's tables (DuckDB). The ledger and the customers and accounts are copies
 * of PostgreSQL's, columns as there (times as UTC `TIMESTAMP`s, amounts as `BIGINT` minor
 * units); `books` is the chapter's Table 19. No table declares a key: DuckDB checks keys with
 * an index that slows every append, and the ETL itself guarantees that no id is loaded twice
 * (`etl.ts`).
 *
 * `etl_state` holds the watermark of each ledger table (the greatest id loaded); `etl_gaps` the
 * ranges of ids below a watermark that were not visible yet when it moved (see `etl.ts`);
 * `etl_runs` one row per refresh: the time of the PostgreSQL snapshot it read (`as_of`, what the
 * reports show as their freshness) and what it loaded.
 */

/** The copied tables, in the order a refresh loads them. */
export const COPIED_TABLES = ['customers', 'accounts', 'ledger_transactions', 'ledger_entries'] as const;
export type CopiedTable = (typeof COPIED_TABLES)[number];

/** Every table a reader may query and `export --parquet` writes. */
export const ANALYTICS_TABLES = [...COPIED_TABLES, 'books'] as const;
export type AnalyticsTable = (typeof ANALYTICS_TABLES)[number];

/** The chapter's Table 19. */
export const BOOKS = [
  { id: 1, title: 'Clean Code', genre: 'tech', year_published: 2008 },
  { id: 2, title: 'Code Complete', genre: 'tech', year_published: 1993 },
  { id: 3, title: 'The Giver', genre: 'sci-fi', year_published: 1993 },
  { id: 4, title: 'World War Z', genre: 'sci-fi', year_published: 2006 },
] as const;

const DDL: readonly string[] = [
  `create table if not exists customers (
     id bigint not null, name varchar not null, date_of_birth date not null, created_at timestamp not null)`,
  `create table if not exists accounts (
     account_id bigint not null, customer_id bigint not null, account_type varchar not null,
     currency varchar not null, created_at timestamp not null)`,
  `create table if not exists ledger_transactions (id bigint not null, kind varchar not null, created_at timestamp not null)`,
  `create table if not exists ledger_entries (
     id bigint not null, transaction_id bigint not null, account_id bigint, system_account varchar,
     currency varchar not null, amount bigint not null, created_at timestamp not null)`,
  `create table if not exists books (id integer not null, title varchar not null, genre varchar not null, year_published integer not null)`,
  // Staging copies of the two small mutable tables: each refresh reloads them here and applies the difference.
  `create table if not exists stage_customers as select * from customers limit 0`,
  `create table if not exists stage_accounts as select * from accounts limit 0`,
  `create table if not exists etl_state (table_name varchar not null, watermark bigint not null)`,
  `create table if not exists etl_gaps (table_name varchar not null, lo bigint not null, hi bigint not null, seen_at timestamp not null)`,
  `create table if not exists etl_runs (
     as_of timestamp not null, finished_at timestamp not null, duration_ms integer not null,
     customers bigint not null, accounts bigint not null, transactions bigint not null, entries bigint not null)`,
];

/** Makes the tables that are missing and seeds `books` and `etl_state` once. Idempotent. */
export async function ensureSchema(conn: DuckDBConnection): Promise<void> {
  for (const statement of DDL) await conn.run(statement);
  const books = BOOKS.map((b) => `(${b.id}, '${b.title}', '${b.genre}', ${b.year_published})`).join(', ');
  await conn.run(`insert into books select * from (values ${books}) v where not exists (select 1 from books)`);
  for (const table of ['ledger_transactions', 'ledger_entries'] as const) {
    await conn.run(
      `insert into etl_state (table_name, watermark) select '${table}', 0
       where not exists (select 1 from etl_state where table_name = '${table}')`,
    );
  }
}
