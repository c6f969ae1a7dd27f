import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Redis } from 'ioredis';
import type { Benchmark, Timing } from './lib/benchmark.ts';
import { freePort, startChild, waitForHttp } from './lib/child.ts';
import { onCleanup } from './lib/cleanup.ts';
import { between, type CpuGroups, cpuLimits, cpuPerRequest, type CpuSnapshot, pidsNamed, postgresPids, settle, snapshot } from './lib/cpu.ts';
import { childEnv, databankRevision, DATABANK_DIR, inParallel, startDatabank } from './lib/databank.ts';
import { runLoad, type LoadResult } from './lib/load.ts';
import { BenchError, progress, sleep } from './lib/log.ts';
import { adminUrl, createDatabase, redact, requireServer, type TempDatabase } from './lib/postgres.ts';
import { loadSeries, machineInfo, noiseWarnings, ratio, type BenchResult, type Series, type XCache } from './lib/report.ts';

const CLIENTS = 32;
const ACCOUNTS = 100;
/** Same pool as the other benchmarks: one connection per client. */
const POOL_MAX = 32;
const DEFAULT_REDIS_URL = 'redis://127.0.0.1:6379';
const REDIS_BENCHMARK = process.env.REDIS_BENCHMARK || '/usr/bin/redis-benchmark';
const REDIS_BENCHMARK_REQUESTS = 200_000;
const GOAL_IN_PROCESS_VS_BARE = 0.7;
const GOAL_REDIS_VS_OFF = 1.5;
const HERE = dirname(fileURLToPath(import.meta.url));

type Mode = 'off' | 'memory' | 'redis';

const NAMES: Record<Mode, string> = {
  off: 'databank cache off',
  memory: 'databank in-process cache',
  redis: 'databank redis cache',
};
const BARE = 'bare fastify';
const REDIS_GET = 'redis-benchmark GET';

const redisPids = () => pidsNamed('redis-server');

function redisUrl(): string {
  return process.env.REDIS_URL || DEFAULT_REDIS_URL;
}

function randomAccount(ids: readonly number[]) {
  return () => ({ method: 'GET' as const, path: `/accounts/${ids[Math.floor(Math.random() * ids.length)]}` });
}

function load(timing: Timing, port: number, ids: readonly number[], cpu: CpuGroups, key?: string): Promise<LoadResult> {
  return runLoad({
    port,
    clients: CLIENTS,
    warmupMs: timing.warmupS * 1000,
    durationMs: timing.durationS * 1000,
    expect: 200,
    headers: key ? { authorization: `Bearer ${key}` } : {},
    next: randomAccount(ids),
    cpu,
    countHeader: 'x-cache',
  });
}

function xCache(r: LoadResult): XCache {
  const measured = r.header_counts?.measured ?? {};
  const total = Object.values(measured).reduce((a, b) => a + b, 0);
  return {
    hit_ratio: total > 0 ? Math.round(((measured.HIT ?? 0) / total) * 10_000) / 10_000 : null,
    measured,
    whole_run: r.header_counts?.whole_run ?? {},
  };
}

// ---------------------------------------------------------------------------------------------
// Redis: the machine's server, under a key prefix of this run only, emptied at the end.

async function openRedis(url: string): Promise<{ redis: Redis; version: string }> {
  const redis = new Redis(url, { lazyConnect: true, connectTimeout: 3_000, maxRetriesPerRequest: 0, retryStrategy: () => null });
  redis.on('error', () => undefined);
  try {
    await redis.connect();
    const info = await redis.info('server');
    return { redis, version: /redis_version:(\S+)/.exec(info)?.[1] ?? 'unknown' };
  } catch (err) {
    redis.disconnect();
    throw new BenchError(
      `Redis does not answer at ${redact(url)} (${err instanceof Error ? err.message : String(err)}).\n` +
        'Start it, or point REDIS_URL at a Redis or Valkey server.',
    );
  }
}

/** SCAN + UNLINK of every key under `<prefix>:`; returns how many were deleted. */
async function deleteKeys(redis: Redis, prefix: string): Promise<number> {
  let deleted = 0;
  let cursor = '0';
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 1000);
    cursor = next;
    if (keys.length > 0) deleted += await redis.unlink(...keys);
  } while (cursor !== '0');
  return deleted;
}

async function countKeys(redis: Redis, prefix: string): Promise<number> {
  let n = 0;
  let cursor = '0';
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 1000);
    cursor = next;
    n += keys.length;
  } while (cursor !== '0');
  return n;
}

// ---------------------------------------------------------------------------------------------
// The series.

/**
 * Customers, accounts and deposits, written once through a databank with the cache off, so that
 * every series starts with an empty cache: no tombstones from the writes, no values filled by the
 * setup. Returns the account ids, and the admin key (made on this first start only).
 */
async function seed(db: TempDatabase): Promise<{ ids: number[]; adminKey: string }> {
  progress(`seeding ${ACCOUNTS} customers, each with one funded account (database ${db.name}, cache off)`);
  const bank = await startDatabank({ databaseUrl: db.url, poolMax: POOL_MAX, env: { DATABANK_CACHE: 'off' } });
  try {
    const ids = await inParallel(Array.from({ length: ACCOUNTS }, (_, i) => i), 4, async (i) => {
      const c = await bank.api<{ id: number }>('POST', '/customers', { name: `Bench Customer ${i + 1}`, date_of_birth: '1980-01-01' });
      const a = await bank.api<{ account_id: number }>('POST', `/customers/${c.id}/accounts`, { account_type: 'checking' });
      await bank.api('POST', `/accounts/${a.account_id}/deposits`, { amount: 1000 + i });
      return a.account_id;
    });
    return { ids, adminKey: bank.adminKey };
  } finally {
    await bank.stop();
  }
}

/** GET /accounts/:id through a fresh databank process (empty cache) with one cache setting. */
async function databankSeries(
  timing: Timing,
  mode: Mode,
  db: TempDatabase,
  seeded: { ids: readonly number[]; adminKey: string },
  redis: { url: string; prefix: string },
): Promise<Series> {
  const env: Record<string, string> =
    mode === 'off'
      ? { DATABANK_CACHE: 'off' }
      : mode === 'memory'
        ? { DATABANK_CACHE: 'on' }
        : { DATABANK_CACHE: 'on', REDIS_URL: redis.url, DATABANK_CACHE_PREFIX: redis.prefix };
  progress(`starting databank, ${NAMES[mode]}`);
  const bank = await startDatabank({ databaseUrl: db.url, poolMax: POOL_MAX, env, adminKey: seeded.adminKey });
  try {
    const busyBefore = await settle();
    progress(`${NAMES[mode]}, ${CLIENTS} clients: ${timing.warmupS}s warm-up, then ${timing.durationS}s measured`);
    const cpu: CpuGroups = {
      'load generator': () => [process.pid],
      databank: () => [bank.child.pid],
      postgres: postgresPids,
      redis: redisPids,
    };
    const r = await load(timing, bank.port, seeded.ids, cpu, bank.adminKey);
    const x = xCache(r);
    progress(`  ${r.ops_per_s} requests/s, p50 ${r.latency_ms.p50} ms, p99 ${r.latency_ms.p99} ms, hit ratio ${x.hit_ratio}`);
    return loadSeries(NAMES[mode], 'requests/s', r, busyBefore, { x_cache: x });
  } finally {
    await bank.stop();
  }
}

async function bareSeries(timing: Timing, ids: readonly number[]): Promise<Series> {
  const port = await freePort();
  progress('starting the bare Fastify server');
  const child = startChild(BARE, process.execPath, ['--import', 'tsx', join(HERE, 'bare-server.ts')], {
    cwd: DATABANK_DIR,
    env: childEnv({ PORT: String(port) }),
  });
  try {
    await waitForHttp(child, port, '/readyz');
    const busyBefore = await settle();
    progress(`bare Fastify, ${CLIENTS} clients: ${timing.warmupS}s warm-up, then ${timing.durationS}s measured`);
    const r = await load(timing, port, ids, { 'load generator': () => [process.pid], [BARE]: () => [child.pid] });
    progress(`  ${r.ops_per_s} requests/s, p50 ${r.latency_ms.p50} ms, p99 ${r.latency_ms.p99} ms`);
    // The bare route sends no X-Cache header: counting it says nothing.
    return loadSeries(BARE, 'requests/s', r, busyBefore);
  } finally {
    await child.stop();
  }
}

function redisBenchmarkArgs(url: string): string[] {
  const u = new URL(url);
  const auth: string[] = [];
  if (u.username) auth.push('--user', decodeURIComponent(u.username));
  if (u.password) auth.push('-a', decodeURIComponent(u.password), '--no-auth-warning');
  if (u.protocol === 'rediss:') auth.push('--tls');
  return [
    '-h',
    u.hostname || '127.0.0.1',
    '-p',
    u.port || '6379',
    ...auth,
    '-t',
    'get',
    '-n',
    String(REDIS_BENCHMARK_REQUESTS),
    '-c',
    String(CLIENTS),
    '-q',
  ];
}

/**
 * `redis-benchmark -t get -n 200000 -c 32 -q`: what Redis answers on this machine from a C client
 * with nothing else in the way. CPU is read every 200 ms while it runs (its duration is not known
 * in advance), from 300 ms in until the last reading before it exits.
 */
async function redisBenchmarkSeries(url: string): Promise<Series> {
  const busyBefore = await settle();
  const args = redisBenchmarkArgs(url);
  progress(`redis-benchmark -t get -n ${REDIS_BENCHMARK_REQUESTS} -c ${CLIENTS} -q`);
  const child = startChild('redis-benchmark', REDIS_BENCHMARK, args, { cwd: process.cwd(), env: process.env });
  let exited = false;
  void child.exited.then(() => {
    exited = true;
  });
  const guard = setTimeout(() => void child.stop(0), 120_000);
  const groups: CpuGroups = { 'redis-benchmark': () => [child.pid], redis: redisPids };
  let first: CpuSnapshot | null = null;
  let last: CpuSnapshot | null = null;
  try {
    await sleep(300);
    while (!exited) {
      const s = snapshot(groups);
      if (!s.ticks['redis-benchmark']?.has(child.pid)) break;
      if (first === null) first = s;
      else last = s;
      await sleep(200);
    }
  } finally {
    clearTimeout(guard);
  }
  const code = await child.exited;
  const output = child.output();
  if (code !== 0) {
    throw new BenchError(`redis-benchmark exited with code ${code} (is ${REDIS_BENCHMARK} installed?):\n${output}`);
  }
  const answers = [...output.matchAll(/GET: ([\d.]+) requests per second(?:, p50=([\d.]+) msec)?/g)];
  const m = answers[answers.length - 1];
  if (!m?.[1]) throw new BenchError(`could not read requests per second from redis-benchmark's output:\n${output}`);
  const rps = Number(m[1]);
  const p50 = m[2] ? Number(m[2]) : null;
  progress(`  ${rps} GET/s, p50 ${p50 ?? '-'} ms`);
  return {
    name: REDIS_GET,
    clients: CLIENTS,
    rate: rps,
    unit: 'GET/s',
    // With -q, redis-benchmark prints only the median latency; the mean is Little's law for a
    // closed loop (clients ÷ rate).
    latency_ms: { mean: Math.round((CLIENTS / rps) * 1000 * 1000) / 1000, p50, p99: null },
    ok: REDIS_BENCHMARK_REQUESTS,
    non_ok: {},
    cpu_cores: first && last ? between(first, last) : {},
    seconds: Math.round((REDIS_BENCHMARK_REQUESTS / rps) * 100) / 100,
    busy_before: busyBefore,
  };
}

// ---------------------------------------------------------------------------------------------
// Reading the result.

/** The processes that serve a series' requests (the load generator excluded). */
const SERVING: Record<string, readonly string[]> = {
  [NAMES.off]: ['databank', 'postgres', 'redis'],
  [NAMES.memory]: ['databank', 'postgres', 'redis'],
  [NAMES.redis]: ['databank', 'postgres', 'redis'],
  [BARE]: [BARE],
  [REDIS_GET]: ['redis'],
};

function servingCpu(s: Series): Record<string, number> {
  return cpuPerRequest(s, SERVING[s.name] ?? []);
}

/** What bounds a series, from its CPU split: a saturated machine, or one saturated thread. */
function limitNote(s: Series, cpuCount: number): string {
  const limits = cpuLimits(s.cpu_cores, cpuCount, ['postgres']);
  if (!limits) return `${s.name}: no CPU figures`;
  const { machine, parts, verdicts } = limits;
  if (verdicts.length === 0 && machine >= 0.75 * cpuCount) {
    verdicts.push(
      `the machine is nearly saturated (${machine.toFixed(2)} of ${cpuCount} cores): the processes that pass each ` +
        'request along wait for one another on too few cores to keep every one busy',
    );
  }
  const verdict =
    verdicts.length > 0
      ? verdicts.join('; ')
      : `neither a process nor the machine is saturated (${machine.toFixed(2)} of ${cpuCount} cores): waits bound it`;
  return `${s.name}: ${parts}; ${verdict}`;
}

async function run(timing: Timing): Promise<BenchResult> {
  const url = adminUrl();
  const version = await requireServer(url);
  progress(`PostgreSQL ${version} at ${redact(url)}`);
  const rUrl = redisUrl();
  const { redis, version: redisVersion } = await openRedis(rUrl);
  const prefix = `bench-cache-${process.pid}-${Date.now().toString(36)}`;
  progress(`Redis ${redisVersion} at ${redact(rUrl)}; key prefix ${prefix}`);
  const redisKeys = { deleted: 0, left: -1 };
  const cleanupRedis = onCleanup(async () => {
    try {
      redisKeys.deleted = await deleteKeys(redis, prefix);
      redisKeys.left = await countKeys(redis, prefix);
    } finally {
      redis.disconnect();
    }
  });

  const series: Series[] = [];
  try {
    const db = await createDatabase(url, `bench_cache_${process.pid}`);
    try {
      const seeded = await seed(db);
      for (const mode of ['off', 'memory', 'redis'] as const) {
        series.push(await databankSeries(timing, mode, db, seeded, { url: rUrl, prefix }));
      }
      series.push(await bareSeries(timing, seeded.ids));
    } finally {
      await db.drop();
    }
    series.push(await redisBenchmarkSeries(rUrl));
  } finally {
    progress(`deleting the run's Redis keys (${prefix}:*, SCAN + UNLINK)`);
    await cleanupRedis();
    progress(`  deleted ${redisKeys.deleted}, left ${redisKeys.left}`);
  }

  const byName = (name: string) => series.find((s) => s.name === name) as Series;
  const off = byName(NAMES.off);
  const memory = byName(NAMES.memory);
  const viaRedis = byName(NAMES.redis);
  const bare = byName(BARE);
  const redisGet = byName(REDIS_GET);
  const machine = machineInfo(version);
  const generator = bare.cpu_cores['load generator'] ?? 0;
  const perRequest = Object.fromEntries(series.map((s) => [s.name, servingCpu(s)]));
  const cpuTotal = (name: string) => perRequest[name]?.total ?? Number.NaN;
  return {
    benchmark: 'cache',
    description: 'GET /accounts/:id through databank with the cache off, in-process and in Redis, against a bare Fastify route and redis-benchmark GET',
    machine,
    settings: {
      clients: CLIENTS,
      warmup_s: timing.warmupS,
      duration_s: timing.durationS,
      accounts: ACCOUNTS,
      database_pool_max: POOL_MAX,
      databank_revision: databankRevision(),
      redis_url: redact(rUrl),
      redis_version: redisVersion,
      redis_key_prefix: prefix,
      redis_benchmark: `${REDIS_BENCHMARK} -t get -n ${REDIS_BENCHMARK_REQUESTS} -c ${CLIENTS} -q`,
      databank_cache_settings: 'defaults: TTL 300 s, in-process LRU 10,000 entries / 64 MB, Redis command timeout 50 ms',
      load_generator: 'node:http Agent, keep-alive, one socket per client, in the benchmark process; counts X-Cache on every answer',
    },
    series,
    ratios: [
      ratio(`${NAMES.memory} / ${BARE}`, CLIENTS, memory.rate, bare.rate, GOAL_IN_PROCESS_VS_BARE),
      ratio(`${NAMES.redis} / ${NAMES.off}`, CLIENTS, viaRedis.rate, off.rate, GOAL_REDIS_VS_OFF),
      ratio(`${NAMES.redis} / ${REDIS_GET}`, CLIENTS, viaRedis.rate, redisGet.rate, null),
      ratio(`${NAMES.memory} / ${NAMES.off}`, CLIENTS, memory.rate, off.rate, null),
      ratio(`${NAMES.redis} / ${NAMES.memory}`, CLIENTS, viaRedis.rate, memory.rate, null),
      ratio(`${NAMES.off} / ${BARE}`, CLIENTS, off.rate, bare.rate, null),
      ratio(`${NAMES.redis} / ${BARE}`, CLIENTS, viaRedis.rate, bare.rate, null),
      // The same comparisons by serving CPU per request (inverted: higher is better, as for rates).
      ratio(`${NAMES.memory} / ${BARE}, by server CPU per request`, CLIENTS, cpuTotal(BARE), cpuTotal(NAMES.memory), null),
      ratio(`${NAMES.redis} / ${NAMES.off}, by server CPU per request`, CLIENTS, cpuTotal(NAMES.off), cpuTotal(NAMES.redis), null),
      ratio(`${NAMES.redis} / ${NAMES.memory}, by server CPU per request`, CLIENTS, cpuTotal(NAMES.memory), cpuTotal(NAMES.redis), null),
    ],
    checks: {
      'x-cache as expected': {
        [NAMES.off]: off.x_cache?.measured.BYPASS === off.ok,
        [NAMES.memory]: (memory.x_cache?.hit_ratio ?? 0) >= 0.99,
        [NAMES.redis]: (viaRedis.x_cache?.hit_ratio ?? 0) >= 0.99,
      },
      'server CPU per request (µs; databank series: databank + postgres + redis processes)': perRequest,
      'redis keys of this run': redisKeys,
    },
    notes: [
      'Every databank series is a fresh process on the same database, seeded beforehand with the cache off, so every cache starts empty (the Redis series under a key prefix of its own): the first read of each of the 100 keys is a MISS during the warm-up, the measured window should be all HIT.',
      'databank per request: bearer-key check (cached for 10 s), schema validation, the cache lookup (off: none; in-process: an LRU get and JSON.parse; Redis: one GET round trip and JSON.parse), on a miss or with the cache off one SELECT of the account, the ownership check, response serialisation, metrics and request-id hooks.',
      'With the cache off the answer is X-Cache: BYPASS; a Redis command slower than the 50 ms timeout is a BYPASS too and reads PostgreSQL.',
      'A ratio "by server CPU per request" divides the CPU time the serving processes spent per answer (the other way round, so that higher is better, as with rates): it compares the servers even when a rate is bounded by the load generator or by other programs on the machine.',
      `redis-benchmark is a C client (one thread, ${CLIENTS} connections) doing only GET of one key: the most Redis answers on this machine. ${NAMES.redis} / ${REDIS_GET} is the share of that ceiling one databank process reaches, with one GET per request.`,
      'The load generator, the server, PostgreSQL and Redis share the cores; what bounds each series (CPU split, cores):',
      ...series.map((s) => `  ${limitNote(s, machine.cpu_count)}`),
      ...(generator >= 0.85
        ? [
            `the load generator used ${generator.toFixed(2)} cores during the bare series: that rate is bounded by the client, so the true bare ceiling is higher and ratios against it overstate databank`,
          ]
        : []),
    ],
    warnings: noiseWarnings(series),
  };
}

export const cache: Benchmark = {
  name: 'cache',
  description: 'GET /accounts/:id with the cache off, in-process and in Redis vs a bare Fastify route and redis-benchmark; 32 clients',
  defaults: { warmupS: 3, durationS: 10 },
  run,
};
