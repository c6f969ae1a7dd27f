import { Counter, Gauge, type Registry } from 'prom-client';
import type { WorkerListener } from './host-events.ts';

/**
 * Registers the per-worker metrics in `registry` and returns the listener that keeps them, to
 * pass to `WorkerHost.on` before `start()`:
 *
 * - `databank_worker_up{worker}`: 1 while the worker's `start` runs, 0 while it waits to be
 *   restarted after a crash, after it finished and once stopped;
 * - `databank_worker_runs_total{worker}`: runs the worker reported, failed ones included, plus
 *   crashes (a crash is a failed run);
 * - `databank_worker_failures_total{worker}`: failed runs and crashes;
 * - `databank_worker_last_success_timestamp_seconds{worker}`: the end of the last successful
 *   run, in Unix seconds; absent until the first one.
 *
 * Call it once per registry: prom-client refuses a second metric of the same name.
 *
 * @example
 * const { registry } = createMetrics(poolStats, { defaultMetrics: true });
 * host.on(workerMetrics(registry));
 * host.start();
 */
export function workerMetrics(registry: Registry): WorkerListener {
  const up = new Gauge({
    name: 'databank_worker_up',
    help: 'Whether the background worker is running (1) or not (0)',
    labelNames: ['worker'],
    registers: [registry],
  });
  const runs = new Counter({
    name: 'databank_worker_runs_total',
    help: 'Runs of the background worker, failed runs and crashes included',
    labelNames: ['worker'],
    registers: [registry],
  });
  const failures = new Counter({
    name: 'databank_worker_failures_total',
    help: 'Failed runs and crashes of the background worker',
    labelNames: ['worker'],
    registers: [registry],
  });
  const lastSuccess = new Gauge({
    name: 'databank_worker_last_success_timestamp_seconds',
    help: 'When the background worker last finished a run successfully, in Unix seconds',
    labelNames: ['worker'],
    registers: [registry],
  });
  return (event) => {
    const labels = { worker: event.worker };
    switch (event.type) {
      case 'started':
        up.set(labels, 1);
        // Zero rather than absent, so that rate() and alerts see the worker from its first start.
        runs.inc(labels, 0);
        failures.inc(labels, 0);
        return;
      case 'run':
        runs.inc(labels);
        if (event.ok) lastSuccess.set(labels, event.at / 1000);
        else failures.inc(labels);
        return;
      case 'crashed':
        up.set(labels, 0);
        runs.inc(labels);
        failures.inc(labels);
        return;
      case 'finished':
      case 'stopped':
        up.set(labels, 0);
        return;
    }
  };
}
