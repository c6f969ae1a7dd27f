import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { pathToFileURL } from 'node:url';
import { connect as amqpConnect, type ChannelModel } from 'amqplib';
import { AckPolicy, connect as natsConnect, DeliverPolicy, nanos, StorageType, type NatsConnection } from 'nats';
import pg from 'pg';
import PgBoss from 'pg-boss';
import sharp from 'sharp';
import type { JobQueue } from '../src/stores/queue/index.ts';
import type { SqlStore } from '../src/stores/sql/index.ts';
import type { EventStream, StreamEvent, Subscription } from '../src/stores/stream/index.ts';
import type { RunRecorder } from '../src/workers/worker.ts';
import type * as SqlModule from '../src/stores/sql/index.ts';
import type * as MigratorModule from '../src/stores/sql/migrator.ts';
import type * as QueueModule from '../src/stores/queue/index.ts';
import type * as StreamModule from '../src/stores/stream/index.ts';
import type * as RelayModule from '../src/workers/outbox-relay.ts';
import type * as ConsumerModule from '../src/workers/stream-consumer.ts';
import type * as LockModule from '../src/workers/schedule-lock.ts';
import type * as JobsModule from '../src/services/jobs.ts';
import type * as DispatcherModule from '../src/workers/job-dispatcher.ts';
import type * as SqlPortModule from '../src/stores/sql/port.ts';
import type { Benchmark, Timing } from './lib/benchmark.ts';
import { onCleanup } from './lib/cleanup.ts';
import { between, type CpuGroups, cpuLimits, type CpuSplit, pidsNamed, postgresPids, settle, snapshot } from './lib/cpu.ts';
import { databankRevision, DATABANK_DIR, inParallel } from './lib/databank.ts';
import { progress, sleep } from './lib/log.ts';
import { statementCount } from './lib/pg-count.ts';
import { WaitSampler } from './lib/waits.ts';
import { adminUrl, createDatabase, redact, serverVersion, type TempDatabase } from './lib/postgres.ts';
import { machineInfo, noiseWarnings, ratio, type BenchResult, type Ratio, type Series } from './lib/report.ts';
import { startServe, type ServeChild } from './lib/serve.ts';

/**
 * `npm run bench -- async`: jobs per second through databank's JobQueue on pg-boss and on
 * RabbitMQ, events per second from the outbox to a consumer group through the relay and the
 * EventStream on the PostgreSQL log and on NATS JetStream, each beside the raw client doing the
 * same on the same server in the same run; then the upload's answer time with and without the
 * image-variant work.
 */

const DEFAULT_AMQP_URL = 'amqp://guest:guest@127.0.0.1:5672';
const DEFAULT_NATS_URL = 'nats://127.0.0.1:4222';
/** The job queue's name (databank puts the run's prefix before it). */
const QUEUE = 'bench';
/** Jobs a consumer holds unacknowledged, at most (databank's prefetch, amqplib's prefetch, pg-boss's fetch batch). */
const PREFETCH = 32;
/** Sends (publishes) in flight at once, for every sender that sends one message per call. */
const SEND_WINDOW = 100;
/** pg-boss's own `insert` takes this many jobs per statement. */
const PGBOSS_INSERT_BATCH = 500;
/** Warm-up rounds move this many messages, doubling until --warmup seconds have passed; the last one sizes the run. */
const WARM_COUNT = 1_000;
/** The largest warm-up round. */
const MAX_WARM = 16_000;
const MIN_COUNT = 2_000;
const MAX_COUNT = 200_000;
/** The relay's and the stream consumer's defaults (src/workers/outbox-relay.ts, stream-consumer.ts). */
const RELAY_BATCH = 500;
const CONSUMER_BATCH = 200;
/** The raw PostgreSQL reference writes and reads in the same batch sizes. */
const RAW_LOG_WRITE_BATCH = RELAY_BATCH;
const RAW_LOG_READ_BATCH = CONSUMER_BATCH;
/** databank's default pool (DATABASE_POOL_MAX) and pg-boss's default `max`. */
const POOL_MAX = 10;
const GROUP = 'bench';
const IMAGE_WIDTH = 2000;
const IMAGE_HEIGHT = 1500;
/** Sequential uploads per upload series, after UPLOAD_WARM untimed ones of each kind. */
const UPLOADS = 40;
const UPLOAD_WARM = 3;
const VARIANTS_DEADLINE_MS = 180_000;
const GOAL = 0.5;

const CPU: CpuGroups = {
  'bench process': () => [process.pid],
  postgres: postgresPids,
  rabbitmq: () => pidsNamed('beam.smp'),
  'nats-server': () => pidsNamed('nats-server'),
};
/** Groups that run several threads (PostgreSQL backends, the Erlang VM, Go). */
const MULTI_THREADED = ['postgres', 'rabbitmq', 'nats-server', 'databank'];

const NAMES = {
  bossDatabank: 'databank JobQueue on pg-boss',
  bossRaw: 'pg-boss insert + fetch/complete loop',
  rabbitDatabank: 'databank JobQueue on RabbitMQ',
  rabbitRaw: 'amqplib confirm publish + manual-ack consume',
  rabbitRawAsDatabank: 'amqplib, x-max-priority 9 queue + mandatory publish',
  logDatabank: 'databank relay + EventStream on the PostgreSQL log',
  logRaw: 'PostgreSQL insert…select into a table + batched reads',
  natsDatabank: 'databank relay + EventStream on NATS JetStream',
  natsRaw: 'nats.js JetStream publish + pull consume',
  natsOneByOne: 'nats.js JetStream publish, one PubAck awaited at a time',
  dispatcher: 'databank job dispatcher, jobs table → pg-boss',
} as const;
const E2E = 'end to end';
const SEND_ONLY = 'send only';
const CONSUME_ONLY = 'consume only';
const PRODUCER = 'producer side';

// ---------------------------------------------------------------------------------------------
// databank's own modules, from the checkout under test (BENCH_DATABANK_DIR may name another one).

function databankModule<T>(path: string): Promise<T> {
  return import(pathToFileURL(join(DATABANK_DIR, path)).href) as Promise<T>;
}

const modules = {
  sql: () => databankModule<typeof SqlModule>('src/stores/sql/index.ts'),
  migrator: () => databankModule<typeof MigratorModule>('src/stores/sql/migrator.ts'),
  queue: () => databankModule<typeof QueueModule>('src/stores/queue/index.ts'),
  stream: () => databankModule<typeof StreamModule>('src/stores/stream/index.ts'),
  relay: () => databankModule<typeof RelayModule>('src/workers/outbox-relay.ts'),
  consumer: () => databankModule<typeof ConsumerModule>('src/workers/stream-consumer.ts'),
  lock: () => databankModule<typeof LockModule>('src/workers/schedule-lock.ts'),
  jobs: () => databankModule<typeof JobsModule>('src/services/jobs.ts'),
  dispatcher: () => databankModule<typeof DispatcherModule>('src/workers/job-dispatcher.ts'),
  sqlPort: () => databankModule<typeof SqlPortModule>('src/stores/sql/port.ts'),
};

// ---------------------------------------------------------------------------------------------
// Small helpers.

const round = (n: number, digits = 1) => Math.round(n * 10 ** digits) / 10 ** digits;
const messageOf = (err: unknown) => (err instanceof Error ? err.message : String(err));

/** Rejects after `ms` with `what` in the message (the work itself runs on). */
async function within<T>(promise: Promise<T>, ms: number, what: () => string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what()} (no end after ${Math.round(ms / 1000)} s)`)), ms);
  });
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}

function percentile(sorted: readonly number[], p: number): number | null {
  if (sorted.length === 0) return null;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(p * sorted.length) - 1))] ?? null;
}

function latencyOf(samples: readonly number[]): Series['latency_ms'] {
  if (samples.length === 0) return { mean: Number.NaN, p50: null, p99: null };
  const sorted = [...samples].sort((a, b) => a - b);
  const mean = samples.reduce((a, b) => a + b, 0) / samples.length;
  const p = (q: number) => {
    const v = percentile(sorted, q);
    return v === null ? null : round(v, 2);
  };
  return { mean: round(mean, 2), p50: p(0.5), p99: p(0.99) };
}

function newIds(n: number): string[] {
  return Array.from({ length: n }, () => randomUUID());
}

/** Messages for about `seconds` at `rate`, in thousands, within [MIN_COUNT, MAX_COUNT]. */
function sizeFor(rate: number, seconds: number): number {
  const n = Math.round((rate * seconds) / 1000) * 1000;
  return Math.min(MAX_COUNT, Math.max(MIN_COUNT, Number.isFinite(n) ? n : MIN_COUNT));
}

interface Measured {
  readonly ms: number;
  readonly cpu: CpuSplit;
  /** What the database's backends were doing over the window (PostgreSQL series). */
  readonly waits?: Record<string, number>;
  /** SQL statements this process sent over the window (bench/lib/pg-count.ts). */
  readonly statements?: number;
}

/** Where a series' database is, to sample its backends' states while it runs. */
interface WaitTarget {
  readonly url: string;
  readonly database: string;
}

/** Runs `work` between two CPU snapshots (and, with `target`, samples pg_stat_activity meanwhile). */
async function measured(work: () => Promise<void>, target: WaitTarget | null = null): Promise<Measured> {
  const waits = target ? await WaitSampler.open(target.url, target.database) : null;
  try {
    const a = snapshot(CPU);
    waits?.begin(20);
    const s0 = statementCount();
    const t0 = performance.now();
    await work();
    const ms = performance.now() - t0;
    const statements = statementCount() - s0;
    waits?.end();
    return { ms, cpu: between(a, snapshot(CPU)), statements, ...(waits ? { waits: waits.result() } : {}) };
  } finally {
    await waits?.close();
  }
}

/** SQL statements per message of each series that sent any, for the checks. */
const statementsPerMessage: Record<string, number> = {};

function rateSeries(
  name: string,
  unit: string,
  count: number,
  ms: number,
  m: Pick<Measured, 'cpu' | 'waits' | 'statements'>,
  busyBefore: number,
  latency: Series['latency_ms'] = { mean: Number.NaN, p50: null, p99: null },
): Series {
  if (m.statements) statementsPerMessage[name] = round(m.statements / count, 4);
  return {
    name,
    clients: 1,
    rate: round((count / ms) * 1000),
    unit,
    latency_ms: latency,
    ok: count,
    non_ok: {},
    cpu_cores: m.cpu,
    seconds: round(ms / 1000, 2),
    busy_before: busyBefore,
    ...(m.waits ? { db_backends: m.waits } : {}),
  };
}

interface Skip {
  readonly series: string;
  readonly reason: string;
}

// ---------------------------------------------------------------------------------------------
// Which servers answer.

async function amqpProbe(url: string): Promise<{ version: string } | { error: string }> {
  try {
    const connection = await amqpConnect(url, { timeout: 3_000 });
    connection.on('error', () => undefined);
    const props = (connection.connection as unknown as { serverProperties?: { version?: unknown } }).serverProperties;
    await connection.close();
    return { version: typeof props?.version === 'string' ? props.version : 'unknown' };
  } catch (err) {
    return { error: messageOf(err) };
  }
}

async function natsProbe(url: string): Promise<{ version: string } | { error: string }> {
  let nc: NatsConnection | undefined;
  try {
    nc = await natsConnect({ servers: url, timeout: 3_000, reconnect: false });
    await (await nc.jetstreamManager()).getAccountInfo();
    return { version: nc.info?.version ?? 'unknown' };
  } catch (err) {
    return { error: `${messageOf(err)} (JetStream enabled?)` };
  } finally {
    await nc?.close().catch(() => undefined);
  }
}

// ---------------------------------------------------------------------------------------------
// Queues: one driver per system, the same phases for each.

/** Every delivery of a system's run, by job id, and the wait for one phase's jobs. */
class DeliveryLog {
  readonly deliveries = new Map<string, number>();
  sent = 0;
  private pending = new Set<string>();
  private issuedAt = new Map<string, number>();
  private latencies: number[] = [];
  private finish: (() => void) | null = null;

  /** The jobs of a phase; the promise resolves once each was delivered. */
  expect(ids: readonly string[]): Promise<void> {
    this.pending = new Set(ids);
    this.latencies = [];
    this.issuedAt = new Map();
    return new Promise((resolve) => {
      this.finish = resolve;
      if (this.pending.size === 0) resolve();
    });
  }

  issued = (id: string): void => {
    this.issuedAt.set(id, performance.now());
  };

  delivered = (id: string): void => {
    this.deliveries.set(id, (this.deliveries.get(id) ?? 0) + 1);
    const at = this.issuedAt.get(id);
    if (at !== undefined) this.latencies.push(performance.now() - at);
    if (this.pending.delete(id) && this.pending.size === 0) this.finish?.();
  };

  left(): number {
    return this.pending.size;
  }

  /** Issue → delivery times of the current phase. */
  latency(): Series['latency_ms'] {
    return latencyOf(this.latencies);
  }
}

interface QueueConsumer {
  /** Stops taking jobs; resolves once the jobs in hand are acknowledged and the consumer is closed. */
  stop(): Promise<void>;
}

interface QueueDriver {
  /** Sends the jobs (their ids given); `issued(id)` just before each leaves; resolves once every one is durable. */
  send(ids: readonly string[], issued: (id: string) => void): Promise<void>;
  /** Starts a consumer that tells `delivered(id)` of each job it is handed, acknowledged right after. */
  consume(delivered: (id: string) => void): Promise<QueueConsumer>;
  /** What the broker still holds, and how many it records as completed (pg-boss), for the checks. */
  after(): Promise<Record<string, number>>;
  close(): Promise<void>;
}

async function databankQueueDriver(queue: JobQueue, counts: (() => Promise<Record<string, number>>) | null): Promise<QueueDriver> {
  await queue.declare(QUEUE);
  return {
    async send(ids, issued) {
      await inParallel(ids, SEND_WINDOW, async (id) => {
        issued(id);
        await queue.send(QUEUE, { job_id: id }, { id });
      });
    },
    async consume(delivered) {
      const stop = new AbortController();
      let failure: unknown = null;
      const running = queue
        .consume<{ job_id: string }>(
          QUEUE,
          async (job) => {
            delivered(job.id);
          },
          { prefetch: PREFETCH, signal: stop.signal },
        )
        .catch((err: unknown) => {
          failure = err;
        });
      return {
        async stop() {
          stop.abort();
          await running;
          if (failure) throw failure;
        },
      };
    },
    async after() {
      const s = await queue.stats(QUEUE);
      return { waiting: s.waiting, delayed: s.delayed, active: s.active, dead_letters: s.deadLetters, ...(counts ? await counts() : {}) };
    },
    close: () => queue.close(),
  };
}

/** Jobs of `name` per pg-boss state, straight from its table. */
function pgBossCounts(url: string, name: string): () => Promise<Record<string, number>> {
  return async () => {
    const client = new pg.Client({ connectionString: url });
    await client.connect();
    try {
      const { rows } = await client.query<{ state: string; n: string }>(
        'select state, count(*) as n from pgboss.job where name = $1 group by state order by state',
        [name],
      );
      return Object.fromEntries(rows.map((r) => [`pgboss_${r.state}`, Number(r.n)]));
    } finally {
      await client.end().catch(() => undefined);
    }
  };
}

/** pg-boss 10 by its own API on its own database: batched insert, then a fetch + complete loop. */
async function rawPgBossDriver(url: string): Promise<QueueDriver> {
  const boss = new PgBoss({ connectionString: url, max: POOL_MAX });
  boss.on('error', () => undefined);
  await boss.start();
  await boss.createQueue(QUEUE);
  return {
    async send(ids, issued) {
      for (let i = 0; i < ids.length; i += PGBOSS_INSERT_BATCH) {
        const batch = ids.slice(i, i + PGBOSS_INSERT_BATCH);
        for (const id of batch) issued(id);
        await boss.insert(batch.map((id) => ({ id, name: QUEUE, data: { job_id: id } })));
      }
    },
    async consume(delivered) {
      let stopping = false;
      const loop = (async () => {
        while (!stopping) {
          const jobs = await boss.fetch<{ job_id: string }>(QUEUE, { batchSize: PREFETCH });
          if (jobs.length === 0) {
            await sleep(20);
            continue;
          }
          for (const job of jobs) delivered(job.id);
          await boss.complete(
            QUEUE,
            jobs.map((j) => j.id),
          );
        }
      })();
      return {
        async stop() {
          stopping = true;
          await loop;
        },
      };
    },
    after: pgBossCounts(url, QUEUE),
    close: () => boss.stop({ graceful: false, close: true, wait: true }),
  };
}

/**
 * amqplib on a plain durable classic queue: a confirm channel for publishing, a channel with
 * manual acks for consuming. `asDatabank` declares and publishes as databank's queue does: a
 * classic queue with x-max-priority 9, and `mandatory` messages with a correlation id.
 */
async function rawAmqpDriver(url: string, queueName: string, asDatabank = false): Promise<QueueDriver> {
  const connection: ChannelModel = await amqpConnect(url);
  connection.on('error', () => undefined);
  const setup = await connection.createChannel();
  await setup.assertQueue(queueName, { durable: true, ...(asDatabank ? { arguments: { 'x-queue-type': 'classic', 'x-max-priority': 9 } } : {}) });
  await setup.close();
  const publisher = await connection.createConfirmChannel();
  publisher.on('error', () => undefined);
  return {
    async send(ids, issued) {
      await inParallel(
        ids,
        SEND_WINDOW,
        (id) =>
          new Promise<void>((resolve, reject) => {
            issued(id);
            const content = Buffer.from(JSON.stringify({ job_id: id }));
            const extra = asDatabank ? { priority: 0, mandatory: true, correlationId: randomUUID() } : {};
            publisher.sendToQueue(queueName, content, { persistent: true, messageId: id, contentType: 'application/json', ...extra }, (err: unknown) =>
              err ? reject(err instanceof Error ? err : new Error(String(err))) : resolve(),
            );
          }),
      );
    },
    async consume(delivered) {
      const channel = await connection.createChannel();
      channel.on('error', () => undefined);
      await channel.prefetch(PREFETCH);
      const { consumerTag } = await channel.consume(
        queueName,
        (message) => {
          if (!message) return;
          delivered(String(message.properties.messageId));
          channel.ack(message);
        },
        { noAck: false },
      );
      return {
        async stop() {
          // Cancel, then close: closing with the consumer on can bring back acknowledged messages.
          await channel.cancel(consumerTag);
          await channel.close();
        },
      };
    },
    async after() {
      const channel = await connection.createChannel();
      try {
        const q = await channel.checkQueue(queueName);
        return { waiting: q.messageCount, consumers: q.consumerCount };
      } finally {
        await channel.close().catch(() => undefined);
      }
    },
    async close() {
      await publisher.close().catch(() => undefined);
      await connection.close().catch(() => undefined);
    },
  };
}

/**
 * One end-to-end round: a consumer waiting, then the jobs sent; timed from the first send until
 * the consumer has acknowledged the last and closed.
 */
async function queueEndToEnd(
  driver: QueueDriver,
  log: DeliveryLog,
  ids: string[],
  sampled: WaitTarget | null,
  deadlineMs: number,
  what: () => string,
): Promise<Measured & { sendMs: number }> {
  const all = log.expect(ids);
  const consumer = await driver.consume(log.delivered);
  // The consumer is on before the clock starts, as a worker that waits for work.
  await sleep(200);
  let sendMs = 0;
  const m = await measured(async () => {
    const t0 = performance.now();
    await driver.send(ids, log.issued);
    sendMs = performance.now() - t0;
    log.sent += ids.length;
    await within(all, deadlineMs, what);
    await consumer.stop();
  }, sampled);
  return { ...m, sendMs };
}

/** One system of a pair as the pair runner drives it; `failure` set stops its remaining phases. */
interface Side<D> {
  readonly label: string;
  readonly driver: D;
  readonly target: WaitTarget | null;
  readonly series: Series[];
  /** Rates of every end-to-end round, in the order run (the series keeps the best). */
  readonly rounds: number[];
  failure: string | null;
  warmRate: number;
  warmRounds: number;
}

function side<D>(label: string, driver: D, target: WaitTarget | null): Side<D> {
  return { label, driver, target, series: [], rounds: [], failure: null, warmRate: 0, warmRounds: 0 };
}

/** Runs `step` for each side still standing, in order; a side whose step throws is out of the pair's run. */
async function eachSide<D>(sides: ReadonlyArray<Side<D>>, step: (s: Side<D>) => Promise<void>): Promise<void> {
  for (const s of sides) {
    if (s.failure) continue;
    try {
      await step(s);
    } catch (err) {
      s.failure = messageOf(err);
      progress(`  ${s.label} failed: ${s.failure}`);
    }
  }
}

/** The end-to-end rounds of each side, alternated, so that both meet the same spells of other load; the best is kept. */
const E2E_ROUNDS = 2;

/**
 * A queue system and its reference, interleaved: warm-up rounds (1,000 jobs, doubling while
 * under --warmup seconds), then n jobs each (sized from the first system's warm-up) for send only
 * (no consumer), consume only (the jobs just sent), and end to end (a consumer waiting, then the
 * jobs sent; from the first send to the last acknowledgement), the last twice, alternated.
 */
async function queuePair(sides: ReadonlyArray<Side<QueueDriver>>, timing: Timing): Promise<Record<string, unknown>> {
  const unit = 'jobs/s';
  const deadlineMs = Math.max(60_000, timing.durationS * 10_000);
  const logs = new Map(sides.map((s) => [s, new DeliveryLog()]));
  const logOf = (s: Side<QueueDriver>) => logs.get(s) as DeliveryLog;
  const failed = (s: Side<QueueDriver>, phase: string) => () => `${s.label}, ${phase}: ${logOf(s).left()} jobs not delivered`;

  const endToEnd = (s: Side<QueueDriver>, ids: string[], sampled: WaitTarget | null) =>
    queueEndToEnd(s.driver, logOf(s), ids, sampled, deadlineMs, failed(s, E2E));

  await eachSide(sides, async (s) => {
    const warmStart = performance.now();
    for (let count = WARM_COUNT; ; count *= 2) {
      const w = await endToEnd(s, newIds(count), null);
      s.warmRate = (count / w.ms) * 1000;
      s.warmRounds++;
      if (performance.now() - warmStart >= timing.warmupS * 1000 || count * 2 > MAX_WARM) break;
    }
    progress(`  ${s.label}: warm-up ${s.warmRounds} rounds, the last at ${round(s.warmRate)} jobs/s`);
  });
  const sizer = sides.find((s) => !s.failure);
  if (!sizer) return {};
  const n = sizeFor(sizer.warmRate, timing.durationS);
  progress(`  ${n} jobs per phase (about ${timing.durationS} s of ${sizer.label} end to end)`);

  const queued = new Map<Side<QueueDriver>, string[]>();
  await eachSide(sides, async (s) => {
    const busy = await settle();
    const ids = newIds(n);
    const log = logOf(s);
    log.expect([]);
    const m = await measured(async () => {
      await s.driver.send(ids, log.issued);
      log.sent += ids.length;
    }, s.target);
    queued.set(s, ids);
    s.series.push(rateSeries(`${s.label}, ${SEND_ONLY}`, unit, n, m.ms, m, busy));
    progress(`  ${s.label}, ${SEND_ONLY}: ${round((n / m.ms) * 1000)} jobs/s`);
  });
  await eachSide(sides, async (s) => {
    const busy = await settle();
    const log = logOf(s);
    const all = log.expect(queued.get(s) ?? []);
    const m = await measured(async () => {
      const consumer = await s.driver.consume(log.delivered);
      await within(all, deadlineMs, failed(s, CONSUME_ONLY));
      await consumer.stop();
    }, s.target);
    s.series.push(rateSeries(`${s.label}, ${CONSUME_ONLY}`, unit, n, m.ms, m, busy));
    progress(`  ${s.label}, ${CONSUME_ONLY}: ${round((n / m.ms) * 1000)} jobs/s`);
  });
  const best = new Map<Side<QueueDriver>, Series>();
  for (let r = 0; r < E2E_ROUNDS; r++) {
    await eachSide(sides, async (s) => {
      const busy = await settle();
      const m = await endToEnd(s, newIds(n), s.target);
      const series = rateSeries(`${s.label}, ${E2E}`, unit, n, m.ms, m, busy, logOf(s).latency());
      s.rounds.push(series.rate);
      if (series.rate > (best.get(s)?.rate ?? -1)) best.set(s, series);
      progress(
        `  ${s.label}, ${E2E} (${r + 1}/${E2E_ROUNDS}): ${series.rate} jobs/s (all sent after ${round(m.sendMs / 1000, 2)} s), send → handler p50 ${series.latency_ms.p50} ms`,
      );
    });
  }

  // Anything still arriving late (a redelivery) shows up in the counts.
  await sleep(300);
  const checks: Record<string, unknown> = {};
  for (const s of sides) {
    const e2e = best.get(s);
    if (e2e) s.series.push(e2e);
    const log = logOf(s);
    const counts = [...log.deliveries.values()];
    const duplicates = counts.reduce((a, c) => a + (c - 1), 0);
    const after = s.failure ? {} : await s.driver.after().catch((err: unknown) => ({ error: messageOf(err) }) as Record<string, unknown>);
    const left = after as Record<string, number | undefined>;
    checks[`jobs: ${s.label}`] = {
      jobs_per_phase: n,
      warmup_rounds: s.warmRounds,
      end_to_end_rounds: s.rounds,
      sent: log.sent,
      delivered_once_or_more: log.deliveries.size,
      deliveries: counts.reduce((a, b) => a + b, 0),
      duplicates,
      missing: log.sent - log.deliveries.size,
      broker_after: after,
      every_job_acked_once:
        !s.failure &&
        duplicates === 0 &&
        log.deliveries.size === log.sent &&
        (left.waiting ?? 0) === 0 &&
        (left.active ?? 0) === 0 &&
        (left.pgboss_completed === undefined || left.pgboss_completed === log.sent),
      ...(s.failure ? { failure: s.failure } : {}),
    };
  }
  return checks;
}

/**
 * The app's own path into the queue: rows of the `jobs` table (as a request writes them) handed
 * to the queue by the job-dispatcher worker, which sends each job and marks it dispatched. Timed
 * from the worker's start until the last row is marked; nobody consumes (the queue is dropped with
 * the database).
 */
async function dispatcherSeries(store: SqlStore, dbUrl: string, queue: JobQueue, timing: Timing): Promise<{ series: Series; check: Record<string, unknown> }> {
  const { JobsService } = await modules.jobs();
  const { jobDispatcher } = await modules.dispatcher();
  const { primaryOnly } = await modules.sqlPort();
  const { scheduleLock } = await modules.lock();
  const jobs = new JobsService(primaryOnly(store.db));
  const lock = scheduleLock(store);
  const client = new pg.Client({ connectionString: dbUrl });
  await client.connect();
  try {
    const { rows } = await client.query<{ id: string }>("insert into customers (name, date_of_birth) values ('Bench Dispatcher', '1980-01-01') returning id");
    const customerId = rows[0]?.id;
    let dispatched = 0;
    let target = 0;
    let reached: () => void = () => undefined;
    const markDispatched = jobs.markDispatched.bind(jobs);
    jobs.markDispatched = async (ids) => {
      await markDispatched(ids);
      dispatched += ids.length;
      if (dispatched >= target) reached();
    };
    const once = async (n: number, sampled: WaitTarget | null) => {
      await client.query("insert into jobs (kind, customer_id, payload) select 'statement.monthly', $1, '{}'::jsonb from generate_series(1, $2::int)", [customerId, n]);
      target = dispatched + n;
      const done = new Promise<void>((resolve) => {
        reached = resolve;
      });
      const stop = new AbortController();
      const worker = jobDispatcher({ jobs, queue, lock });
      const m = await measured(async () => {
        const running = worker.start(stop.signal, { succeeded: () => undefined, failed: () => undefined });
        try {
          await within(done, Math.max(60_000, timing.durationS * 10_000), () => `${target - dispatched} jobs not dispatched`);
        } finally {
          stop.abort();
          await running;
          await worker.stop();
        }
      }, sampled);
      return m;
    };
    const warm = await once(200, null);
    const n = Math.min(20_000, Math.max(500, Math.round(((200 / warm.ms) * 1000 * timing.durationS) / 2 / 100) * 100));
    const busy = await settle();
    const m = await once(n, { url: adminUrl(), database: new URL(dbUrl).pathname.slice(1) });
    const left = await client.query<{ n: string }>('select count(*) as n from jobs where dispatched_at is null');
    return {
      series: rateSeries(`${NAMES.dispatcher}, ${SEND_ONLY}`, 'jobs/s', n, m.ms, m, busy),
      check: { jobs: n + 200, dispatched, left_undispatched: Number(left.rows[0]?.n ?? -1) },
    };
  } finally {
    await client.end().catch(() => undefined);
  }
}

// ---------------------------------------------------------------------------------------------
// Streams: the outbox (or a source) loaded untimed, then moved to a consumer and acknowledged.

/** What a stream run saw: deliveries by event id, and when the producer and the consumer finished. */
class StreamLog {
  readonly deliveries = new Map<string, number>();
  private pending = new Set<string>();
  private toPublish = 0;
  private started = 0;
  publishedMs = 0;
  ackedMs = 0;
  private finish: (() => void) | null = null;

  expect(ids: readonly string[]): Promise<void> {
    this.pending = new Set(ids);
    this.toPublish = ids.length;
    this.publishedMs = 0;
    this.ackedMs = 0;
    this.started = performance.now();
    return new Promise((resolve) => {
      this.finish = resolve;
    });
  }

  published = (count: number): void => {
    this.toPublish -= count;
    if (this.toPublish <= 0 && this.publishedMs === 0) this.publishedMs = performance.now() - this.started;
  };

  delivered = (ids: readonly string[]): void => {
    for (const id of ids) {
      this.deliveries.set(id, (this.deliveries.get(id) ?? 0) + 1);
      this.pending.delete(id);
    }
  };

  allDelivered(): boolean {
    return this.pending.size === 0;
  }

  /** Called after each acknowledgement; the one after the last delivery ends the run. */
  acked = (): void => {
    if (this.pending.size === 0 && this.ackedMs === 0) {
      this.ackedMs = performance.now() - this.started;
      this.finish?.();
    }
  };

  left(): number {
    return this.pending.size;
  }
}

interface StreamDriver {
  /** Untimed: puts `n` events where the producer takes them from; resolves with their ids. */
  load(n: number): Promise<string[]>;
  /**
   * Timed: moves every loaded event to the consumer, telling `log`; resolves once `done` has (the
   * last event acknowledged) and the producer and consumer are stopped.
   */
  run(log: StreamLog, done: Promise<void>, deadlineMs: number): Promise<void>;
  /** Failures the workers reported (they retry by themselves). */
  failures(): string[];
  after(): Promise<Record<string, number>>;
  close(): Promise<void>;
}

const EVENT_PAYLOAD_SQL = `jsonb_build_object(
  'transfer_id', i, 'transaction_id', i, 'from_account_id', 1000 + i % 100, 'to_account_id', 1100 + i % 100,
  'amount', 1 + i % 997, 'currency', 'EUR', 'created_at', to_char(now() at time zone 'utc', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'))`;
const LOAD_BATCH = 5_000;

/** A transfer.completed event as the outbox would hold it, for the clients that do not read an outbox. */
function transferEvent(i: number): StreamEvent {
  const now = new Date().toISOString();
  return {
    id: randomUUID(),
    type: 'transfer.completed',
    version: 1,
    occurred_at: now,
    aggregate_id: String(i),
    customer_ids: [1 + (i % 50), 51 + (i % 50)],
    payload: {
      transfer_id: i,
      transaction_id: i,
      from_account_id: 1000 + (i % 100),
      to_account_id: 1100 + (i % 100),
      amount: 1 + (i % 997),
      currency: 'EUR',
      created_at: now,
    },
  };
}

/** An EventStream whose subscriptions tell `onAck` after each acknowledgement resolved. */
function ackObserved(stream: EventStream, onAck: () => void): EventStream {
  const observe = (sub: Subscription): Subscription => ({
    async fetch(max, waitMs, signal) {
      const batch = await sub.fetch(max, waitMs, signal);
      return batch.map((d) => ({
        seq: d.seq,
        event: d.event,
        ack: async () => {
          await d.ack();
          onAck();
        },
      }));
    },
    close: () => sub.close(),
  });
  return {
    kind: stream.kind,
    publish: (events) => stream.publish(events),
    subscribe: async (group, startAt) => observe(await stream.subscribe(group, startAt)),
    resetGroup: (group, startAt) => stream.resetGroup(group, startAt),
    deleteGroup: (group) => stream.deleteGroup(group),
    groups: () => stream.groups(),
    head: () => stream.head(),
    read: (fromSeq, limit) => stream.read(fromSeq, limit),
    close: () => stream.close(),
  };
}

/**
 * databank's path: outbox rows (SQL, shaped like transfer.completed events) → the outbox relay
 * worker → the EventStream → the stream-consumer worker of a consumer group, both as `serve` runs
 * them (default batch sizes, the schedule lock), on one stream object.
 */
async function databankStreamDriver(store: SqlStore, dbUrl: string, stream: EventStream): Promise<StreamDriver> {
  const { outboxRelay } = await modules.relay();
  const { streamConsumer } = await modules.consumer();
  const { scheduleLock } = await modules.lock();
  const lock = scheduleLock(store);
  const client = new pg.Client({ connectionString: dbUrl });
  await client.connect();
  let next = 1;
  const failures: string[] = [];
  const recorder = (worker: string): RunRecorder => ({
    succeeded: () => undefined,
    failed: (err) => {
      if (failures.length < 20) failures.push(`${worker}: ${messageOf(err)}`);
    },
  });
  return {
    async load(n) {
      const ids: string[] = [];
      for (let from = next; from < next + n; from += LOAD_BATCH) {
        const to = Math.min(next + n - 1, from + LOAD_BATCH - 1);
        const { rows } = await client.query<{ event_id: string }>(
          `insert into outbox (type, aggregate_id, customer_ids, payload)
           select 'transfer.completed', i::text, array[1 + i % 50, 51 + i % 50]::bigint[], ${EVENT_PAYLOAD_SQL}
           from generate_series($1::bigint, $2::bigint) as i order by i
           returning event_id`,
          [from, to],
        );
        for (const r of rows) ids.push(r.event_id);
      }
      next += n;
      return ids;
    },
    async run(log, done, deadlineMs) {
      const stop = new AbortController();
      const relay = outboxRelay({ db: store.db, stream, lock, onPublished: log.published });
      const consumer = streamConsumer({
        group: GROUP,
        stream: ackObserved(stream, log.acked),
        startAt: 'start',
        applier: {
          async apply(events) {
            log.delivered(events.map((e) => e.id));
          },
        },
      });
      const running = [relay.start(stop.signal, recorder('outbox-relay')), consumer.start(stop.signal, recorder(`events:${GROUP}`))];
      try {
        await within(done, deadlineMs, () => `${log.left()} events not consumed; ${failures.join('; ')}`);
      } finally {
        stop.abort();
        await Promise.allSettled(running);
        await relay.stop();
        await consumer.stop();
      }
    },
    failures: () => failures,
    async after() {
      const { rows } = await client.query<{ unpublished: string; outbox: string }>(
        'select count(*) filter (where published_at is null) as unpublished, count(*) as outbox from outbox',
      );
      const group = (await stream.groups()).find((g) => g.group === GROUP);
      return {
        outbox_rows: Number(rows[0]?.outbox ?? 0),
        outbox_unpublished: Number(rows[0]?.unpublished ?? 0),
        stream_head: await stream.head(),
        group_position: group?.position ?? -1,
        group_lag: group?.lag ?? -1,
      };
    },
    async close() {
      await stream.close();
      await client.end().catch(() => undefined);
    },
  };
}

/**
 * The raw PostgreSQL equivalent, on its own database: events (the same envelope and payload) in a
 * source table; the producer copies them into a log table with one `insert … select` per 500, the
 * consumer reads them back with `seq > $1 order by seq limit 200` on a second connection. No
 * outbox marking, no lock, no stored position: the floor of moving rows through PostgreSQL.
 */
async function rawLogDriver(dbUrl: string): Promise<StreamDriver> {
  const writer = new pg.Client({ connectionString: dbUrl });
  const reader = new pg.Client({ connectionString: dbUrl });
  await writer.connect();
  await reader.connect();
  await writer.query('create table ref_source (id bigint primary key, event jsonb not null)');
  await writer.query('create table ref_log (seq bigint primary key, event jsonb not null)');
  let next = 1;
  let copied = 0;
  let position = 0;
  return {
    async load(n) {
      const ids: string[] = [];
      for (let from = next; from < next + n; from += LOAD_BATCH) {
        const to = Math.min(next + n - 1, from + LOAD_BATCH - 1);
        const { rows } = await writer.query<{ id: string }>(
          `insert into ref_source (id, event)
           select i, jsonb_build_object('id', gen_random_uuid(), 'type', 'transfer.completed', 'version', 1,
             'occurred_at', to_char(now() at time zone 'utc', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'), 'aggregate_id', i::text,
             'customer_ids', jsonb_build_array(1 + i % 50, 51 + i % 50), 'payload', ${EVENT_PAYLOAD_SQL})
           from generate_series($1::bigint, $2::bigint) as i order by i
           returning event->>'id' as id`,
          [from, to],
        );
        for (const r of rows) ids.push(r.id);
      }
      next += n;
      return ids;
    },
    async run(log, done, deadlineMs) {
      const until = next - 1;
      let stopping = false;
      const producer = (async () => {
        while (copied < until && !stopping) {
          const to = Math.min(until, copied + RAW_LOG_WRITE_BATCH);
          await writer.query('insert into ref_log (seq, event) select id, event from ref_source where id > $1 and id <= $2 order by id', [copied, to]);
          log.published(to - copied);
          copied = to;
        }
      })();
      const consumer = (async () => {
        while (!stopping) {
          const { rows } = await reader.query<{ seq: string; event: StreamEvent }>(
            'select seq, event from ref_log where seq > $1 order by seq limit $2',
            [position, RAW_LOG_READ_BATCH],
          );
          const last = rows.at(-1);
          if (!last) {
            await sleep(1);
            continue;
          }
          position = Number(last.seq);
          log.delivered(rows.map((r) => r.event.id));
          log.acked();
        }
      })();
      try {
        await within(done, deadlineMs, () => `${log.left()} events not read`);
      } finally {
        stopping = true;
        await Promise.allSettled([producer, consumer]);
      }
    },
    failures: () => [],
    async after() {
      const { rows } = await writer.query<{ n: string }>('select count(*) as n from ref_log');
      return { log_rows: Number(rows[0]?.n ?? 0), read_position: position };
    },
    async close() {
      await writer.end().catch(() => undefined);
      await reader.end().catch(() => undefined);
    },
  };
}

/**
 * nats.js on its own stream, configured as databank's (file storage, a 2 min duplicate window,
 * `msgID` = the event id): publishes with SEND_WINDOW PubAcks awaited at once, while a durable pull
 * consumer (explicit acks, `consume()` in batches of 200) acks each message; flushed at the end.
 */
async function rawNatsDriver(url: string, prefix: string): Promise<StreamDriver & { oneByOne(n: number): Promise<Measured> }> {
  const nc = await natsConnect({ servers: url, timeout: 5_000 });
  const jsm = await nc.jetstreamManager();
  const js = nc.jetstream();
  const streamName = `${prefix}_raw`;
  const subject = `${prefix}.raw.transfer.completed`;
  const durable = `${prefix}_raw_${GROUP}`;
  await jsm.streams.add({
    name: streamName,
    subjects: [`${prefix}.raw.>`],
    storage: StorageType.File,
    duplicate_window: nanos(120_000),
  });
  await jsm.consumers.add(streamName, {
    durable_name: durable,
    ack_policy: AckPolicy.Explicit,
    ack_wait: nanos(30_000),
    deliver_policy: DeliverPolicy.All,
  });
  let loaded: StreamEvent[] = [];
  let counter = 0;
  return {
    async load(n) {
      loaded = Array.from({ length: n }, () => transferEvent(++counter));
      return loaded.map((e) => e.id);
    },
    async run(log, done, deadlineMs) {
      const consumer = await js.consumers.get(streamName, durable);
      const messages = await consumer.consume({ max_messages: CONSUMER_BATCH });
      const consuming = (async () => {
        for await (const m of messages) {
          log.delivered([m.json<StreamEvent>().id]);
          m.ack();
          if (log.allDelivered()) break;
        }
        await nc.flush();
        log.acked();
      })();
      const events = loaded;
      const publishing = inParallel(events, SEND_WINDOW, async (e) => {
        await js.publish(subject, JSON.stringify(e), { msgID: e.id });
      }).then(() => log.published(events.length));
      try {
        await within(done, deadlineMs, () => `${log.left()} messages not consumed`);
      } finally {
        // stop(), not close(): close() waits for a pull that a loop left by `break` never ends.
        messages.stop();
        await Promise.allSettled([consuming, publishing]);
      }
    },
    /** Publish only, each PubAck awaited before the next message (as the relay publishes); consumed later by nobody. */
    async oneByOne(n) {
      const events = Array.from({ length: n }, () => transferEvent(++counter));
      const oneSubject = `${prefix}.raw.one.transfer.completed`;
      return measured(async () => {
        for (const e of events) await js.publish(oneSubject, JSON.stringify(e), { msgID: e.id });
      });
    },
    failures: () => [],
    async after() {
      const info = await jsm.consumers.info(streamName, durable);
      return { stream_messages: (await jsm.streams.info(streamName)).state.messages, consumer_pending: info.num_pending, consumer_ack_pending: info.num_ack_pending };
    },
    async close() {
      await jsm.streams.delete(streamName).catch(() => false);
      await nc.close().catch(() => undefined);
    },
  };
}

/**
 * A stream system and its reference, interleaved: warm-up rounds as for the queues, then n events
 * (sized from the first system's warm-up) moved end to end twice, alternated; the best round of
 * each is kept, with its producer side (when the last event was published) beside it.
 */
async function streamPair(sides: ReadonlyArray<Side<StreamDriver>>, timing: Timing): Promise<Record<string, unknown>> {
  const deadlineMs = Math.max(60_000, timing.durationS * 10_000);
  const logs = new Map(sides.map((s) => [s, new StreamLog()]));
  const logOf = (s: Side<StreamDriver>) => logs.get(s) as StreamLog;
  const loaded = new Map(sides.map((s) => [s, 0]));
  const once = async (s: Side<StreamDriver>, n: number, sampled: WaitTarget | null, settled: boolean) => {
    const ids = await s.driver.load(n);
    loaded.set(s, (loaded.get(s) ?? 0) + ids.length);
    const busy = settled ? await settle() : 0;
    const log = logOf(s);
    const done = log.expect(ids);
    const m = await measured(() => s.driver.run(log, done, deadlineMs), sampled);
    return { m, busy, ackedMs: log.ackedMs, publishedMs: log.publishedMs };
  };
  await eachSide(sides, async (s) => {
    const warmStart = performance.now();
    for (let count = WARM_COUNT; ; count *= 2) {
      const w = await once(s, count, null, false);
      s.warmRate = (count / w.ackedMs) * 1000;
      s.warmRounds++;
      if (performance.now() - warmStart >= timing.warmupS * 1000 || count * 2 > MAX_WARM) break;
    }
    progress(`  ${s.label}: warm-up ${s.warmRounds} rounds, the last at ${round(s.warmRate)} events/s`);
  });
  const sizer = sides.find((s) => !s.failure);
  if (!sizer) return {};
  const n = sizeFor(sizer.warmRate, timing.durationS);
  progress(`  ${n} events per round (about ${timing.durationS} s of ${sizer.label})`);
  const best = new Map<Side<StreamDriver>, Series[]>();
  for (let r = 0; r < E2E_ROUNDS; r++) {
    await eachSide(sides, async (s) => {
      const w = await once(s, n, s.target, true);
      // The CPU window also holds the stop of the workers after the last ack: a few ms.
      const producer = rateSeries(`${s.label}, ${PRODUCER}`, 'events/s', n, w.publishedMs, { cpu: {} }, w.busy);
      const e2e = rateSeries(`${s.label}, ${E2E}`, 'events/s', n, w.ackedMs, w.m, w.busy);
      s.rounds.push(e2e.rate);
      if (e2e.rate > (best.get(s)?.[1]?.rate ?? -1)) best.set(s, [producer, e2e]);
      progress(`  ${s.label} (${r + 1}/${E2E_ROUNDS}): ${PRODUCER} ${producer.rate} events/s, ${E2E} ${e2e.rate} events/s`);
    });
  }
  await sleep(300);
  const checks: Record<string, unknown> = {};
  for (const s of sides) {
    s.series.push(...(best.get(s) ?? []));
    const log = logOf(s);
    const counts = [...log.deliveries.values()];
    const duplicates = counts.reduce((a, c) => a + (c - 1), 0);
    const total = loaded.get(s) ?? 0;
    checks[`events: ${s.label}`] = {
      events_per_round: n,
      warmup_rounds: s.warmRounds,
      end_to_end_rounds: s.rounds,
      loaded: total,
      consumed_once_or_more: log.deliveries.size,
      deliveries: counts.reduce((a, b) => a + b, 0),
      duplicates,
      missing: total - log.deliveries.size,
      every_event_consumed_once: !s.failure && duplicates === 0 && log.deliveries.size === total,
      after: s.failure ? {} : await s.driver.after().catch((err: unknown) => ({ error: messageOf(err) })),
      worker_failures: s.driver.failures(),
      ...(s.failure ? { failure: s.failure } : {}),
    };
  }
  return checks;
}

// ---------------------------------------------------------------------------------------------
// Uploads: the answer time with and without the variant work.

/** A 2000×1500 PNG, the same bytes every run: gradients with a little seeded noise (≈5 MB, like a photo). */
async function benchPng(): Promise<Buffer> {
  const raw = Buffer.alloc(IMAGE_WIDTH * IMAGE_HEIGHT * 3);
  let seed = 12345;
  for (let y = 0; y < IMAGE_HEIGHT; y++) {
    for (let x = 0; x < IMAGE_WIDTH; x++) {
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
      const noise = (seed >>> 24) & 7;
      const i = (y * IMAGE_WIDTH + x) * 3;
      raw[i] = ((x * 255) / IMAGE_WIDTH + noise) & 255;
      raw[i + 1] = ((y * 255) / IMAGE_HEIGHT + noise) & 255;
      raw[i + 2] = (((x + y) * 128) / (IMAGE_WIDTH + IMAGE_HEIGHT) + 64 + (noise >> 1)) & 255;
    }
  }
  return sharp(raw, { raw: { width: IMAGE_WIDTH, height: IMAGE_HEIGHT, channels: 3 } })
    .png()
    .toBuffer();
}

/** `size` bytes that databank takes for a PDF (the magic, then seeded bytes): no variants. */
function benchPdf(size: number): Buffer {
  const pdf = Buffer.alloc(size);
  const head = Buffer.from('%PDF-1.7\n%\xe2\xe3\xcf\xd3\n', 'latin1');
  head.copy(pdf);
  let seed = 67890;
  for (let i = head.length; i < size; i++) {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    pdf[i] = seed >>> 24;
  }
  return pdf;
}

interface FileAnswer {
  readonly file_id: number;
  readonly content_type: string;
  readonly variants: ReadonlyArray<{ readonly name: string; readonly status: string }>;
}

/** Sequential uploads; returns each answer time and the file ids. */
async function uploadSeries(
  bank: ServeChild,
  customerId: number,
  bytes: Buffer,
  extension: string,
  count: number,
): Promise<{ times: number[]; ids: number[]; pending: number; measured: Measured; nonOk: Record<string, number> }> {
  const times: number[] = [];
  const ids: number[] = [];
  const nonOk: Record<string, number> = {};
  let pending = 0;
  const groups: CpuGroups = { ...CPU, databank: () => [bank.child.pid] };
  const a = snapshot(groups);
  const t0 = performance.now();
  for (let i = 0; i < count; i++) {
    const r = await bank.postBytes<FileAnswer>(`/customers/${customerId}/files?filename=bench-${i}.${extension}`, bytes, 'application/octet-stream');
    if (r.status !== 201) {
      const key = `HTTP ${r.status}`;
      nonOk[key] = (nonOk[key] ?? 0) + 1;
      continue;
    }
    times.push(r.ms);
    ids.push(r.body.file_id);
    if (r.body.variants.length > 0 && r.body.variants.every((v) => v.status === 'pending')) pending++;
  }
  const ms = performance.now() - t0;
  return { times, ids, pending, measured: { ms, cpu: between(a, snapshot(groups)) }, nonOk };
}

/** Polls the files until every variant is ready (or failed); resolves with the counts. */
async function waitForVariants(bank: ServeChild, ids: readonly number[]): Promise<{ ready: number; failed: number; pending: number }> {
  const left = new Set(ids);
  let ready = 0;
  let failed = 0;
  const deadline = performance.now() + VARIANTS_DEADLINE_MS;
  while (left.size > 0 && performance.now() < deadline) {
    for (const id of [...left]) {
      const file = await bank.api<FileAnswer>('GET', `/files/${id}`);
      if (file.variants.some((v) => v.status === 'pending')) continue;
      left.delete(id);
      ready += file.variants.filter((v) => v.status === 'ready').length;
      failed += file.variants.filter((v) => v.status === 'failed').length;
    }
    if (left.size > 0) await sleep(250);
  }
  return { ready, failed, pending: left.size * 3 };
}

async function uploads(): Promise<{ series: Series[]; check: Record<string, unknown>; skipped: Skip[] }> {
  const png = await benchPng();
  const pdf = benchPdf(png.length);
  const count = Math.max(10, UPLOADS);
  progress(`uploads: a ${IMAGE_WIDTH}x${IMAGE_HEIGHT} PNG of ${png.length} bytes and a PDF of the same size, ${count} sequential uploads per series`);
  const series: Series[] = [];
  const check: Record<string, unknown> = { png_bytes: png.length, pdf_bytes: pdf.length, uploads_per_series: count };
  const seriesOf = (name: string, r: Awaited<ReturnType<typeof uploadSeries>>, busy: number): Series => ({
    ...rateSeries(name, 'uploads/s', r.times.length, r.measured.ms, r.measured, busy, latencyOf(r.times)),
    non_ok: r.nonOk,
  });

  const skipped: Skip[] = [];
  for (const worker of [true, false]) {
    const mode = worker ? 'serve' : 'serve --no-worker';
    progress(`starting databank (${mode}, PGlite, fresh data dir)`);
    let bank: ServeChild | null = null;
    try {
      bank = await startServe(worker ? [] : ['--no-worker']);
      const customer = await bank.api<{ id: number }>('POST', '/customers', { name: 'Bench Uploader', date_of_birth: '1980-01-01' });
      const warm = await uploadSeries(bank, customer.id, png, 'png', UPLOAD_WARM);
      await uploadSeries(bank, customer.id, pdf, 'pdf', UPLOAD_WARM);
      if (worker) await waitForVariants(bank, warm.ids);

      let busy = await settle();
      progress(`  ${mode}: ${count} PNG uploads`);
      const images = await uploadSeries(bank, customer.id, png, 'png', count);
      const imageSeries = seriesOf(`upload PNG, ${mode}`, images, busy);
      series.push(imageSeries);
      progress(`    p50 ${imageSeries.latency_ms.p50} ms, p99 ${imageSeries.latency_ms.p99} ms; answers with every variant pending: ${images.pending}`);
      let variants: Record<string, unknown> = { answers_with_variants_pending: images.pending };
      if (worker) {
        const t0 = performance.now();
        const v = await waitForVariants(bank, images.ids);
        const afterMs = performance.now() - t0 + images.measured.ms;
        variants = {
          ...variants,
          ...v,
          expected: images.ids.length * 3,
          all_ready: v.ready === images.ids.length * 3,
          seconds_from_first_upload_to_all_ready: round(afterMs / 1000, 1),
        };
        progress(`    variants: ${v.ready} ready, ${v.failed} failed, ${v.pending} pending, all ready ${round(afterMs / 1000, 1)} s after the first upload`);
      } else {
        const sample = await bank.api<FileAnswer>('GET', `/files/${images.ids.at(-1) ?? 0}`);
        variants = { ...variants, last_file_variants_without_worker: sample.variants.map((v) => v.status) };
      }

      busy = await settle();
      progress(`  ${mode}: ${count} PDF uploads`);
      const pdfs = await uploadSeries(bank, customer.id, pdf, 'pdf', count);
      const pdfSeries = seriesOf(`upload PDF, ${mode}`, pdfs, busy);
      series.push(pdfSeries);
      progress(`    p50 ${pdfSeries.latency_ms.p50} ms, p99 ${pdfSeries.latency_ms.p99} ms`);
      check[mode] = { variants, pdf_answers_without_variants: pdfs.ids.length };
    } catch (err) {
      const names = [`upload PNG, ${mode}`, `upload PDF, ${mode}`].filter((n) => !series.some((x) => x.name === n));
      for (const name of names) skipped.push({ series: name, reason: `failed: ${messageOf(err)}` });
      progress(`  skipped ${names.join(', ')}: ${messageOf(err)}`);
    } finally {
      await bank?.stop();
    }
  }
  return { series, check, skipped };
}

// ---------------------------------------------------------------------------------------------
// The run.

function limitNote(s: Series, cpuCount: number): string | null {
  const limits = cpuLimits(s.cpu_cores, cpuCount, MULTI_THREADED);
  if (!limits) return null;
  const { machine, parts, verdicts } = limits;
  const rabbit = s.cpu_cores.rabbitmq ?? 0;
  if (rabbit >= 0.85) verdicts.push(`RabbitMQ at ${rabbit.toFixed(2)} cores: one classic queue is one Erlang process, so about one core is its ceiling`);
  const verdict =
    verdicts.length > 0
      ? verdicts.join('; ')
      : `neither a process nor the machine is saturated (${machine.toFixed(2)} of ${cpuCount} cores): round trips and waits bound it`;
  return `${s.name}: ${parts}; ${verdict}`;
}

async function run(timing: Timing): Promise<BenchResult> {
  const pgUrl = adminUrl();
  const amqpUrl = process.env.AMQP_URL || DEFAULT_AMQP_URL;
  const natsUrl = process.env.NATS_URL || DEFAULT_NATS_URL;
  const [pgAnswer, amqpAnswer, natsAnswer] = await Promise.all([serverVersion(pgUrl), amqpProbe(amqpUrl), natsProbe(natsUrl)]);
  const pgVersion = 'version' in pgAnswer ? pgAnswer.version : null;
  const down = {
    postgres: 'error' in pgAnswer ? `PostgreSQL does not answer at ${redact(pgUrl)} (${pgAnswer.error}); set DATABASE_URL` : null,
    rabbitmq: 'error' in amqpAnswer ? `RabbitMQ does not answer at ${redact(amqpUrl)} (${amqpAnswer.error}); set AMQP_URL` : null,
    nats: 'error' in natsAnswer ? `NATS JetStream does not answer at ${redact(natsUrl)} (${natsAnswer.error}); set NATS_URL` : null,
  };
  progress(
    `PostgreSQL ${pgVersion ?? 'down'} at ${redact(pgUrl)}; RabbitMQ ${'version' in amqpAnswer ? amqpAnswer.version : 'down'} at ${redact(amqpUrl)}; ` +
      `NATS ${'version' in natsAnswer ? natsAnswer.version : 'down'} at ${redact(natsUrl)}; databank from ${DATABANK_DIR}`,
  );
  const prefix = `bench_async_${process.pid}_${Date.now().toString(36)}`;
  progress(`broker prefix ${prefix}`);

  const series: Series[] = [];
  const skipped: Skip[] = [];
  for (const name of Object.keys(statementsPerMessage)) delete statementsPerMessage[name];
  const checks: Record<string, unknown> = {};
  const skip = (names: readonly string[], reason: string) => {
    for (const name of names) skipped.push({ series: name, reason });
    progress(`  skipped ${names.join(', ')}: ${reason}`);
  };
  const queueNames = (label: string) => [SEND_ONLY, CONSUME_ONLY, E2E].map((p) => `${label}, ${p}`);
  const streamNames = (label: string) => [PRODUCER, E2E].map((p) => `${label}, ${p}`);

  let bankDb: TempDatabase | null = null;
  let refDb: TempDatabase | null = null;
  let store: SqlStore | null = null;
  const brokerCleanup = { rabbitmq_queues_deleted: [] as string[], nats_streams_deleted: [] as string[] };
  const cleanupBrokers = onCleanup(async () => {
    if (!down.rabbitmq) {
      const connection = await amqpConnect(amqpUrl).catch(() => null);
      if (connection) {
        connection.on('error', () => undefined);
        for (const name of [`${prefix}.${QUEUE}`, `${prefix}.${QUEUE}.dlq`, `${prefix}.raw`, `${prefix}.raw_priority`]) {
          const channel = await connection.createChannel();
          channel.on('error', () => undefined);
          const deleted = await channel.deleteQueue(name).then(() => true, () => false);
          if (deleted) brokerCleanup.rabbitmq_queues_deleted.push(name);
          await channel.close().catch(() => undefined);
        }
        await connection.close().catch(() => undefined);
      }
    }
    if (!down.nats) {
      const nc = await natsConnect({ servers: natsUrl, timeout: 3_000 }).catch(() => null);
      if (nc) {
        const jsm = await nc.jetstreamManager();
        for (const name of [`${prefix}_events`, `${prefix}_raw`]) {
          if (await jsm.streams.delete(name).catch(() => false)) brokerCleanup.nats_streams_deleted.push(name);
        }
        await nc.close().catch(() => undefined);
      }
    }
  });

  try {
    if (!down.postgres) {
      bankDb = await createDatabase(pgUrl, `bench_async_${process.pid}`);
      refDb = await createDatabase(pgUrl, `bench_async_ref_${process.pid}`);
      progress(`databases ${bankDb.name} (databank, migrated) and ${refDb.name} (the raw references)`);
      const { openSqlStore } = await modules.sql();
      const { createMigrator, unwrap } = await modules.migrator();
      store = await openSqlStore({ kind: 'postgres', connectionString: bankDb.url, ssl: { mode: 'disable' }, poolMax: POOL_MAX }, () => undefined);
      unwrap(await createMigrator(store.db).migrateToLatest());
    }
    const { openJobQueue } = await modules.queue();
    const { openEventStream } = await modules.stream();

    // --- Queues.
    const bankWaits = bankDb ? { url: pgUrl, database: bankDb.name } : null;
    const refWaits = refDb ? { url: pgUrl, database: refDb.name } : null;

    // Each pair runs interleaved, databank first, both with the same number of jobs (events): a
    // pg-boss fetch sorts every waiting job, so its cost grows with the backlog.
    type Member<D> = { label: string; waits: WaitTarget | null; open: () => Promise<D> };
    const runPair = async <D extends { close(): Promise<void> }>(
      kind: string,
      members: ReadonlyArray<Member<D>>,
      unavailable: string | null,
      names: (label: string) => string[],
      pair: (sides: ReadonlyArray<Side<D>>) => Promise<Record<string, unknown>>,
      after?: (sides: ReadonlyArray<Side<D>>) => Promise<void>,
    ) => {
      progress(`${kind}: ${members.map((m) => m.label).join(' vs ')}`);
      if (unavailable) {
        for (const m of members) skip(names(m.label), unavailable);
        return;
      }
      const sides: Array<Side<D>> = [];
      try {
        for (const m of members) {
          try {
            sides.push(side(m.label, await m.open(), m.waits));
          } catch (err) {
            skip(names(m.label), `could not start: ${messageOf(err)}`);
          }
        }
        Object.assign(checks, await pair(sides));
        for (const s of sides) {
          series.push(...s.series);
          if (s.failure) skip(names(s.label), `failed: ${s.failure}`);
        }
        await after?.(sides);
      } finally {
        for (const s of sides) await s.driver.close().catch(() => undefined);
      }
    };

    // --- Queues.
    await runPair<QueueDriver>(
      'queue',
      [
        {
          label: NAMES.bossDatabank,
          waits: bankWaits,
          open: async () =>
            databankQueueDriver(
              await openJobQueue({ kind: 'postgres', store: store as SqlStore, prefix }),
              pgBossCounts((bankDb as TempDatabase).url, `${prefix}.${QUEUE}`),
            ),
        },
        { label: NAMES.bossRaw, waits: refWaits, open: () => rawPgBossDriver((refDb as TempDatabase).url) },
      ],
      down.postgres,
      queueNames,
      (sides) => queuePair(sides, timing),
      async () => {
        // How fast the app's own dispatcher feeds the same queue (one send and one update per job).
        progress(`queue: ${NAMES.dispatcher}`);
        const queue = await openJobQueue({ kind: 'postgres', store: store as SqlStore, prefix });
        try {
          const d = await dispatcherSeries(store as SqlStore, (bankDb as TempDatabase).url, queue, timing);
          series.push(d.series);
          checks[`jobs: ${NAMES.dispatcher}`] = d.check;
          progress(`  ${NAMES.dispatcher}: ${d.series.rate} jobs/s`);
        } catch (err) {
          skip([`${NAMES.dispatcher}, ${SEND_ONLY}`], `failed: ${messageOf(err)}`);
        } finally {
          await queue.close();
        }
      },
    );
    await runPair<QueueDriver>(
      'queue',
      [
        { label: NAMES.rabbitDatabank, waits: null, open: async () => databankQueueDriver(await openJobQueue({ kind: 'rabbitmq', url: amqpUrl, prefix }), null) },
        { label: NAMES.rabbitRaw, waits: null, open: () => rawAmqpDriver(amqpUrl, `${prefix}.raw`) },
      ],
      down.rabbitmq,
      queueNames,
      (sides) => queuePair(sides, timing),
      async () => {
        // The same raw client on a queue declared and published to as databank's are: what the
        // priority queue (x-max-priority 9) and mandatory publishing cost the broker.
        const n = (checks[`jobs: ${NAMES.rabbitRaw}`] as { jobs_per_phase?: number } | undefined)?.jobs_per_phase;
        if (!n) return;
        const label = NAMES.rabbitRawAsDatabank;
        progress(`queue: ${label}`);
        const driver = await rawAmqpDriver(amqpUrl, `${prefix}.raw_priority`, true);
        const log = new DeliveryLog();
        try {
          const deadlineMs = Math.max(60_000, timing.durationS * 10_000);
          await queueEndToEnd(driver, log, newIds(WARM_COUNT), null, deadlineMs, () => `${label}: ${log.left()} jobs not delivered`);
          const busy = await settle();
          const m = await queueEndToEnd(driver, log, newIds(n), null, deadlineMs, () => `${label}: ${log.left()} jobs not delivered`);
          const e2e = rateSeries(`${label}, ${E2E}`, 'jobs/s', n, m.ms, m, busy, log.latency());
          series.push(e2e);
          progress(`  ${label}, ${E2E}: ${e2e.rate} jobs/s`);
          const counts = [...log.deliveries.values()];
          checks[`jobs: ${label}`] = {
            jobs: n,
            sent: log.sent,
            delivered_once_or_more: log.deliveries.size,
            duplicates: counts.reduce((a, c) => a + (c - 1), 0),
            broker_after: await driver.after(),
          };
        } catch (err) {
          skip([`${label}, ${E2E}`], `failed: ${messageOf(err)}`);
        } finally {
          await driver.close();
        }
      },
    );

    // --- Streams.
    await runPair<StreamDriver>(
      'stream',
      [
        {
          label: NAMES.logDatabank,
          waits: bankWaits,
          open: async () =>
            databankStreamDriver(store as SqlStore, (bankDb as TempDatabase).url, await openEventStream({ kind: 'postgres', store: store as SqlStore })),
        },
        { label: NAMES.logRaw, waits: refWaits, open: () => rawLogDriver((refDb as TempDatabase).url) },
      ],
      down.postgres,
      streamNames,
      (sides) => streamPair(sides, timing),
    );
    let rawNats: Awaited<ReturnType<typeof rawNatsDriver>> | null = null;
    await runPair<StreamDriver>(
      'stream',
      [
        {
          label: NAMES.natsDatabank,
          waits: bankWaits,
          open: async () => {
            if (down.postgres) throw new Error(`${down.postgres} (the outbox lives there)`);
            return databankStreamDriver(
              store as SqlStore,
              (bankDb as TempDatabase).url,
              await openEventStream({ kind: 'nats', url: natsUrl, prefix, onError: () => undefined }),
            );
          },
        },
        {
          label: NAMES.natsRaw,
          waits: null,
          open: async () => {
            rawNats = await rawNatsDriver(natsUrl, prefix);
            return rawNats;
          },
        },
      ],
      down.nats,
      streamNames,
      (sides) => streamPair(sides, timing),
      async (sides) => {
        // What the relay's way of publishing costs on its own: one PubAck awaited before the next message.
        const raw = rawNats as Awaited<ReturnType<typeof rawNatsDriver>> | null;
        const rounds = sides.find((s) => s.label === NAMES.natsRaw)?.rounds ?? [];
        if (!raw || rounds.length === 0) return;
        const n = Math.max(MIN_COUNT, Math.round((Math.max(...rounds) * timing.durationS) / 4 / 1000) * 1000);
        const busy = await settle();
        const m = await raw.oneByOne(n);
        series.push(rateSeries(`${NAMES.natsOneByOne}, ${SEND_ONLY}`, 'events/s', n, m.ms, m, busy));
        progress(`  ${NAMES.natsOneByOne}: ${round((n / m.ms) * 1000)} events/s`);
      },
    );
  } finally {
    await store?.close().catch(() => undefined);
    progress('dropping the benchmark databases, deleting the queues and streams');
    await bankDb?.drop();
    await refDb?.drop();
    await cleanupBrokers();
    checks['broker objects deleted'] = brokerCleanup;
  }

  // --- Uploads.
  const u = await uploads();
  series.push(...u.series);
  checks.uploads = u.check;
  skipped.push(...u.skipped);

  const rate = (name: string) => series.find((s) => s.name === name)?.rate;
  const p50 = (name: string) => series.find((s) => s.name === name)?.latency_ms.p50 ?? undefined;
  const ratios: Ratio[] = [];
  const add = (name: string, a: number | undefined, b: number | undefined, goal: number | null) => {
    if (a !== undefined && b !== undefined) ratios.push(ratio(name, 1, a, b, goal));
  };
  for (const [mine, theirs, goal] of [
    [NAMES.bossDatabank, NAMES.bossRaw, GOAL],
    [NAMES.rabbitDatabank, NAMES.rabbitRaw, GOAL],
  ] as const) {
    add(`${mine} / ${theirs}, ${E2E}`, rate(`${mine}, ${E2E}`), rate(`${theirs}, ${E2E}`), goal);
    add(`${mine} / ${theirs}, ${SEND_ONLY}`, rate(`${mine}, ${SEND_ONLY}`), rate(`${theirs}, ${SEND_ONLY}`), null);
    add(`${mine} / ${theirs}, ${CONSUME_ONLY}`, rate(`${mine}, ${CONSUME_ONLY}`), rate(`${theirs}, ${CONSUME_ONLY}`), null);
  }
  for (const [mine, theirs] of [
    [NAMES.logDatabank, NAMES.logRaw],
    [NAMES.natsDatabank, NAMES.natsRaw],
  ] as const) {
    add(`${mine} / ${theirs}, ${E2E}`, rate(`${mine}, ${E2E}`), rate(`${theirs}, ${E2E}`), GOAL);
    add(`${mine} / ${theirs}, ${PRODUCER}`, rate(`${mine}, ${PRODUCER}`), rate(`${theirs}, ${PRODUCER}`), null);
  }
  add(`${NAMES.dispatcher} / ${NAMES.bossDatabank}, ${SEND_ONLY}`, rate(`${NAMES.dispatcher}, ${SEND_ONLY}`), rate(`${NAMES.bossDatabank}, ${SEND_ONLY}`), null);
  add(`${NAMES.rabbitRawAsDatabank} / ${NAMES.rabbitRaw}, ${E2E}`, rate(`${NAMES.rabbitRawAsDatabank}, ${E2E}`), rate(`${NAMES.rabbitRaw}, ${E2E}`), null);
  add(`${NAMES.rabbitDatabank} / ${NAMES.rabbitRawAsDatabank}, ${E2E}`, rate(`${NAMES.rabbitDatabank}, ${E2E}`), rate(`${NAMES.rabbitRawAsDatabank}, ${E2E}`), null);
  add(`${NAMES.natsOneByOne} / ${NAMES.natsRaw}, ${PRODUCER}`, rate(`${NAMES.natsOneByOne}, ${SEND_ONLY}`), rate(`${NAMES.natsRaw}, ${PRODUCER}`), null);
  // Answer times: the image's p50 over the PDF's (≈ 1 when the upload does not wait for the variants).
  add('upload p50: PNG / PDF, serve (worker on)', p50('upload PNG, serve'), p50('upload PDF, serve'), null);
  add('upload p50: PNG / PDF, serve --no-worker', p50('upload PNG, serve --no-worker'), p50('upload PDF, serve --no-worker'), null);
  add('upload p50: PNG with worker / PNG --no-worker', p50('upload PNG, serve'), p50('upload PNG, serve --no-worker'), null);

  checks['SQL statements per message (sent by this process; load-independent)'] = { ...statementsPerMessage };
  checks.skipped = skipped;
  const machine = machineInfo(pgVersion);
  return {
    benchmark: 'async',
    description:
      'jobs/s through the JobQueue (pg-boss, RabbitMQ) and events/s outbox → consumer (PostgreSQL log, NATS JetStream) vs the raw clients on the same servers; upload answer time with and without image variants',
    machine,
    settings: {
      warmup_s: timing.warmupS,
      duration_s: timing.durationS,
      databank_revision: databankRevision(),
      broker_prefix: prefix,
      amqp_url: redact(amqpUrl),
      rabbitmq_version: 'version' in amqpAnswer ? amqpAnswer.version : null,
      nats_url: redact(natsUrl),
      nats_version: 'version' in natsAnswer ? natsAnswer.version : null,
      prefetch: PREFETCH,
      send_window: SEND_WINDOW,
      pgboss_insert_batch: PGBOSS_INSERT_BATCH,
      relay_batch: RELAY_BATCH,
      consumer_batch: CONSUMER_BATCH,
      database_pool_max: POOL_MAX,
      warm_count: WARM_COUNT,
      uploads_per_series: UPLOADS,
      image: `${IMAGE_WIDTH}x${IMAGE_HEIGHT} PNG`,
    },
    series,
    ratios,
    checks,
    notes: [
      `Each databank system runs beside its reference, interleaved, both with the same number of messages, sized from databank's warm-up so that its end-to-end round takes about --duration seconds (${WARM_COUNT} messages first, doubling while under --warmup seconds). The end-to-end round runs ${E2E_ROUNDS} times, alternating with the reference, and each series keeps its best round (every round is in the checks): the machine is shared, and alternating gives both sides the same spells of other load. "clients" is 1 throughout (one producer and one consumer, or one uploading client).`,
      `Queues: a job is a {job_id} JSON; the handler does nothing. databank sends through JobQueue.send with ${SEND_WINDOW} sends in flight and consumes with JobQueue.consume at prefetch ${PREFETCH} (pg-boss: its queue in the migrated database, pool of ${POOL_MAX}). pg-boss's own loop (its own database, pool of ${POOL_MAX}) inserts ${PGBOSS_INSERT_BATCH} jobs per insert() and fetches ${PREFETCH} at a time, completing them in one complete(). amqplib publishes persistent messages on a confirm channel to a plain durable classic queue, ${SEND_WINDOW} confirms awaited at once, and consumes with manual acks at prefetch ${PREFETCH}; "${NAMES.rabbitRawAsDatabank}" is the same client on a queue declared and published to as databank's are (classic, x-max-priority 9, mandatory messages with a correlation id), one end-to-end round.`,
      'Queue phases: send only (no consumer; until the last send is durable), consume only (the jobs just sent; until the consumer has acknowledged the last and closed), end to end (a consumer waiting, then the jobs sent; from the first send to the last acknowledgement). Latency in the end-to-end series is send issued → handler called. A pg-boss fetch sorts every waiting job, so its rates depend on the backlog: both sides have the same.',
      `"${NAMES.dispatcher}": rows written into the jobs table by SQL (as a request writes them), then the job-dispatcher worker as serve runs it, timed until it has marked the last dispatched; it sends one job at a time and marks each with its own UPDATE.`,
      `Streams: N outbox rows (transfer.completed, the documented envelope) inserted by SQL before the clock starts; then the outbox relay worker (batches of ${RELAY_BATCH}, the schedule lock) and the stream-consumer worker of group "${GROUP}" (fetch ${CONSUMER_BATCH}, ack the batch's last) run as serve runs them, on one EventStream, until the last event is acknowledged. "producer side" is when the relay had marked the last row published (raw: the last PubAck or insert).`,
      `Raw PostgreSQL reference: the same events in a source table, copied into a log table with one insert…select per ${RAW_LOG_WRITE_BATCH} rows on one connection while a second reads them back with "seq > $1 order by seq limit ${RAW_LOG_READ_BATCH}": no outbox to mark, no lock, no stored group position — the floor of moving rows through PostgreSQL. Raw NATS reference: nats.js publishes with ${SEND_WINDOW} PubAcks awaited at once and a durable pull consumer (consume(), batches of ${CONSUMER_BATCH}) acks each message with a plain ack, flushed at the end; databank's relay awaits each PubAck before the next publish ("${NAMES.natsOneByOne}" measures that way alone) and its consumer confirms every ack (a request per message).`,
      '"SQL statements per message" (checks) counts what this process sent through pg while a series ran, warm-up excluded: round trips per job or event, which do not depend on the machine\'s load.',
      `Uploads: ${UPLOADS} sequential raw-body uploads per series through one kept-alive connection, to a databank serve child on PGlite (fresh data dir), after ${UPLOAD_WARM} untimed uploads of each kind. With the worker on, the PNG series runs while the worker makes the variants of the PNGs before it (sharp in the same process); the PDF series after all variants are ready. "answers_with_variants_pending" counts answers whose three variants were still pending: the upload answered before its variants existed.`,
      'What bounds each series (CPU split in cores over its window; "bench process" is this process: databank\'s library or the raw client, and the load):',
      ...series.map((s) => limitNote(s, machine.cpu_count)).filter((n): n is string => n !== null).map((n) => `  ${n}`),
      ...skipped.map((s) => `skipped: ${s.series}: ${s.reason}`),
    ],
    warnings: noiseWarnings(series),
  };
}

export const asyncFlows: Benchmark = {
  name: 'async',
  description: 'jobs/s and events/s through the queue and the stream vs raw amqplib, pg-boss and NATS; upload answer time with and without image jobs',
  defaults: { warmupS: 2, durationS: 6 },
  run,
};
