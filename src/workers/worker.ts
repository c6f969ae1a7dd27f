/**
 * A piece of background work the {@link WorkerHost} runs: an outbox relay, a consumer, a
 * schedule. `start` runs until `signal` aborts (a long-running loop) or until the work is done; a
 * rejection is a crash, which the host logs and answers by starting the worker again after a
 * back-off. `stop` releases what the worker holds once the signal has aborted.
 *
 * A worker that does its work in runs (a schedule's tick, a loop's turn) tells the host how each
 * run went through `runs`, which feeds the logs and the per-worker metrics. A worker with no runs
 * of its own may leave the second parameter out.
 *
 * @example
 * const heartbeat: Worker = {
 *   name: 'heartbeat',
 *   async start(signal, runs) {
 *     while (!signal.aborted) {
 *       runs.succeeded();
 *       await sleep(1_000, signal);
 *     }
 *   },
 *   async stop() {},
 * };
 */
export interface Worker {
  /** Unique within a host: it names the worker in logs and in the `worker` metric label. */
  readonly name: string;
  start(signal: AbortSignal, runs: RunRecorder): Promise<void>;
  stop(): Promise<void>;
}

/** How a worker reports each of its runs to the host. Calls never throw. */
export interface RunRecorder {
  succeeded(): void;
  /** A run failed but the worker carries on (a crash is a rejection of `start` instead). */
  failed(err: unknown): void;
}

/** A recorder that keeps nothing: for running a worker outside a host (scripts, tests). */
export const NO_RECORDER: RunRecorder = Object.freeze({ succeeded: () => undefined, failed: () => undefined });

export { sleep } from '../sleep.ts';

/** Resolves when `signal` aborts (at once if it has). */
export function aborted(signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.resolve();
  return new Promise((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
}
