/**
 * Things to undo however the run ends (child processes, databases, temp dirs). Benchmarks undo
 * their own in `finally`; this registry covers Ctrl-C, which skips `finally` blocks.
 */
const pending = new Set<() => Promise<void>>();

/** Registers `undo` and returns a function that runs it once and unregisters it. */
export function onCleanup(undo: () => Promise<void>): () => Promise<void> {
  let done = false;
  const once = async () => {
    if (done) return;
    done = true;
    pending.delete(once);
    await undo();
  };
  pending.add(once);
  return once;
}

/** Runs every registered undo, newest first; errors are reported, not thrown. */
export async function cleanupAll(): Promise<void> {
  for (const undo of [...pending].reverse()) {
    await undo().catch((err: unknown) => process.stderr.write(`cleanup failed: ${String(err)}\n`));
  }
}
