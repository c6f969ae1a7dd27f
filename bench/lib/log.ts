import { performance } from 'node:perf_hooks';

const started = performance.now();

/**
 * One progress line on stderr, stamped with the seconds since the run began. Progress never goes
 * to stdout, so that `--json` output stays machine-readable.
 */
export function progress(message: string): void {
  const elapsed = ((performance.now() - started) / 1000).toFixed(1).padStart(6);
  process.stderr.write(`[bench ${elapsed}s] ${message}\n`);
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Thrown for conditions the user must fix (PostgreSQL down, bad arguments): printed without a stack. */
export class BenchError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'BenchError';
  }
}
