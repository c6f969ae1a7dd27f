/**
 * A stop with a deadline. `app.close()` closes its resources one after another; one that hangs
 * (a request that never ends, a store that does not answer) would keep the process alive
 * forever, and an orchestrator would kill it without a word about why. Here the process gives
 * close a deadline and, past it, exits non-zero naming the steps that had started and not ended.
 */

/** Where a close step is: reported by whatever closes, once at its start and once at its end. */
export type StepState = 'start' | 'done' | 'failed';

/** Called by a close that reports its steps, e.g. `onStep('http', 'start')`. */
export type OnStep = (name: string, state: StepState) => void;

/** Runs the close, passing it the step callback; a close that ignores it is timed as a whole. */
export type CloseWithSteps = (onStep: OnStep) => Promise<void>;

/** The part of a pino logger the shutdown uses. */
export interface ShutdownLog {
  info(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

/** How the shutdown ended, and the exit code it chose. */
export type ShutdownOutcome =
  | { readonly kind: 'closed'; readonly exitCode: 0 }
  | { readonly kind: 'failed'; readonly exitCode: 1; readonly error: unknown }
  | { readonly kind: 'timed-out'; readonly exitCode: 1; readonly open: readonly string[] };

export interface ShutdownOptions {
  /** How long close may take; past it the process exits with 1. */
  readonly timeoutMs: number;
  readonly log: ShutdownLog;
  /** Ends the process; tests pass a recorder instead. */
  readonly exit?: (code: number) => void;
}

/** Named when no reported step is open, so there is nothing finer to name than close itself. */
const NO_STEPS = 'close (it reports no steps)';
const AFTER_STEPS = 'close (after its last reported step)';

/**
 * Runs `close` with a deadline, logs how it ended and calls `exit` with 0 (closed), or 1 (close
 * failed, or had not finished by the deadline: the log names the steps still open).
 *
 * @example
 * await shutdownWithDeadline((onStep) => app.close({ onStep }), { timeoutMs: 25_000, log: logger });
 */
export async function shutdownWithDeadline(close: CloseWithSteps, options: ShutdownOptions): Promise<ShutdownOutcome> {
  const { timeoutMs, log, exit = (code: number) => process.exit(code) } = options;
  // Insertion order is the order the steps started in, which is the order an operator reads them.
  const open = new Set<string>();
  let reported = false;
  const onStep: OnStep = (name, state) => {
    reported = true;
    if (state === 'start') open.add(name);
    else open.delete(name);
  };
  let timer: ReturnType<typeof setTimeout> | undefined;
  const deadline = new Promise<'deadline'>((resolve) => {
    timer = setTimeout(() => resolve('deadline'), timeoutMs);
  });
  const closed = Promise.resolve()
    .then(() => close(onStep))
    .then(
      () => ({ kind: 'closed' }) as const,
      (error: unknown) => ({ kind: 'failed', error }) as const,
    );
  const first = await Promise.race([closed, deadline]);
  clearTimeout(timer);

  let outcome: ShutdownOutcome;
  if (first === 'deadline') {
    const names = open.size > 0 ? [...open] : [reported ? AFTER_STEPS : NO_STEPS];
    outcome = { kind: 'timed-out', exitCode: 1, open: names };
    log.error({ timeoutMs, open: names }, `shutdown did not finish within ${timeoutMs} ms; still open: ${names.join(', ')}`);
  } else if (first.kind === 'failed') {
    outcome = { kind: 'failed', exitCode: 1, error: first.error };
    log.error({ err: first.error }, 'shutdown failed');
  } else {
    outcome = { kind: 'closed', exitCode: 0 };
    log.info({}, 'stopped');
  }
  exit(outcome.exitCode);
  return outcome;
}

/**
 * On the first SIGTERM or SIGINT, logs `message` and closes with the deadline. A second signal
 * while stopping changes nothing: the deadline already bounds the wait.
 */
export function stopOnSignals(close: CloseWithSteps, options: ShutdownOptions & { readonly message: string }): void {
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    options.log.info({ signal }, options.message);
    void shutdownWithDeadline(close, options);
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}
