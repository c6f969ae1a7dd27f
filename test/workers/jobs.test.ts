import type { Kysely } from 'kysely';
import { Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { WorkerHost } from '../../src/workers/host.ts';
import { idempotencyPurge, IDEMPOTENCY_PURGE_CRON } from '../../src/workers/idempotency-purge.ts';
import { createWorkers, startWorkerHost } from '../../src/workers/index.ts';
import { ledgerPartitions, LEDGER_PARTITIONS_CRON } from '../../src/workers/ledger-partitions.ts';
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

describe('ledger partitions', () => {
  it('makes the partitions 3 months ahead at start, then daily at 03:47 UTC, and logs what it made and moved', async () => {
    const { logger, lines } = captureLogger();
    const asked: number[] = [];
    const answers = [
      [
        { partition: 'ledger_entries_2027_03', moved: 0 },
        { partition: 'ledger_entries_2027_04', moved: 2 },
      ],
      [],
    ];
    const job = ledgerPartitions({ ensure: async (months) => (asked.push(months), answers.shift() ?? []) }, SINGLE_PROCESS_LOCK, logger);
    expect(LEDGER_PARTITIONS_CRON).toBe('47 3 * * *');
    const next = job.nextRun();
    expect([job.name, next?.getUTCHours(), next?.getUTCMinutes()]).toEqual(['ledger-partitions', 3, 47]);
    const host = new WorkerHost([job], { logger });
    const first = nextEvent(host, (e) => e.type === 'run');
    host.start();
    expect(await first).toMatchObject({ type: 'run', worker: 'ledger-partitions', ok: true });
    await host.stop();
    expect(await job.runNow()).toBe('succeeded');
    expect(asked).toEqual([3, 3]);
    expect(lines.filter((l) => l.msg === 'ledger partitions created').map((l) => l.partitions)).toEqual([
      ['ledger_entries_2027_03', 'ledger_entries_2027_04'],
    ]);
    expect(lines.filter((l) => l.msg === 'ledger entries moved out of the default partition').map((l) => l.partitions)).toEqual([
      [{ partition: 'ledger_entries_2027_04', moved: 2 }],
    ]);
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
  const partitions = { ensure: async () => [] };
  const site = { refresh: async () => undefined };

  it('gives serve the site refresh and the schedules, --no-worker the refresh alone, worker the schedules alone', () => {
    const names = (deps: Partial<Parameters<typeof createWorkers>[0]>) =>
      createWorkers({ logger, sql: embedded, idempotency, partitions, ...deps }).map((w) => w.name);
    expect(names({ site })).toEqual(['site-refresh', 'idempotency-purge', 'ledger-partitions']);
    expect(names({ site, background: false })).toEqual(['site-refresh']);
    expect(names({})).toEqual(['idempotency-purge', 'ledger-partitions']);
  });

  it('starts a host whose workers show in the registry', async () => {
    const registry = new Registry();
    const host = startWorkerHost({ logger, sql: embedded, idempotency, partitions, registry });
    expect(host.states().map((s) => [s.name, s.status])).toEqual([
      ['idempotency-purge', 'running'],
      ['ledger-partitions', 'running'],
    ]);
    expect(await registry.metrics()).toContain('databank_worker_up{worker="idempotency-purge"} 1');
    await host.stop();
    expect(await registry.metrics()).toContain('databank_worker_up{worker="idempotency-purge"} 0');
  });
});
