import type { DuckDBConnection } from '@duckdb/node-api';
import { DatabankError } from '../../domain/errors.ts';
import { toSafeNumber } from './values.ts';

/**
 * The reports, as SQL on the DuckDB copy. Amounts are minor units of their currency and never
 * added across currencies; every answer carries `as_of`, the time of the PostgreSQL snapshot the
 * last refresh read (null before the first one), so a reader knows how fresh it is.
 */

export const BALANCE_GROUPINGS = ['account_type', 'currency'] as const;
export type BalanceGrouping = (typeof BALANCE_GROUPINGS)[number];

export const INTERVALS = ['day', 'week', 'month'] as const;
export type Interval = (typeof INTERVALS)[number];

export const TOP_ORDERS = ['balance', 'volume'] as const;
export type TopOrder = (typeof TOP_ORDERS)[number];

export interface BalanceRow {
  /** Present when grouped by account type. */
  readonly account_type?: string;
  readonly currency: string;
  readonly accounts: number;
  /** The sum of the group's balances, each the sum of its account's ledger entries. */
  readonly balance: number;
}

export interface BalancesReport {
  readonly as_of: string | null;
  readonly by: BalanceGrouping;
  readonly result: readonly BalanceRow[];
}

export interface VolumeRow {
  /** The first day of the period (`YYYY-MM-DD`, UTC; weeks start on Monday). */
  readonly period: string;
  readonly currency: string;
  /** Ledger transactions with an entry in the period and currency. */
  readonly transactions: number;
  readonly entries: number;
  /** The money that moved: the sum of the positive entries (each transaction balances, so this is also the sum of its negative side). */
  readonly volume: number;
}

export interface VolumeReport {
  readonly as_of: string | null;
  readonly interval: Interval;
  readonly from: string;
  readonly to: string;
  readonly result: readonly VolumeRow[];
}

export interface TopAccountRow {
  readonly account_id: number;
  readonly customer_id: number;
  readonly customer_name: string | null;
  readonly account_type: string;
  readonly currency: string;
  readonly balance: number;
  /** The sum of the absolute amounts of the account's entries: money in plus money out. */
  readonly volume: number;
  readonly entries: number;
}

export interface TopAccountsReport {
  readonly as_of: string | null;
  readonly by: TopOrder;
  readonly limit: number;
  readonly result: readonly TopAccountRow[];
}

export interface BookRow {
  readonly id: number;
  readonly title: string;
  readonly genre: string;
  readonly year_published: number;
}

export interface BooksReport {
  readonly as_of: string | null;
  /** Table 19 whole. */
  readonly books: readonly BookRow[];
  /** The chapter's two queries, each with its answer as DuckDB gives it. */
  readonly queries: readonly { readonly sql: string; readonly rows: readonly Record<string, unknown>[] }[];
}

/** The chapter's queries on Table 19: the first favours row storage, the second column storage. */
export const BOOK_QUERIES = [
  'SELECT * FROM books WHERE year_published = 1993',
  'SELECT COUNT(*) FROM books WHERE year_published = 1993',
] as const;

type Row = Record<string, unknown>;

async function all(conn: DuckDBConnection, text: string, values?: Record<string, string | number>): Promise<Row[]> {
  return (await conn.runAndReadAll(text, values)).getRowObjectsJS() as Row[];
}

/** The snapshot time of the last refresh, or null before the first. */
export async function asOf(conn: DuckDBConnection): Promise<string | null> {
  const [row] = await all(conn, `select epoch_ms(max(as_of)) as ms from etl_runs`);
  return row?.ms === null || row?.ms === undefined ? null : new Date(toSafeNumber(row.ms)).toISOString();
}

const ACCOUNT_BALANCES = `select account_id, sum(amount) as balance, sum(abs(amount)) as volume, count(*) as entries
  from ledger_entries where account_id is not null group by account_id`;

export async function balances(conn: DuckDBConnection, by: BalanceGrouping): Promise<BalancesReport> {
  const keys = by === 'account_type' ? 'a.account_type, a.currency' : 'a.currency';
  const rows = await all(
    conn,
    `with b as (${ACCOUNT_BALANCES})
     select ${keys}, count(*) as accounts, coalesce(sum(b.balance), 0) as balance
     from accounts a left join b on b.account_id = a.account_id
     group by ${keys} order by ${keys}`,
  );
  return {
    as_of: await asOf(conn),
    by,
    result: rows.map((r) => ({
      ...(by === 'account_type' ? { account_type: String(r.account_type) } : {}),
      currency: String(r.currency),
      accounts: toSafeNumber(r.accounts),
      balance: toSafeNumber(r.balance),
    })),
  };
}

/** At most this many periods in one volume report. */
export const MAX_PERIODS = 3_660;
const DEFAULT_SPAN_DAYS: Readonly<Record<Interval, number>> = { day: 30, week: 84, month: 365 };
const DAY_MS = 86_400_000;

/** Milliseconds since the epoch of a `YYYY-MM-DD` date that exists, or a 400 naming the parameter. */
function parseDay(value: string, name: string): number {
  const m = /^([0-9]{4})-([0-9]{2})-([0-9]{2})$/.exec(value);
  const ms = m ? Date.UTC(Number(m[1]), Number(m[2]) - 1, Number(m[3])) : Number.NaN;
  if (!m || Number.isNaN(ms) || new Date(ms).toISOString().slice(0, 10) !== value) {
    throw new DatabankError('DATABANK_ERR_VALIDATION', `${name}: must be a date YYYY-MM-DD that exists`);
  }
  return ms;
}

const isoDay = (ms: number) => new Date(ms).toISOString().slice(0, 10);

/**
 * The range of a volume report: `to` defaults to today (UTC), `from` to 30 days (day), 12 weeks
 * (week) or a year (month) before it; both days are included. Refuses a range backwards or of more
 * than MAX_PERIODS periods.
 */
export function volumeRange(interval: Interval, from?: string, to?: string, now = Date.now()): { from: string; to: string } {
  const toMs = to === undefined ? Math.floor(now / DAY_MS) * DAY_MS : parseDay(to, 'to');
  const fromMs = from === undefined ? toMs - (DEFAULT_SPAN_DAYS[interval] - 1) * DAY_MS : parseDay(from, 'from');
  if (fromMs > toMs) throw new DatabankError('DATABANK_ERR_VALIDATION', 'from: must not be after to');
  const days = (toMs - fromMs) / DAY_MS + 1;
  const periods = interval === 'day' ? days : interval === 'week' ? Math.ceil(days / 7) + 1 : Math.ceil(days / 28) + 1;
  if (periods > MAX_PERIODS) {
    throw new DatabankError('DATABANK_ERR_VALIDATION', `from, to: at most ${MAX_PERIODS} periods of a ${interval} in one report`);
  }
  return { from: isoDay(fromMs), to: isoDay(toMs) };
}

export async function volume(conn: DuckDBConnection, interval: Interval, range: { from: string; to: string }): Promise<VolumeReport> {
  // The interval is one of three literals (checked by the type and the route), never caller text.
  const part = INTERVALS.includes(interval) ? interval : 'day';
  const rows = await all(
    conn,
    `select strftime(date_trunc('${part}', created_at), '%Y-%m-%d') as period, currency,
       count(distinct transaction_id) as transactions, count(*) as entries,
       coalesce(sum(amount) filter (where amount > 0), 0) as volume
     from ledger_entries
     where created_at >= $from::date and created_at < $to::date + interval 1 day
     group by all order by period, currency`,
    { from: range.from, to: range.to },
  );
  return {
    as_of: await asOf(conn),
    interval,
    ...range,
    result: rows.map((r) => ({
      period: String(r.period),
      currency: String(r.currency),
      transactions: toSafeNumber(r.transactions),
      entries: toSafeNumber(r.entries),
      volume: toSafeNumber(r.volume),
    })),
  };
}

export async function topAccounts(conn: DuckDBConnection, by: TopOrder, limit: number): Promise<TopAccountsReport> {
  const order = by === 'volume' ? 'volume' : 'balance';
  const rows = await all(
    conn,
    `with s as (${ACCOUNT_BALANCES})
     select a.account_id, a.customer_id, c.name as customer_name, a.account_type, a.currency,
       coalesce(s.balance, 0) as balance, coalesce(s.volume, 0) as volume, coalesce(s.entries, 0) as entries
     from accounts a left join s on s.account_id = a.account_id left join customers c on c.id = a.customer_id
     order by ${order} desc, a.account_id limit $limit`,
    { limit },
  );
  return {
    as_of: await asOf(conn),
    by,
    limit,
    result: rows.map((r) => ({
      account_id: toSafeNumber(r.account_id),
      customer_id: toSafeNumber(r.customer_id),
      customer_name: r.customer_name === null ? null : String(r.customer_name),
      account_type: String(r.account_type),
      currency: String(r.currency),
      balance: toSafeNumber(r.balance),
      volume: toSafeNumber(r.volume),
      entries: toSafeNumber(r.entries),
    })),
  };
}

export async function books(conn: DuckDBConnection): Promise<BooksReport> {
  const table = await all(conn, `select id, title, genre, year_published from books order by id`);
  const queries = [];
  for (const text of BOOK_QUERIES) {
    const rows = await all(conn, text);
    queries.push({
      sql: text,
      rows: rows.map((r) => Object.fromEntries(Object.entries(r).map(([k, v]) => [k, typeof v === 'bigint' ? toSafeNumber(v) : v]))),
    });
  }
  return {
    as_of: await asOf(conn),
    books: table.map((r) => ({
      id: toSafeNumber(r.id),
      title: String(r.title),
      genre: String(r.genre),
      year_published: toSafeNumber(r.year_published),
    })),
    queries,
  };
}
