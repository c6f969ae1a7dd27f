import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import type { CacheSettings } from '../../src/config.ts';
import { REQUIRE_SERVICES } from './engines.ts';

/** Redis suites run when REDIS_URL answers; with REQUIRE_SERVICES=1 an unreachable one fails the run. */
export const REDIS_URL = process.env.REDIS_URL || null;

async function reachable(url: string): Promise<boolean> {
  const client = new Redis(url, { lazyConnect: true, connectTimeout: 2_000, maxRetriesPerRequest: 0, retryStrategy: () => null });
  client.on('error', () => undefined);
  try {
    await client.connect();
    return (await client.ping()) === 'PONG';
  } catch {
    return false;
  } finally {
    client.disconnect();
  }
}

export const REDIS_UP: boolean = REDIS_URL ? await reachable(REDIS_URL) : false;
if (REDIS_URL && !REDIS_UP && REQUIRE_SERVICES) throw new Error('REQUIRE_SERVICES=1 but Redis at REDIS_URL does not answer');
if (!REDIS_UP) {
  console.warn(
    REDIS_URL ? 'Redis suites skipped: REDIS_URL does not answer' : 'Redis suites skipped: set REDIS_URL (e.g. redis://127.0.0.1:6379) to run them',
  );
}

export type CacheKind = 'memory' | 'redis';
export const CACHES: readonly CacheKind[] = REDIS_UP ? ['memory', 'redis'] : ['memory'];

/** Cache settings for a test: a prefix of its own, so files can share one Redis. */
export function cacheSettings(kind: CacheKind, label: string): CacheSettings {
  const prefix = `t-${label}-${randomBytes(4).toString('hex')}`;
  return kind === 'memory'
    ? { store: { kind: 'memory', maxEntries: 10_000, maxBytes: 64 * 1024 * 1024 }, prefix, ttlSeconds: 300 }
    // 2 s, not the 50 ms default: beside a second suite on 2 cores a reply can wait past 200 ms,
    // and these tests check answers, not the timeout (the outage tests check that).
    : { store: { kind: 'redis', url: REDIS_URL as string, commandTimeoutMs: 2_000 }, prefix, ttlSeconds: 300 };
}
