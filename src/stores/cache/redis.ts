import { Redis } from 'ioredis';
import type { CacheStore } from './port.ts';

export interface RedisCacheOptions {
  readonly url: string;
  /** A command that takes longer fails, and the caller reads PostgreSQL instead. */
  readonly commandTimeoutMs: number;
  readonly onError?: (err: Error) => void;
}

/**
 * Redis or Valkey through ioredis. Commands fail fast instead of queueing while disconnected
 * (`enableOfflineQueue: false`), so a Redis outage costs a request at most the command timeout;
 * ioredis reconnects by itself in the background.
 */
export async function openRedisCache(options: RedisCacheOptions): Promise<CacheStore> {
  const redis = new Redis(options.url, {
    commandTimeout: options.commandTimeoutMs,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    lazyConnect: true,
    // Concurrent requests' commands share one write to the socket: far fewer syscalls under load.
    enableAutoPipelining: true,
    retryStrategy: (times) => Math.min(50 * times, 1_000),
  });
  const reconnectListeners: Array<() => void> = [];
  let wasDown = false;
  redis.on('error', (err: Error) => options.onError?.(err));
  redis.on('close', () => {
    wasDown = true;
  });
  redis.on('ready', () => {
    if (!wasDown) return;
    wasDown = false;
    for (const listener of reconnectListeners) listener();
  });
  // A cache that is down at start is not fatal: reads go to PostgreSQL until it answers.
  await redis.connect().catch((err: Error) => {
    wasDown = true;
    options.onError?.(err);
  });
  return {
    kind: 'redis',
    capabilities: { shared: true },
    get: (key) => redis.get(key),
    async setIfAbsent(key, value, ttlMs) {
      return (await redis.set(key, value, 'PX', ttlMs, 'NX')) === 'OK';
    },
    async fill(key, value, ttlMs, loadStartedAt, lease) {
      return (await redis.eval(FILL_SCRIPT, 1, key, value, String(ttlMs), String(loadStartedAt), lease ?? '')) === 1;
    },
    async setMany(keys, value, ttlMs) {
      if (keys.length === 0) return;
      const multi = redis.multi();
      for (const key of keys) multi.set(key, value, 'PX', ttlMs);
      const results = await multi.exec();
      const failed = results?.find(([err]) => err);
      if (!results || failed) throw failed?.[0] ?? new Error('redis transaction aborted');
    },
    async deletePrefix(prefix) {
      let deleted = 0;
      let cursor = '0';
      do {
        const [next, keys] = await redis.scan(cursor, 'MATCH', `${escapeGlob(prefix)}*`, 'COUNT', 500);
        cursor = next;
        if (keys.length > 0) deleted += await redis.unlink(...keys);
      } while (cursor !== '0');
      return deleted;
    },
    async stats(prefix) {
      // SCAN may return a key more than once (while the keyspace is rehashed): count distinct keys.
      const seen = new Set<string>();
      let cursor = '0';
      do {
        const [next, keys] = await redis.scan(cursor, 'MATCH', `${escapeGlob(prefix)}*`, 'COUNT', 500);
        cursor = next;
        for (const key of keys) seen.add(key);
      } while (cursor !== '0');
      // The deployment's own bytes: what Redis holds for each of its keys (MEMORY USAGE, pipelined),
      // not the whole server's used_memory, which other deployments and applications share.
      let bytes = 0;
      const keys = [...seen];
      for (let i = 0; i < keys.length; i += 500) {
        const pipeline = redis.pipeline();
        for (const key of keys.slice(i, i + 500)) pipeline.call('MEMORY', 'USAGE', key);
        for (const [err, used] of (await pipeline.exec()) ?? []) if (!err) bytes += Number(used ?? 0);
      }
      // Redis counts evictions per server only: this figure is the server's, said so in CacheStats.
      const info = await redis.info('stats');
      return {
        entries: seen.size,
        bytes: seen.size === 0 ? 0 : bytes || null,
        evictions: Number(/evicted_keys:(\d+)/.exec(info)?.[1] ?? 0),
      };
    },
    onReconnect(listener) {
      reconnectListeners.push(listener);
    },
    async close() {
      redis.disconnect();
    },
  };
}

/** `fill` as one atomic step on the server: see CacheStore.fill. */
const FILL_SCRIPT = `
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
if v ~= ARGV[4] then
  local t = string.match(v, '^T:(%d+)$') or string.match(v, '^T:(%d+):%x+$')
  if not t or tonumber(t) >= tonumber(ARGV[3]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
`;

function escapeGlob(s: string): string {
  return s.replace(/[*?[\]\\]/g, '\\$&');
}
