import { setTimeout as delay } from 'node:timers/promises';

/**
 * Asks `probe` again and again (every `everyMs`) until `done` accepts its answer, and resolves with
 * that answer; rejects after `timeoutMs` with the last answer in the message. For state another
 * process or a background worker changes, where there is no event to wait on: the check is the
 * synchronisation, the pause only spaces the checks.
 */
export async function until<T>(
  probe: () => Promise<T>,
  done: (value: T) => boolean,
  options: { timeoutMs?: number; everyMs?: number; what?: string } = {},
): Promise<T> {
  const deadline = Date.now() + (options.timeoutMs ?? 60_000);
  let last: T | undefined;
  for (;;) {
    last = await probe();
    if (done(last)) return last;
    if (Date.now() > deadline) {
      throw new Error(`${options.what ?? 'condition'} not reached within ${options.timeoutMs ?? 60_000} ms; last: ${JSON.stringify(last)}`);
    }
    await delay(options.everyMs ?? 50);
  }
}
