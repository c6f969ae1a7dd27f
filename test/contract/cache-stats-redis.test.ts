import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CacheStore } from '../../src/stores/cache/port.ts';
import { openRedisCache } from '../../src/stores/cache/redis.ts';
import { REDIS_UP, REDIS_URL } from '../support/redis.ts';

/**
 * `cache stats` on Redis speaks of this deployment only: the keys under its prefix and the memory
 * those keys take, never the whole server's `used_memory`, which other deployments share.
 */
describe.skipIf(!REDIS_UP)('Redis cache stats count only the deployment\'s keys', () => {
  const run = `stats-${randomBytes(6).toString('hex')}`;
  let cache: CacheStore;

  beforeAll(async () => {
    cache = await openRedisCache({ url: REDIS_URL as string, commandTimeoutMs: 1_000 });
  });
  afterAll(async () => {
    await cache.deletePrefix(`${run}:`);
    await cache.close();
  });

  it('bytes grow with the prefix\'s own values and ignore another prefix\'s', async () => {
    expect(await cache.stats(`${run}:a:`)).toEqual({ entries: 0, bytes: 0, evictions: expect.any(Number) });
    for (let i = 0; i < 10; i++) await cache.setMany([`${run}:a:${i}`], 'x'.repeat(1_000), 60_000);
    // Another deployment's 4 MiB next door.
    await cache.setMany([`${run}:b:big`], 'y'.repeat(4 * 1024 * 1024), 60_000);
    const own = await cache.stats(`${run}:a:`);
    expect(own.entries).toBe(10);
    // Ten 1 000-byte values plus Redis's per-key overhead: well under the neighbour's 4 MiB.
    expect(own.bytes).toBeGreaterThanOrEqual(10_000);
    expect(own.bytes).toBeLessThan(100_000);
    const other = await cache.stats(`${run}:b:`);
    expect(other.entries).toBe(1);
    expect(other.bytes).toBeGreaterThanOrEqual(4 * 1024 * 1024);
  });
});
