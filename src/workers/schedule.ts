import { Cron } from 'croner';
import type { ScheduleLock } from './schedule-lock.ts';
import { aborted, type RunRecorder, type Worker } from './worker.ts';

export interface ScheduleOptions {
  /** The worker's name, and the name its lock is keyed by across processes. */
  readonly name: string;
  /** Cron syntax (croner): five fields, or six with seconds first. */
  readonly cron: string;
  /** The job. `signal` aborts when the host stops: a long job should end early then. */
  readonly run: (signal: AbortSignal) => Promise<void>;
  /** Who may run: see `scheduleLock`. */
  readonly lock: ScheduleLock;
  /** The time zone the pattern is read in. Default UTC, so that no deployment's clock matters. */
  readonly timezone?: string;
  /**
   * Also run a tick as soon as the worker starts (under the same lock), for upkeep that must not
   * wait for the first tick after a start. Default false.
   */
  readonly runAtStart?: boolean;
}

/**
 * What a tick came to: the job ran (and succeeded or failed), another process held the lock, or
 * this process was still running the previous tick.
 */
export type RunOutcome = 'succeeded' | 'failed' | 'skipped' | 'busy';

/** A worker that runs a job on a cron schedule. */
export interface ScheduledWorker extends Worker {
  /** Runs one tick now, with the same lock and overlap rules as a scheduled one. Never rejects. */
  runNow(): Promise<RunOutcome>;
  /** When the next scheduled tick falls, or null when the pattern has no further one. */
  nextRun(): Date | null;
}

/**
 * A periodic job. Each tick runs the job under the schedule's lock, so that however many copies
 * of the process run, one at most runs it at a time; a tick that finds the previous one still
 * running in this process is skipped. A failed run is recorded and logged by the host and does
 * not stop the schedule.
 *
 * @example
 * const purge = scheduled({
 *   name: 'idempotency-purge',
 *   cron: '17 * * * *', // every hour at :17, UTC
 *   lock: scheduleLock(sqlStore),
 *   run: async () => void (await idempotency.purgeExpired()),
 * });
 */
export function scheduled(options: ScheduleOptions): ScheduledWorker {
  const timezone = options.timezone ?? 'UTC';
  // Parsing now makes a bad pattern stop the process at start, rather than at the first tick.
  const pattern = new Cron(options.cron, { timezone, paused: true });
  let inFlight: Promise<RunOutcome> | null = null;
  let recorder: RunRecorder | null = null;
  // Until the host starts the worker, runNow() runs with a signal that never aborts.
  let signal: AbortSignal = new AbortController().signal;
  let job: Cron | null = null;

  const tick = (): Promise<RunOutcome> => {
    if (inFlight) return Promise.resolve('busy');
    const runSignal = signal;
    const current = (async (): Promise<RunOutcome> => {
      try {
        const ran = await options.lock.tryRun(options.name, () => options.run(runSignal));
        if (!ran) return 'skipped';
        recorder?.succeeded();
        return 'succeeded';
      } catch (err) {
        recorder?.failed(err);
        return 'failed';
      }
    })().finally(() => {
      inFlight = null;
    });
    inFlight = current;
    return current;
  };

  return {
    name: options.name,
    async start(hostSignal, runs) {
      if (hostSignal.aborted) return;
      signal = hostSignal;
      recorder = runs;
      job = new Cron(options.cron, { timezone }, () => void tick());
      if (options.runAtStart) void tick();
      await aborted(hostSignal);
      job.stop();
      // Let the tick under way end (its signal has aborted) so that its lock is released.
      await inFlight;
    },
    async stop() {
      job?.stop();
      await inFlight;
    },
    runNow: tick,
    nextRun: () => pattern.nextRun(),
  };
}
