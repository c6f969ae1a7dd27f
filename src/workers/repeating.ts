import { sleep, type Worker } from './worker.ts';

export interface RepeatingOptions {
  readonly name: string;
  /** The pause between the end of one run and the start of the next. */
  readonly intervalMs: number;
  /** One turn. A rejection is a failed run: recorded, logged by the host, and the loop goes on. */
  readonly run: (signal: AbortSignal) => Promise<void>;
}

/**
 * A worker that runs `run` at once and then again `intervalMs` after each run ends, in this
 * process only. For work that keeps this process's own state fresh (a cache of a manifest);
 * work shared by all copies of the process belongs on a schedule with a lock (`scheduled`).
 *
 * @example
 * const refresh = repeating({ name: 'site-refresh', intervalMs: 2_000, run: () => site.refresh() });
 */
export function repeating(options: RepeatingOptions): Worker {
  if (!(options.intervalMs > 0)) throw new Error(`${options.name}: intervalMs must be positive, got ${options.intervalMs}`);
  let loop: Promise<void> | null = null;
  return {
    name: options.name,
    start(signal, runs) {
      loop = (async () => {
        while (!signal.aborted) {
          try {
            await options.run(signal);
            runs.succeeded();
          } catch (err) {
            // A run interrupted by the stop is not a failure of the work.
            if (signal.aborted) break;
            runs.failed(err);
          }
          await sleep(options.intervalMs, signal);
        }
      })();
      return loop;
    },
    async stop() {
      await loop;
    },
  };
}
