import { randomBytes } from 'node:crypto';

/**
 * A tombstone marks a key invalidated at a moment: `T:<epoch ms>`. A value loaded by a reader that
 * started after that moment may replace it; one loaded before may not.
 */
export function tombstone(at: number): string {
  return `T:${at}`;
}

/**
 * A lease: what a reader that found a key empty puts there before it starts loading, a tombstone
 * stamped `at` with a token of its own. Its load may replace it (`fill` with it as `lease`), so
 * may any load that started after it; but once a flush or an eviction has removed it, a load that
 * began before cannot fill the key, as the tombstone it would have found is gone too.
 */
export function lease(at: number): string {
  return `T:${at}:${randomBytes(8).toString('hex')}`;
}

/** The moment a tombstone or lease was written, or null when `value` is neither. */
export function tombstoneTime(value: string): number | null {
  const match = /^T:(\d+)(?::[0-9a-f]+)?$/.exec(value);
  return match ? Number(match[1]) : null;
}

/** True when `value` is a tombstone written before `loadStartedAt`. */
export function isOlderTombstone(value: string, loadStartedAt: number): boolean {
  const at = tombstoneTime(value);
  return at !== null && at < loadStartedAt;
}
