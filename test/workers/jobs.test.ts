import type { Kysely } from 'kysely';
import { Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { WorkerHost } from '../../src/workers/host.ts';
import { idempotencyPurge, IDEMPOTENCY_PURGE_CRON } from '../../src/workers/idempotency-purge.ts';
import { createWorkers, startWorkerHost } from '../../src/workers/index.ts';
import { SINGLE_PROCESS_LOCK } from '../../src/workers/schedule-lock.ts';
import { siteRefresh } from '../../src/workers/site-refresh.ts';
import { captureLogger, nextEvent } from './support.ts';

const embedded = { db: {} as Kysely<unknown>, capabilities: { multipleConnections: false } };

describe('idempotency purge', () => {
  it('purges on its schedule, hourly at :17 UTC, and logs what it removed', async () => {
    const { logger, lines } = captureLogger();
    const counts = [3, 0];
    const purger = { purgeExpired: async () => counts.shift() ?? 0 };
    const job = idempotencyPurge(purger, SINGLE_PROCESS_LOCK, logger);
    expect(IDEMPOTENCY_PURGE_CRON).toBe('17 * * * *');
    expect([job.name, job.nextRun()?.getUTCMinutes()]).toEqual(['idempotency-purge', 17]);
    expect([await job.runNow(), await job.runNow()]).toEqual(['succeeded', 'succeeded']);
    expect(counts).toEqual([]);
    expect(lines.filter((l) => l.msg === 'expired idempotency keys purged').map((l) => l.purged)).toEqual([3]);
  });
});

describe('site refresh', () => {
  it('reads the manifest again and again, and carries on after a failed read', async () => {
    const { logger } = captureLogger();
    let calls = 0;
    const site = {
      refresh: async () => {
        if (++calls === 2) throw new Error('file store away');
      },
    };
    const host = new WorkerHost([siteRefresh(site, 1)], { logger });
    const third = nextEvent(host, (e) => e.type === 'run' && e.ok && calls >= 3);
    host.start();
    await third;
    await host.stop();
    const state = host.states()[0];
    expect(state).toMatchObject({ name: 'site-refresh', status: 'stopped', restarts: 0, failures: 1, lastError: 'file store away' });
    expect(state?.runs).toBe(calls);
  });

  it('refuses an interval that is not positive', () => {
    expect(() => siteRefresh({ refresh: async () => undefined }, 0)).toThrow(/intervalMs must be positive/);
  });
});

describe('createWorkers and startWorkerHost', () => {
  const { logger } = captureLogger();
  const idempotency = { purgeExpired: async () => 0 };
  const site = { refresh: async () => undefined };

  it('gives serve the site refresh and the schedules, --no-worker the refresh alone, worker the schedules alone', () => {
    const names = (deps: Partial<Parameters<typeof createWorkers>[0]>) =>
      createWorkers({ logger, sql: embedded, idempotency, ...deps }).map((w) => w.name);
    expect(names({ site })).toEqual(['site-refresh', 'idempotency-purge']);
    expect(names({ site, background: false })).toEqual(['site-refresh']);
    expect(names({})).toEqual(['idempotency-purge']);
  });

  it('starts a host whose workers show in the registry', async () => {
    const registry = new Registry();
    const host = startWorkerHost({ logger, sql: embedded, idempotency, registry });
    expect(host.states().map((s) => [s.name, s.status])).toEqual([['idempotency-purge', 'running']]);
    expect(await registry.metrics()).toContain('databank_worker_up{worker="idempotency-purge"} 1');
    await host.stop();
    expect(await registry.metrics()).toContain('databank_worker_up{worker="idempotency-purge"} 0');
  });
});
