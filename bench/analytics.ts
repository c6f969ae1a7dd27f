import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { DuckDBInstance, type DuckDBConnection } from '@duckdb/node-api';
import pg from 'pg';
import type * as AnalyticsModule from '../src/services/analytics/service.ts';
import type * as SqlModule from '../src/stores/sql/index.ts';
import type * as MigratorModule from '../src/stores/sql/migrator.ts';
import type * as PortModule from '../src/stores/sql/port.ts';
import type { SqlStore } from '../src/stores/sql/index.ts';
import type { Benchmark, Timing } from './lib/benchmark.ts';
import { onCleanup } from './lib/cleanup.ts';
import { between, postgresPids, settle, snapshot, type CpuGroups } from './lib/cpu.ts';
import { databankModule, databankRevision } from './lib/databank.ts';
import { progress } from './lib/log.ts';
import { adminUrl, createDatabase, requireServer, type TempDatabase } from './lib/postgres.ts';
import { searchSeries, SEARCH_DOCUMENTS } from './lib/search-load.ts';
import { machineInfo, noiseWarnings, ratio, type BenchResult, type Ratio, type Series } from './lib/report.ts';

/**
 * `npm run bench -- analytics`: the columnar role against the row store on the same data. A fresh
 * PostgreSQL database migrated by databank's migrator gets 2.5 M ledger transactions (5 M entries)
 * spread over 2025–2026 (every monthly partition holds rows), made with INSERT … SELECT
 * generate_series; then databank's ETL (AnalyticsService.refresh) copies it into a new DuckDB
 * file, and the same aggregate queries run on PostgreSQL and on DuckDB in the same run, each
 * answer checked equal: the sum of balances by account type, the volume per day, a count by year
 * (the chapter's `COUNT(*) … WHERE year_published = 1993` on the ledger), and a point lookup of
 * one entry by id. Ratio = PostgreSQL median time ÷ DuckDB median time.
 *
 * Steps are separate functions (`prepareSource`, `runEtl`, `compareQueries`, `compareLookups`)
 * called by `run`, so that other series (search) can be added beside them.
 */

const CUSTOMERS = 2_000;
/** Divisible by 3: account g holds currency g mod 3, and transfers stay within a currency. */
const ACCOUNTS = 9_999;
const TRANSACTIONS = 2_500_000;
const FILL_BATCH = 250_000;
const OPENING_DEPOSIT = 1_000_000_000;
const DEPOSIT_EVERY = 5;
/** Seconds between two transactions: 2.5 M of them span 2025-01-01 to late 2026. */
const STEP_S = 25;
const REPS = 5;
const LOOKUPS = 200;
const GOAL = 20;

const DAY = 86_400_000;
const round = (n: number, digits = 1) => Math.round(n * 10 ** digits) / 10 ** digits;

function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? (sorted[mid] as number) : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
}


// ---------------------------------------------------------------------------------------------
// Step 1: the source database.

const TXN_TIME = `timestamptz '2025-01-01 00:00:00+00' + g * interval '${STEP_S} seconds'`;

/** Ledger transactions lo..hi and their two entries each, balanced per currency. */
async function insertLedger(client: pg.Client, lo: number, hi: number): Promise<void> {
  const shape = `
    select g,
      g <= ${ACCOUNTS} or g % ${DEPOSIT_EVERY} = 0 as deposit,
      case when g <= ${ACCOUNTS} then g else 1 + abs(hashint8(g)::bigint) % ${ACCOUNTS} end as a,
      case when g <= ${ACCOUNTS} then ${OPENING_DEPOSIT}
           when g % ${DEPOSIT_EVERY} = 0 then 100 + abs(hashint8(g * 7)::bigint) % 100000
           else 1 + abs(hashint8(g * 13)::bigint) % 10000 end as amount
    from generate_series($1::bigint, $2::bigint) g`;
  // b ≠ a with b ≡ a (mod 3): the same currency.
  const withB = `select s.*, 1 + (s.a - 1 + 3 * (1 + abs(hashint8(-s.g)::bigint) % ${ACCOUNTS / 3 - 1})) % ${ACCOUNTS} as b,
      (array['USD','EUR','GBP'])[1 + s.a % 3] as currency from (${shape}) s`;
  await client.query(
    `insert into ledger_transactions (id, kind, reference, created_at)
     select g, case when deposit then 'deposit' else 'transfer' end, null, ${TXN_TIME} from (${shape}) t`,
    [lo, hi],
  );
  await client.query(
    `insert into ledger_entries (transaction_id, account_id, system_account, currency, amount, created_at)
     select t.g, e.account_id, e.system_account, t.currency, e.amount, ${TXN_TIME.replace(/\bg\b/g, 't.g')}
     from (${withB}) t
     cross join lateral (values
       (1, t.a, null::text, case when t.deposit then t.amount else -t.amount end),
       (2, case when t.deposit then null else t.b end, case when t.deposit then 'cash:' || t.currency end,
           case when t.deposit then -t.amount else t.amount end)
     ) e(side, account_id, system_account, amount)
     order by t.g, e.side`,
    [lo, hi],
  );
}

interface Source {
  readonly db: TempDatabase;
  readonly store: SqlStore;
  readonly entries: number;
  readonly fillMs: number;
  readonly vacuumMs: number;
  readonly bytes: number;
}

async function prepareSource(): Promise<Source> {
  const db = await createDatabase(adminUrl(), 'databank_bench_analytics');
  const { openSqlStore } = await databankModule<typeof SqlModule>('src/stores/sql/index.ts');
  const { createMigrator, unwrap } = await databankModule<typeof MigratorModule>('src/stores/sql/migrator.ts');
  const store = await openSqlStore({ kind: 'postgres', connectionString: db.url, ssl: { mode: 'disable' }, poolMax: 4 });
  onCleanup(() => store.close());
  progress('migrating a new database with databank\'s migrator');
  unwrap(await createMigrator(store.db).migrateToLatest());
  const client = new pg.Client({ connectionString: db.url });
  const second = new pg.Client({ connectionString: db.url });
  await client.connect();
  await second.connect();
  try {
    const t0 = performance.now();
    await client.query(
      `insert into customers (id, name, date_of_birth)
       select g, 'Bench Customer ' || g, date '1950-01-01' + (abs(hashint8(g)::bigint) % 20000)::int from generate_series(1, ${CUSTOMERS}) g`,
    );
    await client.query(
      `insert into accounts (account_id, customer_id, account_type, currency)
       select g, 1 + (g - 1) % ${CUSTOMERS}, case when g % 7 < 3 then 'savings' else 'checking' end, (array['USD','EUR','GBP'])[1 + g % 3]
       from generate_series(1, ${ACCOUNTS}) g`,
    );
    await client.query(
      `select ledger_create_partition(m::date) from generate_series(date '2025-01-01', date '2026-12-01', interval '1 month') m`,
    );
    for (let next = 1; next <= TRANSACTIONS; next += FILL_BATCH) {
      const last = Math.min(TRANSACTIONS, next + FILL_BATCH - 1);
      const half = Math.floor((next + last) / 2);
      await Promise.all([insertLedger(client, next, half), insertLedger(second, half + 1, last)]);
      progress(`  ${last.toLocaleString('en')} of ${TRANSACTIONS.toLocaleString('en')} ledger transactions (${round((performance.now() - t0) / 1000)} s)`);
    }
    // Every balance is the sum of its entries; the identities go on after the rows made here.
    await client.query(
      `update accounts a set balance = s.total
       from (select account_id, sum(amount) as total from ledger_entries where account_id is not null group by account_id) s
       where a.account_id = s.account_id`,
    );
    for (const [table, column] of [['customers', 'id'], ['accounts', 'account_id'], ['ledger_transactions', 'id']] as const) {
      await client.query(`select setval(pg_get_serial_sequence('${table}', '${column}'), (select max(${column}) from ${table}))`);
    }
    const fillMs = performance.now() - t0;
    progress('VACUUM ANALYZE');
    const v0 = performance.now();
    await client.query('vacuum analyze');
    const vacuumMs = performance.now() - v0;
    await client.query('checkpoint');
    const entries = Number((await client.query<{ n: string }>('select count(*)::text as n from ledger_entries')).rows[0]?.n);
    const bytes = Number((await client.query<{ n: string }>('select pg_database_size(current_database())::text as n')).rows[0]?.n);
    return { db, store, entries, fillMs, vacuumMs, bytes };
  } finally {
    await client.end().catch(() => undefined);
    await second.end().catch(() => undefined);
  }
}

// ---------------------------------------------------------------------------------------------
// Step 2: databank's ETL into a new DuckDB file.

interface Etl {
  readonly file: string;
  readonly series: Series;
  readonly rows: number;
  readonly fileBytes: number;
  readonly secondRefreshMs: number;
  readonly secondRefreshRows: number;
  readonly reportMs: number;
}

const groups: CpuGroups = { 'bench process (databank ETL, DuckDB)': () => [process.pid], postgres: postgresPids };

async function runEtl(source: Source): Promise<Etl> {
  const dir = mkdtempSync(join(tmpdir(), 'databank-bench-analytics-'));
  onCleanup(async () => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'analytics.duckdb');
  const { AnalyticsService } = await databankModule<typeof AnalyticsModule>('src/services/analytics/service.ts');
  const { primaryOnly } = await databankModule<typeof PortModule>('src/stores/sql/port.ts');
  const service = new AnalyticsService(primaryOnly(source.store.db), { path: file });
  const busyBefore = await settle();
  progress('ETL: AnalyticsService.refresh() into a new DuckDB file');
  const a = snapshot(groups);
  let lastShown = 0;
  const result = await service.refresh({
    onProgress: (done, total) => {
      if (done - lastShown >= 1_000_000 || done === total) {
        lastShown = done;
        progress(`  ${done.toLocaleString('en')} of ${total.toLocaleString('en')} rows`);
      }
    },
  });
  const b = snapshot(groups);
  const rows = result.customers + result.accounts + result.transactions + result.entries;
  const seconds = result.duration_ms / 1000;
  const again = await service.refresh();
  // A report as the API answers it: the file opened read-only, the query, the file closed.
  const r0 = performance.now();
  await service.balances('account_type');
  const reportMs = performance.now() - r0;
  await service.close();
  return {
    file,
    rows,
    fileBytes: statSync(file).size,
    secondRefreshMs: again.duration_ms,
    secondRefreshRows: again.customers + again.accounts + again.transactions + again.entries,
    reportMs,
    series: {
      name: 'databank ETL (AnalyticsService.refresh, first load)',
      clients: 1,
      rate: Math.round(rows / seconds),
      unit: 'rows/s',
      latency_ms: { mean: result.duration_ms, p50: result.duration_ms, p99: result.duration_ms },
      ok: rows,
      non_ok: {},
      cpu_cores: between(a, b),
      seconds: round(seconds, 2),
      busy_before: busyBefore,
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Steps 3 and 4: the same queries on both, timed, answers compared.

interface Query {
  readonly name: string;
  readonly sql: string;
  /** The ratio this query must reach; null: reported only. */
  readonly goal: number | null;
}

/** The same SQL text runs on both engines; the answers are compared as text, row by row. */
const QUERIES: readonly Query[] = [
  {
    name: 'sum of balances by account type',
    sql: `select a.account_type, a.currency, count(*) as accounts, sum(b.balance) as balance
      from accounts a left join (select account_id, sum(amount) as balance from ledger_entries
        where account_id is not null group by account_id) b on b.account_id = a.account_id
      group by a.account_type, a.currency order by 1, 2`,
    goal: GOAL,
  },
  {
    name: 'volume per day',
    sql: `select cast(cast(date_trunc('day', created_at) as date) as varchar) as day, currency,
        count(*) as entries, sum(case when amount > 0 then amount else 0 end) as volume
      from ledger_entries group by 1, 2 order by 1, 2`,
    goal: GOAL,
  },
  {
    name: 'count where year = 2025',
    sql: `select count(*) as n from ledger_entries where extract(year from created_at) = 2025`,
    goal: GOAL,
  },
  {
    // The volume report's transaction count: a hash of 2.5 M distinct ids per run on both engines.
    name: 'transactions per day (count distinct)',
    sql: `select cast(cast(date_trunc('day', created_at) as date) as varchar) as day, currency, count(distinct transaction_id) as transactions
      from ledger_entries group by 1, 2 order by 1, 2`,
    goal: null,
  },
];

interface Timed {
  readonly times: number[];
  readonly answer: string;
  readonly rows: number;
  readonly cpu: Record<string, number>;
  readonly busyBefore: number;
  readonly seconds: number;
}

function answerText(rows: readonly (readonly unknown[])[]): string {
  return rows.map((r) => r.map((v) => (v instanceof Date ? v.toISOString().slice(0, 10) : String(v))).join('|')).join('\n');
}

async function timeIt(reps: number, once: () => Promise<readonly (readonly unknown[])[]>): Promise<Timed> {
  const busyBefore = await settle();
  const answer = answerText(await once()); // warm-up, and the answer to compare
  const times: number[] = [];
  const a = snapshot(groups);
  let rows = 0;
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    rows = (await once()).length;
    times.push(performance.now() - t0);
  }
  const b = snapshot(groups);
  return { times, answer, rows, cpu: between(a, b), busyBefore, seconds: round((b.atMs - a.atMs) / 1000, 2) };
}

function series(name: string, t: Timed, unit = 'queries/s'): Series {
  const p50 = median(t.times);
  return {
    name,
    clients: 1,
    rate: round(1000 / p50, 2),
    unit,
    latency_ms: {
      mean: round(t.times.reduce((x, y) => x + y, 0) / t.times.length, 2),
      p50: round(p50, 2),
      p99: round(Math.max(...t.times), 2),
    },
    ok: t.times.length,
    non_ok: {},
    cpu_cores: t.cpu,
    seconds: t.seconds,
    busy_before: t.busyBefore,
  };
}

interface Compared {
  readonly series: Series[];
  readonly ratios: Ratio[];
  readonly checks: Record<string, unknown>;
}

async function compareQueries(pgClient: pg.Client, duck: DuckDBConnection): Promise<Compared> {
  const out: Compared = { series: [], ratios: [], checks: {} };
  for (const q of QUERIES) {
    progress(`${q.name}: PostgreSQL, ${REPS} runs after a warm-up`);
    const onPg = await timeIt(REPS, async () => (await pgClient.query({ text: q.sql, rowMode: 'array' })).rows as unknown[][]);
    progress(`${q.name}: DuckDB, ${REPS} runs after a warm-up`);
    const onDuck = await timeIt(REPS, async () => (await duck.runAndReadAll(q.sql)).getRowsJS());
    out.series.push(series(`PostgreSQL: ${q.name}`, onPg), series(`DuckDB: ${q.name}`, onDuck));
    out.ratios.push(ratio(`${q.name}: PostgreSQL time ÷ DuckDB time`, 1, median(onPg.times), median(onDuck.times), q.goal));
    out.checks[`same answer: ${q.name}`] = { equal: onPg.answer === onDuck.answer, rows: onPg.rows };
  }
  return out;
}

async function compareLookups(pgClient: pg.Client, duck: DuckDBConnection, maxId: number): Promise<Compared> {
  // The same ids on both, spread over the table.
  const ids = Array.from({ length: LOOKUPS }, (_, i) => 1 + Math.floor(((i + 0.5) * maxId) / LOOKUPS));
  const text = 'select id, transaction_id, account_id, system_account, currency, amount from ledger_entries where id = $1';
  const prepared = await duck.prepare(text);
  let i = 0;
  progress(`point lookup by id: PostgreSQL, ${LOOKUPS} ids`);
  i = 0;
  const onPg = await timeIt(LOOKUPS, async () => (await pgClient.query({ name: 'lookup', text, values: [ids[i++ % LOOKUPS]], rowMode: 'array' })).rows as unknown[][]);
  progress(`point lookup by id: DuckDB, ${LOOKUPS} ids`);
  i = 0;
  const onDuck = await timeIt(LOOKUPS, async () => {
    prepared.bind([BigInt(ids[i++ % LOOKUPS] as number)]);
    return (await prepared.runAndReadAll()).getRowsJS();
  });
  prepared.destroySync();
  const name = 'point lookup of one entry by id';
  return {
    series: [series(`PostgreSQL: ${name}`, onPg, 'lookups/s'), series(`DuckDB: ${name}`, onDuck, 'lookups/s')],
    ratios: [ratio(`${name}: PostgreSQL time ÷ DuckDB time`, 1, median(onPg.times), median(onDuck.times), null)],
    checks: { [`same answer: ${name} (the first id)`]: { equal: onPg.answer === onDuck.answer, rows: onPg.rows } },
  };
}

// ---------------------------------------------------------------------------------------------

async function runColumnar(): Promise<BenchResult> {
  const version = await requireServer(adminUrl());
  const started = performance.now();
  const source = await prepareSource();
  progress(`source: ${source.entries.toLocaleString('en')} entries, ${round(source.bytes / 2 ** 20)} MB, filled in ${round(source.fillMs / 1000)} s`);
  try {
    const etl = await runEtl(source);
    const pgClient = new pg.Client({ connectionString: source.db.url });
    await pgClient.connect();
    // Days in UTC on both engines.
    await pgClient.query(`set timezone = 'UTC'`);
    const instance = await DuckDBInstance.create(etl.file, { access_mode: 'READ_ONLY' });
    const duck = await instance.connect();
    try {
      const queries = await compareQueries(pgClient, duck);
      const maxId = Number((await pgClient.query<{ m: string }>('select max(id)::text as m from ledger_entries')).rows[0]?.m);
      const lookups = await compareLookups(pgClient, duck, maxId);
      const settings = await pgClient.query<{ name: string; setting: string }>(
        `select name, setting from pg_settings where name in ('shared_buffers', 'work_mem', 'max_parallel_workers_per_gather', 'jit')`,
      );
      const duckThreads = (await duck.runAndReadAll(`select current_setting('threads') as t, current_setting('memory_limit') as m`)).getRowObjectsJS()[0];
      const all = [etl.series, ...queries.series, ...lookups.series];
      return {
        benchmark: 'analytics',
        description: `aggregates over ${source.entries.toLocaleString('en')} ledger entries: PostgreSQL (row store, partitioned by month) vs DuckDB (databank's ETL copy), same SQL, median of ${REPS} runs; ratio = PostgreSQL time ÷ DuckDB time`,
        machine: machineInfo(version),
        settings: {
          customers: CUSTOMERS,
          accounts: ACCOUNTS,
          ledger_transactions: TRANSACTIONS,
          ledger_entries: source.entries,
          span: `2025-01-01 to ${new Date(Date.UTC(2025, 0, 1) + ((TRANSACTIONS * STEP_S * 1000) / DAY) * DAY).toISOString().slice(0, 10)} (one transaction every ${STEP_S} s; 24 monthly partitions)`,
          postgres_database_mb: round(source.bytes / 2 ** 20),
          fill: `INSERT … SELECT generate_series, ${FILL_BATCH.toLocaleString('en')} ledger transactions per batch split between two sessions; ${round(source.fillMs / 1000)} s, then VACUUM ANALYZE ${round(source.vacuumMs / 1000)} s`,
          duckdb_file_mb: round(etl.fileBytes / 2 ** 20),
          etl_rows: etl.rows,
          repetitions: REPS,
          lookups: LOOKUPS,
          postgres_settings: Object.fromEntries(settings.rows.map((r) => [r.name, r.setting])),
          duckdb_settings: { threads: String(duckThreads?.t), memory_limit: String(duckThreads?.m) },
          postgres_client: 'one pg.Client, simple queries (prepared for the lookup), rows as arrays, TimeZone UTC',
          duckdb_client: '@duckdb/node-api, one read-only connection to the ETL\'s file, runAndReadAll (prepared statement for the lookup)',
          databank_revision: databankRevision(),
          total_s: round((performance.now() - started) / 1000),
        },
        series: all,
        ratios: [...queries.ratios, ...lookups.ratios],
        checks: {
          ...queries.checks,
          ...lookups.checks,
          etl_rows_per_s: etl.series.rate,
          second_refresh: { rows: etl.secondRefreshRows, ms: etl.secondRefreshMs },
          balances_report_ms_with_file_open_and_close: round(etl.reportMs, 1),
        },
        notes: [
          'Same SQL text on both engines, and every answer compared (checks "same answer").',
          'PostgreSQL reads its 24 monthly partitions; no filter prunes them (the year is computed from created_at), as in the chapter\'s COUNT(*) WHERE year_published = 1993 over a row store.',
          'The point lookup favours PostgreSQL: an index probe per partition against DuckDB\'s scan of min/max zone maps; it is reported, not given a goal.',
          'The DuckDB series reuse one open connection; a report through the API also opens and closes the file (balances_report_ms_with_file_open_and_close).',
        ],
        warnings: noiseWarnings(all),
      };
    } finally {
      duck.closeSync();
      instance.closeSync();
      await pgClient.end().catch(() => undefined);
    }
  } finally {
    await source.store.close().catch(() => undefined);
    await source.db.drop();
  }
}

/** The columnar half, then the search half (`bench/lib/search-load.ts`) on a database of its own. */
async function run(timing: Timing): Promise<BenchResult> {
  const columnar = await runColumnar();
  const search = await searchSeries(timing);
  const series = [...columnar.series, ...search.series];
  return {
    ...columnar,
    description: `${columnar.description}; and GET /search on ${SEARCH_DOCUMENTS.toLocaleString('en')} documents beside pgbench running the same statements`,
    settings: { ...columnar.settings, search_warmup_s: timing.warmupS, search_duration_s: timing.durationS },
    series,
    ratios: [...columnar.ratios, ...search.ratios],
    checks: { ...columnar.checks, ...search.checks },
    notes: [...columnar.notes, ...search.notes],
    warnings: noiseWarnings(series),
  };
}

export const analytics: Benchmark = {
  name: 'analytics',
  description: 'DuckDB (databank ETL copy) vs PostgreSQL on 5 M ledger entries: aggregates and a point lookup; GET /search on 100k documents vs pgbench',
  defaults: { warmupS: 5, durationS: 20 },
  run,
};
