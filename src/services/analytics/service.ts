import { mkdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import type { DuckDBConnection } from '@duckdb/node-api';
import { DatabankError } from '../../domain/errors.ts';
import type { Db } from '../../stores/sql/port.ts';
import { MissingAnalyticsFile, withDuckDb, type AccessMode } from './duckdb-file.ts';
import { refreshFrom, type RefreshResult } from './etl.ts';
import { readOnlyQuery, QUERY_SETTINGS, type QueryResult } from './query.ts';
import * as reports from './reports.ts';
import { ANALYTICS_TABLES, ensureSchema, type AnalyticsTable } from './schema.ts';
import { toSafeNumber } from './values.ts';

export interface AnalyticsOptions {
  /** The DuckDB file (`DATABANK_ANALYTICS_PATH`). */
  readonly path: string;
  /** Rows per extraction query. Default 50,000. */
  readonly batchSize?: number;
  /** How long an id missing below a watermark is looked for (see `etl.ts`). Default 5 minutes. */
  readonly gapTtlMs?: number;
  /** How long a report waits for the file while a refresh (here or in another process) holds it. Default 5 s. */
  readonly waitMs?: number;
  /** How long a refresh waits for the file. Default 30 s. */
  readonly refreshWaitMs?: number;
  /** Longest run of an admin's SQL. Default 10 s. */
  readonly queryTimeoutMs?: number;
}

export interface RefreshOptions {
  /** Rows loaded so far and the expected total, after every batch (for a progress bar). */
  readonly onProgress?: (done: number, total: number) => void;
  /** Abandons the refresh between two batches (nothing of it is kept). */
  readonly signal?: AbortSignal;
}

export interface ParquetExport {
  readonly as_of: string | null;
  readonly dir: string;
  readonly files: readonly { readonly table: AnalyticsTable; readonly file: string; readonly rows: number }[];
}

/** Rows an admin's query returns at most, and by default. */
export const MAX_QUERY_ROWS = 10_000;
export const DEFAULT_QUERY_ROWS = 1_000;

/**
 * The columnar analytics role: a DuckDB file that a refresh fills from PostgreSQL (incremental and
 * exact, `etl.ts`), reports read (`reports.ts`), an admin may query read-only (`query.ts`) and
 * export as Parquet. The file is opened per operation and closed after it (`duckdb-file.ts`), so
 * that several processes can share a data dir.
 *
 * @example
 * const analytics = new AnalyticsService(db, { path: config.analytics.path });
 * await analytics.refresh();
 * const { result } = await analytics.balances('account_type');
 */
export class AnalyticsService {
  private readonly path: string;
  private readonly batchSize: number;
  private readonly gapTtlMs: number;
  private readonly waitMs: number;
  private readonly refreshWaitMs: number;
  private readonly queryTimeoutMs: number;
  private readonly inFlight = new Set<Promise<unknown>>();
  private closed = false;

  /**
   * @param db the database a refresh reads; null for a process that only reads the copy (the CLI's
   *   `analytics sql` and `analytics export`), whose `refresh` is refused.
   */
  constructor(
    private readonly db: Db | null,
    options: AnalyticsOptions,
  ) {
    this.path = resolve(options.path);
    this.batchSize = options.batchSize ?? 50_000;
    this.gapTtlMs = options.gapTtlMs ?? 5 * 60_000;
    this.waitMs = options.waitMs ?? 5_000;
    this.refreshWaitMs = options.refreshWaitMs ?? 30_000;
    this.queryTimeoutMs = options.queryTimeoutMs ?? 10_000;
  }

  /** The DuckDB file. */
  get file(): string {
    return this.path;
  }

  /**
   * Loads what changed in PostgreSQL since the last refresh, in one DuckDB transaction. Running
   * it again at once loads nothing (every count 0).
   */
  refresh(options: RefreshOptions = {}): Promise<RefreshResult> {
    const db = this.db;
    if (!db) return Promise.reject(new Error('this analytics service has no database to refresh from'));
    return this.track(() =>
      this.open('read_write', this.refreshWaitMs, async (conn) => {
        await ensureSchema(conn);
        return refreshFrom(db.writer, conn, {
          batchSize: this.batchSize,
          gapTtlMs: this.gapTtlMs,
          onProgress: options.onProgress,
          signal: options.signal,
        });
      }),
    );
  }

  /** Per account type (and currency) or per currency: accounts and the sum of their balances. */
  balances(by: reports.BalanceGrouping = 'account_type'): Promise<reports.BalancesReport> {
    return this.read((conn) => reports.balances(conn, by));
  }

  /** Per period and currency: ledger transactions, entries and money moved, from `from` to `to` (days, UTC, both included). */
  volume(query: { interval?: reports.Interval; from?: string; to?: string } = {}): Promise<reports.VolumeReport> {
    const interval = query.interval ?? 'day';
    const range = reports.volumeRange(interval, query.from, query.to);
    return this.read((conn) => reports.volume(conn, interval, range));
  }

  /** The `limit` accounts (1–100, default 10) with the greatest balance or volume. */
  topAccounts(query: { limit?: number; by?: reports.TopOrder } = {}): Promise<reports.TopAccountsReport> {
    const limit = query.limit ?? 10;
    if (!Number.isInteger(limit) || limit < 1 || limit > 100) {
      return Promise.reject(new DatabankError('DATABANK_ERR_VALIDATION', 'limit: must be from 1 to 100'));
    }
    return this.read((conn) => reports.topAccounts(conn, query.by ?? 'balance', limit));
  }

  /** The chapter's Table 19 and its two queries. */
  books(): Promise<reports.BooksReport> {
    return this.read((conn) => reports.books(conn));
  }

  /**
   * One read-only SELECT on the copy, at most `maxRows` rows back (default 1,000, at most
   * 10,000). Anything else, and any error DuckDB gives, is DATABANK_ERR_ANALYTICS_QUERY (400).
   */
  query(text: string, options: { maxRows?: number } = {}): Promise<QueryResult> {
    const maxRows = options.maxRows ?? DEFAULT_QUERY_ROWS;
    if (!Number.isInteger(maxRows) || maxRows < 1 || maxRows > MAX_QUERY_ROWS) {
      return Promise.reject(new DatabankError('DATABANK_ERR_VALIDATION', `max_rows: must be from 1 to ${MAX_QUERY_ROWS}`));
    }
    return this.read(
      async (conn) => {
        const as_of = await reports.asOf(conn);
        return { as_of, ...(await readOnlyQuery(conn, text, { maxRows, timeoutMs: this.queryTimeoutMs })) };
      },
      QUERY_SETTINGS,
    );
  }

  /** Writes every table to `dir/<table>.parquet` (the folder is made if missing). */
  exportParquet(dir: string): Promise<ParquetExport> {
    const target = resolve(dir);
    return this.read(async (conn) => {
      mkdirSync(target, { recursive: true });
      const files = [];
      for (const table of ANALYTICS_TABLES) {
        const file = join(target, `${table}.parquet`);
        const order = table === 'accounts' ? 'account_id' : 'id';
        const copied = await conn.run(`copy (select * from ${table} order by ${order}) to '${file.replaceAll("'", "''")}' (format parquet)`);
        files.push({ table, file, rows: toSafeNumber(copied.rowsChanged) });
      }
      return { as_of: await reports.asOf(conn), dir: target, files };
    });
  }

  /** Waits for the operations under way; later calls are refused. */
  async close(): Promise<void> {
    this.closed = true;
    await Promise.allSettled([...this.inFlight]);
  }

  /** A report: the file opened read-only (made first if no refresh has made it yet). */
  private read<T>(work: (conn: DuckDBConnection) => Promise<T>, settings?: Readonly<Record<string, string>>): Promise<T> {
    return this.track(async () => {
      try {
        return await this.open('read_only', this.waitMs, work, settings);
      } catch (err) {
        if (!(err instanceof MissingAnalyticsFile)) throw err;
        await this.open('read_write', this.waitMs, ensureSchema);
        return this.open('read_only', this.waitMs, work, settings);
      }
    });
  }

  private open<T>(mode: AccessMode, waitMs: number, work: (conn: DuckDBConnection) => Promise<T>, settings?: Readonly<Record<string, string>>): Promise<T> {
    if (mode === 'read_write') mkdirSync(dirname(this.path), { recursive: true, mode: 0o700 });
    return withDuckDb(this.path, { mode, waitMs, settings }, work);
  }

  private track<T>(work: () => Promise<T>): Promise<T> {
    if (this.closed) return Promise.reject(new DatabankError('DATABANK_ERR_UNAVAILABLE', 'the analytics service is shutting down'));
    const p = work();
    this.inFlight.add(p);
    void p.finally(() => this.inFlight.delete(p)).catch(() => undefined);
    return p;
  }
}
