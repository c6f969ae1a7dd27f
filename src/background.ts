import { hostname } from 'node:os';
import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import type { Closers } from './closers.ts';
import type { Config } from './config.ts';
import { ActivityService, AUDIT_GROUP } from './services/activity.ts';
import { AnalyticsService } from './services/analytics/service.ts';
import { AsyncOps, JOB_KINDS } from './services/async-ops.ts';
import { cacheInvalidation } from './services/cache-events.ts';
import type { CachedReads } from './services/cached-reads.ts';
import { JobsService } from './services/jobs.ts';
import { SearchService, SEARCH_GROUP } from './services/search.ts';
import { StatementsService } from './services/statements.ts';
import { VariantJob } from './services/variant-job.ts';
import type { FileStore } from './stores/files/port.ts';
import { openJobQueue, type JobQueue } from './stores/queue/index.ts';
import type { Db, SqlStore } from './stores/sql/port.ts';
import type { JobKind } from './stores/sql/schema.ts';
import { openEventStream, type EventStream } from './stores/stream/index.ts';
import { analyticsWorkers } from './workers/analytics-refresh.ts';
import { asyncMetrics } from './workers/async-metrics.ts';
import { jobConsumer, type JobHandler } from './workers/job-consumer.ts';
import { jobDispatcher } from './workers/job-dispatcher.ts';
import { outboxRelay } from './workers/outbox-relay.ts';
import { scheduleLock } from './workers/schedule-lock.ts';
import { streamConsumer } from './workers/stream-consumer.ts';
import type { Worker } from './workers/worker.ts';

/** The queue, the stream and the services on them, as one process holds them. */
export interface Background {
  readonly queue: JobQueue;
  readonly stream: EventStream;
  readonly jobs: JobsService;
  readonly statements: StatementsService;
  readonly activity: ActivityService;
  readonly ops: AsyncOps;
  /** The DuckDB analytics copy; its refresh follows the stream (the `analytics` group) and a timer. */
  readonly analytics: AnalyticsService;
  /** Search over customers and documents; its index follows the stream (the `search` group). */
  readonly search: SearchService;
  /**
   * The workers of the [async] roles: with `shared`, the outbox relay, the job dispatcher, the job
   * handlers and the audit projection (work any copy may do, and several do safely); with a
   * `cache`, the consumer group that keeps this process's in-process cache fresh.
   */
  workers(options: { readonly shared: boolean; readonly cache?: CachedReads }): Worker[];
}

/**
 * Opens the job queue and the event stream the config names (pg-boss and the log table on the
 * deployment's database by default; RabbitMQ with `AMQP_URL`, NATS JetStream with `NATS_URL`)
 * and makes their services; `closers` gets what must be closed.
 */
export async function openBackground(deps: {
  readonly config: Config;
  readonly sql: SqlStore;
  readonly db: Db;
  readonly files: FileStore;
  readonly logger: Logger;
  readonly closers: Closers;
  readonly registry: Registry;
}): Promise<Background> {
  const { config, sql, db, files, logger, closers } = deps;
  const { broker } = config;
  const onError = (role: string) => (err: Error) => logger.warn({ err }, `${role} connection error; reconnecting`);
  const queue = await openJobQueue(
    broker.queue.kind === 'rabbitmq'
      ? { kind: 'rabbitmq', url: broker.queue.url, prefix: broker.prefix, onError: onError('RabbitMQ') }
      : { kind: 'postgres', store: sql, prefix: broker.prefix },
  );
  closers.add('job queue', () => queue.close());
  for (const kind of JOB_KINDS) await queue.declare(kind, { maxAttempts: broker.jobMaxAttempts });
  const stream = await openEventStream(
    broker.stream.kind === 'nats'
      ? { kind: 'nats', url: broker.stream.url, prefix: broker.prefix, onError: onError('NATS') }
      : { kind: 'postgres', store: sql },
  );
  closers.add('event stream', () => stream.close());
  const jobs = new JobsService(db);
  const statements = new StatementsService(db, files, jobs);
  const activity = new ActivityService(db);
  const analytics = new AnalyticsService(db, { path: config.analytics.path });
  closers.add('analytics', () => analytics.close());
  const search = new SearchService(db);
  // Figures read on scrape, on the store itself: a request's handles (and their records in tests) never see them.
  const metrics = asyncMetrics(deps.registry, { queue, queues: JOB_KINDS, stream, db: sql.db });
  const handlers: Readonly<Record<JobKind, JobHandler>> = {
    'image.variants': new VariantJob(db, files, jobs),
    'statement.monthly': { run: (job) => statements.run(job) },
  };
  const lock = scheduleLock(sql);
  return {
    queue,
    stream,
    jobs,
    statements,
    activity,
    ops: new AsyncOps(queue, stream, jobs, activity),
    analytics,
    search,
    workers({ shared, cache }) {
      const workers: Worker[] = [];
      if (cache) {
        // A group of this process's own, from the end: the process only needs what changes from now on.
        const group = `cache-${hostname().replace(/[^A-Za-z0-9_-]/g, '_')}-${process.pid}-${randomUUID().slice(0, 8)}`;
        workers.push(streamConsumer({ group, stream, startAt: 'end', applier: cacheInvalidation(cache), deleteOnStop: true }));
      }
      if (shared) {
        workers.push(outboxRelay({ db: db.writer, stream, lock, onPublished: (n) => metrics.published(n) }));
        workers.push(jobDispatcher({ jobs, queue, lock }));
        for (const kind of JOB_KINDS) {
          workers.push(
            jobConsumer({
              kind,
              queue,
              jobs,
              handler: handlers[kind],
              prefetch: broker.jobConcurrency,
              maxAttempts: broker.jobMaxAttempts,
              logger,
              onOutcome: (outcome) => metrics.jobOutcome(kind, outcome),
            }),
          );
        }
        workers.push(streamConsumer({ group: AUDIT_GROUP, stream, startAt: 'start', applier: activity }));
        workers.push(...analyticsWorkers({ analytics, stream, lock, intervalMs: config.analytics.refreshMs, logger }));
        // From the start: a new deployment's index is built from every event; `sync` reads the
        // current rows, so replaying old events only rewrites what is already right.
        workers.push(streamConsumer({ group: SEARCH_GROUP, stream, startAt: 'start', applier: search }));
      }
      return workers;
    },
  };
}
