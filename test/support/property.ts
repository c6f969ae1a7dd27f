import fc from 'fast-check';

/**
 * Parameters for every fast-check property of the suite: a fixed seed by default, so that a run
 * gives the same result every time, and `FC_SEED=<n>` to replay or explore another seed. A failure
 * names the seed and the command that reruns it.
 */

/** The seed used when FC_SEED is not set. */
export const DEFAULT_SEED = 20261201;

function seedFromEnv(): number {
  const raw = process.env.FC_SEED;
  if (raw === undefined || raw.trim() === '') return DEFAULT_SEED;
  const seed = Number(raw);
  // fast-check takes a 32-bit integer seed.
  if (!Number.isInteger(seed) || seed < -(2 ** 31) || seed >= 2 ** 32) {
    throw new Error(`FC_SEED must be a 32-bit integer, got ${JSON.stringify(raw)}`);
  }
  return seed | 0;
}

/** The seed of this run: FC_SEED, or {@link DEFAULT_SEED}. */
export const FC_SEED: number = seedFromEnv();

/**
 * `fc.assert` parameters with the run's seed and `numRuns` runs. FC_RUNS, when set, overrides
 * `numRuns` (for a longer exploration with a seed of one's own).
 *
 * @example
 * await fc.assert(fc.asyncProperty(arb, check), fcParams(100));
 */
export function fcParams<T>(numRuns: number): fc.Parameters<T> {
  const override = Number(process.env.FC_RUNS);
  return {
    seed: FC_SEED,
    numRuns: Number.isInteger(override) && override > 0 ? override : numRuns,
    // fast-check prints the seed and path of a failure; the reporter adds how to rerun it here.
    reporter(details) {
      if (!details.failed) return;
      const message = fc.defaultReportMessage(details) ?? 'property failed';
      throw new Error(`${message}\n\nRerun this property with FC_SEED=${details.seed} (the seed of this run).`, {
        cause: details.errorInstance,
      });
    },
  };
}
