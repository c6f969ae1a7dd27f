import type { FastifyInstance } from 'fastify';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { PoolStats } from '../stores/sql/port.ts';
import type { ReplicaStatus } from '../stores/sql/read-routing.ts';
import type { ClientTimeoutKind, ConnectionEvents } from './client-errors.ts';

/** The app's Prometheus metrics, in a registry of its own so that several apps can share a process. */
export interface Metrics {
  readonly registry: Registry;
  readonly cacheRequests: Counter<'family' | 'result'>;
  readonly cacheErrors: Counter<'family'>;
  readonly transfers: Counter<'outcome'>;
  readonly transactionRetries: Counter<'sqlstate'>;
  /** Reads through `reader`, by where they were served and why (`read-routing.ts`). */
  readonly dbReads: Counter<'target' | 'reason'>;
  /** The batching writer's batches: how many movements each carried, and how long it took. */
  readonly moneyBatchSize: Histogram;
  readonly moneyBatchSeconds: Histogram;
}

export function createMetrics(
  poolStats: () => PoolStats,
  options: { defaultMetrics: boolean; cacheEvictions?: () => Promise<number> },
): Metrics {
  const registry = new Registry();
  if (options.defaultMetrics) collectDefaultMetrics({ register: registry });
  const transfers = new Counter({
    name: 'databank_transfers_total',
    help: 'Transfers by outcome (completed, or the error code)',
    labelNames: ['outcome'],
    registers: [registry],
  });
  const transactionRetries = new Counter({
    name: 'databank_transaction_retries_total',
    help: 'Transactions run again after a serialization failure or deadlock',
    labelNames: ['sqlstate'],
    registers: [registry],
  });
  for (const [name, pick] of [
    ['databank_db_pool_connections', (s: PoolStats) => s.total],
    ['databank_db_pool_idle', (s: PoolStats) => s.idle],
    ['databank_db_pool_waiting', (s: PoolStats) => s.waiting],
  ] as const) {
    new Gauge({
      name,
      help: `Database pool: ${name.replace('databank_db_pool_', '')}`,
      registers: [registry],
      collect() {
        this.set(pick(poolStats()));
      },
    });
  }
  const cacheRequests = new Counter({
    name: 'databank_cache_requests_total',
    help: 'Cache lookups by key family and result (hit, miss)',
    labelNames: ['family', 'result'],
    registers: [registry],
  });
  const cacheErrors = new Counter({
    name: 'databank_cache_errors_total',
    help: 'Cache operations that failed (the request was served from PostgreSQL)',
    labelNames: ['family'],
    registers: [registry],
  });
  new Gauge({
    name: 'databank_cache_hit_ratio',
    help: 'Hits / (hits + misses) since start, by key family',
    labelNames: ['family'],
    registers: [registry],
    async collect() {
      const values = (await cacheRequests.get()).values;
      const families = new Set(values.map((v) => String(v.labels.family)));
      for (const family of families) {
        const count = (result: string) =>
          values.find((v) => v.labels.family === family && v.labels.result === result)?.value ?? 0;
        const total = count('hit') + count('miss');
        this.set({ family }, total === 0 ? 0 : count('hit') / total);
      }
    },
  });
  const evictions = options.cacheEvictions;
  if (evictions) {
    new Gauge({
      name: 'databank_cache_evictions',
      help: 'Entries the cache evicted to stay within its bounds',
      registers: [registry],
      async collect() {
        this.set(await evictions().catch(() => 0));
      },
    });
  }
  const dbReads = new Counter({
    name: 'databank_db_reads_total',
    help: 'Database reads by where they were served (primary, replica) and why (reason)',
    labelNames: ['target', 'reason'],
    registers: [registry],
  });
  const moneyBatchSize = new Histogram({
    name: 'databank_money_batch_size',
    help: 'Money movements per call of the batching writer (DATABANK_BATCH_MAX)',
    buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024],
    registers: [registry],
  });
  const moneyBatchSeconds = new Histogram({
    name: 'databank_money_batch_seconds',
    help: 'Time of one batch of the batching writer, from leaving to its outcomes (retries included)',
    buckets: [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5],
    registers: [registry],
  });
  return { registry, transfers, transactionRetries, cacheRequests, cacheErrors, dbReads, moneyBatchSize, moneyBatchSeconds };
}

/** Per-replica state, lag and reads, read from the router at each scrape. */
export function registerReplicaMetrics(metrics: Metrics, status: () => readonly ReplicaStatus[]): void {
  const gauges = [
    ['databank_db_replica_lag_seconds', 'How far each replica was behind the primary at its last check (0: caught up)', (r: ReplicaStatus) => (r.lag_ms === null ? Number.NaN : r.lag_ms / 1000)],
    ['databank_db_replica_lag_bytes', 'How many bytes of WAL each replica had not replayed at its last check', (r: ReplicaStatus) => r.lag_bytes ?? Number.NaN],
    ['databank_db_replica_in_rotation', '1 when the replica serves reads, 0 when it is down, lagging or promoted', (r: ReplicaStatus) => (r.state === 'in_rotation' ? 1 : 0)],
    ['databank_db_replica_reads', 'Reads each replica served since the process started', (r: ReplicaStatus) => r.reads],
  ] as const;
  for (const [name, help, pick] of gauges) {
    new Gauge({
      name,
      help,
      labelNames: ['replica'],
      registers: [metrics.registry],
      collect() {
        for (const r of status()) this.set({ replica: r.name }, pick(r));
      },
    });
  }
}

/** Counts requests by route, method and status, and times them. */
export function registerHttpMetrics(app: FastifyInstance, metrics: Metrics): void {
  const requests = new Counter({
    name: 'databank_http_requests_total',
    help: 'HTTP requests by route, method and status',
    labelNames: ['route', 'method', 'status'],
    registers: [metrics.registry],
  });
  const duration = new Histogram({
    name: 'databank_http_request_duration_seconds',
    help: 'HTTP request latency by route',
    labelNames: ['route', 'method'],
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
    registers: [metrics.registry],
  });
  app.addHook('onResponse', async (request, reply) => {
    const route = request.routeOptions.url ?? 'unmatched';
    requests.inc({ route, method: request.method, status: String(reply.statusCode) });
    duration.observe({ route, method: request.method }, reply.elapsedTime / 1000);
  });
}

const TIMEOUT_KINDS: readonly ClientTimeoutKind[] = ['header', 'body', 'request'];

/**
 * Counts the clients the connection layer cut (`client-errors.ts`) and the connections refused
 * over the limit. Every kind starts at 0, so that a dashboard sees the series before the first cut.
 */
export function registerConnectionMetrics(metrics: Metrics): ConnectionEvents {
  const timeouts = new Counter({
    name: 'databank_http_client_timeouts_total',
    help: 'Connections cut because the client was too slow: header (headers not in within DATABANK_HEADER_TIMEOUT_MS), body (no body bytes for DATABANK_BODY_TIMEOUT_MS), request (the whole request not in within DATABANK_REQUEST_TIMEOUT_MS)',
    labelNames: ['kind'],
    registers: [metrics.registry],
  });
  for (const kind of TIMEOUT_KINDS) timeouts.inc({ kind }, 0);
  const dropped = new Counter({
    name: 'databank_http_connections_dropped_total',
    help: 'Connections closed on arrival because DATABANK_MAX_CONNECTIONS were open',
    registers: [metrics.registry],
  });
  return {
    timedOut: (kind) => timeouts.inc({ kind }),
    dropped: () => dropped.inc(),
  };
}
