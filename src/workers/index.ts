import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import { LedgerPartitions } from '../services/ledger-partitions.ts';
import { WorkerHost, type WorkerHostOptions } from './host.ts';
import { idempotencyPurge, type ExpiredKeyPurger } from './idempotency-purge.ts';
import { ledgerPartitions, type LedgerPartitioner } from './ledger-partitions.ts';
import { workerMetrics } from './metrics.ts';
import { scheduleLock, type LockableDatabase } from './schedule-lock.ts';
import { siteRefresh, type SiteRefresher } from './site-refresh.ts';
import type { Worker } from './worker.ts';

export { WorkerHost, type WorkerHostOptions } from './host.ts';
export { DEFAULT_BACKOFF, exponentialBackoff, type WorkerEvent, type WorkerListener, type WorkerState } from './host-events.ts';
export { workerMetrics } from './metrics.ts';
export { scheduled, type RunOutcome, type ScheduledWorker, type ScheduleOptions } from './schedule.ts';
export { advisoryLock, scheduleLock, SINGLE_PROCESS_LOCK, type ScheduleLock } from './schedule-lock.ts';
export { repeating } from './repeating.ts';
export { idempotencyPurge, IDEMPOTENCY_PURGE_CRON, type ExpiredKeyPurger } from './idempotency-purge.ts';
export { ledgerPartitions, LEDGER_PARTITIONS_CRON, type LedgerPartitioner, type LedgerPartitionsOptions } from './ledger-partitions.ts';
export { siteRefresh, SITE_REFRESH_MS, type SiteRefresher } from './site-refresh.ts';
export { aborted, NO_RECORDER, sleep, type RunRecorder, type Worker } from './worker.ts';

/** What the process's workers are made of: small structural slices of the app's stores and services. */
export interface WorkerDeps<DB> {
  readonly logger: Logger;
  /** The SQL store (`SqlStore` fits): its capabilities pick the schedules' lock. */
  readonly sql: LockableDatabase<DB>;
  /** `IdempotencyService` fits. */
  readonly idempotency: ExpiredKeyPurger;
  /** The ledger's partition upkeep; default `LedgerPartitions` over `sql.db`. */
  readonly partitions?: LedgerPartitioner;
  /**
   * The site this process serves (`Site` with a `refresh()` fits). Leave it out where no HTTP
   * server runs (`databank worker`): the refresh keeps this process's copy of the manifest fresh.
   */
  readonly site?: SiteRefresher;
  /**
   * Whether to run the jobs shared by every copy of the process (the schedules). Default true;
   * false for `databank serve --no-worker`, which still refreshes its own site.
   */
  readonly background?: boolean;
  /** More workers, started after these (the [async] roles: `Background.workers`). */
  readonly extra?: readonly Worker[];
}

/**
 * The workers of this process, in start order: first what serves this process's own state, then
 * the shared jobs. The host stops them in reverse, so the shared jobs end first.
 */
export function createWorkers<DB>(deps: WorkerDeps<DB>): Worker[] {
  const workers: Worker[] = [];
  if (deps.site) workers.push(siteRefresh(deps.site));
  if (deps.background ?? true) {
    const lock = scheduleLock(deps.sql);
    workers.push(idempotencyPurge(deps.idempotency, lock, deps.logger));
    workers.push(ledgerPartitions(deps.partitions ?? new LedgerPartitions(deps.sql.db), lock, deps.logger));
  }
  workers.push(...(deps.extra ?? []));
  return workers;
}

export interface StartWorkerHostOptions<DB> extends WorkerDeps<DB>, Omit<WorkerHostOptions, 'logger'> {
  /** The app's metrics registry; the per-worker metrics are registered in it. */
  readonly registry?: Registry;
  /** Workers to run instead of `createWorkers(options)` (tests, or a host with extra workers). */
  readonly workers?: readonly Worker[];
}

/**
 * Creates the process's workers, registers their metrics and starts them in a host; the caller
 * owns the host and must `await host.stop()` on shutdown.
 *
 * @example
 * // databank serve: the HTTP server's site, and the shared jobs unless --no-worker
 * const host = startWorkerHost({ logger, sql, idempotency, site, registry: metrics.registry, background: !noWorker });
 * closers.push(() => host.stop());
 *
 * @example
 * // databank worker: the shared jobs alone
 * const host = startWorkerHost({ logger, sql, idempotency, registry });
 */
export function startWorkerHost<DB>(options: StartWorkerHostOptions<DB>): WorkerHost {
  const host = new WorkerHost(options.workers ?? createWorkers(options), options);
  if (options.registry) host.on(workerMetrics(options.registry));
  host.start();
  return host;
}
