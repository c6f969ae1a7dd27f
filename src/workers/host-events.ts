/**
 * What happens to the workers of a {@link WorkerHost}, as events. Metrics and tests listen to
 * them; the host itself logs crashes, restarts and failed stops. A listener that throws is logged
 * and does not disturb the host or the other listeners.
 */
export type WorkerEvent =
  /** `start` was called: the first time (`restarts` 0) or after a crash. */
  | { readonly type: 'started'; readonly worker: string; readonly restarts: number }
  /** The worker reported a run. `at` is the host clock's time in milliseconds. */
  | { readonly type: 'run'; readonly worker: string; readonly ok: true; readonly at: number }
  | { readonly type: 'run'; readonly worker: string; readonly ok: false; readonly at: number; readonly error: unknown }
  /** `start` rejected while the worker was meant to run; it starts again after `restartInMs`. */
  | {
      readonly type: 'crashed';
      readonly worker: string;
      readonly error: unknown;
      /** Crashes in a row, this one included: the input of the back-off. */
      readonly crashes: number;
      readonly restartInMs: number;
    }
  /** `start` returned without being asked to stop: the work is done and is not started again. */
  | { readonly type: 'finished'; readonly worker: string }
  /** The host stopped the worker; `error` is set when its `stop()` rejected. */
  | { readonly type: 'stopped'; readonly worker: string; readonly error?: unknown };

export type WorkerListener = (event: WorkerEvent) => void;

/** Where a worker is in its life, as `WorkerHost.states()` reports it. */
export type WorkerStatus = 'idle' | 'running' | 'restarting' | 'finished' | 'stopping' | 'stopped';

/** One worker's state, a snapshot. */
export interface WorkerState {
  readonly name: string;
  readonly status: WorkerStatus;
  /** Times the worker was started again after a crash. */
  readonly restarts: number;
  /** Runs the worker reported, plus crashes: a crash counts as a failed run. */
  readonly runs: number;
  /** Failed runs and crashes. */
  readonly failures: number;
  /** Host clock time of the last successful run, in milliseconds; null before the first. */
  readonly lastSuccessAt: number | null;
  /** The message of the last crash or failed run; null before the first. */
  readonly lastError: string | null;
}

/**
 * Back-off before restarting a crashed worker: `initialMs` after the first crash in a row,
 * doubling with each further crash, never more than `maxMs`.
 *
 * @example
 * const backoff = exponentialBackoff({ initialMs: 1_000, maxMs: 60_000 });
 * backoff(1); // 1000
 * backoff(3); // 4000
 * backoff(10); // 60000
 */
export function exponentialBackoff(options: { readonly initialMs: number; readonly maxMs: number }) {
  return (crashes: number): number =>
    Math.min(options.maxMs, options.initialMs * 2 ** Math.min(Math.max(0, crashes - 1), 30));
}

/** One second, doubling up to a minute. */
export const DEFAULT_BACKOFF = exponentialBackoff({ initialMs: 1_000, maxMs: 60_000 });
