/** What differs between cache implementations, said as data. */
export interface CacheCapabilities {
  /** Shared by every app process (Redis); the in-process cache belongs to one process. */
  readonly shared: boolean;
}

export interface CacheStats {
  readonly entries: number;
  readonly bytes: number | null;
  readonly evictions: number;
}

/**
 * A key-value cache of strings with TTLs. Small and verb-named: the read-through logic, single
 * flight and invalidation live in `services/cached-reads.ts`, not here.
 */
export interface CacheStore {
  readonly kind: 'memory' | 'redis';
  readonly capabilities: CacheCapabilities;
  get(key: string): Promise<string | null>;
  /** Stores `value` only if `key` holds nothing (a tombstone counts as something); true if stored. */
  setIfAbsent(key: string, value: string, ttlMs: number): Promise<boolean>;
  /**
   * Stores `value` unless `key` holds a live value or a tombstone (`T:<epoch ms>`) written at or
   * after `loadStartedAt`; true if stored. Atomic, so a slow loader cannot overwrite a newer
   * invalidation.
   */
  fill(key: string, value: string, ttlMs: number, loadStartedAt: number): Promise<boolean>;
  /** Replaces each key with `value` for `ttlMs` (used to write tombstones). */
  setMany(keys: readonly string[], value: string, ttlMs: number): Promise<void>;
  /** Deletes every key starting with `prefix`; returns how many. */
  deletePrefix(prefix: string): Promise<number>;
  stats(prefix: string): Promise<CacheStats>;
  /** Called with true when the store becomes reachable again after being unreachable. */
  onReconnect(listener: () => void): void;
  close(): Promise<void>;
}
