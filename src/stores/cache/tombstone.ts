/**
 * A tombstone marks a key invalidated at a moment: `T:<epoch ms>`. A value loaded by a reader that
 * started after that moment may replace it; one loaded before may not.
 */
export function tombstone(at: number): string {
  return `T:${at}`;
}

/** The moment a tombstone was written, or null when `value` is not a tombstone. */
export function tombstoneTime(value: string): number | null {
  const match = /^T:(\d+)$/.exec(value);
  return match ? Number(match[1]) : null;
}

/** True when `value` is a tombstone written before `loadStartedAt`. */
export function isOlderTombstone(value: string, loadStartedAt: number): boolean {
  const at = tombstoneTime(value);
  return at !== null && at < loadStartedAt;
}
