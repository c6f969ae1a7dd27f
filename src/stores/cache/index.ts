import type { CacheConfig } from '../../config.ts';
import { openMemoryCache } from './memory.ts';
import type { CacheStore } from './port.ts';
import { openRedisCache } from './redis.ts';

export type { CacheStore, CacheStats } from './port.ts';

/** Opens the cache the config names; null when caching is off. */
export async function openCacheStore(config: CacheConfig, onError?: (err: Error) => void): Promise<CacheStore | null> {
  switch (config.kind) {
    case 'off':
      return null;
    case 'memory':
      return openMemoryCache(config);
    case 'redis':
      return openRedisCache({ url: config.url, commandTimeoutMs: config.commandTimeoutMs, onError });
  }
}
