import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Benchmark, Timing } from './lib/benchmark.ts';
import { freePort, startChild, waitForHttp } from './lib/child.ts';
import { postgresPids, settle, type CpuGroups } from './lib/cpu.ts';
import { childEnv, databankRevision, DATABANK_DIR, inParallel, startDatabank } from './lib/databank.ts';
import { runLoad, type LoadResult } from './lib/load.ts';
import { progress } from './lib/log.ts';
import { adminUrl, createDatabase, redact, serverVersion, type TempDatabase } from './lib/postgres.ts';
import { loadSeries, machineInfo, noiseWarnings, ratio, type BenchResult, type Series } from './lib/report.ts';

const CLIENTS = 32;
const CUSTOMERS = 100;
/** Same pool as the transfers benchmark: one connection per client. */
const POOL_MAX = 32;
const HERE = dirname(fileURLToPath(import.meta.url));

function randomCustomer(ids: readonly number[]) {
  return () => ({ method: 'GET' as const, path: `/customers/${ids[Math.floor(Math.random() * ids.length)]}` });
}

function toSeries(name: string, r: LoadResult, busyBefore: number): Series {
  return loadSeries(name, 'requests/s', r, busyBefore);
}

function load(timing: Timing, port: number, next: () => { method: 'GET'; path: string }, cpu: CpuGroups, key?: string) {
  return runLoad({
    port,
    clients: CLIENTS,
    warmupMs: timing.warmupS * 1000,
    durationMs: timing.durationS * 1000,
    expect: 200,
    headers: key ? { authorization: `Bearer ${key}` } : {},
    next,
    cpu,
  });
}

/** GET /customers/:id through databank on one engine; each customer has an account with money in it. */
async function databankReads(timing: Timing, engine: 'pglite' | 'postgres', db: TempDatabase | null): Promise<Series> {
  progress(`starting databank on ${engine}${db ? ` (database ${db.name})` : ''}`);
  const bank = await startDatabank({ databaseUrl: db?.url ?? null, poolMax: POOL_MAX });
  try {
    progress(`creating ${CUSTOMERS} customers, each with a funded account`);
    const ids = await inParallel(Array.from({ length: CUSTOMERS }, (_, i) => i), 4, async (i) => {
      const c = await bank.api<{ id: number }>('POST', '/customers', { name: `Bench Customer ${i + 1}`, date_of_birth: '1980-01-01' });
      const a = await bank.api<{ account_id: number }>('POST', `/customers/${c.id}/accounts`, { account_type: 'checking' });
      await bank.api('POST', `/accounts/${a.account_id}/deposits`, { amount: 1000 + i });
      return c.id;
    });
    const busyBefore = await settle();
    progress(`databank (${engine}), ${CLIENTS} clients: ${timing.warmupS}s warm-up, then ${timing.durationS}s measured`);
    const cpu: CpuGroups = { 'load generator': () => [process.pid], databank: () => [bank.child.pid] };
    if (engine === 'postgres') cpu.postgres = postgresPids;
    const r = await load(timing, bank.port, randomCustomer(ids), cpu, bank.adminKey);
    progress(`  ${r.ops_per_s} requests/s, p50 ${r.latency_ms.p50} ms, p99 ${r.latency_ms.p99} ms`);
    return toSeries(`databank ${engine}`, r, busyBefore);
  } finally {
    await bank.stop();
  }
}

async function bareReads(timing: Timing): Promise<Series> {
  const port = await freePort();
  progress('starting the bare Fastify server');
  const child = startChild('bare fastify', process.execPath, ['--import', 'tsx', join(HERE, 'bare-server.ts')], {
    cwd: DATABANK_DIR,
    env: childEnv({ PORT: String(port) }),
  });
  try {
    await waitForHttp(child, port, '/readyz');
    const busyBefore = await settle();
    progress(`bare Fastify, ${CLIENTS} clients: ${timing.warmupS}s warm-up, then ${timing.durationS}s measured`);
    const ids = Array.from({ length: CUSTOMERS }, (_, i) => i + 1);
    const r = await load(timing, port, randomCustomer(ids), { 'load generator': () => [process.pid], 'bare fastify': () => [child.pid] });
    progress(`  ${r.ops_per_s} requests/s, p50 ${r.latency_ms.p50} ms, p99 ${r.latency_ms.p99} ms`);
    return toSeries('bare fastify', r, busyBefore);
  } finally {
    await child.stop();
  }
}

/** The load generator is one Node process: near a full core, it, not the server, sets the bare rate. */
function generatorBound(bare: Series): string[] {
  const cores = bare.cpu_cores['load generator'] ?? 0;
  return cores >= 0.85
    ? [
        `the load generator used ${cores.toFixed(2)} cores during the bare series: that rate is bounded by the ` +
          'client, so the true bare ceiling is higher and the ratios overstate databank',
      ]
    : [];
}

async function run(timing: Timing): Promise<BenchResult> {
  const url = adminUrl();
  const answer = await serverVersion(url);
  const version = 'version' in answer ? answer.version : null;
  progress(
    'version' in answer
      ? `PostgreSQL ${answer.version} at ${redact(url)}`
      : `PostgreSQL does not answer at ${redact(url)} (${answer.error}): PGlite only`,
  );
  const series: Series[] = [await databankReads(timing, 'pglite', null)];
  if (version) {
    const db = await createDatabase(url, `bench_reads_${process.pid}`);
    try {
      series.push(await databankReads(timing, 'postgres', db));
    } finally {
      await db.drop();
    }
  }
  const bare = await bareReads(timing);
  series.push(bare);
  return {
    benchmark: 'reads',
    description: 'GET /customers/:id through databank (PGlite, and PostgreSQL when reachable) against a bare Fastify route',
    machine: machineInfo(version),
    settings: {
      clients: CLIENTS,
      warmup_s: timing.warmupS,
      duration_s: timing.durationS,
      customers: CUSTOMERS,
      database_pool_max: POOL_MAX,
      databank_revision: databankRevision(),
      load_generator: 'node:http Agent, keep-alive, one socket per client, in the benchmark process',
    },
    series,
    ratios: series.filter((s) => s !== bare).map((s) => ratio(`${s.name} / bare fastify`, CLIENTS, s.rate, bare.rate, null)),
    checks: {},
    notes: [
      'databank does per request: bearer-key check (cached for 10 s), schema validation, one SELECT with a balance subquery, response serialisation, metrics and request-id hooks.',
      'PGlite is a single in-process connection: queries run one at a time on the event loop of the databank process.',
      ...generatorBound(bare),
    ],
    warnings: noiseWarnings(series),
  };
}

export const reads: Benchmark = {
  name: 'reads',
  description: 'GET /customers/:id through databank (PGlite; PostgreSQL when reachable) vs a bare Fastify route; 32 clients',
  defaults: { warmupS: 3, durationS: 10 },
  run,
};
