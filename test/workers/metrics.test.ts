import { Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { WorkerHost } from '../../src/workers/host.ts';
import { workerMetrics } from '../../src/workers/metrics.ts';
import { aborted } from '../../src/workers/worker.ts';
import { captureLogger, fakeWorker, manualClock, manualSleep, nextEvent } from './support.ts';

/** Every series of the worker metrics as `name{worker} value`, sorted. */
async function series(registry: Registry): Promise<string[]> {
  const out: string[] = [];
  for (const metric of await registry.getMetricsAsJSON()) {
    for (const v of metric.values) out.push(`${metric.name}{${String(v.labels.worker)}} ${v.value}`);
  }
  return out.sort();
}

describe('worker metrics', () => {
  it('count runs, failures and crashes exactly, and follow up and the last success', async () => {
    const { logger } = captureLogger();
    const { sleep, waits } = manualSleep();
    const clock = manualClock(1_700_000_000_000);
    const registry = new Registry();
    const busy = fakeWorker('busy', [], {
      behaviour: async (signal, runs, attempt) => {
        if (attempt > 0) return aborted(signal);
        runs.succeeded();
        clock.advance(1_500);
        runs.failed(new Error('one bad run'));
        clock.advance(2_500);
        runs.succeeded();
        clock.advance(1_000);
        throw new Error('crash');
      },
    });
    const quiet = fakeWorker('quiet', []);
    const host = new WorkerHost([busy, quiet], { logger, sleep, now: clock.now });
    host.on(workerMetrics(registry));
    const crash = nextEvent(host, (e) => e.type === 'crashed');
    host.start();
    await crash;
    expect(await series(registry)).toEqual([
      'databank_worker_failures_total{busy} 2',
      'databank_worker_failures_total{quiet} 0',
      'databank_worker_last_success_timestamp_seconds{busy} 1700000004',
      'databank_worker_runs_total{busy} 4',
      'databank_worker_runs_total{quiet} 0',
      'databank_worker_up{busy} 0',
      'databank_worker_up{quiet} 1',
    ]);
    expect(host.states().map((s) => [s.name, s.runs, s.failures, s.lastSuccessAt])).toEqual([
      ['busy', 4, 2, 1_700_000_004_000],
      ['quiet', 0, 0, null],
    ]);

    const restarted = nextEvent(host, (e) => e.type === 'started' && e.worker === 'busy');
    waits[0]?.release();
    await restarted;
    expect(await series(registry)).toContain('databank_worker_up{busy} 1');

    await host.stop();
    const after = await series(registry);
    expect(after.filter((s) => s.startsWith('databank_worker_up'))).toEqual([
      'databank_worker_up{busy} 0',
      'databank_worker_up{quiet} 0',
    ]);
    expect(after).toContain('databank_worker_runs_total{busy} 4');
  });

  it('are exposed with their types in the text format', async () => {
    const registry = new Registry();
    const listener = workerMetrics(registry);
    listener({ type: 'started', worker: 'w', restarts: 0 });
    listener({ type: 'run', worker: 'w', ok: true, at: 2_000 });
    const text = await registry.metrics();
    expect(text).toContain('# TYPE databank_worker_up gauge\ndatabank_worker_up{worker="w"} 1');
    expect(text).toContain('# TYPE databank_worker_runs_total counter\ndatabank_worker_runs_total{worker="w"} 1');
    expect(text).toContain('databank_worker_failures_total{worker="w"} 0');
    expect(text).toContain('databank_worker_last_success_timestamp_seconds{worker="w"} 2');
  });
});
