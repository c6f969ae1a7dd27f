import type { BenchResult } from './report.ts';

/** Timing a run uses; each benchmark has defaults that `--warmup` and `--duration` override. */
export interface Timing {
  readonly warmupS: number;
  readonly durationS: number;
}

export interface Benchmark {
  readonly name: string;
  readonly description: string;
  readonly defaults: Timing;
  run(timing: Timing): Promise<BenchResult>;
}
