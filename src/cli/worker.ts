import type { Command } from 'commander';
import { configOrExit } from './context.ts';
import { stopOnSignals } from './shutdown.ts';

/**
 * `databank worker`: the background work without the HTTP API (the schedules, the outbox relay, the
 * job dispatcher and handlers, the audit consumer), until SIGTERM or SIGINT. Any number
 * of copies may run against one PostgreSQL server: each schedule runs in one of them at a time
 * (advisory lock). On the embedded engine the data directory belongs to one process, so there the
 * jobs run inside `databank serve` instead.
 */

interface WorkerOpts {
  readonly metricsPort?: number;
}

/** Registers `worker`. */
export function register(program: Command): void {
  program
    .command('worker')
    .description('run the background jobs without the HTTP API (any number of copies with DATABASE_URL)')
    .option('--metrics-port <port>', 'also serve GET /metrics (admin key) and GET /healthz on HOST:<port>', port)
    .action(work);
}

function port(value: string): number {
  if (!/^[0-9]{1,5}$/.test(value) || Number(value) > 65535) throw new Error('expected a port from 0 to 65535');
  return Number(value);
}

async function work(opts: WorkerOpts): Promise<void> {
  const config = configOrExit();
  const logger = (await import('../logger.ts')).createLogger(config.logLevel);
  const { Closers } = await import('../closers.ts');
  const { openDeploymentDatabase } = await import('../database.ts');
  const { primaryOnly } = await import('../stores/sql/port.ts');
  const { IdempotencyService } = await import('../services/idempotency.ts');
  const { startWorkerHost } = await import('../workers/index.ts');
  const { Registry } = await import('prom-client');
  // A worker never migrates: that is a deploy step (`databank migrate latest`) or `serve`'s.
  const { sql } = await openDeploymentDatabase(config, logger, {
    migrate: false,
    behindAdvice: 'run `databank migrate latest`',
  });
  const closers = new Closers();
  closers.add('database', () => sql.close());
  const registry = new Registry();
  try {
    const db = primaryOnly(sql.db);
    const { openFileStore } = await import('../stores/files/index.ts');
    const { openBackground } = await import('../background.ts');
    const files = await openFileStore(config.files.store);
    closers.add('file store', () => files.close());
    const background = await openBackground({ config, sql, db, files, logger, closers, registry });
    const host = startWorkerHost({
      logger,
      sql,
      idempotency: new IdempotencyService(db),
      registry,
      extra: background.workers({ shared: true }),
    });
    closers.add('workers', () => host.stop());
    if (opts.metricsPort !== undefined) {
      const { ApiKeysService } = await import('../services/api-keys.ts');
      const { serveWorkerMetrics } = await import('./worker-metrics.ts');
      const server = await serveWorkerMetrics(registry, new ApiKeysService(db), config.host, opts.metricsPort);
      closers.add('metrics listener', () => server.close());
      logger.info({ address: server.address }, 'worker metrics listening');
    }
    logger.info({ workers: host.states().map((s) => s.name) }, 'worker host started');
  } catch (err) {
    await closers.close().catch(() => undefined);
    throw err;
  }
  stopOnSignals((onStep) => closers.close({ onStep }), {
    timeoutMs: config.shutdownTimeoutMs,
    log: logger,
    message: 'stopping the workers',
  });
}
