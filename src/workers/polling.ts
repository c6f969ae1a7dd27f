import type { ScheduleLock } from './schedule-lock.ts';
import { sleep, type Worker } from './worker.ts';

export interface PollingOptions {
  /** The worker's name and its lock's. */
  readonly name: string;
  /** One process at a time runs a turn (an advisory lock on a server, nothing on PGlite). */
  readonly lock: ScheduleLock;
  /** One turn: handles up to `batch` items and resolves with how many it handled. */
  readonly turn: () => Promise<number>;
  readonly batch: number;
  /** The pause after a turn that found less than a full batch. */
  readonly idleMs: number;
}

/**
 * A worker that drains a table in turns under a lock: a full batch is followed by the next turn
 * at once, anything less by a pause of `idleMs`; a failed turn (a broker down) is a failed run,
 * followed by a pause of at least a second. The outbox relay and the job dispatcher are this.
 */
export function polling(options: PollingOptions): Worker {
  let loop: Promise<void> | null = null;
  return {
    name: options.name,
    start(signal, runs) {
      loop = (async () => {
        while (!signal.aborted) {
          let handled = 0;
          try {
            await options.lock.tryRun(options.name, async () => {
              handled = await options.turn();
            });
            if (handled > 0) runs.succeeded();
          } catch (err) {
            if (signal.aborted) break;
            runs.failed(err);
            await sleep(Math.max(options.idleMs, 1_000), signal);
            continue;
          }
          if (handled < options.batch) await sleep(options.idleMs, signal);
        }
      })();
      return loop;
    },
    async stop() {
      await loop;
    },
  };
}
