import cliProgress from 'cli-progress';

/** A progress bar of a long command (`site deploy`, `files sweep`), or nothing. */
export interface Progress {
  /** `done` of `total` (null: not known yet, the bar grows with `done`), `label` what is at hand. */
  update(done: number, total: number | null, label: string): void;
  /** Leaves the bar as it is and gives the terminal back; safe to call when it never started. */
  stop(): void;
}

/**
 * A progress bar on stderr when it is a terminal and the output is for a person; otherwise
 * nothing, so `--json` output and logs stay clean.
 */
export function progress(enabled: boolean, what: string): Progress {
  if (!enabled || !process.stderr.isTTY) return { update: () => undefined, stop: () => undefined };
  const bar = new cliProgress.SingleBar(
    { format: `${what} [{bar}] {value}/{total} {label}`, stream: process.stderr, hideCursor: true, clearOnComplete: false },
    cliProgress.Presets.shades_classic,
  );
  let started = false;
  return {
    update(done, total, label) {
      if (!started) {
        bar.start(total ?? 0, 0, { label });
        started = true;
      }
      if (total !== null) bar.setTotal(total);
      else if (done > bar.getTotal()) bar.setTotal(done);
      bar.update(done, { label });
    },
    stop() {
      if (started) bar.stop();
    },
  };
}
