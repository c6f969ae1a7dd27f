import { LRUCache } from 'lru-cache';
import type { CacheStore } from './port.ts';
import { isOlderTombstone } from './tombstone.ts';

export interface MemoryCacheOptions {
  readonly maxEntries: number;
  readonly maxBytes: number;
}

/**
 * The in-process cache: an LRU bounded by entry count and by bytes, with per-entry TTLs. Correct
 * for one process only; the config refuses it when the app says it runs as several copies.
 */
export function openMemoryCache(options: MemoryCacheOptions): CacheStore {
  let evictions = 0;
  const lru = new LRUCache<string, string>({
    max: options.maxEntries,
    maxSize: options.maxBytes,
    // lru-cache rejects a size of 0 (empty key and value); a value over maxBytes is not stored at all.
    sizeCalculation: (value, key) => Math.max(1, value.length * 2 + key.length * 2),
    ttlAutopurge: false,
    dispose: (_value, _key, reason) => {
      if (reason === 'evict') evictions++;
    },
  });
  return {
    kind: 'memory',
    capabilities: { shared: false },
    async get(key) {
      return lru.get(key) ?? null;
    },
    async setIfAbsent(key, value, ttlMs) {
      if (lru.has(key)) return false;
      lru.set(key, value, { ttl: ttlMs });
      return lru.has(key);
    },
    async fill(key, value, ttlMs, loadStartedAt, lease) {
      const existing = lru.get(key);
      if (existing === undefined || (existing !== lease && !isOlderTombstone(existing, loadStartedAt))) return false;
      lru.set(key, value, { ttl: ttlMs });
      return lru.has(key);
    },
    async setMany(keys, value, ttlMs) {
      for (const key of keys) lru.set(key, value, { ttl: ttlMs });
    },
    async deletePrefix(prefix) {
      let n = 0;
      for (const key of [...lru.keys()]) {
        if (key.startsWith(prefix)) {
          lru.delete(key);
          n++;
        }
      }
      return n;
    },
    async stats(prefix) {
      let entries = 0;
      for (const key of lru.keys()) if (key.startsWith(prefix)) entries++;
      return { entries, bytes: lru.calculatedSize, evictions };
    },
    onReconnect() {
      // Never disconnected.
    },
    async close() {
      lru.clear();
    },
  };
}
