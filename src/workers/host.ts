import type { Logger } from 'pino';
import { DEFAULT_BACKOFF, type WorkerEvent, type WorkerListener, type WorkerState, type WorkerStatus } from './host-events.ts';
import { sleep as realSleep, type RunRecorder, type Worker } from './worker.ts';

export interface WorkerHostOptions {
  readonly logger: Logger;
  /** Milliseconds to wait before restarting a worker after its n-th crash in a row. */
  readonly backoff?: (crashes: number) => number;
  /** Waits for a back-off; resolves early when the signal aborts. Tests pass one they release by hand. */
  readonly sleep?: (ms: number, signal: AbortSignal) => Promise<void>;
  /** The clock of `lastSuccessAt` and of the crash-streak reset, in milliseconds. */
  readonly now?: () => number;
  /** A worker that ran this long before crashing starts its crash streak again. Default 60 s. */
  readonly stableAfterMs?: number;
  /** How long `stop()` waits for one worker's `stop()` and `start` to end before going on. Default 10 s. */
  readonly stopTimeoutMs?: number;
}

interface Entry {
  readonly worker: Worker;
  readonly controller: AbortController;
  state: Omit<WorkerState, 'name'>;
  loop: Promise<void>;
}

/**
 * Runs workers in the background of a process: starts them in order, restarts a crashed one
 * after a back-off (logged), and on `stop()` stops them in reverse order. Failures of workers,
 * of their `stop()` and of listeners are logged and reported as events: none of them becomes an
 * unhandled rejection.
 *
 * @example
 * const host = new WorkerHost([relay, purge], { logger });
 * host.on(workerMetrics(registry));
 * host.start();
 * // on shutdown:
 * await host.stop();
 */
export class WorkerHost {
  private readonly entries: readonly Entry[];
  private readonly listeners: WorkerListener[] = [];
  private readonly backoff: (crashes: number) => number;
  private readonly sleep: (ms: number, signal: AbortSignal) => Promise<void>;
  private readonly now: () => number;
  private started = false;
  private stopping: Promise<void> | null = null;

  constructor(
    workers: readonly Worker[],
    private readonly options: WorkerHostOptions,
  ) {
    const names = workers.map((w) => w.name);
    const twice = names.filter((n, i) => names.indexOf(n) !== i);
    if (twice.length > 0) throw new Error(`worker names must be unique; repeated: ${[...new Set(twice)].join(', ')}`);
    this.backoff = options.backoff ?? DEFAULT_BACKOFF;
    this.sleep = options.sleep ?? realSleep;
    this.now = options.now ?? Date.now;
    this.entries = workers.map((worker) => ({
      worker,
      controller: new AbortController(),
      state: { status: 'idle', restarts: 0, runs: 0, failures: 0, lastSuccessAt: null, lastError: null },
      loop: Promise.resolve(),
    }));
  }

  /** Calls `listener` with every event from now on; returns a function that unsubscribes it. */
  on(listener: WorkerListener): () => void {
    this.listeners.push(listener);
    return () => {
      const i = this.listeners.indexOf(listener);
      if (i >= 0) this.listeners.splice(i, 1);
    };
  }

  /** Starts every worker, in the order given. Returns at once: the workers run in the background. */
  start(): void {
    if (this.started) throw new Error('the worker host was started already');
    this.started = true;
    for (const entry of this.entries) {
      entry.loop = this.supervise(entry).catch((err: unknown) =>
        this.options.logger.error({ err, worker: entry.worker.name }, 'worker supervision failed'),
      );
    }
  }

  /**
   * Stops the workers newest first: for each, aborts its signal, then awaits its `stop()` and the
   * end of its `start` (for at most `stopTimeoutMs` together). A failing `stop()` is logged and does not keep the
   * others from stopping; once all were asked, the returned promise rejects with an
   * AggregateError of the failures. Calling it again returns the same promise.
   */
  stop(): Promise<void> {
    this.stopping ??= this.stopAll();
    return this.stopping;
  }

  /** Every worker's state, in start order: what the metrics and health checks read. */
  states(): readonly WorkerState[] {
    return this.entries.map((e) => Object.freeze({ name: e.worker.name, ...e.state }));
  }

  private async stopAll(): Promise<void> {
    const failures: Array<{ readonly worker: string; readonly error: unknown }> = [];
    for (const entry of [...this.entries].reverse()) {
      const name = entry.worker.name;
      this.setStatus(entry, 'stopping');
      entry.controller.abort();
      let error: unknown;
      const stopped = stopOf(entry.worker).then(
        () => undefined,
        (err: unknown) => {
          error = err;
          failures.push({ worker: name, error: err });
          this.options.logger.error({ err, worker: name }, 'worker failed to stop');
        },
      );
      // One deadline for both, so that neither a stop() nor a start that hangs holds the others.
      if (!(await settlesWithin(Promise.all([stopped, entry.loop]), this.options.stopTimeoutMs ?? 10_000))) {
        this.options.logger.warn({ worker: name }, 'worker still running after stop: going on without it');
      }
      this.setStatus(entry, 'stopped');
      this.emit(error === undefined ? { type: 'stopped', worker: name } : { type: 'stopped', worker: name, error });
    }
    if (failures.length > 0) {
      throw new AggregateError(
        failures.map((f) => f.error),
        `${failures.length} worker(s) failed to stop: ${failures.map((f) => f.worker).join(', ')}`,
      );
    }
  }

  /** Runs one worker until the host stops it, restarting it after each crash. Never rejects. */
  private async supervise(entry: Entry): Promise<void> {
    const { worker, controller } = entry;
    const { signal } = controller;
    const { logger } = this.options;
    let crashes = 0;
    const runs: RunRecorder = {
      succeeded: () => {
        // A worker that gets work done is healthy again, whatever it did before.
        crashes = 0;
        entry.state = { ...entry.state, runs: entry.state.runs + 1, lastSuccessAt: this.now() };
        this.emit({ type: 'run', worker: worker.name, ok: true, at: entry.state.lastSuccessAt as number });
      },
      failed: (error) => {
        entry.state = { ...entry.state, runs: entry.state.runs + 1, failures: entry.state.failures + 1, lastError: messageOf(error) };
        logger.warn({ err: error, worker: worker.name }, 'worker run failed');
        this.emit({ type: 'run', worker: worker.name, ok: false, at: this.now(), error });
      },
    };
    while (!signal.aborted) {
      const startedAt = this.now();
      this.setStatus(entry, 'running');
      this.emit({ type: 'started', worker: worker.name, restarts: entry.state.restarts });
      try {
        await startOf(worker, signal, runs);
        if (!signal.aborted) {
          this.setStatus(entry, 'finished');
          this.emit({ type: 'finished', worker: worker.name });
        }
        return;
      } catch (error) {
        if (signal.aborted) {
          logger.warn({ err: error, worker: worker.name }, 'worker failed while stopping');
          return;
        }
        if (this.now() - startedAt >= (this.options.stableAfterMs ?? 60_000)) crashes = 0;
        crashes++;
        const restartInMs = this.backoff(crashes);
        entry.state = {
          ...entry.state,
          status: 'restarting',
          runs: entry.state.runs + 1,
          failures: entry.state.failures + 1,
          lastError: messageOf(error),
        };
        logger.error({ err: error, worker: worker.name, crashes, restartInMs }, 'worker crashed');
        this.emit({ type: 'crashed', worker: worker.name, error, crashes, restartInMs });
        await this.sleep(restartInMs, signal);
        if (signal.aborted) return;
        entry.state = { ...entry.state, restarts: entry.state.restarts + 1 };
        logger.info({ worker: worker.name, restarts: entry.state.restarts }, 'worker restarting');
      }
    }
  }

  private setStatus(entry: Entry, status: WorkerStatus): void {
    entry.state = { ...entry.state, status };
  }

  private emit(event: WorkerEvent): void {
    for (const listener of [...this.listeners]) {
      try {
        listener(event);
      } catch (err) {
        this.options.logger.error({ err, event: event.type, worker: event.worker }, 'worker event listener failed');
      }
    }
  }
}

/** Calls `stop`, turning a throw before any promise exists into a rejection. */
function stopOf(worker: Worker): Promise<void> {
  try {
    return Promise.resolve(worker.stop());
  } catch (err) {
    return Promise.reject(err);
  }
}

/**
 * Calls `start` now, so that a worker has started by the time `host.start()` returns, and turns
 * a `start` that throws before returning a promise into a rejection: a crash like any other.
 */
function startOf(worker: Worker, signal: AbortSignal, runs: RunRecorder): Promise<void> {
  try {
    return Promise.resolve(worker.start(signal, runs));
  } catch (err) {
    return Promise.reject(err);
  }
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** Whether `promise` settles within `ms`; the timer does not outlive the answer. */
async function settlesWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), ms)));
  try {
    return await Promise.race([promise.then(() => true, () => true), timeout]);
  } finally {
    clearTimeout(timer);
  }
}
