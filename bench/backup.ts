import { execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { PassThrough, Transform, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { pathToFileURL } from 'node:url';
import { Kysely, PostgresDialect, sql } from 'kysely';
import pg from 'pg';
import type * as BackupCryptoModule from '../src/services/backup/crypto.ts';
import type * as BackupEnginesModule from '../src/services/backup/engines.ts';
import type * as BackupManifestModule from '../src/services/backup/manifest.ts';
import type * as BackupServiceModule from '../src/services/backup/service.ts';
import type * as FilesModule from '../src/stores/files/index.ts';
import type * as SqlModule from '../src/stores/sql/index.ts';
import type * as MigratorModule from '../src/stores/sql/migrator.ts';
import type * as ParsersModule from '../src/stores/sql/type-parsers.ts';
import type { Database } from '../src/stores/sql/schema.ts';
import type { SqlStore } from '../src/stores/sql/index.ts';
import type { FileStore } from '../src/stores/files/index.ts';
import type { Benchmark, Timing } from './lib/benchmark.ts';
import { onCleanup } from './lib/cleanup.ts';
import { cpuLimits, type CpuSplit, postgresPids, settle } from './lib/cpu.ts';
import { databankRevision, DATABANK_DIR } from './lib/databank.ts';
import { BenchError, progress } from './lib/log.ts';
import { adminUrl, createDatabase, query, redact, requireServer, type TempDatabase } from './lib/postgres.ts';
import { machineInfo, noiseWarnings, ratio, type BenchResult, type Ratio, type Series } from './lib/report.ts';

/**
 * `npm run bench -- backup`: databank's encrypted, verified backup of a PostgreSQL database of
 * ledger rows (BackupService.create) and its restore into a new database (BackupService.restore),
 * beside plain `pg_dump -Fc` to a file and `pg_restore` of that file into a new database, on the
 * same source in the same run; then a restore drill (BackupService.drill) and its RTO. Throughput
 * is MB of database size (pg_database_size of the source after VACUUM ANALYZE) per second.
 */

const MiB = 2 ** 20;
const DEFAULT_SIZE_MB = 1024;
const CUSTOMERS = 2_000;
const ACCOUNTS = 10_000;
/** Every account's first ledger transaction: enough that no run of transfers empties it. */
const OPENING_DEPOSIT = 1_000_000_000;
/** Ledger transactions per INSERT … SELECT generate_series (their entries go in one more statement). */
const FILL_BATCH = 250_000;
/** The first batch (the opening deposits and more), which tells the bytes per ledger transaction. */
const FIRST_BATCH = 50_000;
/** One ledger transaction in five after the opening deposits is a deposit, the rest are transfers. */
const DEPOSIT_EVERY = 5;
const GOAL = 0.8;
/** No further round starts when it would take the whole run past this (the first always runs). */
const BUDGET_MS = 15 * 60_000;
/** The statement_timeout databank's PostgreSQL pool sets on every session (src/stores/sql/postgres.ts). */
const POOL_STATEMENT_TIMEOUT_MS = 30_000;
/** Flags databank's pg_restore uses (src/services/backup/engines.ts); the reference uses the same. */
const RESTORE_FLAGS = ['--no-password', '--no-owner', '--no-privileges', '--exit-on-error', '--single-transaction'] as const;

const NAMES = {
  bankBackup: 'databank backup (BackupService.create)',
  bankRestore: 'databank restore (BackupService.restore)',
  bankBoth: 'databank backup + restore',
  refBackup: 'pg_dump -Fc to a file',
  refRestore: 'pg_restore of the file',
  refBoth: 'pg_dump + pg_restore',
  drill: 'databank restore drill, RTO (BackupService.drill)',
} as const;

// ---------------------------------------------------------------------------------------------
// databank's own modules, from the checkout under test (BENCH_DATABANK_DIR may name another one).

function databankModule<T>(path: string): Promise<T> {
  return import(pathToFileURL(join(DATABANK_DIR, path)).href) as Promise<T>;
}

const modules = {
  sql: () => databankModule<typeof SqlModule>('src/stores/sql/index.ts'),
  migrator: () => databankModule<typeof MigratorModule>('src/stores/sql/migrator.ts'),
  files: () => databankModule<typeof FilesModule>('src/stores/files/index.ts'),
  service: () => databankModule<typeof BackupServiceModule>('src/services/backup/service.ts'),
  crypto: () => databankModule<typeof BackupCryptoModule>('src/services/backup/crypto.ts'),
  engines: () => databankModule<typeof BackupEnginesModule>('src/services/backup/engines.ts'),
  manifest: () => databankModule<typeof BackupManifestModule>('src/services/backup/manifest.ts'),
  parsers: () => databankModule<typeof ParsersModule>('src/stores/sql/type-parsers.ts'),
};

// ---------------------------------------------------------------------------------------------
// Small helpers.

const round = (n: number, digits = 1) => Math.round(n * 10 ** digits) / 10 ** digits;
const mbps = (bytes: number, ms: number) => (ms > 0 ? round(bytes / MiB / (ms / 1000), 2) : Number.NaN);

function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? (sorted[mid] as number) : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
}

function sizeFromEnv(): number {
  const raw = process.env.BENCH_BACKUP_MB;
  if (raw === undefined || raw === '') return DEFAULT_SIZE_MB;
  if (!/^\d+$/.test(raw) || Number(raw) < 16) throw new BenchError(`BENCH_BACKUP_MB needs a whole number of MB, at least 16 (got ${raw})`);
  return Number(raw);
}

/** libpq's environment for a URL: the connection never goes on a command line. */
function libpqEnv(url: string): NodeJS.ProcessEnv {
  const u = new URL(url);
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    PGHOST: u.hostname.replace(/^\[(.*)\]$/, '$1'),
    PGPORT: u.port || '5432',
    PGUSER: decodeURIComponent(u.username) || 'postgres',
    PGDATABASE: decodeURIComponent(u.pathname.slice(1)) || 'postgres',
    PGSSLMODE: 'disable',
  };
  if (u.password) env.PGPASSWORD = decodeURIComponent(u.password);
  else delete env.PGPASSWORD;
  return env;
}

/** Runs a client tool to its end as a child of this process (so its CPU is counted as the tools'). */
function runTool(tool: string, args: readonly string[], url: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(tool, args, { env: libpqEnv(url), stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (d: string) => {
      if (stderr.length < 8_000) stderr += d;
    });
    const stop = onCleanup(async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    });
    child.once('error', (err) => {
      void stop();
      reject(new BenchError(`${tool} could not start: ${err.message}`));
    });
    child.once('close', (code, signal) => {
      void stop();
      if (code === 0) resolve();
      else reject(new BenchError(`${tool} ${args.join(' ')} failed (${signal ?? `exit ${code}`}): ${stderr.trim().split('\n').slice(-5).join(' / ')}`));
    });
  });
}

// ---------------------------------------------------------------------------------------------
// CPU over a window, exact for processes that end inside it: the tools are children of this
// process and the backends children of the postmaster, so their CPU time moves into their
// parent's "children" counters (cutime + cstime) when they are reaped.

const CLK_TCK = (() => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  } catch {
    return 100;
  }
})();

function procTicks(pid: number): { self: number; children: number; ppid: number } | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return { ppid: Number(f[1]), self: Number(f[11]) + Number(f[12]), children: Number(f[13]) + Number(f[14]) };
  } catch {
    return null;
  }
}

function machineTicks(): number {
  try {
    const line = readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? '';
    const [, user, nice, system, , , irq, softirq, steal] = line.trim().split(/\s+/).map(Number);
    return (user ?? 0) + (nice ?? 0) + (system ?? 0) + (irq ?? 0) + (softirq ?? 0) + (steal ?? 0);
  } catch {
    return 0;
  }
}

interface CpuMark {
  readonly atMs: number;
  readonly bench: number;
  readonly tools: number;
  readonly postgres: number;
  readonly machine: number;
}

function cpuMark(): CpuMark {
  const me = procTicks(process.pid);
  const pids = postgresPids();
  const set = new Set(pids);
  let postgres = 0;
  for (const pid of pids) {
    const t = procTicks(pid);
    if (!t) continue;
    postgres += t.self;
    // A postmaster (its parent is not a postgres process) holds the CPU of the backends it reaped.
    if (!set.has(t.ppid)) postgres += t.children;
  }
  return { atMs: performance.now(), bench: me?.self ?? 0, tools: me?.children ?? 0, postgres, machine: machineTicks() };
}

const GROUP_BENCH = 'bench process';
const GROUP_TOOLS = 'pg_dump/pg_restore';
const GROUP_BACKENDS = 'postgres backends of the benchmark databases';
const GROUP_POSTGRES = 'postgres, all';
const SAMPLE_MS = 200;

/**
 * CPU of the server backends connected to the benchmark's databases (the machine's PostgreSQL
 * also serves other programs' databases): their pids from pg_stat_activity, their ticks from
 * /proc, every SAMPLE_MS. A backend that ends inside the window loses at most its last interval.
 */
class BackendCpu {
  private readonly first = new Map<number, number>();
  private readonly last = new Map<number, number>();
  private timer: NodeJS.Timeout | null = null;
  private inFlight = false;

  private constructor(
    private readonly client: pg.Client,
    private readonly databases: () => readonly string[],
  ) {}

  static async open(url: string, databases: () => readonly string[]): Promise<BackendCpu> {
    const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 3_000 });
    await client.connect();
    return new BackendCpu(client, databases);
  }

  /** Backends alive now count from their ticks now; later ones from zero. */
  async begin(): Promise<void> {
    this.first.clear();
    this.last.clear();
    for (const [pid, t] of await this.read()) {
      this.first.set(pid, t);
      this.last.set(pid, t);
    }
    this.timer = setInterval(() => void this.tick(), SAMPLE_MS);
  }

  async end(): Promise<number> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    await this.tick(true);
    let ticks = 0;
    for (const [pid, t] of this.last) ticks += t - (this.first.get(pid) ?? 0);
    return ticks;
  }

  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    await this.client.end().catch(() => undefined);
  }

  private async read(): Promise<Map<number, number>> {
    const { rows } = await this.client.query<{ pid: number }>(
      `select pid from pg_stat_activity
        where pid <> pg_backend_pid() and (datname = any($1) or datname like 'databank\\_drill\\_%')`,
      [this.databases()],
    );
    const out = new Map<number, number>();
    for (const { pid } of rows) {
      const t = procTicks(pid);
      if (t) out.set(pid, t.self);
    }
    return out;
  }

  private async tick(force = false): Promise<void> {
    if (this.inFlight && !force) return;
    this.inFlight = true;
    try {
      for (const [pid, t] of await this.read()) this.last.set(pid, Math.max(t, this.last.get(pid) ?? 0));
    } catch {
      // A missed sample only loses the last interval of a backend that ends now.
    } finally {
      this.inFlight = false;
    }
  }
}

function cpuBetween(a: CpuMark, b: CpuMark, backendTicks: number): CpuSplit {
  const seconds = (b.atMs - a.atMs) / 1000;
  const cores = (ticks: number) => round(ticks / CLK_TCK / seconds, 2);
  const split: CpuSplit = {
    [GROUP_BENCH]: cores(b.bench - a.bench),
    [GROUP_TOOLS]: cores(b.tools - a.tools),
    [GROUP_BACKENDS]: cores(backendTicks),
    [GROUP_POSTGRES]: cores(b.postgres - a.postgres),
    'whole machine': cores(b.machine - a.machine),
  };
  // The benchmark's backends are part of "postgres, all": the rest is everything else.
  const listed = (split[GROUP_BENCH] ?? 0) + (split[GROUP_TOOLS] ?? 0) + (split[GROUP_POSTGRES] ?? 0);
  split['rest of machine'] = Math.max(0, round((split['whole machine'] ?? 0) - listed, 2));
  return split;
}

interface Phase {
  readonly ms: number;
  readonly cpu: CpuSplit;
  readonly busyBefore: number;
}

/** A checkpoint and a quiet machine first, then `work` timed between two CPU marks. */
async function phase<T>(url: string, backends: BackendCpu, label: string, work: () => Promise<T>): Promise<{ phase: Phase; result: T }> {
  await query(url, 'checkpoint').catch(() => undefined);
  const busyBefore = await settle();
  progress(label);
  await backends.begin();
  const a = cpuMark();
  const t0 = performance.now();
  const result = await work();
  const ms = performance.now() - t0;
  const b = cpuMark();
  const cpu = cpuBetween(a, b, await backends.end());
  return { phase: { ms, cpu, busyBefore }, result };
}

// ---------------------------------------------------------------------------------------------
// databank's pool, minus its statement_timeout: the same pg settings, type parsers and application
// name as src/stores/sql/postgres.ts otherwise (without its named prepared statements). Used only
// after databank's own pool failed with a statement timeout, to measure the rest of the run.

/** While not null, every statement the store below runs is added here with its duration. */
let statementLog: Array<{ ms: number; sql: string }> | null = null;

async function openStoreWithoutStatementTimeout(url: string): Promise<SqlStore> {
  const { PARSERS } = await modules.parsers();
  const pool = new pg.Pool({
    connectionString: url,
    max: 4,
    connectionTimeoutMillis: 5_000,
    idleTimeoutMillis: 30_000,
    idle_in_transaction_session_timeout: 60_000,
    lock_timeout: 10_000,
    application_name: 'databank',
    types: {
      getTypeParser: ((oid: number, format?: string) => PARSERS[oid] ?? pg.types.getTypeParser(oid, format as 'text')) as typeof pg.types.getTypeParser,
    },
  });
  pool.on('error', () => undefined);
  const db = new Kysely<Database>({
    dialect: new PostgresDialect({ pool }),
    log: (event) => {
      if (event.level === 'query') statementLog?.push({ ms: round(event.queryDurationMillis), sql: event.query.sql.replace(/\s+/g, ' ').trim() });
    },
  });
  return {
    kind: 'postgres',
    db,
    capabilities: { multipleConnections: true, listen: true },
    async ping() {
      await sql`select 1`.execute(db);
    },
    poolStats: () => ({ total: pool.totalCount, idle: pool.idleCount, waiting: pool.waitingCount }),
    close: () => db.destroy(),
  };
}

function isStatementTimeout(err: unknown): boolean {
  return (err as { code?: unknown } | null)?.code === '57014' || /statement timeout/i.test(err instanceof Error ? err.message : String(err));
}

/** The first databank function in an error's stack, e.g. "invariants (src/services/backup/manifest.ts:92)". */
function whereInDatabank(err: unknown): string | null {
  const stack = err instanceof Error ? (err.stack ?? '') : '';
  const m = /at (?:async )?([\w.<>]+) \(.*?(src\/[\w/.-]+\.ts):(\d+)/.exec(stack);
  return m ? `${m[1]} (${m[2]}:${m[3]})` : null;
}

/**
 * A digest of the sources this benchmark measures (the backup service and the PostgreSQL pool), so
 * that a result can be tied to the exact code when the checkout has uncommitted changes.
 */
function sourcesDigest(): string {
  const hash = createHash('sha256');
  const dir = join(DATABANK_DIR, 'src/services/backup');
  const files = [...readdirSync(dir).filter((f) => f.endsWith('.ts')).sort().map((f) => join(dir, f)), join(DATABANK_DIR, 'src/stores/sql/postgres.ts')];
  for (const file of files) hash.update(`${file.slice(DATABANK_DIR.length)}\n`).update(readFileSync(file));
  return hash.digest('hex').slice(0, 16);
}

interface Failure {
  readonly round: number;
  readonly phase: string;
  readonly after_ms: number;
  readonly error: string;
  readonly where: string | null;
}

// ---------------------------------------------------------------------------------------------
// The source database: databank's schema (its migrations), customers, USD accounts and a balanced
// ledger made server-side, INSERT … SELECT generate_series in batches.

async function dbSize(client: pg.Client): Promise<number> {
  return Number((await client.query<{ n: string }>('select pg_database_size(current_database())::text as n')).rows[0]?.n);
}

/** Ledger transactions lo..hi and their two entries each; every transaction sums to zero in USD. */
/** Transaction g's time (an entry has its transaction's): three seconds apart from the start of 2025. */
const TXN_TIME = `timestamptz '2025-01-01 00:00:00+00' + g * interval '3 seconds'`;

async function insertLedger(client: pg.Client, lo: number, hi: number): Promise<void> {
  // Transaction g: the opening deposit of account g (g ≤ ACCOUNTS); then a deposit (one in five)
  // into account a from cash:USD, or a transfer from account a to account b ≠ a.
  const shape = `
    select g,
      g <= ${ACCOUNTS} or g % ${DEPOSIT_EVERY} = 0 as deposit,
      case when g <= ${ACCOUNTS} then g else 1 + abs(hashint8(g)::bigint) % ${ACCOUNTS} end as a,
      case when g <= ${ACCOUNTS} then 1000000000
           when g % ${DEPOSIT_EVERY} = 0 then 100 + abs(hashint8(g * 7)::bigint) % 100000
           else 1 + abs(hashint8(g * 13)::bigint) % 10000 end as amount
    from generate_series($1::bigint, $2::bigint) g`;
  await client.query(
    `insert into ledger_transactions (id, kind, reference, created_at)
     select g, case when deposit then 'deposit' else 'transfer' end,
       case when deposit then 'bench deposit ' || g end, ${TXN_TIME}
     from (${shape}) t`,
    [lo, hi],
  );
  await client.query(
    `insert into ledger_entries (transaction_id, account_id, system_account, currency, amount, created_at)
     select t.g, e.account_id, e.system_account, 'USD', e.amount, ${TXN_TIME.replace(/\bg\b/g, 't.g')}
     from (select s.*, 1 + (s.a + abs(hashint8(-s.g)::bigint) % ${ACCOUNTS - 1}) % ${ACCOUNTS} as b from (${shape}) s) t
     cross join lateral (values
       (1, t.a, null::text, case when t.deposit then t.amount else -t.amount end),
       (2, case when t.deposit then null else t.b end, case when t.deposit then 'cash:USD' end, case when t.deposit then -t.amount else t.amount end)
     ) e(side, account_id, system_account, amount)
     order by t.g, e.side`,
    [lo, hi],
  );
}

interface Source {
  readonly sizeBytes: number;
  readonly transactions: number;
  readonly entries: number;
  readonly fillMs: number;
  readonly vacuumMs: number;
}

async function fillSource(db: TempDatabase, targetBytes: number): Promise<Source> {
  // Two sessions, one per core: each batch is split between them (disjoint transaction ids).
  const client = new pg.Client({ connectionString: db.url });
  const second = new pg.Client({ connectionString: db.url });
  await client.connect();
  await second.connect();
  const t0 = performance.now();
  try {
    await client.query(
      `insert into customers (id, name, date_of_birth)
       select g, 'Bench Customer ' || g, date '1950-01-01' + (abs(hashint8(g)::bigint) % 20000)::int
       from generate_series(1, ${CUSTOMERS}) g`,
    );
    await client.query(
      `insert into accounts (account_id, customer_id, account_type, currency)
       select g, 1 + (g - 1) % ${CUSTOMERS}, case when g % 3 = 0 then 'savings' else 'checking' end, 'USD'
       from generate_series(1, ${ACCOUNTS}) g`,
    );
    // The ledger's monthly partitions for the times the rows get (a year of them holds 10 M
    // transactions), so that none lands in the default partition.
    await client.query(
      `select ledger_create_partition(m::date) from generate_series(date '2025-01-01', date '2026-01-01', interval '1 month') m`,
    );
    let next = 1;
    let size = await dbSize(client);
    const base = size;
    let perTxn = 0;
    // The first batch holds the opening deposits; later ones are sized from the bytes a transaction took so far.
    while (size < targetBytes) {
      const n = perTxn > 0 ? Math.max(1_000, Math.min(FILL_BATCH, Math.ceil((targetBytes - size) / perTxn))) : FIRST_BATCH;
      const half = Math.ceil(n / 2);
      await Promise.all([insertLedger(client, next, next + half - 1), insertLedger(second, next + half, next + n - 1)]);
      next += n;
      size = await dbSize(client);
      perTxn = (size - base) / (next - 1);
      progress(`  ${(next - 1).toLocaleString('en')} ledger transactions, database ${(size / MiB).toFixed(0)} of ${(targetBytes / MiB).toFixed(0)} MB`);
    }
    const transactions = next - 1;
    // Each balance is the sum of its entries; the identities continue after the rows made here.
    await client.query(
      `update accounts a set balance = s.total
       from (select account_id, sum(amount) as total from ledger_entries where account_id is not null group by account_id) s
       where a.account_id = s.account_id`,
    );
    for (const [table, column] of [
      ['customers', 'id'],
      ['accounts', 'account_id'],
      ['ledger_transactions', 'id'],
    ] as const) {
      await client.query(`select setval(pg_get_serial_sequence('${table}', '${column}'), (select max(${column}) from ${table}))`);
    }
    const fillMs = performance.now() - t0;
    progress('VACUUM ANALYZE of the source database');
    const v0 = performance.now();
    await client.query('vacuum analyze');
    const vacuumMs = performance.now() - v0;
    await client.query('checkpoint');
    const entries = Number((await client.query<{ n: string }>('select count(*)::text as n from ledger_entries')).rows[0]?.n);
    return { sizeBytes: await dbSize(client), transactions, entries, fillMs, vacuumMs };
  } finally {
    await client.end().catch(() => undefined);
    await second.end().catch(() => undefined);
  }
}

/** What a restored copy must hold: the same rows, every balance equal to its entries, no hold row. */
async function restoredCheck(url: string, expectEntries: number, expectTransactions: number) {
  const rows = await query<Record<string, string>>(
    url,
    `select (select count(*) from ledger_entries)::text as entries,
       (select count(*) from ledger_transactions)::text as transactions,
       (select coalesce(sum(amount), 0) from ledger_entries)::text as ledger_sum,
       (select count(*) from backup_holds)::text as holds`,
  );
  const r = rows[0] ?? {};
  const out = {
    entries: Number(r.entries),
    transactions: Number(r.transactions),
    ledger_sum: Number(r.ledger_sum),
    backup_holds: Number(r.holds),
    ok: false,
  };
  out.ok = out.entries === expectEntries && out.transactions === expectTransactions && out.ledger_sum === 0 && out.backup_holds === 0;
  return out;
}

// ---------------------------------------------------------------------------------------------
// Diagnostics: where databank's backup spends its time, each part measured alone.

function hashing(): { stream: Transform; bytes: () => number } {
  const hash = createHash('sha256');
  let bytes = 0;
  const stream = new Transform({
    transform(chunk: Buffer, _e, done: TransformCallback) {
      bytes += chunk.length;
      hash.update(chunk);
      done(null, chunk);
    },
  });
  return { stream, bytes: () => bytes };
}

async function timed<T>(work: () => Promise<T>): Promise<{ ms: number; result: T }> {
  const t0 = performance.now();
  const result = await work();
  return { ms: round(performance.now() - t0), result };
}

// ---------------------------------------------------------------------------------------------

interface Round {
  readonly round: number;
  readonly order: string;
  readonly bankBackup: Phase;
  readonly bankRestore: Phase;
  readonly refBackup: Phase;
  readonly refRestore: Phase;
  /** When the last byte of the encrypted dump had passed, and when create() returned (ms from its start). */
  readonly bankDumpStreamedMs: number;
  /** When pg_restore had been handed the last byte, and when restore() returned. */
  readonly bankRestoreStreamedMs: number;
  readonly bankBytes: number;
  readonly refBytes: number;
  readonly restoredBank: Awaited<ReturnType<typeof restoredCheck>>;
  readonly restoredRef: Awaited<ReturnType<typeof restoredCheck>>;
}

function series(name: string, phases: readonly Phase[], sizeBytes: number): Series {
  const ms = phases.map((p) => p.ms);
  const cpu: CpuSplit = {};
  for (const key of Object.keys(phases[0]?.cpu ?? {})) cpu[key] = round(phases.reduce((s, p) => s + (p.cpu[key] ?? 0), 0) / phases.length, 2);
  return {
    name,
    clients: 1,
    rate: mbps(sizeBytes, median(ms)),
    unit: 'MB/s',
    latency_ms: { mean: Math.round(ms.reduce((a, b) => a + b, 0) / ms.length), p50: Math.round(median(ms)), p99: Math.round(Math.max(...ms)) },
    ok: phases.length,
    non_ok: {},
    cpu_cores: cpu,
    seconds: round(ms.reduce((a, b) => a + b, 0) / 1000, 2),
    busy_before: Math.max(...phases.map((p) => p.busyBefore)),
  };
}

/** Two phases one after the other as one: times add, CPU is weighted by time. */
function combine(a: Phase, b: Phase): Phase {
  const ms = a.ms + b.ms;
  const cpu: CpuSplit = {};
  for (const key of new Set([...Object.keys(a.cpu), ...Object.keys(b.cpu)])) {
    cpu[key] = round(((a.cpu[key] ?? 0) * a.ms + (b.cpu[key] ?? 0) * b.ms) / ms, 2);
  }
  return { ms, cpu, busyBefore: Math.max(a.busyBefore, b.busyBefore) };
}

async function run(timing: Timing): Promise<BenchResult> {
  const rounds = Math.max(1, timing.durationS);
  const sizeMb = sizeFromEnv();
  const url = adminUrl();
  const version = await requireServer(url);
  progress(`PostgreSQL ${version} at ${redact(url)}; databank from ${DATABANK_DIR}; ${sizeMb} MB of ledger rows, ${rounds} round(s)`);

  const { openSqlStore } = await modules.sql();
  const { createMigrator, unwrap } = await modules.migrator();
  const { openFileStore } = await modules.files();
  const { BackupService } = await modules.service();
  const { writeNewBackupKey, encryptStream, decryptStream } = await modules.crypto();
  const { withDatabase } = await modules.engines();
  const manifest = await modules.manifest();

  const digestAtStart = sourcesDigest();
  const tmp = mkdtempSync(join(tmpdir(), 'databank-bench-backup-'));
  const removeTmp = onCleanup(async () => rmSync(tmp, { recursive: true, force: true }));
  const suffix = process.pid;
  let src: TempDatabase | null = null;
  let store: SqlStore | null = null;
  let files: FileStore | null = null;
  let dropDrills: (() => Promise<void>) | null = null;
  let untimed: SqlStore | null = null;
  const failures: Failure[] = [];
  const started = performance.now();
  let stoppedEarly: string | null = null;
  const benchDatabases: string[] = [];
  const backends = await BackendCpu.open(url, () => benchDatabases);
  const results: Round[] = [];
  let source: Source;
  let drill: { ms: number; report: Awaited<ReturnType<BackupServiceModule.BackupService['drill']>> } | null = null;
  const diagnostics: Record<string, unknown> = {};
  try {
    src = await createDatabase(url, `bench_backup_src_${suffix}`);
    benchDatabases.push(src.name, `bench_backup_dst_${suffix}`, `bench_backup_ref_${suffix}`);
    progress(`database ${src.name}: migrating, then ${CUSTOMERS} customers, ${ACCOUNTS} USD accounts and a balanced ledger up to ${sizeMb} MB`);
    store = await openSqlStore({ kind: 'postgres', connectionString: src.url, ssl: { mode: 'disable' }, poolMax: 4 }, () => undefined);
    unwrap(await createMigrator(store.db).migrateToLatest());
    source = await fillSource(src, sizeMb * MiB);
    const size = source.sizeBytes;
    progress(
      `source: ${source.transactions.toLocaleString('en')} ledger transactions, ${source.entries.toLocaleString('en')} entries, ` +
        `${(size / MiB).toFixed(1)} MB after VACUUM ANALYZE (filled in ${(source.fillMs / 1000).toFixed(1)} s)`,
    );

    const key = writeNewBackupKey(join(tmp, 'backup.key'));
    files = await openFileStore({ kind: 'local', dir: join(tmp, 'files') });
    const server = { connectionString: src.url, ssl: { mode: 'disable' as const } };
    const serviceOn = (sqlStore: SqlStore) => new BackupService({ sql: sqlStore, server, files: files!, copy: null, key, keep: { daily: 7, weekly: 4, monthly: 12 } });
    let service = serviceOn(store);

    const bankSide = async (round: number) => {
      let lastByte = 0;
      let t0 = 0;
      const create = () =>
        phase(url, backends, `databank: BackupService.create()${untimed ? ' (statement_timeout lifted)' : ''}`, () => {
          t0 = performance.now();
          return service.create((_done, _total, label) => {
            if (label === 'database') lastByte = performance.now();
          });
        });
      let backup: Awaited<ReturnType<typeof create>>;
      try {
        backup = await create();
      } catch (err) {
        if (untimed || !isStatementTimeout(err)) throw err;
        // As databank runs it, the backup failed: say so, then measure the rest with the timeout lifted.
        const failure: Failure = { round, phase: 'BackupService.create()', after_ms: Math.round(performance.now() - t0), error: err instanceof Error ? err.message : String(err), where: whereInDatabank(err) };
        failures.push(failure);
        progress(`  FAILED after ${failure.after_ms} ms: ${failure.error} in ${failure.where ?? '?'}; again on a pool without statement_timeout`);
        untimed = await openStoreWithoutStatementTimeout(src!.url);
        service = serviceOn(untimed);
        backup = await create();
      }
      const streamed = lastByte - t0;
      progress(`  ${backup.result.size.toLocaleString('en')} bytes stored in ${Math.round(backup.phase.ms)} ms (${mbps(size, backup.phase.ms)} MB/s; dump streamed by ${Math.round(streamed)} ms)`);
      const dst = await createDatabase(url, `bench_backup_dst_${suffix}`);
      try {
        let lastRead = 0;
        let r0 = 0;
        const restore = await phase(url, backends, `databank: BackupService.restore() into ${dst.name}`, () => {
          r0 = performance.now();
          return service.restore(backup.result.backup_id, { kind: 'postgres', target: withDatabase(server, dst.name) }, {
            force: false,
            files: null,
            onProgress: (_done, _total, label) => {
              if (label === 'restore') lastRead = performance.now();
            },
          });
        });
        progress(`  restored in ${Math.round(restore.phase.ms)} ms (${mbps(size, restore.phase.ms)} MB/s)`);
        const check = await restoredCheck(dst.url, source.entries, source.transactions);
        if (!check.ok) throw new BenchError(`databank's restore does not hold the source's rows: ${JSON.stringify(check)}`);
        return { backup, restore, streamed, restoreStreamed: lastRead - r0, check, bytes: backup.result.size };
      } finally {
        await dst.drop();
      }
    };
    let lastRefFile = '';
    const refSide = async (i: number) => {
      const file = join(tmp, `reference-${i}.dump`);
      const backup = await phase(url, backends, `reference: pg_dump -Fc -f ${file.slice(tmp.length + 1)}`, () => runTool('pg_dump', ['-Fc', '--no-password', '-f', file], src!.url));
      const bytes = statSync(file).size;
      progress(`  ${bytes.toLocaleString('en')} bytes in ${Math.round(backup.phase.ms)} ms (${mbps(size, backup.phase.ms)} MB/s)`);
      const dst = await createDatabase(url, `bench_backup_ref_${suffix}`);
      try {
        const restore = await phase(url, backends, `reference: pg_restore ${RESTORE_FLAGS.join(' ')} -d ${dst.name}`, () =>
          runTool('pg_restore', [...RESTORE_FLAGS, `--dbname=${dst.name}`, file], dst.url),
        );
        progress(`  restored in ${Math.round(restore.phase.ms)} ms (${mbps(size, restore.phase.ms)} MB/s)`);
        const check = await restoredCheck(dst.url, source.entries, source.transactions);
        if (!check.ok) throw new BenchError(`pg_restore's copy does not hold the source's rows: ${JSON.stringify(check)}`);
        if (lastRefFile) rmSync(lastRefFile, { force: true });
        lastRefFile = file;
        return { backup, restore, check, bytes };
      } finally {
        await dst.drop();
      }
    };

    for (let i = 0; i < rounds; i++) {
      const bankFirst = i % 2 === 0;
      const roundStart = performance.now();
      progress(`round ${i + 1} of ${rounds}: ${bankFirst ? 'databank first' : 'reference first'}`);
      let bank: Awaited<ReturnType<typeof bankSide>>;
      let ref: Awaited<ReturnType<typeof refSide>>;
      if (bankFirst) {
        bank = await bankSide(i + 1);
        ref = await refSide(i);
      } else {
        ref = await refSide(i);
        bank = await bankSide(i + 1);
      }
      results.push({
        round: i + 1,
        order: bankFirst ? 'databank, reference' : 'reference, databank',
        bankBackup: bank.backup.phase,
        bankRestore: bank.restore.phase,
        refBackup: ref.backup.phase,
        refRestore: ref.restore.phase,
        bankDumpStreamedMs: Math.round(bank.streamed),
        bankRestoreStreamedMs: Math.round(bank.restoreStreamed),
        bankBytes: bank.bytes,
        refBytes: ref.bytes,
        restoredBank: bank.check,
        restoredRef: ref.check,
      });
      const both = (a: Phase, b: Phase) => mbps(size, a.ms + b.ms);
      progress(
        `round ${i + 1}: backup + restore ${both(bank.backup.phase, bank.restore.phase)} MB/s (databank) vs ${both(ref.backup.phase, ref.restore.phase)} MB/s (reference)`,
      );
      if (i + 1 < rounds) {
        // Another round, then the drill (a restore and the manifest's checks) and the diagnostics.
        const roundMs = performance.now() - roundStart;
        const after = bank.restore.phase.ms + 2 * bank.backup.phase.ms;
        const projected = performance.now() - started + roundMs + after;
        if (projected > BUDGET_MS) {
          stoppedEarly = `stopped after ${i + 1} of ${rounds} rounds: another (${Math.round(roundMs / 1000)} s) would end the run after about ${Math.round(projected / 60_000)} min, past the ${BUDGET_MS / 60_000} min budget`;
          progress(stoppedEarly);
          break;
        }
      }
    }

    // The drill: a restore into a scratch database of its own, then every check against the manifest.
    const before = new Set(
      (await query<{ d: string }>(url, "select datname as d from pg_database where datname like 'databank\\_drill\\_%'")).map((r) => r.d),
    );
    // Ctrl-C skips the drill's own drop: its scratch database (one that appeared during the drill) goes here.
    dropDrills = onCleanup(async () => {
      const now = await query<{ d: string }>(url, "select datname as d from pg_database where datname like 'databank\\_drill\\_%'");
      for (const { d } of now) if (!before.has(d) && /^databank_drill_[0-9a-f]+$/.test(d)) await query(url, `drop database if exists ${d} with (force)`);
    });
    const newest = (await service.newestManifest())?.backup_id;
    const drilled = await phase(url, backends, `databank: BackupService.drill(${newest})`, () => service.drill(newest));
    drill = { ms: drilled.phase.ms, report: drilled.result };
    progress(`  drill ok=${drill.report.ok}, RTO ${drill.report.rto_ms} ms, whole drill ${Math.round(drill.ms)} ms`);
    const drillPhase = drilled.phase;

    // Where databank's time goes, each part alone.
    progress('diagnostics: databaseFacts() alone, in a repeatable-read read-only transaction as create() runs it (no statement_timeout)');
    untimed ??= await openStoreWithoutStatementTimeout(src.url);
    const factsStore: SqlStore = untimed;
    statementLog = [];
    const facts = await timed(() =>
      factsStore.db
        .transaction()
        .setIsolationLevel('repeatable read')
        .execute(async (trx) => {
          const part = async <T>(work: () => Promise<T>) => (await timed(work)).ms;
          await sql`set transaction read only`.execute(trx);
          await manifest.stableText(trx);
          return {
            table_stats_ms: await part(() => manifest.tableStats(trx)),
            invariants_ms: await part(() => manifest.invariants(trx)),
            core_answers_ms: await part(() => manifest.coreAnswers(trx)),
          };
        }),
    );
    const statements = statementLog as Array<{ ms: number; sql: string }>;
    statementLog = null;
    const slowest = [...statements].sort((a, b) => b.ms - a.ms).slice(0, 6).map((q) => ({ ms: q.ms, sql: q.sql.length > 200 ? `${q.sql.slice(0, 200)}…` : q.sql }));
    diagnostics.database_facts_alone = { total_ms: facts.ms, ...facts.result, statements: statements.length, slowest_statements: slowest };
    for (const q of slowest.slice(0, 3)) progress(`  ${q.ms} ms: ${q.sql.slice(0, 120)}`);
    progress(`  ${facts.ms} ms: ${JSON.stringify(facts.result)}`);
    if (lastRefFile) {
      const plain = statSync(lastRefFile).size;
      progress('diagnostics: encrypt + SHA-256 of the reference dump file alone, then decrypt + SHA-256 of the result');
      const encFile = join(tmp, 'reference.enc');
      // Twice, the faster kept: the first pass also pays for the cipher's and the stream's warm-up.
      const encrypt = () =>
        timed(async () => {
          const h = hashing();
          await pipeline(createReadStream(lastRefFile), encryptStream(key), h.stream, createWriteStream(encFile));
          return h.bytes();
        });
      const decrypt = () =>
        timed(async () => {
          const h = hashing();
          await pipeline(createReadStream(encFile), h.stream, decryptStream(key), new PassThrough().resume());
          return h.bytes();
        });
      const faster = (a: { ms: number }, b: { ms: number }) => (a.ms <= b.ms ? a : b);
      const enc = faster(await encrypt(), await encrypt());
      const dec = faster(await decrypt(), await decrypt());
      rmSync(encFile, { force: true });
      diagnostics.crypto_alone = {
        dump_bytes: plain,
        encrypt_sha256_to_file_ms: enc.ms,
        encrypt_mb_per_s_of_dump: mbps(plain, enc.ms),
        encrypt_mb_per_s_of_database: mbps(size, enc.ms),
        sha256_decrypt_ms: dec.ms,
        decrypt_mb_per_s_of_dump: mbps(plain, dec.ms),
        decrypt_mb_per_s_of_database: mbps(size, dec.ms),
      };
      progress(`  encrypt ${enc.ms} ms, decrypt ${dec.ms} ms for ${(plain / MiB).toFixed(1)} MB of dump`);
    }

    // --- The result.
    const s = {
      bankBackup: series(NAMES.bankBackup, results.map((r) => r.bankBackup), size),
      refBackup: series(NAMES.refBackup, results.map((r) => r.refBackup), size),
      bankRestore: series(NAMES.bankRestore, results.map((r) => r.bankRestore), size),
      refRestore: series(NAMES.refRestore, results.map((r) => r.refRestore), size),
      bankBoth: series(NAMES.bankBoth, results.map((r) => combine(r.bankBackup, r.bankRestore)), size),
      refBoth: series(NAMES.refBoth, results.map((r) => combine(r.refBackup, r.refRestore)), size),
    };
    const rtoPhase: Phase = { ms: drill.report.rto_ms, cpu: drillPhase.cpu, busyBefore: drillPhase.busyBefore };
    const drillSeries = series(NAMES.drill, [rtoPhase], size);
    const all: Series[] = [s.bankBackup, s.refBackup, s.bankRestore, s.refRestore, s.bankBoth, s.refBoth, drillSeries];
    const ratios: Ratio[] = [
      ratio(`${NAMES.bankBoth} / ${NAMES.refBoth} (MB/s)`, 1, s.bankBoth.rate, s.refBoth.rate, GOAL),
      ratio(`${NAMES.bankBackup} / ${NAMES.refBackup} (MB/s)`, 1, s.bankBackup.rate, s.refBackup.rate, null),
      ratio(`${NAMES.bankRestore} / ${NAMES.refRestore} (MB/s)`, 1, s.bankRestore.rate, s.refRestore.rate, null),
      ratio(`drill RTO / ${NAMES.refRestore} (MB/s)`, 1, drillSeries.rate, s.refRestore.rate, null),
    ];
    const perRound = results.map((r) => ({
      round: r.round,
      order: r.order,
      databank_backup_ms: Math.round(r.bankBackup.ms),
      databank_dump_streamed_by_ms: r.bankDumpStreamedMs,
      databank_restore_ms: Math.round(r.bankRestore.ms),
      databank_restore_last_byte_read_at_ms: r.bankRestoreStreamedMs,
      pg_dump_ms: Math.round(r.refBackup.ms),
      pg_restore_ms: Math.round(r.refRestore.ms),
      databank_backup_plus_restore_mb_per_s: mbps(size, r.bankBackup.ms + r.bankRestore.ms),
      reference_mb_per_s: mbps(size, r.refBackup.ms + r.refRestore.ms),
      ratio: round((r.refBackup.ms + r.refRestore.ms) / (r.bankBackup.ms + r.bankRestore.ms), 3),
      databank_stored_bytes: r.bankBytes,
      pg_dump_file_bytes: r.refBytes,
    }));
    const machine = machineInfo(version);
    const dumpTail = median(results.map((r) => r.bankBackup.ms - r.bankDumpStreamedMs));
    return {
      benchmark: 'backup',
      description: `databank backup (encrypted, with its manifest's checksums) and restore of a ${Math.round(size / MiB)} MB PostgreSQL ledger database vs pg_dump -Fc to a file + pg_restore, MB/s of database size; restore drill RTO`,
      machine,
      settings: {
        rounds_asked: rounds,
        rounds_run: results.length,
        stopped_early: stoppedEarly,
        budget_min: BUDGET_MS / 60_000,
        size_mb_requested: sizeMb,
        database_bytes: size,
        database_mb: round(size / MiB, 1),
        mb: '2^20 bytes; MB/s = pg_database_size of the source after VACUUM ANALYZE ÷ seconds',
        customers: CUSTOMERS,
        accounts: ACCOUNTS,
        ledger_transactions: source.transactions,
        ledger_entries: source.entries,
        fill: `INSERT … SELECT generate_series, up to ${FILL_BATCH.toLocaleString('en')} ledger transactions per batch split between two sessions, no constraint or trigger disabled; ${round(source.fillMs / 1000)} s, then VACUUM ANALYZE ${round(source.vacuumMs / 1000)} s`,
        databank: 'BackupService.create(): pg_dump --format=custom --compress=6 of an exported snapshot, AES-256-GCM in 1 MiB chunks + SHA-256, into a local file store (fsync), with databaseFacts() read in the same snapshot; restore(): SHA-256 + decrypt into pg_restore on stdin',
        reference: `pg_dump -Fc -f <file> (default compression, zlib level 6); pg_restore ${RESTORE_FLAGS.join(' ')} --dbname=<new database> <file>`,
        restore_target: 'a new empty database for every restore, created before the clock starts and dropped after its rows are checked',
        databank_pool: failures.length
          ? `databank's own pool (statement_timeout ${POOL_STATEMENT_TIMEOUT_MS} ms) until its backup failed, then the same settings without statement_timeout`
          : `databank's own pool (openSqlStore, statement_timeout ${POOL_STATEMENT_TIMEOUT_MS} ms)`,
        databank_revision: databankRevision(),
        databank_backup_sources_sha256: digestAtStart,
      },
      series: all,
      ratios,
      checks: {
        databank_failures: failures,
        per_round: perRound,
        restored_rows: results.map((r) => ({ round: r.round, databank: r.restoredBank, reference: r.restoredRef })),
        drill: {
          ok: drill.report.ok,
          rto_ms: drill.report.rto_ms,
          whole_drill_ms: Math.round(drill.ms),
          verification_after_restore_ms: Math.round(drill.ms - drill.report.rto_ms),
          failed_checks: drill.report.checks.filter((c) => !c.ok),
          checks: drill.report.checks.map((c) => c.name),
        },
        where_the_backup_time_goes: {
          create_ms_median: Math.round(median(results.map((r) => r.bankBackup.ms))),
          pg_dump_alone_ms_median: Math.round(median(results.map((r) => r.refBackup.ms))),
          after_last_dump_byte_ms_median: Math.round(dumpTail),
          ...diagnostics,
        },
      },
      notes: [
        `Source: databank's migrations on a new database, ${CUSTOMERS} customers, ${ACCOUNTS} USD accounts, each opened with a deposit of ${OPENING_DEPOSIT} from cash:USD, then one deposit in ${DEPOSIT_EVERY} and transfers between two accounts, two entries each (every transaction sums to zero; each balance is the sum of its entries), filled until pg_database_size reached the size asked (BENCH_BACKUP_MB).`,
        `Each round times databank's backup then its restore, and pg_dump then pg_restore, one side after the other; the side that goes first alternates between rounds. Each phase starts after a CHECKPOINT and once the machine is quiet; series show the median round (rate) and the mean, median and slowest time in ms in the latency columns.`,
        "databank's backup does more than pg_dump: it encrypts and hashes the dump, fsyncs it into the file store, and reads its manifest's facts (every table's row count and a checksum over all its rows, the ledger invariants, the customers queries) in the dump's snapshot while the dump runs; its restore checks the SHA-256 of the stored bytes and decrypts them into pg_restore on standard input. Both restores use the same pg_restore flags.",
        `The drill restores the newest backup into a scratch database and then checks it against its manifest; its RTO is the time until the restore finished (the checks come after: checks.drill.verification_after_restore_ms).`,
        `CPU split (cores over each phase): "${GROUP_BENCH}" is this process (databank's library: encryption, SHA-256, the manifest queries' client side); "${GROUP_TOOLS}" the client tools, children of this process, counted when reaped; "${GROUP_BACKENDS}" the server backends connected to this run's databases (and the drill's scratch database), sampled every ${SAMPLE_MS} ms; "${GROUP_POSTGRES}" every server process on the machine, other programs' backends included; "rest of machine" is what none of these used.`,
        ...all.map((x) => {
          const l = cpuLimits(x.cpu_cores, machine.cpu_count, [GROUP_POSTGRES, GROUP_BACKENDS]);
          return l ? `  ${x.name}: ${l.parts}${l.verdicts.length ? `; ${l.verdicts.join('; ')}` : ''}` : null;
        }).filter((n): n is string => n !== null),
      ],
      warnings: [
        ...failures.map(
          (f) =>
            `round ${f.round}: databank's ${f.phase} FAILED after ${f.after_ms} ms, as databank runs it: "${f.error}" in ${f.where ?? 'an unknown place'}. ` +
            `Its pool sets statement_timeout=${POOL_STATEMENT_TIMEOUT_MS} ms on every session, and the manifest's facts run as single statements over whole tables. ` +
            "The databank figures from then on come from a pool without statement_timeout (everything else the same).",
        ),
        ...(stoppedEarly ? [stoppedEarly] : []),
        ...(sourcesDigest() !== digestAtStart ? ['the backup sources (src/services/backup, src/stores/sql/postgres.ts) changed while the benchmark ran: the figures may mix two versions'] : []),
        ...noiseWarnings(all),
        ...(drill.report.ok ? [] : [`the drill failed: ${JSON.stringify(drill.report.checks.filter((c) => !c.ok))}`]),
        ...results.flatMap((r) => (r.bankBackup.busyBefore > 0.3 || r.refBackup.busyBefore > 0.3 ? [`round ${r.round} started on a busy machine`] : [])),
      ],
    };
  } finally {
    await backends.close();
    await files?.close().catch(() => undefined);
    await store?.close().catch(() => undefined);
    await (untimed as SqlStore | null)?.close().catch(() => undefined);
    progress('dropping the benchmark databases and the temp dir');
    await dropDrills?.().catch(() => undefined);
    await src?.drop().catch(() => undefined);
    await removeTmp();
  }
}

export const backup: Benchmark = {
  name: 'backup',
  description: 'databank backup + restore of a PostgreSQL ledger database (BENCH_BACKUP_MB, default 1024) vs pg_dump -Fc + pg_restore; drill RTO (--duration N = N rounds)',
  defaults: { warmupS: 0, durationS: 2 },
  run,
};
