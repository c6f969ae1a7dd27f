import type { CacheConfig } from '../../config.ts';
import type { CacheStore } from './port.ts';

export type { CacheStore, CacheStats } from './port.ts';

/** Opens the cache the config names; null when caching is off. The Redis client loads only for Redis. */
export async function openCacheStore(config: CacheConfig, onError?: (err: Error) => void): Promise<CacheStore | null> {
  switch (config.kind) {
    case 'off':
      return null;
    case 'memory':
      return (await import('./memory.ts')).openMemoryCache(config);
    case 'redis':
      return (await import('./redis.ts')).openRedisCache({ url: config.url, commandTimeoutMs: config.commandTimeoutMs, onError });
  }
}
