/**
 * Resolves after `ms`, or as soon as `signal` aborts; never rejects, so a loop can sleep between
 * turns and check `signal.aborted` afterwards. Shared by the worker host's loops and the stores'
 * reconnect and poll loops.
 */
export function sleep(ms: number, signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener('abort', done, { once: true });
  });
}
