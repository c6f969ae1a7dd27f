import { performance } from 'node:perf_hooks';
import pg from 'pg';
import type { Benchmark, Timing } from './lib/benchmark.ts';
import { postgresPids, settle } from './lib/cpu.ts';
import {
  databankMetrics,
  databankRevision,
  DATABANK_DIR,
  inParallel,
  metricValue,
  startDatabank,
  type Databank,
} from './lib/databank.ts';
import { runLoad, type LoadResult, type RequestSpec } from './lib/load.ts';
import { progress } from './lib/log.ts';
import { pgbenchInit, pgbenchRun, type PgbenchResult } from './lib/pgbench.ts';
import { prng, shuffled, zipfSampler } from './lib/random.ts';
import { readWalStats, WaitSampler, walDelta, type WalStats } from './lib/waits.ts';
import { adminUrl, createDatabase, query, redact, requireServer, type TempDatabase } from './lib/postgres.ts';
import { loadSeries, machineInfo, noiseWarnings, pgbenchSeries, ratio, type BenchResult, type Ratio, type Series } from './lib/report.ts';

const CLIENTS = [8, 32, 128] as const;
/** 500 customers × 20 accounts (databank's default DATABANK_MAX_ACCOUNTS_PER_CUSTOMER is 20). */
const CUSTOMERS = 500;
const ACCOUNTS_PER_CUSTOMER = 20;
const ACCOUNTS = CUSTOMERS * ACCOUNTS_PER_CUSTOMER;
/** The uniform mix uses the first 100 accounts, as the benchmark did before it had 10,000. */
const UNIFORM_ACCOUNTS = 100;
const ZIPF_S = 1;
/** Large enough that amount-1 transfers never run an account dry, so every answer should be 201. */
const OPENING_BALANCE = 1_000_000_000;
/** As before; the 128-client series share these 32 connections. */
const POOL_MAX = 32;
/** Requests in flight while opening the accounts (the setup agent has 16 sockets). */
const SETUP_WIDTH = 16;
const PGBENCH_SCALE = 10;
const PGBENCH_THREADS = 2;
/** databank (batching on, uniform) ÷ pgbench -M simple, as before. */
const GOAL = 0.6;
/** hot ÷ uniform, batching on. */
const HOT_GOAL = 0.9;
/** databank (batching on, uniform) ÷ pgbench -M prepared at 32 clients. */
const PREPARED_GOAL = 2.0;
/** Connections kept free beside pgbench's (the wait sampler, the WAL reader, a checkpoint). */
const SPARE_CONNECTIONS = 4;

const MIXES = ['uniform', 'hot', 'zipf'] as const;
type Mix = (typeof MIXES)[number];
const BATCHING = ['on', 'off'] as const;
type Batching = (typeof BATCHING)[number];
const PGBENCH_MODES = ['simple', 'prepared'] as const;

const seriesName = (mix: Mix, batching: Batching) => `databank ${mix} batch ${batching}`;
const pgbenchName = (mode: string) => `pgbench tpcb-like -M ${mode}`;

/**
 * The 128-client and the batching-off series run two thirds of --warmup/--duration (2 s + 10 s by
 * default), so that the 24 series fit in ~10 minutes.
 */
function seriesTiming(timing: Timing, clients: number, batching: Batching): Timing {
  if (clients < 128 && batching === 'on') return timing;
  return { warmupS: Math.round((timing.warmupS * 2) / 3), durationS: Math.max(1, Math.round((timing.durationS * 2) / 3)) };
}

interface Population {
  /** The 10,000 accounts, in the order they were opened. */
  readonly all: readonly number[];
  /** The first 100: the uniform mix. */
  readonly uniform: readonly number[];
  /** The zipf mix's ranks: index 0 is rank 1 (a seeded shuffle of `all`, so hot rows are spread over the table). */
  readonly byRank: readonly number[];
  /** The hot mix's target: an account of its own customer, outside the 10,000, so its balance checks the hot series alone. */
  readonly merchant: number;
}

/** Opens `count` items of setup work, `SETUP_WIDTH` at a time, with a progress line every `every`. */
async function openInParallel<T, R>(what: string, items: readonly T[], work: (item: T) => Promise<R>, every = 2_500): Promise<R[]> {
  const started = performance.now();
  let done = 0;
  const results = await inParallel(items, SETUP_WIDTH, async (item) => {
    const r = await work(item);
    if (++done % every === 0 || done === items.length) {
      progress(`  ${what}: ${done} of ${items.length} (${((performance.now() - started) / 1000).toFixed(1)}s)`);
    }
    return r;
  });
  return results;
}

/** 500 customers × 20 accounts plus the merchant's customer and account, each funded by a deposit. */
async function openAccounts(bank: Databank): Promise<Population> {
  const customers = await openInParallel(
    'customers',
    Array.from({ length: CUSTOMERS + 1 }, (_, i) => i),
    (i) =>
      bank.api<{ id: number }>('POST', '/customers', {
        name: i === CUSTOMERS ? 'Bench Merchant' : `Bench Customer ${i + 1}`,
        date_of_birth: '1980-01-01',
      }),
    250,
  );
  const merchantCustomer = customers[CUSTOMERS] as { id: number };
  const slots = customers.slice(0, CUSTOMERS).flatMap((c) => Array.from({ length: ACCOUNTS_PER_CUSTOMER }, () => c.id));
  const opened = await openInParallel('accounts', slots, (customerId) =>
    bank.api<{ account_id: number }>('POST', `/customers/${customerId}/accounts`, { account_type: 'checking' }),
  );
  const merchant = (
    await bank.api<{ account_id: number }>('POST', `/customers/${merchantCustomer.id}/accounts`, { account_type: 'checking' })
  ).account_id;
  const all = opened.map((a) => a.account_id);
  await openInParallel('deposits', [...all, merchant], (id) => bank.api('POST', `/accounts/${id}/deposits`, { amount: OPENING_BALANCE }));
  return { all, uniform: all.slice(0, UNIFORM_ACCOUNTS), byRank: shuffled(all, prng(20261203)), merchant };
}

const transfer = (from: number, to: number): RequestSpec => ({
  method: 'POST',
  path: '/transfers',
  body: { from_account_id: from, to_account_id: to, amount: 1 },
});

/** The request maker of a mix; every mix draws from its own seeded generator, the same on every run. */
function mixRequests(mix: Mix, pop: Population, seed: number): () => RequestSpec {
  const random = prng(seed);
  switch (mix) {
    case 'uniform': {
      // Two distinct random accounts among the first 100, drawn as the benchmark always did.
      const ids = pop.uniform;
      return () => {
        const i = Math.floor(random() * ids.length);
        const j = (i + 1 + Math.floor(random() * (ids.length - 1))) % ids.length;
        return transfer(ids[i] as number, ids[j] as number);
      };
    }
    case 'hot':
      // Everyone pays the one merchant (who is not among the payers).
      return () => transfer(pop.all[Math.floor(random() * pop.all.length)] as number, pop.merchant);
    case 'zipf': {
      const rank = zipfSampler(pop.byRank.length, ZIPF_S);
      return () => {
        const i = rank(random);
        let j = rank(random);
        while (j === i) j = rank(random);
        return transfer(pop.byRank[i] as number, pop.byRank[j] as number);
      };
    }
  }
}

/**
 * What a measured window reads besides CPU: the backends' states (sampled), and at its two edges
 * pg_stat_wal and, for databank, the batching writer's histogram from /metrics. Fits runLoad's
 * and pgbenchRun's `window`, which may call `end` twice.
 */
class WindowProbe {
  private began = false;
  private ended = false;
  private startedAt = 0;
  private endedAt = 0;
  private first: Promise<Edge> | null = null;
  private last: Promise<Edge> | null = null;

  private constructor(
    private readonly waits: WaitSampler,
    private readonly wal: pg.Client,
    private readonly bank: Databank | null,
  ) {}

  static async open(url: string, database: string, bank: Databank | null): Promise<WindowProbe> {
    const waits = await WaitSampler.open(url, database);
    const wal = new pg.Client({ connectionString: url, connectionTimeoutMillis: 3_000 });
    try {
      await wal.connect();
    } catch (err) {
      await waits.close();
      throw err;
    }
    return new WindowProbe(waits, wal, bank);
  }

  begin(): void {
    if (this.began) return;
    this.began = true;
    this.startedAt = performance.now();
    this.first = this.read();
    this.waits.begin();
  }

  end(): void {
    if (!this.began || this.ended) return;
    this.ended = true;
    this.endedAt = performance.now();
    this.waits.end();
    this.last = this.read();
  }

  private async read(): Promise<Edge> {
    const [wal, metrics] = await Promise.all([
      readWalStats(this.wal).catch(() => null),
      this.bank ? databankMetrics(this.bank).catch(() => null) : Promise.resolve(null),
    ]);
    const batch =
      metrics === null
        ? null
        : { sum: metricValue(metrics, 'databank_money_batch_size_sum'), count: metricValue(metrics, 'databank_money_batch_size_count') };
    return { wal, batch };
  }

  async result(): Promise<WindowFigures> {
    const [a, b] = await Promise.all([this.first, this.last]);
    const wal = a?.wal && b?.wal ? walDelta(b.wal, a.wal) : null;
    let batches: { sum: number; count: number } | null = null;
    if (a?.batch && b?.batch && a.batch.sum !== null && a.batch.count !== null && b.batch.sum !== null && b.batch.count !== null) {
      batches = { sum: b.batch.sum - a.batch.sum, count: b.batch.count - a.batch.count };
    }
    return { waits: this.waits.result(), wal, batches, seconds: this.ended ? (this.endedAt - this.startedAt) / 1000 : 0 };
  }

  async close(): Promise<void> {
    await this.waits.close();
    await this.wal.end().catch(() => undefined);
  }
}

interface Edge {
  readonly wal: WalStats | null;
  readonly batch: { sum: number | null; count: number | null } | null;
}

interface WindowFigures {
  readonly waits: Record<string, number>;
  /** pg_stat_wal over the window (the whole cluster); null when it was not read. */
  readonly wal: WalStats | null;
  /** Movements and calls of the batching writer over the window (deposits included); null without /metrics. */
  readonly batches: { sum: number; count: number } | null;
  readonly seconds: number;
}

/** Runs `measure` with a probe on `database`, closing it however `measure` ends. */
async function withProbe<T>(url: string, database: string, bank: Databank | null, measure: (window: WindowProbe) => Promise<T>) {
  const probe = await WindowProbe.open(url, database, bank);
  try {
    const result = await measure(probe);
    return { result, figures: await probe.result() };
  } finally {
    await probe.close();
  }
}

/** How long to wait, at most, for the previous series' events to be relayed and consumed. */
const DRAIN_MAX_MS = 15_000;
/**
 * Consumer groups left out of the wait: `analytics` only asks for a DuckDB refresh (at most every
 * 5 s, whatever the backlog) and moves its position slowly by design, so it is always behind.
 */
const LAZY_GROUPS = ['analytics'];

/**
 * Waits (up to DRAIN_MAX_MS) until databank's background work has caught up with what was written
 * before: no unpublished outbox row, and no consumer group that is behind the event log and still
 * moving (a group that has not moved for 5 s belongs to a stopped process), LAZY_GROUPS aside. So that a series does
 * not pay for the setup's or the previous series' events. Returns the seconds waited and what was left.
 */
async function drainBackground(dbUrl: string): Promise<{ waited_s: number; outbox: number; groups_behind: number }> {
  const started = performance.now();
  let last = { outbox: 0, groups_behind: 0 };
  let told = false;
  while (true) {
    const rows = await query<{ outbox: number; behind: number }>(
      dbUrl,
      `select (select count(*) from outbox where published_at is null)::int as outbox,
              (select count(*) from stream_groups
                where position < (select coalesce(max(seq), 0) from event_log)
                  and updated_at > now() - interval '5 seconds'
                  and name <> all($1::text[]))::int as behind`,
      [LAZY_GROUPS],
    ).catch(() => []);
    last = { outbox: Number(rows[0]?.outbox ?? 0), groups_behind: Number(rows[0]?.behind ?? 0) };
    const waited = performance.now() - started;
    if ((last.outbox === 0 && last.groups_behind === 0) || waited >= DRAIN_MAX_MS) break;
    if (!told) progress(`  waiting for databank's background work: ${last.outbox} outbox rows unpublished, ${last.groups_behind} consumer groups behind`);
    told = true;
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
  const waited_s = round((performance.now() - started) / 1000, 1);
  if (told) progress(`  background work: waited ${waited_s}s; left ${last.outbox} outbox rows, ${last.groups_behind} groups behind`);
  return { waited_s, ...last };
}

/** A checkpoint between series, so that one series does not pay for the previous one's WAL. */
async function checkpoint(url: string): Promise<void> {
  await query(url, 'checkpoint').catch(() => undefined);
}

const round = (n: number, digits: number) => Math.round(n * 10 ** digits) / 10 ** digits;

/** Where the time goes per operation: CPU ms of each group, WAL per operation, batch size. */
function perOp(cpu: Record<string, number>, groups: Record<string, string>, rate: number, ops: number, f: WindowFigures) {
  const out: Record<string, number | null> = {};
  for (const [group, key] of Object.entries(groups)) {
    const cores = cpu[group];
    out[key] = cores === undefined || rate <= 0 ? null : round((cores * 1000) / rate, 3);
  }
  const per = (n: number | undefined, digits: number) => (n === undefined || ops <= 0 ? null : round(n / ops, digits));
  out.wal_flushes = per(f.wal?.syncs, 3);
  out.wal_writes = per(f.wal?.writes, 3);
  out.wal_bytes = per(f.wal?.bytes, 0);
  out.wal_records = per(f.wal?.records, 2);
  return out;
}

function transferSeries(name: string, r: LoadResult, busyBefore: number, f: WindowFigures): Series {
  const per_op = perOp(r.cpu_cores, { databank: 'databank_cpu_ms', postgres: 'postgres_cpu_ms', 'load generator': 'load_generator_cpu_ms' }, r.ops_per_s, r.ok, f);
  per_op.batch_size_mean = f.batches && f.batches.count > 0 ? round(f.batches.sum / f.batches.count, 2) : null;
  per_op.batches_per_s = f.batches && f.seconds > 0 ? round(f.batches.count / f.seconds, 1) : null;
  return loadSeries(name, 'transfers/s', r, busyBefore, { db_backends: f.waits, per_op });
}

function tpcbSeries(name: string, r: PgbenchResult, busyBefore: number, f: WindowFigures): Series {
  // pgbench reports its transactions over the whole run: those of the window are estimated at its tps.
  const per_op = perOp(r.cpu_cores, { pgbench: 'pgbench_cpu_ms', postgres: 'postgres_cpu_ms' }, r.tps, r.tps * f.seconds, f);
  return pgbenchSeries(name, 'tps', r, busyBefore, { db_backends: f.waits, per_op });
}

/** Money conservation: nothing created or lost, and the ledger agrees with the balances. */
async function conservation(url: string, accounts: number, transfersAnswered: number, merchant: number, hotAnswered: number) {
  const rows = await query<Record<string, string>>(
    url,
    `select
       (select coalesce(sum(balance), 0) from accounts)::text as balances,
       (select coalesce(sum(amount), 0) from ledger_entries)::text as ledger_sum,
       (select count(*) from ledger_transactions where kind = 'transfer')::text as transfers,
       (select count(*) from accounts)::text as accounts,
       (select balance from accounts where account_id = $1)::text as merchant_balance,
       (select count(*) from accounts a
         where a.balance <> coalesce((select sum(e.amount) from ledger_entries e where e.account_id = a.account_id), 0)
       )::text as mismatched_accounts`,
    [merchant],
  );
  const row = rows[0] ?? {};
  const deposited = accounts * OPENING_BALANCE;
  const balances = Number(row.balances);
  const merchantBalance = Number(row.merchant_balance);
  const result = {
    accounts: Number(row.accounts),
    total_deposited: deposited,
    sum_of_balances: balances,
    ledger_entries_sum: Number(row.ledger_sum),
    accounts_whose_balance_differs_from_ledger: Number(row.mismatched_accounts),
    transfers_in_ledger: Number(row.transfers),
    transfers_answered_201: transfersAnswered,
    hot_account: {
      account_id: merchant,
      balance: merchantBalance,
      expected: OPENING_BALANCE + hotAnswered,
      hot_transfers_answered_201: hotAnswered,
      holds: merchantBalance === OPENING_BALANCE + hotAnswered,
    },
    holds: false,
  };
  result.holds =
    balances === deposited &&
    result.accounts === accounts &&
    result.ledger_entries_sum === 0 &&
    result.accounts_whose_balance_differs_from_ledger === 0;
  return result;
}

/** The databank half: fund the accounts, then every mix at each client count, batching on, then off. */
async function measureDatabank(timing: Timing, url: string, db: TempDatabase) {
  const series: Series[] = [];
  let answered = 0;
  let hotAnswered = 0;
  let pop: Population | null = null;
  let adminKey: string | undefined;
  const drains: Array<{ series: string; waited_s: number; outbox: number; groups_behind: number }> = [];
  for (const batching of BATCHING) {
    const env: Record<string, string> = batching === 'off' ? { DATABANK_BATCH_MAX: '1' } : {};
    progress(
      `starting databank (DATABASE_POOL_MAX=${POOL_MAX}, ${batching === 'off' ? 'DATABANK_BATCH_MAX=1' : 'DATABANK_BATCH_MAX default'}) on database ${db.name}`,
    );
    const bank = await startDatabank({ databaseUrl: db.url, poolMax: POOL_MAX, env, ...(adminKey ? { adminKey } : {}) });
    adminKey = bank.adminKey;
    try {
      if (pop === null) {
        progress(`opening ${ACCOUNTS} accounts (${CUSTOMERS} customers × ${ACCOUNTS_PER_CUSTOMER}) and a merchant account; ${OPENING_BALANCE} deposited in each`);
        pop = await openAccounts(bank);
      }
      for (const clients of CLIENTS) {
        const t = seriesTiming(timing, clients, batching);
        for (const [m, mix] of MIXES.entries()) {
          const name = seriesName(mix, batching);
          drains.push({ series: `${name} c=${clients}`, ...(await drainBackground(db.url)) });
          await checkpoint(db.url);
          const busyBefore = await settle();
          progress(`${name}, ${clients} clients: ${t.warmupS}s warm-up, then ${t.durationS}s measured`);
          const { result: r, figures } = await withProbe(url, db.name, bank, (window) =>
            runLoad({
              port: bank.port,
              clients,
              warmupMs: t.warmupS * 1000,
              durationMs: t.durationS * 1000,
              expect: 201,
              headers: { authorization: `Bearer ${bank.adminKey}` },
              next: mixRequests(mix, pop as Population, 1000 * clients + 10 * m + (batching === 'on' ? 1 : 2)),
              cpu: { 'load generator': () => [process.pid], databank: () => [bank.child.pid], postgres: postgresPids },
              window,
            }),
          );
          answered += r.ok_total;
          if (mix === 'hot') hotAnswered += r.ok_total;
          const s = transferSeries(name, r, busyBefore, figures);
          series.push(s);
          const nonOk = Object.values(r.non_ok).reduce((a, b) => a + b, 0);
          progress(
            `  ${r.ops_per_s} transfers/s, p50 ${r.latency_ms.p50} ms, p99 ${r.latency_ms.p99} ms, batch ${s.per_op?.batch_size_mean ?? '-'}` +
              (nonOk > 0 ? `, ${nonOk} non-201: ${JSON.stringify(r.non_ok)}` : ''),
          );
        }
      }
    } finally {
      await bank.stop();
    }
  }
  // After the server stopped, so that nothing is in flight while the sums are taken.
  progress('checking money conservation in the databank database');
  const population = pop as Population;
  const check = await conservation(db.url, population.all.length + 1, answered, population.merchant, hotAnswered);
  progress(
    `  conservation ${check.holds ? 'holds' : 'BROKEN'}: ${check.sum_of_balances} of ${check.total_deposited}; ` +
      `hot account ${check.hot_account.holds ? 'holds' : 'BROKEN'} (${check.hot_account.balance} vs ${check.hot_account.expected})`,
  );
  return { series, check, drains };
}

/** Connections the server can still take (we connect as a superuser, so the reserved ones count). */
async function freeConnections(url: string): Promise<number> {
  const rows = await query<{ free: number }>(
    url,
    `select current_setting('max_connections')::int
       - (select count(*) from pg_stat_activity where backend_type = 'client backend')::int as free`,
  );
  return Number(rows[0]?.free ?? 0);
}

/** The baseline half: pgbench's TPC-B-like script at the same client counts, simple and prepared protocol. */
async function measurePgbench(timing: Timing, url: string, db: TempDatabase) {
  const series: Series[] = [];
  const skipped: string[] = [];
  progress(`pgbench -i -s ${PGBENCH_SCALE} on database ${db.name}`);
  await pgbenchInit(db.url, PGBENCH_SCALE);
  await checkpoint(db.url);
  progress(`pgbench warm-up, ${timing.warmupS}s`);
  if (timing.warmupS > 0) await pgbenchRun(db.url, { clients: CLIENTS[0], threads: PGBENCH_THREADS, seconds: timing.warmupS });
  for (const clients of CLIENTS) {
    const t = seriesTiming(timing, clients, 'on');
    for (const mode of PGBENCH_MODES) {
      const name = pgbenchName(mode);
      const free = await freeConnections(url);
      if (free < clients + SPARE_CONNECTIONS) {
        const why = `${name} at ${clients} clients skipped: the server has ${free} free connections (max_connections less those in use), it needs ${clients} + ${SPARE_CONNECTIONS}`;
        progress(why);
        skipped.push(why);
        continue;
      }
      await checkpoint(db.url);
      const busyBefore = await settle();
      progress(`${name}, ${clients} clients, -j ${PGBENCH_THREADS}: ${t.durationS}s`);
      const { result: r, figures } = await withProbe(url, db.name, null, (window) =>
        pgbenchRun(db.url, {
          clients,
          threads: PGBENCH_THREADS,
          seconds: t.durationS,
          script: ['-M', mode],
          cpu: (pid) => ({ pgbench: () => [pid], postgres: postgresPids }),
          window,
        }),
      );
      series.push(tpcbSeries(name, r, busyBefore, figures));
      progress(`  ${r.tps.toFixed(1)} tps, mean latency ${r.latency_avg_ms} ms`);
    }
  }
  return { series, skipped };
}

function ratios(series: readonly Series[]): Ratio[] {
  const find = (name: string, clients: number) => series.find((s) => s.name === name && s.clients === clients);
  const out: Ratio[] = [];
  const add = (label: string, clients: number, num: Series | undefined, den: Series | undefined, goal: number | null, pick = (s: Series) => s.rate) => {
    if (num && den) out.push(ratio(label, clients, pick(num), pick(den), goal));
  };
  const on = (mix: Mix, c: number) => find(seriesName(mix, 'on'), c);
  const off = (mix: Mix, c: number) => find(seriesName(mix, 'off'), c);
  for (const c of CLIENTS) add('hot / uniform (batch on)', c, on('hot', c), on('uniform', c), HOT_GOAL);
  for (const c of CLIENTS) add('zipf / uniform (batch on)', c, on('zipf', c), on('uniform', c), null);
  for (const c of CLIENTS) {
    add('databank uniform batch on / pgbench prepared', c, on('uniform', c), find(pgbenchName('prepared'), c), c === 32 ? PREPARED_GOAL : null);
  }
  for (const mix of MIXES) for (const c of CLIENTS) add(`batch on / batch off, ${mix}`, c, on(mix, c), off(mix, c), null);
  add('p99 uniform: batch off / batch on', 8, off('uniform', 8), on('uniform', 8), 1.0, (s) => s.latency_ms.p99 ?? Number.NaN);
  // The ratio the benchmark always had: the default configuration against pgbench's default protocol.
  for (const c of CLIENTS) add('databank / pgbench', c, on('uniform', c), find(pgbenchName('simple'), c), GOAL);
  return out;
}

async function run(timing: Timing): Promise<BenchResult> {
  const url = adminUrl();
  const version = await requireServer(url);
  progress(`PostgreSQL ${version} at ${redact(url)}; databank from ${DATABANK_DIR}`);
  const bankDb = await createDatabase(url, `bench_databank_${process.pid}`);
  const pgbDb = await createDatabase(url, `bench_pgbench_${process.pid}`);
  let series: Series[];
  let check: Awaited<ReturnType<typeof conservation>>;
  let skipped: string[];
  let drains: Awaited<ReturnType<typeof measureDatabank>>['drains'];
  try {
    const bank = await measureDatabank(timing, url, bankDb);
    check = bank.check;
    drains = bank.drains;
    const pgb = await measurePgbench(timing, url, pgbDb);
    skipped = pgb.skipped;
    series = [...bank.series, ...pgb.series];
  } finally {
    progress('dropping the benchmark databases');
    await bankDb.drop();
    await pgbDb.drop();
  }
  const short = seriesTiming(timing, 128, 'off');
  return {
    benchmark: 'transfers',
    description:
      'POST /transfers through databank on PostgreSQL (uniform, hot and zipf mixes; batching writer on and off), against pgbench TPC-B-like (-M simple and prepared) at the same client counts',
    machine: machineInfo(version),
    settings: {
      clients: CLIENTS,
      warmup_s: timing.warmupS,
      duration_s: timing.durationS,
      short_series: `128-client and batch-off series (and pgbench at 128): ${short.warmupS}s warm-up, ${short.durationS}s measured (two thirds of the others), to fit the run in ~10 minutes`,
      accounts: `${ACCOUNTS} (${CUSTOMERS} customers × ${ACCOUNTS_PER_CUSTOMER}) + 1 merchant account of its own customer, ${OPENING_BALANCE} deposited in each`,
      mixes: {
        uniform: `two distinct random accounts among the first ${UNIFORM_ACCOUNTS} (the old benchmark's mix)`,
        hot: `a random payer among the ${ACCOUNTS} into the one merchant account`,
        zipf: `source and target Zipf (s = ${ZIPF_S}) over the ${ACCOUNTS} (ranks a seeded shuffle of the accounts), distinct`,
      },
      batching: { on: 'DATABANK_BATCH_MAX unset (default 256)', off: 'DATABANK_BATCH_MAX=1 (each transfer its own call)' },
      database_pool_max: POOL_MAX,
      pgbench: `-i -s ${PGBENCH_SCALE}; -n -c <clients> -j ${PGBENCH_THREADS} -T <duration> -M simple|prepared`,
      databank_revision: databankRevision(),
      load_generator: 'node:http Agent, keep-alive, one socket per client, in the benchmark process; seeded mixes',
    },
    series,
    ratios: ratios(series),
    checks: { money_conservation: check, background_drain_before_series: drains, ...(skipped.length > 0 ? { skipped } : {}) },
    notes: [
      'With batching on (DATABANK_BATCH_MAX default 256), the transfers that arrive while a batch is in flight leave together in one call of databank_money_batch: one transaction, one commit, one WAL flush for all of them (batch_size_mean in "where the time goes", from databank_money_batch_size over the window). With DATABANK_BATCH_MAX=1 each transfer is its own call of databank_transfer, the old path: one round trip and one commit each.',
      'A pgbench TPC-B transaction is 7 statements from a C client and writes less WAL (3 updates, 1 history row) than a databank transfer (2 balance updates, a ledger transaction, 2 entries, an outbox event).',
      'The hot mix sends every transfer to one merchant account: without batching they queue on its row lock (Lock:transactionid/tuple); with batching one batch takes the lock once for all of them. The merchant is outside the 10,000 payers, so the check "hot_account" compares its balance with the hot transfers answered 201.',
      'Where the time goes: *_cpu_ms are CPU milliseconds of each process group per transfer (per transaction for pgbench); wal_flushes, wal_writes, wal_bytes and wal_records are pg_stat_wal deltas over the window (the whole cluster: other databases\' activity counts too) per transfer, and, for pgbench, per transaction at its reported tps. Backends report WAL counters at most once a second, so short windows are rough.',
      `Before each databank series the run waits (up to ${DRAIN_MAX_MS / 1000} s) until databank's outbox relay and stream consumers (but the analytics group, which is behind by design) have caught up with the events of the setup and of the previous series (checks.background_drain_before_series), then for the machine to go quiet; the background work a series' own transfers cause still runs during it, in the databank process.`,
      'The load generator, databank and PostgreSQL share the same cores: the CPU split shows who used them; "rest of machine" is everything else (other programs skew the figures).',
      'Backend states come from pg_stat_activity: "active, running" is CPU inside PostgreSQL; LWLock:WALWrite and IO:WALSync are commits waiting for the WAL flush; Lock:transactionid/tuple are row-lock waits; "idle" is a pooled connection with nothing to do (the time is spent outside PostgreSQL).',
      'pgbench at scale 10 has 10 branch rows that every transaction updates, so from 32 clients it queues on row locks (Lock:transactionid).',
      ...skipped.map((s) => `${s}; its ratios are left out.`),
    ],
    warnings: noiseWarnings(series),
  };
}

export const transfers: Benchmark = {
  name: 'transfers',
  description: 'POST /transfers through databank (uniform, hot, zipf; batching on and off) vs pgbench TPC-B-like; 8, 32 and 128 clients',
  defaults: { warmupS: 3, durationS: 15 },
  run,
};
