import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { Agent, request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import type { Benchmark, Timing } from './lib/benchmark.ts';
import { onCleanup } from './lib/cleanup.ts';
import { cpuLimits, cpuPerRequest, pidsNamed, settle, type CpuGroups, type CpuSplit } from './lib/cpu.ts';
import { databankRevision, DATABANK_DIR, inParallel, startDatabank, type Databank } from './lib/databank.ts';
import { runLoad, type LoadResult } from './lib/load.ts';
import { BenchError, progress, sleep } from './lib/log.ts';
import { pgbenchRun, type PgbenchResult } from './lib/pgbench.ts';
import { query } from './lib/postgres.ts';
import { startReplicatedCluster, type ReplicatedCluster } from './lib/replication.ts';
import { WaitSampler } from './lib/waits.ts';
import { machineInfo, noiseWarnings, ratio, type BenchResult, type Series } from './lib/report.ts';

/**
 * `npm run bench -- replicas`: read requests per second with reads on the primary only and with
 * them routed to one streaming replica, while a steady transfer load runs, beside pgbench running
 * the same SELECT on the primary, on the replica, and split over both. See bench/README.md.
 */

const READERS = 32;
/** Same pool as the other benchmarks: one connection per reader (the replica gets a pool of its own this size). */
const POOL_MAX = 32;
const CUSTOMERS = 10;
const ACCOUNTS_PER_CUSTOMER = 10;
const OPENING_BALANCE = 1_000_000_000;
/** Transfers made before the first series, so that every account has more than a page of entries. */
const PREFILL_TRANSFERS = 1_500;
const PAGE = 20;
/**
 * The background load: this many transfers a second from TRANSFER_CLIENTS clients, each with an
 * Idempotency-Key. Each client sends every 320 ms, longer than a transfer takes (~150 ms while
 * 32 readers keep databank busy, ~230 ms while pgbench keeps PostgreSQL busy), so the rate holds.
 */
const TRANSFER_RATE = 100;
const TRANSFER_CLIENTS = 32;
const SAMPLE_MS = 100;
const DATABASE = 'databank';
/** databank's defaults, written out so that the result says what was measured. */
const MAX_LAG_MS = 1000;
const CHECK_MS = 200;
/** Small servers: this is a 2-core machine that runs other things too. */
const CLUSTER_SETTINGS = [
  'max_connections = 120',
  'shared_buffers = 64MB',
  'work_mem = 4MB',
  'max_wal_senders = 4',
  'max_replication_slots = 4',
  'max_worker_processes = 4',
  'max_parallel_workers = 0',
  'max_parallel_workers_per_gather = 0',
  'max_wal_size = 256MB',
  'wal_receiver_status_interval = 1s',
];
/** The SELECT of `GET /accounts/:id/entries` (AccountsService.entries, first page), as Kysely sends it. */
const ENTRIES_SQL =
  'select "e"."id" as "entry_id", "e"."transaction_id", "t"."kind", "e"."amount", "t"."reference", "t"."created_at" ' +
  'from "ledger_entries" as "e" inner join "ledger_transactions" as "t" on "t"."id" = "e"."transaction_id" ' +
  'where "e"."account_id" = $1 order by "e"."id" desc limit $2';

const NAMES = {
  primary: 'databank reads, primary only',
  replica: 'databank reads, replica',
  pgPrimary: 'pgbench reads, primary',
  pgReplica: 'pgbench reads, replica',
  pgSplit: 'pgbench reads, split 16+16',
} as const;

const round = (n: number, digits = 1) => Math.round(n * 10 ** digits) / 10 ** digits;

/** p50/p90/p99/max (nearest rank) and mean of `values`; nulls when there are none. */
function distribution(values: readonly number[]) {
  const sorted = [...values].sort((a, b) => a - b);
  const at = (p: number) => (sorted.length === 0 ? null : (sorted[Math.min(sorted.length - 1, Math.ceil(p * sorted.length) - 1)] ?? null));
  const mean = sorted.length === 0 ? null : round(sorted.reduce((a, b) => a + b, 0) / sorted.length, 1);
  return { n: sorted.length, mean, p50: at(0.5), p90: at(0.9), p99: at(0.99), max: at(1) };
}

// ---------------------------------------------------------------------------------------------
// HTTP beside the load: /metrics (text) and /replicas, as admin.

const sideAgent = new Agent({ keepAlive: true, maxSockets: 2 });

function getText(port: number, path: string, key: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, agent: sideAgent, headers: { authorization: `Bearer ${key}` } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        if (res.statusCode === 200) resolve(text);
        else reject(new BenchError(`GET ${path} answered ${res.statusCode}: ${text}`));
      });
    });
    req.on('error', reject);
    req.end();
  });
}

/** `databank_db_reads_total` by "target/reason". */
async function readCounts(bank: Databank): Promise<Record<string, number>> {
  const text = await getText(bank.port, '/metrics', bank.adminKey);
  const counts: Record<string, number> = {};
  for (const m of text.matchAll(/^databank_db_reads_total\{([^}]*)\} (\S+)$/gm)) {
    const label = (name: string) => new RegExp(`${name}="([^"]*)"`).exec(m[1] ?? '')?.[1] ?? '?';
    counts[`${label('target')}/${label('reason')}`] = Number(m[2]);
  }
  return counts;
}

function difference(after: Record<string, number>, before: Record<string, number>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [k, v] of Object.entries(after)) if (v - (before[k] ?? 0) > 0) out[k] = v - (before[k] ?? 0);
  return out;
}

interface ReplicaSample {
  readonly state: string;
  readonly lag_ms: number | null;
  readonly lag_bytes: number | null;
  readonly checked_at: string | null;
}

/**
 * Something read every SAMPLE_MS during a measured window; a slow answer skips a tick rather than
 * piling requests up. `begin`/`end` fit runLoad's and pgbenchRun's `window`, which may call `end` twice.
 */
class Sampler<T> {
  readonly samples: T[] = [];
  failures = 0;
  private timer: NodeJS.Timeout | null = null;
  private busy = false;

  constructor(
    private readonly take: () => Promise<T | null>,
    private readonly closer: () => Promise<void> = async () => undefined,
  ) {}

  begin(): void {
    this.timer ??= setInterval(() => void this.tick(), SAMPLE_MS);
  }

  end(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  async close(): Promise<void> {
    this.end();
    await this.closer();
  }

  private async tick(): Promise<void> {
    if (this.busy) return;
    this.busy = true;
    try {
      const s = await this.take();
      if (s !== null) this.samples.push(s);
    } catch {
      this.failures++;
    } finally {
      this.busy = false;
    }
  }
}

/** What PostgreSQL says of the replica: pg_stat_replication's replay_lag and the bytes not yet replayed. */
async function postgresLagSampler(cluster: ReplicatedCluster) {
  // One connection for the whole series: a new one every 100 ms would fork a backend each time,
  // CPU that the split cannot put on any group.
  const client = new pg.Client({ connectionString: cluster.primary.url('postgres'), connectionTimeoutMillis: 3_000 });
  client.on('error', () => undefined);
  await client.connect();
  return new Sampler(
    async () => {
      const { rows } = await client.query<{ lag_ms: number | null; bytes: string | null }>(
        `select (extract(epoch from replay_lag) * 1000)::float8 as lag_ms,
                pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::text as bytes
           from pg_stat_replication where state = 'streaming' limit 1`,
      );
      const row = rows[0];
      return row ? { lag_ms: row.lag_ms, bytes: row.bytes === null ? null : Number(row.bytes) } : null;
    },
    () => client.end().catch(() => undefined),
  );
}

function postgresLagSummary(s: Awaited<ReturnType<typeof postgresLagSampler>>) {
  // replay_lag is NULL once the replica has caught up and no WAL is flowing: no lag.
  return {
    samples: s.samples.length,
    null_replay_lag: s.samples.filter((x) => x.lag_ms === null).length,
    replay_lag_ms: distribution(s.samples.map((x) => round(x.lag_ms ?? 0, 1))),
    replay_bytes: distribution(s.samples.flatMap((x) => (x.bytes === null ? [] : [x.bytes]))),
  };
}

function replicaStatusSummary(samples: readonly ReplicaSample[], failures: number) {
  const states: Record<string, number> = {};
  for (const x of samples) states[x.state] = (states[x.state] ?? 0) + 1;
  const known = (pick: (x: ReplicaSample) => number | null) => samples.flatMap((x) => (pick(x) === null ? [] : [pick(x) as number]));
  return {
    samples: samples.length,
    failed_samples: failures,
    // The router checks every DATABANK_REPLICA_CHECK_MS; sampling twice as often sees each check about twice.
    distinct_checks: new Set(samples.map((x) => x.checked_at)).size,
    in_rotation_share: samples.length === 0 ? null : round((states.in_rotation ?? 0) / samples.length, 4),
    states,
    lag_ms: distribution(known((x) => x.lag_ms)),
    lag_bytes: distribution(known((x) => x.lag_bytes)),
  };
}

// ---------------------------------------------------------------------------------------------
// Setup.

interface Seeded {
  readonly accounts: number[];
  /** An admin key that never writes: no read-your-writes window pins its reads to the primary. */
  readonly readerKey: string;
  readonly adminKey: string;
}

async function seed(bank: Databank): Promise<Seeded> {
  progress(`opening ${CUSTOMERS} customers x ${ACCOUNTS_PER_CUSTOMER} accounts, ${OPENING_BALANCE} deposited in each`);
  const perCustomer = await inParallel(Array.from({ length: CUSTOMERS }, (_, i) => i + 1), 4, async (n) => {
    const owner = await bank.api<{ id: number }>('POST', '/customers', { name: `Replica Bench ${n}`, date_of_birth: '1975-05-05' });
    const opened: number[] = [];
    for (let k = 0; k < ACCOUNTS_PER_CUSTOMER; k++) {
      const { account_id } = await bank.api<{ account_id: number }>('POST', `/customers/${owner.id}/accounts`, { account_type: 'savings' });
      await bank.api('POST', `/accounts/${account_id}/deposits`, { amount: OPENING_BALANCE });
      opened.push(account_id);
    }
    return opened;
  });
  const accounts = perCustomer.flat().sort((a, b) => a - b);
  progress(`${PREFILL_TRANSFERS} transfers first, so that every account has more than ${PAGE} entries`);
  const pick = transferPicker(accounts, 'prefill');
  await inParallel(Array.from({ length: PREFILL_TRANSFERS }, (_, i) => i), 8, () => {
    const spec = pick();
    return bank.api('POST', spec.path, spec.body);
  });
  const reader = await bank.api<{ key: string }>('POST', '/api-keys', { role: 'admin' });
  return { accounts, readerKey: reader.key, adminKey: bank.adminKey };
}

/** Transfers of 1 between two distinct random accounts, each with an Idempotency-Key of its own. */
function transferPicker(accounts: readonly number[], tag: string) {
  let n = 0;
  const any = () => accounts[Math.floor(Math.random() * accounts.length)] as number;
  return () => {
    const from = any();
    let to = any();
    while (to === from) to = any();
    n++;
    return {
      method: 'POST' as const,
      path: '/transfers',
      body: { from_account_id: from, to_account_id: to, amount: 1 },
      // Printable ASCII without spaces, as the header's schema wants.
      headers: { 'idempotency-key': `bench-replicas-${process.pid}-${tag.replace(/[^A-Za-z0-9]+/g, '-')}-${n}` },
    };
  };
}

function transferLoad(bank: Databank, seeded: Seeded, tag: string, warmupMs: number, durationMs: number): Promise<LoadResult> {
  return runLoad({
    port: bank.port,
    clients: TRANSFER_CLIENTS,
    ratePerS: TRANSFER_RATE,
    warmupMs,
    durationMs,
    expect: 201,
    headers: { authorization: `Bearer ${seeded.adminKey}` },
    next: transferPicker(seeded.accounts, tag),
    keepLatencies: true,
  });
}

// ---------------------------------------------------------------------------------------------
// The slices. On these shared machines the work a core does in a second can drift by tens of
// percent within a minute, so each configuration is measured in short slices that alternate with
// the others (ABBA…), with both databank processes alive all along, and the slices are summed.

type Side = 'primary' | 'replica';
type PgbenchVariant = 'pgPrimary' | 'pgReplica' | 'pgSplit';

const DATABANK_ORDER: readonly Side[] = ['primary', 'replica', 'replica', 'primary'];
const PGBENCH_ORDER: readonly PgbenchVariant[] = ['pgPrimary', 'pgReplica', 'pgSplit', 'pgSplit', 'pgReplica', 'pgPrimary'];
/** Rounds of each order: databank 3 × ABBA (6 slices a side), pgbench 2 × PRSSRP (4 slices a variant). */
const DATABANK_ROUNDS = 3;
const PGBENCH_ROUNDS = 2;

/** Sums of one configuration over its slices. */
class Tally {
  readonly slices: { rate: number; p50: number | null; p99: number | null }[] = [];
  readonly latencies: number[] = [];
  ok = 0;
  seconds = 0;
  /** For pgbench: mean latency × transactions, summed. */
  latencyTotal = 0;
  readonly nonOk: Record<string, number> = {};
  private readonly coreSeconds: Record<string, number> = {};
  private cpuSeconds = 0;

  add(slice: { rate: number; ok: number; seconds: number; p50?: number | null; p99?: number | null; nonOk?: Record<string, number>; cpu?: CpuSplit }): void {
    this.slices.push({ rate: slice.rate, p50: slice.p50 ?? null, p99: slice.p99 ?? null });
    this.ok += slice.ok;
    this.seconds += slice.seconds;
    for (const [k, n] of Object.entries(slice.nonOk ?? {})) this.nonOk[k] = (this.nonOk[k] ?? 0) + n;
    if (slice.cpu && Object.keys(slice.cpu).length > 0) {
      for (const [g, c] of Object.entries(slice.cpu)) this.coreSeconds[g] = (this.coreSeconds[g] ?? 0) + c * slice.seconds;
      this.cpuSeconds += slice.seconds;
    }
  }

  get rate(): number {
    return this.seconds > 0 ? round(this.ok / this.seconds) : 0;
  }

  cores(): CpuSplit {
    return Object.fromEntries(Object.entries(this.coreSeconds).map(([g, c]) => [g, round(c / Math.max(1, this.cpuSeconds), 2)]));
  }

  /** p50/p99 over every slice's answers; mean from them, or from pgbench's means. */
  latency(): Series['latency_ms'] {
    if (this.latencies.length === 0) return { mean: this.ok > 0 ? round(this.latencyTotal / this.ok, 3) : Number.NaN, p50: null, p99: null };
    const sorted = Float64Array.from(this.latencies).sort();
    const at = (p: number) => round(sorted[Math.min(sorted.length - 1, Math.ceil(p * sorted.length) - 1)] ?? Number.NaN, 3);
    return { mean: round(this.latencies.reduce((a, b) => a + b, 0) / this.latencies.length, 3), p50: at(0.5), p99: at(0.99) };
  }

  series(name: string, unit: string, clients: number, busyBefore: number, extra: Partial<Series> = {}): Series {
    return {
      name,
      clients,
      rate: this.rate,
      unit,
      latency_ms: this.latency(),
      ok: this.ok,
      non_ok: this.nonOk,
      cpu_cores: this.cores(),
      seconds: this.seconds,
      busy_before: busyBefore,
      ...extra,
    };
  }
}

function addCounts(into: Record<string, number>, more: Record<string, number>): void {
  for (const [k, n] of Object.entries(more)) into[k] = (into[k] ?? 0) + n;
}

/**
 * What the client backends of the benchmark's database do on each server (pg_stat_activity every
 * 50 ms in the windows): running, waiting (a lock, the WAL flush of a commit), idle, or idle in a
 * transaction while the application holds it. Keys are prefixed with the server.
 */
async function backendSampler(cluster: ReplicatedCluster) {
  const servers = [
    ['primary', await WaitSampler.open(cluster.primary.url('postgres'), DATABASE)],
    ['replica', await WaitSampler.open(cluster.replica.url('postgres'), DATABASE)],
  ] as const;
  return {
    begin: () => servers.forEach(([, w]) => w.begin()),
    end: () => servers.forEach(([, w]) => w.end()),
    result: () => Object.fromEntries(servers.flatMap(([name, w]) => Object.entries(w.result()).map(([state, n]) => [`${name}: ${state}`, n]))),
    close: () => Promise.all(servers.map(([, w]) => w.close())),
  };
}

/** The samplers of one configuration, begun and ended with each of its windows. */
async function samplers(cluster: ReplicatedCluster, status: Sampler<ReplicaSample> | null) {
  const lag = await postgresLagSampler(cluster);
  const backends = await backendSampler(cluster);
  return {
    lag,
    backends,
    status,
    begin() {
      lag.begin();
      backends.begin();
      status?.begin();
    },
    end() {
      lag.end();
      backends.end();
      status?.end();
    },
    close: async () => {
      await Promise.all([lag.close(), backends.close(), status?.close()]);
    },
  };
}

type Samplers = Awaited<ReturnType<typeof samplers>>;

interface DatabankSide {
  readonly key: Side;
  readonly name: string;
  readonly bank: Databank;
  readonly reads: Tally;
  readonly transfers: Tally;
  readonly readsFrom: Record<string, number>;
  readonly dbReads: Record<string, number>;
  readonly sampling: Samplers;
  sqlSeen: string | null;
}

interface PgbenchSide {
  readonly key: PgbenchVariant;
  readonly name: string;
  readonly reads: Tally;
  readonly transfers: Tally;
  readonly sampling: Samplers;
}

interface Run {
  readonly timing: Timing;
  readonly cluster: ReplicatedCluster;
  readonly seeded: Seeded;
  readonly banks: Record<Side, Databank>;
  /** 201 answers over the whole run, warm-ups included, to reconcile with the ledger. */
  answered: number;
}

function cpuGroups(run: Run, serving: Databank, extra: CpuGroups = {}): CpuGroups {
  const other = serving === run.banks.primary ? run.banks.replica : run.banks.primary;
  return {
    'load generator': () => [process.pid],
    ...extra,
    databank: () => [serving.child.pid],
    'databank, idle twin': () => [other.child.pid],
    primary: () => run.cluster.primary.pids(),
    replica: () => run.cluster.replica.pids(),
  };
}

function transferSlice(t: LoadResult): Parameters<Tally['add']>[0] {
  return { rate: t.ops_per_s, ok: t.ok, seconds: t.seconds, p50: t.latency_ms.p50, p99: t.latency_ms.p99, nonOk: t.non_ok };
}

/** One slice of a databank configuration: 32 readers of GET /accounts/:id/entries beside the steady transfers. */
async function databankSlice(run: Run, side: DatabankSide, n: number): Promise<void> {
  const { timing, seeded } = run;
  const marks: { before?: Promise<Record<string, number>>; after?: Promise<Record<string, number>> } = {};
  const window = {
    begin() {
      side.sampling.begin();
      marks.before = readCounts(side.bank);
    },
    end() {
      side.sampling.end();
      marks.after ??= readCounts(side.bank);
    },
  };
  if (side.sqlSeen === null) {
    // What the route's SELECT looks like on the server, to hold the pgbench script to it.
    void sleep(timing.warmupS * 1000 + 500)
      .then(() =>
        query<{ query: string }>(
          run.cluster[side.key].url('postgres'),
          `select query from pg_stat_activity where datname = $1 and query like '%"ledger_entries"%' limit 1`,
          [DATABASE],
        ),
      )
      .then((rows) => (side.sqlSeen ??= rows[0]?.query ?? null), () => undefined);
  }
  const ids = seeded.accounts;
  const [r, t] = await Promise.all([
    runLoad({
      port: side.bank.port,
      clients: READERS,
      warmupMs: timing.warmupS * 1000,
      durationMs: timing.durationS * 1000,
      expect: 200,
      headers: { authorization: `Bearer ${seeded.readerKey}` },
      next: () => ({ method: 'GET', path: `/accounts/${ids[Math.floor(Math.random() * ids.length)]}/entries?limit=${PAGE}` }),
      cpu: cpuGroups(run, side.bank),
      countHeader: 'x-databank-read-from',
      keepLatencies: true,
      window,
    }),
    transferLoad(side.bank, seeded, `${side.key}-${n}`, timing.warmupS * 1000, timing.durationS * 1000),
  ]);
  side.reads.add({ rate: r.ops_per_s, ok: r.ok, seconds: r.seconds, p50: r.latency_ms.p50, p99: r.latency_ms.p99, nonOk: r.non_ok, cpu: r.cpu_cores });
  side.reads.latencies.push(...(r.latencies_ms ?? []));
  side.transfers.add(transferSlice(t));
  side.transfers.latencies.push(...(t.latencies_ms ?? []));
  addCounts(side.readsFrom, r.header_counts?.measured ?? {});
  if (marks.before && marks.after) addCounts(side.dbReads, difference(await marks.after, await marks.before));
  run.answered += t.ok_total;
  progress(`  ${side.name} #${n}: ${r.ops_per_s} reads/s (p50 ${r.latency_ms.p50} ms, p99 ${r.latency_ms.p99} ms); ${t.ops_per_s} transfers/s`);
}

/**
 * One slice of a pgbench configuration: the route's SELECT (prepared, like databank's named
 * statements) at 32 clients on the primary, on the replica, or 16 on each (two processes), after
 * `--warmup` seconds of the transfers alone; the transfers go on until pgbench is done.
 */
async function pgbenchSlice(run: Run, side: PgbenchSide, script: readonly string[], n: number): Promise<void> {
  const { timing, cluster, seeded } = run;
  const seconds = timing.durationS + 1;
  const transfers = transferLoad(run.banks.primary, seeded, `${side.key}-${n}`, timing.warmupS * 1000, seconds * 1000 + 500);
  await sleep(timing.warmupS * 1000);
  const targets =
    side.key === 'pgSplit'
      ? [
          { url: cluster.primary.url(DATABASE), clients: READERS / 2, threads: 1 },
          { url: cluster.replica.url(DATABASE), clients: READERS / 2, threads: 1 },
        ]
      : [{ url: cluster[side.key === 'pgPrimary' ? 'primary' : 'replica'].url(DATABASE), clients: READERS, threads: 2 }];
  const runs: PgbenchResult[] = await Promise.all(
    targets.map((target, i) =>
      pgbenchRun(target.url, {
        clients: target.clients,
        threads: target.threads,
        seconds,
        script,
        // The first process reads the CPU of every group (the other pgbench too) and opens the window.
        ...(i === 0
          ? { cpu: () => cpuGroups(run, run.banks.primary, { pgbench: () => pidsNamed('pgbench') }), window: side.sampling }
          : {}),
      }),
    ),
  );
  const t = await transfers;
  const tps = runs.reduce((a, r) => a + r.tps, 0);
  const failed = runs.reduce((a, r) => a + r.failed, 0);
  side.reads.add({
    rate: round(tps),
    // pgbench's tps leaves out the time to connect: the rate × the run's seconds, not its count.
    ok: tps * seconds,
    seconds,
    nonOk: failed > 0 ? { failed } : {},
    cpu: (runs[0] as PgbenchResult).cpu_cores,
  });
  side.reads.latencyTotal += runs.reduce((a, r) => a + r.latency_avg_ms * r.tps * seconds, 0);
  side.transfers.add(transferSlice(t));
  side.transfers.latencies.push(...(t.latencies_ms ?? []));
  run.answered += t.ok_total;
  progress(`  ${side.name} #${n}: ${round(tps)} reads/s (${runs.map((r) => round(r.tps)).join(' + ')}); ${t.ops_per_s} transfers/s`);
}

/** The pgbench script: the route's SELECT on a random account of the benchmark, with the route's page size + 1. */
function writeScript(accounts: readonly number[]): { args: string[]; remove: () => Promise<void> } {
  const lo = accounts[0] as number;
  const hi = accounts[accounts.length - 1] as number;
  if (hi - lo + 1 !== accounts.length) throw new BenchError(`the benchmark's account ids are not consecutive (${lo}..${hi}, ${accounts.length} accounts)`);
  const dir = mkdtempSync(join(tmpdir(), 'databank-bench-pgbench-'));
  const remove = onCleanup(async () => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'entries.sql');
  writeFileSync(file, `\\set aid random(${lo}, ${hi})\n\\set lim ${PAGE + 1}\n${ENTRIES_SQL.replace('$1', ':aid').replace('$2', ':lim')};\n`);
  return { args: ['-f', file, '-M', 'prepared'], remove };
}

/** After the load: the money, on both servers (the replica caught up first). */
async function moneyCheck(cluster: ReplicatedCluster, accounts: number, transfersAnswered: number) {
  const totals = (url: string) =>
    query<Record<string, string>>(
      url,
      `select (select coalesce(sum(balance), 0) from accounts)::text as balances,
              (select coalesce(sum(amount), 0) from ledger_entries)::text as ledger_sum,
              (select count(*) from ledger_entries)::text as entries,
              (select count(*) from ledger_transactions where kind = 'transfer')::text as transfers`,
    ).then((rows) => Object.fromEntries(Object.entries(rows[0] ?? {}).map(([k, v]) => [k, Number(v)])));
  await cluster.waitForReplay();
  const primary = await totals(cluster.primary.url(DATABASE));
  const replica = await totals(cluster.replica.url(DATABASE));
  const deposited = accounts * OPENING_BALANCE;
  return {
    total_deposited: deposited,
    primary,
    replica,
    transfers_answered_201: transfersAnswered,
    holds: primary.balances === deposited && primary.ledger_sum === 0 && primary.transfers === transfersAnswered,
    replica_matches_primary: JSON.stringify(primary) === JSON.stringify(replica),
  };
}

// ---------------------------------------------------------------------------------------------
// The result.

/** The share of backend samples (both servers) that found a backend idle; null without samples. */
function idleShare(series: readonly Series[]): number | null {
  let idle = 0;
  let all = 0;
  for (const s of series) {
    for (const [state, n] of Object.entries(s.db_backends ?? {})) {
      all += n;
      if (state.endsWith(': idle')) idle += n;
    }
  }
  return all > 0 ? idle / all : null;
}

/** Share of the answers marked X-Databank-Read-From: replica. */
function servedShare(counts: Record<string, number>): string {
  const total = Object.values(counts).reduce((a, b) => a + b, 0);
  return total > 0 ? `${round(((counts.replica ?? 0) / total) * 100, 1)}%` : 'n/a';
}

/** Each round's ratio of one configuration's slice to another's, and their spread. */
function roundRatios(top: Tally, bottom: Tally) {
  const each = top.slices.map((s, i) => {
    const b = bottom.slices[i]?.rate ?? 0;
    return b > 0 ? round(s.rate / b, 3) : null;
  });
  const known = each.filter((x): x is number => x !== null).sort((a, b) => a - b);
  return { each, min: known[0] ?? null, median: known[Math.floor((known.length - 1) / 2)] ?? null, max: known[known.length - 1] ?? null };
}

function notes(
  timing: Timing,
  series: readonly Series[],
  cpuCount: number,
  d: Record<Side, DatabankSide>,
  p: Record<PgbenchVariant, PgbenchSide>,
): string[] {
  const pairs = roundRatios(d.replica.reads, d.primary.reads);
  const pgTransfers = Object.values(p).map((x) => x.transfers.rate);
  const out = [
    `Each databank read is GET /accounts/:id/entries?limit=${PAGE} by a second admin key that never writes (no read-your-writes window pins it to the primary): the account check comes from the in-process cache (a transfer invalidates both of its accounts, and the next read fills the cache from the primary, as every cache fill does), then the page is one SELECT on \`reader\`, which routes it to the replica while the replica is within DATABANK_MAX_REPLICA_LAG_MS (${MAX_LAG_MS} ms, checked every ${CHECK_MS} ms). Where the reads went is counted twice: X-Databank-Read-From on every answer, and databank_db_reads_total from /metrics over each window.`,
    `Two databank processes run side by side for the whole measurement, one with DATABASE_REPLICA_URLS empty (A) and one with the replica (B), the same settings otherwise; the load goes to one at a time, in slices of ${timing.warmupS} s warm-up + ${timing.durationS} s measured in the order ${'ABBA'.repeat(DATABANK_ROUNDS)}, then pgbench in ${'PRSSRP'.repeat(PGBENCH_ROUNDS)}. On these shared machines the work a core does in a second can drift by tens of percent within a minute (CPU per request rising and falling while nothing else runs); alternating short slices makes that drift weigh on every side alike. Each rate is over all the slices of its configuration; the per-round replica/primary ratios were ${pairs.each.map((x) => (x === null ? '-' : x.toFixed(2))).join(', ')} (checks.databank_ratio_by_round): read the overall ratio with that spread. The idle twin keeps its pool, its worker and (B) its replica checks, and follows the event stream that keeps every serving process's in-process cache fresh (the "databank, idle twin" CPU), so both configurations run in the same surroundings.`,
    `The background load is ${TRANSFER_RATE} POST /transfers a second on a fixed schedule from ${TRANSFER_CLIENTS} clients, each transfer with its own Idempotency-Key, through the databank process being measured (for pgbench, process A). It reached ${d.primary.transfers.rate} and ${d.replica.transfers.rate}/s in the databank slices; beside pgbench, which keeps both cores busy, databank got less CPU and the same schedule reached ${pgTransfers.map((x) => round(x, 0)).join(', ')}/s (the pgbench configurations compare with each other at that load). The transfers' CPU is inside each split, so checks.cpu_us_per_read includes their share.`,
    'pgbench runs the same SELECT (`-M prepared`, as databank sends named prepared statements) on a random account of the benchmark; it needs no account check, no HTTP and no JSON, so it is the ceiling of the servers on this machine. "split 16+16" is two pgbench processes, 16 clients each, one on the primary and one on the replica; databank sends every eligible read to the replica instead (the primary is not in the read rotation), which "pgbench reads, replica" mirrors.',
    'Everything runs on this one machine: the primary, the replica, databank, pgbench and the load generator share its 2 cores. A replica here adds no CPU, so routing can only move work from one PostgreSQL to the other (and take the reads away from the primary\'s buffers and locks shared with the writes); scale-out needs the replica on another machine. The ratios say what routing costs or saves here, not what a second server would give.',
    'Lag: checks.replica_status is GET /replicas of process B sampled every 100 ms in its slices. Its lag_ms is databank\'s own staleness measure: 0 when the replica had replayed the primary\'s WAL position read at the same check, otherwise the time since the newest primary position (read at an earlier check) that it had replayed, so it moves in steps of the check interval; lag_bytes is the WAL not yet replayed at the check. checks.postgres_replay_lag is PostgreSQL\'s own view from pg_stat_replication on the primary (replay_lag, which the replica reports at least every wal_receiver_status_interval = 1 s, and the bytes from the primary\'s WAL position to the replay position), sampled every 100 ms in every slice.',
  ];
  const idle = idleShare([d.primary, d.replica].map((x) => series.find((s) => s.name === x.name)).filter((s): s is Series => s !== undefined));
  if (idle !== null) {
    const share = `In the databank slices the PostgreSQL client backends of the benchmark database were idle in ${round(idle * 100, 0)}% of the samples (db_backends)`;
    out.push(idle >= 0.8 ? `${share}: the servers wait for databank, whose one event loop, with the CPU the machine leaves it, sets the read rate.` : `${share}.`);
  }
  const [sa, sb] = [d.primary, d.replica].map((x) => series.find((s) => s.name === x.name));
  if (sa && sb) {
    const [ca, cb] = [sa, sb].map((s) => cpuPerRequest(s, ['databank', 'primary', 'replica']));
    if (ca && cb && ca.databank && cb.databank && ca.total && cb.total) {
      out.push(
        `CPU per read (the transfers' share included): databank ${ca.databank} µs in A, ${cb.databank} µs in B (${cb.databank >= ca.databank ? '+' : ''}${round((cb.databank / ca.databank - 1) * 100, 0)}%); all serving processes ${ca.total} µs and ${cb.total} µs. Where one Node process is the limit, its CPU per request sets the rate.`,
      );
    }
  }
  for (const s of series) {
    const limits = cpuLimits(s.cpu_cores, cpuCount, ['primary', 'replica', 'pgbench']);
    if (limits) out.push(`${s.name}: CPU ${limits.parts}${limits.verdicts.length > 0 ? `; ${limits.verdicts.join('; ')}` : ''}.`);
  }
  out.push(`Answers marked X-Databank-Read-From: replica: ${servedShare(d.primary.readsFrom)} from process A, ${servedShare(d.replica.readsFrom)} from process B.`);
  return out;
}

async function run(timing: Timing): Promise<BenchResult> {
  progress('making a throwaway primary and a streaming replica (initdb, pg_basebackup)');
  const cluster = await startReplicatedCluster(CLUSTER_SETTINGS);
  let version: string | null = null;
  let money: Awaited<ReturnType<typeof moneyCheck>> | null = null;
  let d: Record<Side, DatabankSide> | null = null;
  let p: Record<PgbenchVariant, PgbenchSide> | null = null;
  const busy = { databank: 0, pgbench: 0 };
  let accounts = 0;
  const opened: Samplers[] = [];
  const banks: Databank[] = [];
  try {
    version = (await query<{ v: string }>(cluster.primary.url('postgres'), "select current_setting('server_version') as v"))[0]?.v ?? null;
    progress(`PostgreSQL ${version}: primary on port ${cluster.primary.port}, replica on port ${cluster.replica.port}; databank from ${DATABANK_DIR}`);
    await query(cluster.primary.url('postgres'), `create database ${DATABASE}`);
    const start = async (side: Side, adminKey?: string) => {
      progress(
        side === 'primary'
          ? `starting databank A: DATABASE_URL = the primary, DATABASE_REPLICA_URLS empty (DATABASE_POOL_MAX=${POOL_MAX})`
          : `starting databank B: DATABASE_REPLICA_URLS = the replica (the same pool size, ${POOL_MAX}, on each server)`,
      );
      const env: Record<string, string> =
        side === 'primary'
          ? { DATABASE_REPLICA_URLS: '' }
          : {
              DATABASE_REPLICA_URLS: cluster.replica.url(DATABASE),
              DATABANK_MAX_REPLICA_LAG_MS: String(MAX_LAG_MS),
              DATABANK_REPLICA_CHECK_MS: String(CHECK_MS),
            };
      const bank = await startDatabank({ databaseUrl: cluster.primary.url(DATABASE), poolMax: POOL_MAX, env, ...(adminKey ? { adminKey } : {}) });
      banks.push(bank);
      return bank;
    };
    const bankA = await start('primary');
    const seeded = await seed(bankA);
    accounts = seeded.accounts.length;
    const bankB = await start('replica', seeded.adminKey);
    const state: Run = { timing, cluster, seeded, banks: { primary: bankA, replica: bankB }, answered: PREFILL_TRANSFERS };
    const sampling = async (status: Sampler<ReplicaSample> | null) => {
      const s = await samplers(cluster, status);
      opened.push(s);
      return s;
    };
    const replicaStatus = new Sampler<ReplicaSample>(async () => {
      const body = JSON.parse(await getText(bankB.port, '/replicas', seeded.adminKey)) as { replicas: ReplicaSample[] };
      const r = body.replicas[0];
      return r ? { state: r.state, lag_ms: r.lag_ms, lag_bytes: r.lag_bytes, checked_at: r.checked_at } : null;
    });
    const databankSide = async (key: Side, bank: Databank): Promise<DatabankSide> => ({
      key,
      name: NAMES[key],
      bank,
      reads: new Tally(),
      transfers: new Tally(),
      readsFrom: {},
      dbReads: {},
      sampling: await sampling(key === 'replica' ? replicaStatus : null),
      sqlSeen: null,
    });
    d = { primary: await databankSide('primary', bankA), replica: await databankSide('replica', bankB) };

    await cluster.waitForReplay();
    busy.databank = await settle();
    progress(
      `databank: ${READERS} readers + ${TRANSFER_RATE} transfers/s, slices of ${timing.warmupS}s warm-up + ${timing.durationS}s measured, ${'ABBA'.repeat(DATABANK_ROUNDS)}`,
    );
    const count: Partial<Record<Side | PgbenchVariant, number>> = {};
    for (let round = 0; round < DATABANK_ROUNDS; round++) {
      for (const key of DATABANK_ORDER) {
        count[key] = (count[key] ?? 0) + 1;
        await databankSlice(state, d[key], count[key]);
      }
    }

    const pgSide = async (key: PgbenchVariant): Promise<PgbenchSide> => ({
      key,
      name: NAMES[key],
      reads: new Tally(),
      transfers: new Tally(),
      sampling: await sampling(null),
    });
    p = { pgPrimary: await pgSide('pgPrimary'), pgReplica: await pgSide('pgReplica'), pgSplit: await pgSide('pgSplit') };
    const script = writeScript(seeded.accounts);
    try {
      await cluster.waitForReplay();
      busy.pgbench = await settle();
      progress(
        `pgbench: ${READERS} clients + ${TRANSFER_RATE} transfers/s (through databank A), slices of ${timing.warmupS}s of transfers + ${timing.durationS + 1}s of pgbench, ${'PRSSRP'.repeat(PGBENCH_ROUNDS)}`,
      );
      for (let round = 0; round < PGBENCH_ROUNDS; round++) {
        for (const key of PGBENCH_ORDER) {
          count[key] = (count[key] ?? 0) + 1;
          await pgbenchSlice(state, p[key], script.args, count[key]);
        }
      }
    } finally {
      await script.remove();
    }
    for (const bank of banks.splice(0)) await bank.stop();
    progress('checking the money on the primary and on the replica');
    money = await moneyCheck(cluster, accounts, state.answered);
    progress(`  conservation ${money.holds ? 'holds' : 'BROKEN'}; the replica ${money.replica_matches_primary ? 'matches' : 'DIFFERS FROM'} the primary`);
  } finally {
    for (const s of opened) await s.close().catch(() => undefined);
    for (const bank of banks) await bank.stop();
    sideAgent.destroy();
    progress('stopping the primary and the replica');
    await cluster.stop();
  }
  if (!d || !p) throw new BenchError('the run ended before measuring');

  const dSides = [d.primary, d.replica];
  const pSides = [p.pgPrimary, p.pgReplica, p.pgSplit];
  const series: Series[] = [
    ...dSides.map((s) => s.reads.series(s.name, 'reads/s', READERS, busy.databank, { db_backends: s.sampling.backends.result() })),
    ...pSides.map((s) => s.reads.series(s.name, 'reads/s', READERS, busy.pgbench, { db_backends: s.sampling.backends.result() })),
  ];
  const rateOf = (name: string) => series.find((s) => s.name === name)?.rate ?? 0;
  const normalise = (q: string | null) => (q === null ? null : q.replace(/\s+/g, ' ').trim());
  const seen = normalise(d.primary.sqlSeen) ?? normalise(d.replica.sqlSeen);
  const cpuCount = machineInfo(version).cpu_count;
  const slices = (sides: readonly (DatabankSide | PgbenchSide)[]) =>
    Object.fromEntries(
      sides.map((s) => [
        s.name,
        s.reads.slices.map((x, i) => ({ reads_per_s: x.rate, p50_ms: x.p50, p99_ms: x.p99, transfers_per_s: s.transfers.slices[i]?.rate ?? null })),
      ]),
    );
  return {
    benchmark: 'replicas',
    description:
      'GET /accounts/:id/entries at 32 clients through databank with reads on the primary only vs routed to one streaming replica, under a steady transfer load; beside pgbench running the same SELECT on the primary, the replica, and split over both',
    machine: machineInfo(version),
    settings: {
      readers: READERS,
      warmup_s_per_slice: timing.warmupS,
      duration_s_per_slice: timing.durationS,
      order: { databank: 'ABBA'.repeat(DATABANK_ROUNDS), pgbench: 'PRSSRP'.repeat(PGBENCH_ROUNDS) },
      accounts,
      page: PAGE,
      prefill_transfers: PREFILL_TRANSFERS,
      background_transfers: { per_s: TRANSFER_RATE, clients: TRANSFER_CLIENTS, idempotency_keys: true },
      database_pool_max: POOL_MAX,
      databank_replica_settings: { DATABANK_MAX_REPLICA_LAG_MS: MAX_LAG_MS, DATABANK_REPLICA_CHECK_MS: CHECK_MS },
      clusters: {
        made_by: 'initdb + pg_basebackup -R -X stream -C -S (a physical slot); asynchronous streaming, hot_standby_feedback = on',
        settings: CLUSTER_SETTINGS,
      },
      pgbench: `-n -M prepared -f <the route's SELECT> -T ${timing.durationS + 1}; 32 clients -j 2 on one server, or two processes of 16 clients -j 1`,
      databank_revision: databankRevision(),
      load_generator: 'node:http Agent, keep-alive, one socket per client, in the benchmark process (readers closed-loop, transfers on a fixed schedule)',
    },
    series,
    ratios: [
      ratio('databank reads: replica / primary only', READERS, rateOf(NAMES.replica), rateOf(NAMES.primary), null),
      ratio('pgbench reads: replica / primary', READERS, rateOf(NAMES.pgReplica), rateOf(NAMES.pgPrimary), null),
      ratio('pgbench reads: split 16+16 / primary', READERS, rateOf(NAMES.pgSplit), rateOf(NAMES.pgPrimary), null),
      ratio('databank / pgbench, primary only', READERS, rateOf(NAMES.primary), rateOf(NAMES.pgPrimary), null),
      ratio('databank / pgbench, on the replica', READERS, rateOf(NAMES.replica), rateOf(NAMES.pgReplica), null),
    ],
    checks: {
      databank_ratio_by_round: roundRatios(d.replica.reads, d.primary.reads),
      pgbench_ratio_by_round: {
        'replica / primary': roundRatios(p.pgReplica.reads, p.pgPrimary.reads),
        'split / primary': roundRatios(p.pgSplit.reads, p.pgPrimary.reads),
      },
      slices: { ...slices(dSides), ...slices(pSides) },
      replica_status: replicaStatusSummary(d.replica.sampling.status?.samples ?? [], d.replica.sampling.status?.failures ?? 0),
      postgres_replay_lag: Object.fromEntries([...dSides, ...pSides].map((s) => [s.name, postgresLagSummary(s.sampling.lag)])),
      reads_served: Object.fromEntries(dSides.map((s) => [s.name, { x_databank_read_from: s.readsFrom, databank_db_reads_total: s.dbReads }])),
      background_transfers: Object.fromEntries(
        [...dSides, ...pSides].map((s) => {
          const l = s.transfers.latency();
          return [s.name, { target_per_s: TRANSFER_RATE, achieved_per_s: s.transfers.rate, latency_ms: l, non_ok: s.transfers.nonOk }];
        }),
      ),
      cpu_us_per_read: Object.fromEntries(
        series.map((s) => [s.name, cpuPerRequest(s, s.name.startsWith('pgbench') ? ['pgbench', 'primary', 'replica'] : ['databank', 'primary', 'replica'])]),
      ),
      entries_sql: { pgbench_script: ENTRIES_SQL, seen_from_databank: seen, same: seen === ENTRIES_SQL },
      money,
    },
    notes: notes(timing, series, cpuCount, d, p),
    warnings: [
      ...noiseWarnings(series),
      ...dSides
        .filter((s) => s.transfers.rate < 0.9 * TRANSFER_RATE)
        .map((s) => `${s.name}: ${s.transfers.rate} transfers/s beside it, short of the ${TRANSFER_RATE}/s asked for: the two databank configurations did not run beside the same load`),
    ],
  };
}

export const replicas: Benchmark = {
  name: 'replicas',
  description: `GET /accounts/:id/entries, reads on the primary vs one streaming replica, under ${TRANSFER_RATE} transfers/s; vs pgbench on each; 32 clients`,
  defaults: { warmupS: 2, durationS: 5 },
  run,
};
