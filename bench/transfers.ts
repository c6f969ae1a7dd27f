import type { Benchmark, Timing } from './lib/benchmark.ts';
import { postgresPids, settle } from './lib/cpu.ts';
import { databankRevision, DATABANK_DIR, inParallel, startDatabank, type Databank } from './lib/databank.ts';
import { runLoad, type LoadResult } from './lib/load.ts';
import { progress } from './lib/log.ts';
import { pgbenchInit, pgbenchRun, type PgbenchResult } from './lib/pgbench.ts';
import { WaitSampler } from './lib/waits.ts';
import { adminUrl, createDatabase, query, redact, requireServer, type TempDatabase } from './lib/postgres.ts';
import { loadSeries, machineInfo, noiseWarnings, pgbenchSeries, ratio, type BenchResult, type Series } from './lib/report.ts';

const CLIENTS = [8, 32] as const;
const CUSTOMERS = 10;
const ACCOUNTS_PER_CUSTOMER = 10;
/** Large enough that amount-1 transfers never run an account dry, so every answer should be 201. */
const OPENING_BALANCE = 1_000_000_000;
/** As many connections as the largest client count, so no request waits for a pooled connection. */
const POOL_MAX = 32;
const PGBENCH_SCALE = 10;
const PGBENCH_THREADS = 2;
const GOAL = 0.6;

/** ~100 accounts over 10 customers, each funded by a deposit; returns the account ids. */
async function openAccounts(bank: Databank): Promise<number[]> {
  const customers = await inParallel(Array.from({ length: CUSTOMERS }, (_, i) => i), 4, (i) =>
    bank.api<{ id: number }>('POST', '/customers', { name: `Bench Customer ${i + 1}`, date_of_birth: '1980-01-01' }),
  );
  const slots = customers.flatMap((c) => Array.from({ length: ACCOUNTS_PER_CUSTOMER }, () => c.id));
  const accounts = await inParallel(slots, 4, (customerId) =>
    bank.api<{ account_id: number }>('POST', `/customers/${customerId}/accounts`, { account_type: 'checking' }),
  );
  const ids = accounts.map((a) => a.account_id);
  await inParallel(ids, 4, (id) => bank.api('POST', `/accounts/${id}/deposits`, { amount: OPENING_BALANCE }));
  return ids;
}

/** Each request moves 1 unit between two distinct random accounts. */
function randomTransfer(ids: readonly number[]) {
  return () => {
    const i = Math.floor(Math.random() * ids.length);
    const j = (i + 1 + Math.floor(Math.random() * (ids.length - 1))) % ids.length;
    return { method: 'POST' as const, path: '/transfers', body: { from_account_id: ids[i], to_account_id: ids[j], amount: 1 } };
  };
}

/** Runs `measure` with a wait-event sampler on `database`, closing it however `measure` ends. */
async function withWaits<T>(url: string, database: string, measure: (waits: WaitSampler) => Promise<T>) {
  const waits = await WaitSampler.open(url, database);
  try {
    const result = await measure(waits);
    return { result, waits: waits.result() };
  } finally {
    await waits.close();
  }
}

/** A checkpoint between series, so that one series does not pay for the previous one's WAL. */
async function checkpoint(url: string): Promise<void> {
  await query(url, 'checkpoint').catch(() => undefined);
}

function transferSeries(name: string, r: LoadResult, busyBefore: number, waits: Record<string, number>): Series {
  return loadSeries(name, 'transfers/s', r, busyBefore, { db_backends: waits });
}

function tpcbSeries(r: PgbenchResult, busyBefore: number, waits: Record<string, number>): Series {
  return pgbenchSeries('pgbench tpcb-like', 'tps', r, busyBefore, { db_backends: waits });
}

/** Money conservation: nothing created or lost, and the ledger agrees with the balances. */
async function conservation(url: string, accounts: number, transfersAnswered: number) {
  const rows = await query<Record<string, string>>(
    url,
    `select
       (select coalesce(sum(balance), 0) from accounts)::text as balances,
       (select coalesce(sum(amount), 0) from ledger_entries)::text as ledger_sum,
       (select count(*) from ledger_transactions where kind = 'transfer')::text as transfers,
       (select count(*) from accounts a
         where a.balance <> coalesce((select sum(e.amount) from ledger_entries e where e.account_id = a.account_id), 0)
       )::text as mismatched_accounts`,
  );
  const row = rows[0] ?? {};
  const deposited = accounts * OPENING_BALANCE;
  const balances = Number(row.balances);
  const result = {
    total_deposited: deposited,
    sum_of_balances: balances,
    ledger_entries_sum: Number(row.ledger_sum),
    accounts_whose_balance_differs_from_ledger: Number(row.mismatched_accounts),
    transfers_in_ledger: Number(row.transfers),
    transfers_answered_201: transfersAnswered,
    holds: false,
  };
  result.holds =
    balances === deposited && result.ledger_entries_sum === 0 && result.accounts_whose_balance_differs_from_ledger === 0;
  return result;
}

/** The databank half: start it, fund the accounts, load it at each client count, check the money. */
async function measureDatabank(timing: Timing, url: string, db: TempDatabase) {
  progress(`starting databank (DATABASE_POOL_MAX=${POOL_MAX}) on database ${db.name}`);
  const bank = await startDatabank({ databaseUrl: db.url, poolMax: POOL_MAX });
  const series: Series[] = [];
  let answered = 0;
  let accounts: number[];
  try {
    progress(`opening ${CUSTOMERS * ACCOUNTS_PER_CUSTOMER} accounts and depositing ${OPENING_BALANCE} in each`);
    accounts = await openAccounts(bank);
    for (const clients of CLIENTS) {
      await checkpoint(db.url);
      const busyBefore = await settle();
      progress(`databank, ${clients} clients: ${timing.warmupS}s warm-up, then ${timing.durationS}s measured`);
      const { result: r, waits } = await withWaits(url, db.name, (window) =>
        runLoad({
          port: bank.port,
          clients,
          warmupMs: timing.warmupS * 1000,
          durationMs: timing.durationS * 1000,
          expect: 201,
          headers: { authorization: `Bearer ${bank.adminKey}` },
          next: randomTransfer(accounts),
          cpu: { 'load generator': () => [process.pid], databank: () => [bank.child.pid], postgres: postgresPids },
          window,
        }),
      );
      answered += r.ok_total;
      series.push(transferSeries('databank POST /transfers', r, busyBefore, waits));
      progress(`  ${r.ops_per_s} transfers/s, p50 ${r.latency_ms.p50} ms, p99 ${r.latency_ms.p99} ms`);
    }
  } finally {
    await bank.stop();
  }
  // After the server stopped, so that nothing is in flight while the sums are taken.
  progress('checking money conservation in the databank database');
  const check = await conservation(db.url, accounts.length, answered);
  progress(`  conservation ${check.holds ? 'holds' : 'BROKEN'}: ${check.sum_of_balances} of ${check.total_deposited}`);
  return { series, check };
}

/** The baseline half: pgbench's TPC-B-like script at the same client counts. */
async function measurePgbench(timing: Timing, url: string, db: TempDatabase): Promise<Series[]> {
  const series: Series[] = [];
  progress(`pgbench -i -s ${PGBENCH_SCALE} on database ${db.name}`);
  await pgbenchInit(db.url, PGBENCH_SCALE);
  await checkpoint(db.url);
  progress(`pgbench warm-up, ${timing.warmupS}s`);
  await pgbenchRun(db.url, { clients: CLIENTS[0], threads: PGBENCH_THREADS, seconds: timing.warmupS });
  for (const clients of CLIENTS) {
    await checkpoint(db.url);
    const busyBefore = await settle();
    progress(`pgbench, ${clients} clients, -j ${PGBENCH_THREADS}: ${timing.durationS}s`);
    const { result: r, waits } = await withWaits(url, db.name, (window) =>
      pgbenchRun(db.url, {
        clients,
        threads: PGBENCH_THREADS,
        seconds: timing.durationS,
        cpu: (pid) => ({ pgbench: () => [pid], postgres: postgresPids }),
        window,
      }),
    );
    series.push(tpcbSeries(r, busyBefore, waits));
    progress(`  ${r.tps.toFixed(1)} tps, mean latency ${r.latency_avg_ms} ms`);
  }
  return series;
}

async function run(timing: Timing): Promise<BenchResult> {
  const url = adminUrl();
  const version = await requireServer(url);
  progress(`PostgreSQL ${version} at ${redact(url)}; databank from ${DATABANK_DIR}`);
  const bankDb = await createDatabase(url, `bench_databank_${process.pid}`);
  const pgbDb = await createDatabase(url, `bench_pgbench_${process.pid}`);
  let series: Series[];
  let check: Awaited<ReturnType<typeof conservation>>;
  try {
    const bank = await measureDatabank(timing, url, bankDb);
    check = bank.check;
    series = [...bank.series, ...(await measurePgbench(timing, url, pgbDb))];
  } finally {
    progress('dropping the benchmark databases');
    await bankDb.drop();
    await pgbDb.drop();
  }

  const rateOf = (name: string, clients: number) => series.find((s) => s.name === name && s.clients === clients)?.rate ?? 0;
  return {
    benchmark: 'transfers',
    description: 'POST /transfers through databank on PostgreSQL, against pgbench TPC-B-like at the same client counts',
    machine: machineInfo(version),
    settings: {
      clients: CLIENTS,
      warmup_s: timing.warmupS,
      duration_s: timing.durationS,
      accounts: CUSTOMERS * ACCOUNTS_PER_CUSTOMER,
      database_pool_max: POOL_MAX,
      pgbench: `-i -s ${PGBENCH_SCALE}; -n -c <clients> -j ${PGBENCH_THREADS} -T ${timing.durationS}`,
      databank_revision: databankRevision(),
      load_generator: 'node:http Agent, keep-alive, one socket per client, in the benchmark process',
    },
    series,
    ratios: CLIENTS.map((c) => ratio('databank / pgbench', c, rateOf('databank POST /transfers', c), rateOf('pgbench tpcb-like', c), GOAL)),
    checks: { money_conservation: check },
    notes: [
      'A databank transfer is one round trip to PostgreSQL: a call of the PL/pgSQL function databank_transfer (lock both accounts in id order, check, update both balances, insert the ledger transaction, two entries and the outbox event) plus one HTTP exchange with authentication, schema validation and metrics. A pgbench TPC-B transaction is 7 statements from a C client and writes less WAL (3 updates, 1 history row), so at 8 clients more of a databank transfer is the wait for its commit to reach disk (LWLock:WALWrite, IO:WALSync).',
      'The load generator, databank and PostgreSQL share the same cores: the CPU split shows who used them; "rest of machine" is everything else (other programs skew the figures).',
      'Backend states come from pg_stat_activity: "active, running" is CPU inside PostgreSQL; LWLock:WALWrite and IO:WALSync are commits waiting for the WAL flush; Lock:transactionid/tuple are row-lock waits; "idle" is a pooled connection with nothing to do (the time is spent outside PostgreSQL).',
      'pgbench at scale 10 has 10 branch rows that every transaction updates, so at 32 clients it queues on row locks (Lock:transactionid).',
    ],
    warnings: noiseWarnings(series),
  };
}

export const transfers: Benchmark = {
  name: 'transfers',
  description: 'POST /transfers through databank (child process, PostgreSQL) vs pgbench TPC-B-like; 8 and 32 clients',
  defaults: { warmupS: 3, durationS: 15 },
  run,
};
