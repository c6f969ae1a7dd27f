import { performance } from 'node:perf_hooks';
import type { DuckDBAppender, DuckDBConnection } from '@duckdb/node-api';
import { sql, type Kysely } from 'kysely';
import type { Database } from '../../stores/sql/schema.ts';
import { reloadAccounts, reloadCustomers } from './etl-mutable.ts';
import { MICROS, rows, timestamp } from './extract.ts';
import { toSafeNumber } from './values.ts';

/**
 * The incremental ETL from PostgreSQL (embedded or server) into the DuckDB file, one refresh at a
 * time. What makes it exact:
 *
 * - One snapshot. Everything a refresh reads comes from one `repeatable read` transaction, so the
 *   customers, accounts, transactions and entries it loads are those of one moment (`as_of`): the
 *   copies' sums per account equal `accounts.balance` at that moment, to the unit.
 * - Watermarks and gaps. The ledger is append-only and its ids come from identity sequences, so
 *   each ledger table is loaded by keyset on id above its watermark (the greatest id loaded). But
 *   ids are taken when a row is inserted, not when it commits: a transaction that took id 41 may
 *   commit after one that took 42, and a refresh in between sees 42 and not 41. So every id
 *   between the old watermark and the new one that the snapshot did not show is kept as a gap
 *   (`etl_gaps`, as ranges) and looked for again by every later refresh, until found (it is loaded
 *   then) or old enough that no transaction can still commit it (a rolled-back insert leaves such a
 *   hole forever). A gap is "seen" at the time of the first loaded row above it: the missing id was
 *   taken before that row's id, so its transaction began before that row's transaction ended;
 *   `gapTtlMs` (default 5 minutes) must exceed twice the longest ledger transaction, which in
 *   databank lasts milliseconds (`statement_timeout` 30 s).
 * - No row twice. Rows above a watermark are new by definition; rows found in a gap are loaded
 *   only if the copy does not hold their id.
 * - All or nothing. The whole refresh is one DuckDB transaction: a crash or an error leaves the
 *   file as the previous refresh left it, and the next refresh does the work again.
 *
 * Customers and accounts are small and mutable (a name changes): each refresh reads them whole
 * into staging tables and applies the difference, counting the rows that were new or changed.
 */

export interface EtlOptions {
  /** Rows per extraction query (keyset on id). */
  readonly batchSize: number;
  /** How long a missing id below a watermark is looked for, from when it was seen. */
  readonly gapTtlMs: number;
  /** Called after every batch with the rows loaded so far and the expected total (an estimate from the ids). */
  readonly onProgress?: (done: number, total: number) => void;
  /** Stops the refresh between two batches (a shutdown): nothing of it is kept. */
  readonly signal?: AbortSignal;
}

/** What one refresh did. */
export interface RefreshResult {
  /** Customers new or changed since the last refresh. */
  readonly customers: number;
  /** Accounts new or changed since the last refresh. */
  readonly accounts: number;
  /** Ledger transactions loaded (new ones and ones found in gaps). */
  readonly transactions: number;
  /** Ledger entries loaded. */
  readonly entries: number;
  readonly duration_ms: number;
  /** The time of the PostgreSQL snapshot the refresh read: the copies hold every commit before it. */
  readonly as_of: string;
  /** The greatest id loaded per ledger table. */
  readonly watermark: { readonly transactions: number; readonly entries: number };
  /** Ids below the watermarks not seen yet, still looked for (a transaction may still commit them). */
  readonly pending_gaps: { readonly transactions: number; readonly entries: number };
}

type LedgerTable = 'ledger_transactions' | 'ledger_entries';

interface Gap {
  readonly lo: number;
  readonly hi: number;
  /** Microseconds since the epoch (PostgreSQL's clock). */
  readonly seenUs: number;
}

/** A row as extracted: its id, its time in microseconds, and the columns appended in order. */
interface Extracted {
  readonly id: number;
  readonly us: number;
}

interface LedgerSpec<R extends Extracted> {
  readonly table: LedgerTable;
  /** The select list over the table aliased `t`, `us` being created_at in microseconds since the epoch. */
  readonly columns: string;
  append(appender: DuckDBAppender, row: R): void;
}

interface TransactionRow extends Extracted {
  readonly kind: string;
}

interface EntryRow extends Extracted {
  readonly transaction_id: number;
  readonly account_id: number | null;
  readonly system_account: string | null;
  readonly currency: string;
  readonly amount: number;
}


const TRANSACTIONS: LedgerSpec<TransactionRow> = {
  table: 'ledger_transactions',
  columns: `t.id, t.kind, ${MICROS}`,
  append(a, r) {
    a.appendBigInt(BigInt(r.id));
    a.appendVarchar(r.kind);
    a.appendTimestamp(timestamp(r.us));
    a.endRow();
  },
};

const ENTRIES: LedgerSpec<EntryRow> = {
  table: 'ledger_entries',
  columns: `t.id, t.transaction_id, t.account_id, t.system_account, t.currency, t.amount, ${MICROS}`,
  append(a, r) {
    a.appendBigInt(BigInt(r.id));
    a.appendBigInt(BigInt(r.transaction_id));
    if (r.account_id === null) a.appendNull();
    else a.appendBigInt(BigInt(r.account_id));
    if (r.system_account === null) a.appendNull();
    else a.appendVarchar(r.system_account);
    a.appendVarchar(r.currency);
    a.appendBigInt(BigInt(r.amount));
    a.appendTimestamp(timestamp(r.us));
    a.endRow();
  },
};

const GAP_CHUNK = 1_000;

/** One refresh: reads PostgreSQL in one snapshot and loads the difference in one DuckDB transaction. */
export async function refreshFrom(pg: Kysely<Database>, duck: DuckDBConnection, options: EtlOptions): Promise<RefreshResult> {
  const started = performance.now();
  return pg
    .transaction()
    .execute(async (trx) => {
      // The transaction's first statement, so it applies to all of it (and works through any
      // wrapper of the handle, which may not know Kysely's transaction settings).
      await sql`set transaction isolation level repeatable read, read only`.execute(trx);
      const snap = (await sql<{ us: number; tx: number | null; en: number | null }>`
        select (extract(epoch from now()) * 1000000)::int8 as us,
          (select max(id) from ledger_transactions) as tx, (select max(id) from ledger_entries) as en`.execute(trx)).rows[0];
      if (!snap) throw new Error('the snapshot query returned no row');
      await duck.run('begin transaction');
      try {
        const marks = await watermarks(duck);
        const gaps = await readGaps(duck);
        const sizes = (await sql<{ c: number; a: number }>`
          select (select count(*) from customers) as c, (select count(*) from accounts) as a`.execute(trx)).rows[0] ?? { c: 0, a: 0 };
        const total =
          sizes.c + sizes.a + Math.max(0, (snap.tx ?? 0) - marks.ledger_transactions) + Math.max(0, (snap.en ?? 0) - marks.ledger_entries);
        let done = 0;
        const progress = (n: number) => {
          done += n;
          options.onProgress?.(Math.min(done, total), total);
        };
        progress(0);
        const customers = await reloadCustomers(trx, duck);
        progress(sizes.c);
        const accounts = await reloadAccounts(trx, duck);
        progress(sizes.a);
        const ledger = { transactions: TRANSACTIONS, entries: ENTRIES } as const;
        const loaded = { transactions: 0, entries: 0 };
        const mark = { transactions: 0, entries: 0 };
        const pending = { transactions: 0, entries: 0 };
        for (const key of ['transactions', 'entries'] as const) {
          const spec = ledger[key] as LedgerSpec<Extracted>;
          const table = spec.table;
          const appender = await duck.createAppender(table);
          try {
            const fresh = await loadAbove(trx, appender, spec, marks[table], options, snap.us, progress);
            appender.flushSync();
            const found = await recheckGaps(trx, duck, spec, gaps.get(table) ?? [], snap.us, options.gapTtlMs);
            loaded[key] = fresh.loaded + found.loaded;
            mark[key] = fresh.watermark;
            const kept = [...found.kept, ...fresh.gaps];
            pending[key] = kept.reduce((n, g) => n + (g.hi - g.lo + 1), 0);
            await writeState(duck, table, fresh.watermark, kept);
          } finally {
            appender.closeSync();
          }
        }
        const asOf = new Date(Math.floor(snap.us / 1000));
        const duration = Math.round(performance.now() - started);
        await duck.run(
          `insert into etl_runs values ($as_of, now()::timestamp, $ms, $c, $a, $t, $e)`,
          { as_of: timestamp(snap.us), ms: duration, c: customers, a: accounts, t: loaded.transactions, e: loaded.entries },
        );
        await duck.run('commit');
        options.onProgress?.(total, total);
        return {
          customers,
          accounts,
          transactions: loaded.transactions,
          entries: loaded.entries,
          duration_ms: duration,
          as_of: asOf.toISOString(),
          watermark: mark,
          pending_gaps: pending,
        };
      } catch (err) {
        await duck.run('rollback').catch(() => undefined);
        throw err;
      }
    });
}

async function watermarks(duck: DuckDBConnection): Promise<Record<LedgerTable, number>> {
  const rows = (await duck.runAndReadAll(`select table_name, watermark from etl_state`)).getRowObjectsJS();
  const out: Record<LedgerTable, number> = { ledger_transactions: 0, ledger_entries: 0 };
  for (const r of rows) out[r.table_name as LedgerTable] = toSafeNumber(r.watermark);
  return out;
}

async function readGaps(duck: DuckDBConnection): Promise<Map<LedgerTable, Gap[]>> {
  const rows = (
    await duck.runAndReadAll(`select table_name, lo, hi, epoch_us(seen_at) as seen from etl_gaps order by table_name, lo`)
  ).getRowObjectsJS();
  const out = new Map<LedgerTable, Gap[]>();
  for (const r of rows) {
    const table = r.table_name as LedgerTable;
    const list = out.get(table) ?? [];
    list.push({ lo: toSafeNumber(r.lo), hi: toSafeNumber(r.hi), seenUs: toSafeNumber(r.seen) });
    out.set(table, list);
  }
  return out;
}

async function writeState(duck: DuckDBConnection, table: LedgerTable, watermark: number, gaps: readonly Gap[]): Promise<void> {
  await duck.run(`update etl_state set watermark = $w where table_name = $t`, { w: BigInt(watermark), t: table });
  await duck.run(`delete from etl_gaps where table_name = $t`, { t: table });
  if (gaps.length === 0) return;
  const appender = await duck.createAppender('etl_gaps');
  try {
    for (const g of gaps) {
      appender.appendVarchar(table);
      appender.appendBigInt(BigInt(g.lo));
      appender.appendBigInt(BigInt(g.hi));
      appender.appendTimestamp(timestamp(g.seenUs));
      appender.endRow();
    }
    appender.flushSync();
  } finally {
    appender.closeSync();
  }
}

/**
 * Loads the rows above `from` in batches of `batchSize` by keyset on id, and returns the new
 * watermark and the holes between consecutive ids (gaps) that are still young enough to matter.
 */
async function loadAbove<R extends Extracted>(
  trx: Kysely<Database>,
  appender: DuckDBAppender,
  spec: LedgerSpec<R>,
  from: number,
  options: EtlOptions,
  nowUs: number,
  progress: (n: number) => void,
): Promise<{ loaded: number; watermark: number; gaps: Gap[] }> {
  const gaps: Gap[] = [];
  const ttlUs = options.gapTtlMs * 1000;
  let last = from;
  let loaded = 0;
  for (;;) {
    const batch = await rows<R>(
      trx,
      sql`select ${sql.raw(spec.columns)} from ${sql.table(spec.table)} t where t.id > ${last} order by t.id limit ${options.batchSize}`,
    );
    for (const row of batch) {
      if (row.id > last + 1 && nowUs - row.us <= ttlUs) gaps.push({ lo: last + 1, hi: row.id - 1, seenUs: row.us });
      spec.append(appender, row);
      last = row.id;
    }
    loaded += batch.length;
    progress(batch.length);
    options.signal?.throwIfAborted();
    if (batch.length < options.batchSize) break;
  }
  return { loaded, watermark: last, gaps };
}

/**
 * Looks for the rows of the known gaps; loads those found (unless the copy holds their id) and
 * returns the ranges still missing that are young enough to keep looking for.
 */
async function recheckGaps<R extends Extracted>(
  trx: Kysely<Database>,
  duck: DuckDBConnection,
  spec: LedgerSpec<R>,
  gaps: readonly Gap[],
  nowUs: number,
  ttlMs: number,
): Promise<{ loaded: number; kept: Gap[] }> {
  if (gaps.length === 0) return { loaded: 0, kept: [] };
  const found: R[] = [];
  for (let i = 0; i < gaps.length; i += GAP_CHUNK) {
    const chunk = gaps.slice(i, i + GAP_CHUNK);
    found.push(
      ...(await rows<R>(
        trx,
        sql`select ${sql.raw(spec.columns)}
          from ${sql.table(spec.table)} t
          join unnest(${chunk.map((g) => g.lo)}::bigint[], ${chunk.map((g) => g.hi)}::bigint[]) as g(lo, hi)
            on t.id between g.lo and g.hi
          order by t.id`,
      )),
    );
  }
  let loaded = 0;
  if (found.length > 0) {
    const held = new Set(
      (
        await duck.runAndReadAll(
          `select id from ${spec.table} where id in (${found.map((r) => r.id).join(',')})`,
        )
      )
        .getRowObjectsJS()
        .map((r) => toSafeNumber(r.id)),
    );
    const appender = await duck.createAppender(spec.table);
    try {
      for (const row of found) {
        if (held.has(row.id)) continue;
        spec.append(appender, row);
        loaded++;
      }
      appender.flushSync();
    } finally {
      appender.closeSync();
    }
  }
  // What is still missing of each range, unless it has been missing too long.
  const ids = found.map((r) => r.id);
  const kept: Gap[] = [];
  const ttlUs = ttlMs * 1000;
  for (const g of gaps) {
    if (nowUs - g.seenUs > ttlUs) continue;
    let lo = g.lo;
    for (const id of ids) {
      if (id < lo || id > g.hi) continue;
      if (id > lo) kept.push({ lo, hi: id - 1, seenUs: g.seenUs });
      lo = id + 1;
    }
    if (lo <= g.hi) kept.push({ lo, hi: g.hi, seenUs: g.seenUs });
  }
  return { loaded, kept };
}
