import type { FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import { Closers, type CloseOptions } from './closers.ts';
import type { Config } from './config.ts';
import type { DeploymentRecord } from './data-dir.ts';
import { openDeploymentDatabase } from './database.ts';
import { openBackground, type Background } from './background.ts';
import type { HttpDeps } from './http/deps.ts';
import { openBackups } from './services/backup/index.ts';
import { BackupOps } from './services/backup/ops.ts';
import { backupSchedules } from './workers/backup-schedule.ts';
import { scheduleLock } from './workers/schedule-lock.ts';
import { createMetrics, registerReplicaMetrics, type Metrics } from './http/metrics.ts';
import { buildServer } from './http/server.ts';
import { AccountsService } from './services/accounts.ts';
import { ApiKeysService } from './services/api-keys.ts';
import { bootstrap, type BootstrapResult } from './services/bootstrap.ts';
import { CustomersService } from './services/customers.ts';
import { DocumentsService } from './services/documents.ts';
import { FeesService } from './services/fees.ts';
import { MoneyWriter } from './services/money-writer.ts';
import { IdempotencyService } from './services/idempotency.ts';
import { MovementsService } from './services/movements.ts';
import { DEFAULT_RETRY, type RetryOptions } from './services/transaction.ts';
import { TransfersService } from './services/transfers.ts';
import { CachedReads } from './services/cached-reads.ts';
import { FilesService } from './services/files.ts';
import { DEFAULT_SITE_OPTIONS, deploySite, readManifest, Site } from './services/site.ts';
import { openFileStore, type FileStore } from './stores/files/index.ts';
import { openCacheStore } from './stores/cache/index.ts';
import { openSqlStore, type SqlStore } from './stores/sql/index.ts';
import { ReadRouter, replicaName } from './stores/sql/read-routing.ts';
import { startWorkerHost, type WorkerHost } from './workers/index.ts';
import type { Db } from './stores/sql/port.ts';

export interface App {
  readonly config: Config;
  /** Which deployment this is: the data dir and the database agree on it (`deployment.json`). */
  readonly deployment: DeploymentRecord;
  readonly sql: SqlStore;
  readonly files: FileStore;
  readonly http: FastifyInstance;
  readonly deps: HttpDeps;
  /** The background work of this process (site refresh; the shared schedules unless `worker: false`). */
  readonly workers: WorkerHost;
  /** The job queue, the event stream and their services. */
  readonly background: Background;
  /** What the first start made (demo data, admin key); null when bootstrap was skipped. */
  readonly bootstrapped: BootstrapResult | null;
  /**
   * Stops accepting requests, lets in-flight ones finish, then closes the stores, newest first.
   * Every step runs even if one before it fails; `onStep` reports each step as it starts and ends.
   */
  close(options?: CloseOptions): Promise<void>;
}

export interface AppOptions {
  readonly logger: Logger;
  /** Run bootstrap (demo data, first admin key). Default true. */
  readonly bootstrap?: boolean;
  /** Process-wide default metrics (event loop, memory); off in tests that build several apps. */
  readonly defaultMetrics?: boolean;
  readonly retry?: RetryOptions;
  /**
   * Test hook: wraps the database handles before any service gets them, e.g. to record which
   * handle each query used. Default: the handles as they are.
   */
  readonly wrapDb?: (db: Db) => Db;
  /**
   * Run the scheduled jobs shared by every copy (idempotency purge, and the next issues' relay,
   * backups, ...) in this process. Default true; false for `databank serve --no-worker`.
   */
  readonly worker?: boolean;
}

/**
 * The composition root: Config → stores → services → HTTP. Everything the process holds open is
 * created here and closed by `close()` in reverse order.
 */
export async function createApp(config: Config, options: AppOptions): Promise<App> {
  const { logger } = options;
  const cacheWarn = rateLimited(10_000, (err: unknown, suppressed: number) =>
    logger.warn({ err, suppressed }, 'cache unavailable: serving from PostgreSQL'),
  );
  const { sql, deployment } = await openDeploymentDatabase(config, logger, {
    migrate: config.migrateOnBoot,
    behindAdvice: 'run `databank migrate latest`, or set MIGRATE_ON_BOOT=true',
  });
  const closers = new Closers();
  closers.add('database', () => sql.close());
  const close = (opts?: CloseOptions) => closers.close(opts);
  try {
    const cacheStore = await openCacheStore(config.cache.store, (err) => cacheWarn(err));
    if (cacheStore) closers.add('cache', () => cacheStore.close());
    const metrics = createMetrics(() => sql.poolStats(), {
      defaultMetrics: options.defaultMetrics ?? true,
      cacheEvictions: cacheStore ? async () => (await cacheStore.stats('')).evictions : undefined,
    });
    const cache = new CachedReads(
      cacheStore,
      { prefix: config.cache.prefix, ttlMs: config.cache.ttlSeconds * 1000, negativeTtlMs: 2_000, tombstoneMs: 30_000 },
      {
        hit: (family) => metrics.cacheRequests.inc({ family, result: 'hit' }),
        miss: (family) => metrics.cacheRequests.inc({ family, result: 'miss' }),
        error: (family, err) => {
          metrics.cacheErrors.inc({ family });
          cacheWarn(err);
        },
      },
    );
    const files = await openFileStore(config.files.store);
    closers.add('file store', () => files.close());
    if (config.files.siteDir && (await readManifest(files)) === null) {
      const report = await deploySite(files, config.files.siteDir);
      logger.info({ files: report.files, uploaded: report.uploaded.length }, 'site deployed on first start');
    }
    const retry: RetryOptions = {
      ...(options.retry ?? DEFAULT_RETRY),
      onRetry: (state) => metrics.transactionRetries.inc({ sqlstate: state }),
    };
    // Reads outside transactions go through the router: to a replica fresh enough for the request,
    // or to the primary. Everything else takes the primary.
    const router = await openReadRouter(config, sql, metrics, logger);
    closers.add('read replicas', () => router.close());
    const handles: Db = { reader: router.reader, writer: sql.db };
    const db = options.wrapDb ? options.wrapDb(handles) : handles;
    const background = await openBackground({ config, sql, db, files, logger, closers, registry: metrics.registry });
    const backupStores = await openBackups(config, sql, files);
    closers.add('backup copy store', () => backupStores.close());
    const backups = new BackupOps(backupStores.service, scheduleLock(sql), config.backup.maxAgeSeconds);
    backups.registerMetrics(metrics.registry);
    const idempotency = new IdempotencyService(db);
    const moneyWriter =
      config.limits.batchMax > 1
        ? new MoneyWriter(db.writer, config.limits.batchMax, config.limits.maxBalance, retry, {
            batch(size, seconds) {
              metrics.moneyBatchSize.observe(size);
              metrics.moneyBatchSeconds.observe(seconds);
            },
          })
        : undefined;
    const apiKeys = new ApiKeysService(db, {
      cache,
      limitsRedis:
        config.cache.store.kind === 'redis' ? { ...config.cache.store, keyPrefix: `${config.cache.prefix}:ratelimit:` } : null,
      onError: (err) => logger.warn({ err }, 'could not write when API keys were last used; will retry'),
    });
    closers.add('api keys', () => apiKeys.close());
    const deps: HttpDeps = {
      customers: new CustomersService(db, cache),
      accounts: new AccountsService(db, cache, config.limits.maxAccountsPerCustomer),
      movements: new MovementsService(db, idempotency, cache, config.limits.maxBalance, retry, moneyWriter),
      transfers: new TransfersService(db, cache, config.limits.maxBalance, retry, moneyWriter),
      fees: new FeesService(db, idempotency, cache, retry),
      cache,
      files: new FilesService(db, files, config.files.maxUploadBytes, (key, err) =>
        logger.warn({ err, key }, 'file object left behind; `databank files sweep` removes it'),
        { maxFiles: config.limits.maxFilesPerCustomer, maxBytes: config.limits.maxFileBytesPerCustomer },
        background.jobs,
      ),
      jobs: background.jobs,
      statements: background.statements,
      activity: background.activity,
      asyncOps: background.ops,
      // The site-refresh worker reads the manifest every 2 s; a request reads it itself only when
      // the worker has fallen 10 s behind.
      site: new Site(files, { ...DEFAULT_SITE_OPTIONS, refreshMs: 10_000 }, (err) =>
        logger.warn({ err }, 'site manifest unreadable: serving the last one read'),
      ),
      idempotency,
      apiKeys,
      metrics,
      limits: config.limits,
      backups,
      reads: {
        currentLsn: () => router.currentLsn(),
        status: () => router.status(),
        readYourWritesMs: config.replicas.readYourWritesMs,
        maxLagMs: config.replicas.maxLagMs,
      },
      documents: new DocumentsService(db, config.documents.maxBytes),
      search: background.search,
      analytics: background.analytics,
      ready: () => sql.ping(2_000),
    };
    const bootstrapped =
      options.bootstrap === false ? null : await bootstrap(db, apiKeys, { demoData: config.demoData });
    // Started before the HTTP server so that, closing newest first, the server drains while the
    // workers (the site refresh among them) still run; then the workers stop; then the stores.
    const workers = startWorkerHost({
      logger,
      sql,
      idempotency,
      site: deps.site ?? undefined,
      registry: metrics.registry,
      background: options.worker ?? true,
      // Every serving process keeps its in-process cache fresh from the stream; a shared cache
      // (Redis) is invalidated by the writer itself.
      extra: [
        ...background.workers({
          shared: options.worker ?? true,
          cache: config.cache.store.kind === 'memory' ? cache : undefined,
        }),
        ...((options.worker ?? true) ? backupSchedules(backups, config.backup, scheduleLock(sql), logger) : []),
      ],
    });
    closers.add('workers', () => workers.stop());
    const http = await buildServer(deps, { logger, http: config.http });
    closers.add('http server', () => http.close());
    return { config, deployment, sql, files, http, deps, workers, background, bootstrapped, close };
  } catch (err) {
    await close().catch(() => undefined);
    throw err;
  }
}

/**
 * The read router over the primary and `DATABASE_REPLICA_URLS`: counts reads in
 * `databank_db_reads_total`, logs replicas leaving and rejoining the rotation, and has checked each
 * replica once before it returns (a replica that is down then is simply out of rotation).
 */
async function openReadRouter(config: Config, sql: SqlStore, metrics: Metrics, logger: Logger): Promise<ReadRouter> {
  const replicas = await Promise.all(
    config.replicas.urls.map(async (replica, i) => ({
      name: `${replicaName(replica.connectionString)}${config.replicas.urls.length > 1 ? `#${i + 1}` : ''}`,
      store: await openSqlStore(replica, (err) => logger.warn({ err }, 'idle replica connection failed')),
    })),
  );
  const router = new ReadRouter(sql, replicas, {
    maxLagMs: config.replicas.maxLagMs,
    checkMs: config.replicas.checkMs,
    onRead: (target, reason) => metrics.dbReads.inc({ target, reason }),
    onStateChange: (replica, from, to, error) => {
      const fields = { replica, from, to, error };
      if (to === 'in_rotation') logger.info(fields, 'replica in rotation');
      else if (from === 'in_rotation' || from === 'starting') logger.warn(fields, 'replica out of rotation');
    },
  });
  registerReplicaMetrics(metrics, () => router.status());
  await router.start();
  return router;
}

/** Calls `log` at most once per `intervalMs`, telling it how many calls it swallowed since. */
function rateLimited(intervalMs: number, log: (err: unknown, suppressed: number) => void) {
  let last = 0;
  let suppressed = 0;
  return (err: unknown) => {
    const now = Date.now();
    if (now - last < intervalMs) {
      suppressed++;
      return;
    }
    log(err, suppressed);
    last = now;
    suppressed = 0;
  };
}
