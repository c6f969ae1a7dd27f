/** What differs between cache implementations, said as data. */
export interface CacheCapabilities {
  /** Shared by every app process (Redis); the in-process cache belongs to one process. */
  readonly shared: boolean;
}

export interface CacheStats {
  /** Keys of this deployment (under the prefix asked for). */
  readonly entries: number;
  /** Memory those keys take (Redis: MEMORY USAGE summed; in-process: the LRU's size); null if unknown. */
  readonly bytes: number | null;
  /**
   * Entries evicted to stay within bounds. In-process: this cache's own; Redis counts evictions
   * for the whole server only, so on Redis this is the server's figure.
   */
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
   * Stores `value` if `key` still holds `lease` (the one the loader put there), or a tombstone or
   * lease (`T:<epoch ms>[:<token>]`) written before `loadStartedAt`; true if stored. Never into an
   * empty key: it was flushed, evicted or expired since the reader looked, and with it any
   * tombstone that would have stopped an older load. Atomic, so a slow loader cannot overwrite a
   * newer invalidation.
   */
  fill(key: string, value: string, ttlMs: number, loadStartedAt: number, lease: string | null): Promise<boolean>;
  /** Replaces each key with `value` for `ttlMs` (used to write tombstones). */
  setMany(keys: readonly string[], value: string, ttlMs: number): Promise<void>;
  /** Deletes every key starting with `prefix`; returns how many. */
  deletePrefix(prefix: string): Promise<number>;
  stats(prefix: string): Promise<CacheStats>;
  /** Calls `listener` each time the store becomes reachable again after being unreachable. */
  onReconnect(listener: () => void): void;
  close(): Promise<void>;
}
