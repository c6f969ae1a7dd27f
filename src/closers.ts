/** Reports each close step as it starts and ends, so a stop with a deadline can say what hangs. */
export type CloseStepListener = (name: string, state: 'start' | 'done' | 'failed', err?: unknown) => void;

export interface CloseOptions {
  readonly onStep?: CloseStepListener;
}

/**
 * What a process holds open, closed newest first. Every closer runs even when an earlier one
 * fails (a database that will not close must not leave the HTTP server listening); the failures
 * are thrown together at the end. Closing twice closes once.
 *
 * @example
 * const closers = new Closers();
 * closers.add('database', () => sql.close());
 * closers.add('http', () => http.close());
 * await closers.close(); // http, then database
 */
export class Closers {
  private readonly steps: Array<{ readonly name: string; readonly close: () => Promise<void> }> = [];
  private closing: Promise<void> | null = null;

  add(name: string, close: () => Promise<void>): void {
    this.steps.push({ name, close });
  }

  close(options: CloseOptions = {}): Promise<void> {
    this.closing ??= this.closeAll(options.onStep);
    return this.closing;
  }

  private async closeAll(onStep?: CloseStepListener): Promise<void> {
    const failures: unknown[] = [];
    // A copy, newest first: the list itself stays in the order things were opened.
    for (const step of [...this.steps].reverse()) {
      onStep?.(step.name, 'start');
      try {
        await step.close();
        onStep?.(step.name, 'done');
      } catch (err) {
        onStep?.(step.name, 'failed', err);
        failures.push(err);
      }
    }
    if (failures.length === 1) throw failures[0];
    if (failures.length > 1) throw new AggregateError(failures, `${failures.length} resources failed to close`);
  }
}
