import { InvalidArgumentError, type Command } from 'commander';
import type { ParquetExport, QueryResult, RefreshResult } from '../services/analytics/index.ts';
import type { AnalyticsService } from '../services/analytics/service.ts';
import { configOrExit, withStore } from './context.ts';
import { printResult, table } from './output.ts';
import { progress } from './progress.ts';
import { callServer, serverRuns, withServerOptions, type ServerOptions } from './server-client.ts';

/**
 * `databank analytics refresh|sql|export`: the DuckDB copy of the ledger. `refresh` and `sql` go
 * through the running server when one answers (on the embedded engine the database is the
 * server's); otherwise they, and `export`, open the stores themselves. The DuckDB file is opened
 * per command and closed after it, so a server or worker on the same data dir is not disturbed
 * for longer than the command's own work.
 */

async function withAnalytics<T>(database: boolean, work: (analytics: AnalyticsService) => Promise<T>): Promise<T> {
  const { AnalyticsService } = await import('../services/analytics/service.ts');
  const run = async (db: ConstructorParameters<typeof AnalyticsService>[0]) => {
    const config = configOrExit();
    const analytics = new AnalyticsService(db, { path: config.analytics.path });
    try {
      return await work(analytics);
    } finally {
      await analytics.close();
    }
  };
  if (!database) return run(null);
  const { primaryOnly } = await import('../stores/sql/port.ts');
  return withStore((store) => run(primaryOnly(store.db)));
}

function maxRows(value: string): number {
  if (!/^[0-9]{1,5}$/.test(value) || Number(value) < 1 || Number(value) > 10_000) {
    throw new InvalidArgumentError('expected a whole number from 1 to 10000');
  }
  return Number(value);
}

function refreshText(r: RefreshResult): string {
  return table(
    {
      customers: `${r.customers} new or changed`,
      accounts: `${r.accounts} new or changed`,
      transactions: `${r.transactions} loaded`,
      entries: `${r.entries} loaded`,
      as_of: r.as_of,
      watermark: `transactions ${r.watermark.transactions}, entries ${r.watermark.entries}`,
      pending: `ids still awaited: transactions ${r.pending_gaps.transactions}, entries ${r.pending_gaps.entries}`,
      took: `${r.duration_ms} ms`,
    },
    13,
  );
}

/** The rows as a table with a header, columns padded, numbers right-aligned. */
export function rowsText(answer: Pick<QueryResult, 'columns' | 'rows' | 'truncated' | 'max_rows' | 'as_of'>): string {
  const header = answer.columns.map((c) => c.name);
  const cells = answer.rows.map((row) => row.map((v) => (v === null ? 'NULL' : typeof v === 'object' ? JSON.stringify(v) : String(v))));
  const widths = header.map((h, i) => Math.max(h.length, ...cells.map((r) => (r[i] ?? '').length)));
  const numeric = answer.rows.length > 0 ? header.map((_, i) => answer.rows.every((r) => typeof r[i] === 'number' || r[i] === null)) : header.map(() => false);
  const line = (row: readonly string[]) =>
    row.map((c, i) => (numeric[i] ? c.padStart(widths[i] as number) : c.padEnd(widths[i] as number))).join('  ').trimEnd();
  const footer = `${answer.rows.length} row${answer.rows.length === 1 ? '' : 's'}${answer.truncated ? ` (the first ${answer.max_rows}; --max-rows shows more)` : ''}, as of ${answer.as_of ?? 'no refresh yet'}`;
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...cells.map(line), footer].join('\n');
}

/** Registers `analytics` and its subcommands. */
export function register(program: Command): void {
  const analytics = program
    .command('analytics')
    .description('the columnar copy of the ledger (DuckDB, DATABANK_ANALYTICS_PATH): refresh it, query it, export it as Parquet');

  withServerOptions(
    analytics
      .command('refresh')
      .description('load what changed in the database since the last refresh (through the running server when there is one)'),
  ).action(async (opts: ServerOptions) => {
    let result: RefreshResult;
    if (await serverRuns(opts)) {
      result = (await callServer(opts, 'POST', '/analytics/refresh')) as RefreshResult;
    } else {
      result = await withAnalytics(true, async (service) => {
        const bar = progress(!opts.json, 'refresh');
        try {
          return await service.refresh({ onProgress: (done, total) => bar.update(done, total, 'rows') });
        } finally {
          bar.stop();
        }
      });
    }
    printResult(opts, result, () => refreshText(result));
  });

  withServerOptions(
    analytics
      .command('sql')
      .description('run one read-only SELECT on the copy (tables: customers, accounts, ledger_transactions, ledger_entries, books)')
      .argument('<query>', 'the SELECT, e.g. "select count(*) from books where year_published = 1993"')
      .option('--max-rows <n>', 'rows shown at most, 1 to 10000', maxRows, 1_000),
  ).action(async (query: string, opts: ServerOptions & { readonly maxRows: number }) => {
    const answer = (await serverRuns(opts))
      ? ((await callServer(opts, 'POST', '/analytics/sql', { sql: query, max_rows: opts.maxRows })) as QueryResult)
      : await withAnalytics(false, (service) => service.query(query, { maxRows: opts.maxRows }));
    printResult(opts, answer, () => rowsText(answer));
  });

  analytics
    .command('export')
    .description('write every table of the copy as a Parquet file into a folder (made if missing)')
    .requiredOption('--parquet <dir>', 'the folder for <table>.parquet files')
    .option('--json', 'machine-readable output')
    .action(async (opts: { readonly parquet: string; readonly json?: boolean }) => {
      const exported: ParquetExport = await withAnalytics(false, (service) => service.exportParquet(opts.parquet));
      printResult(opts, exported, () =>
        [...exported.files.map((f) => `${f.file}  ${f.rows} rows`), `as of ${exported.as_of ?? 'no refresh yet'}`].join('\n'),
      );
    });
}
