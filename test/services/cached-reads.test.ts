import { describe, expect, it } from 'vitest';
import { CachedReads, type CacheEvents } from '../../src/services/cached-reads.ts';
import { openMemoryCache } from '../../src/stores/cache/memory.ts';

const quiet: CacheEvents = { hit: () => undefined, miss: () => undefined, error: () => undefined };
const OPTIONS = { prefix: 'sf', ttlMs: 60_000, negativeTtlMs: 2_000, tombstoneMs: 30_000 };

describe('single flight', () => {
  it('N concurrent misses of one key make one database read, and all get its value', async () => {
    const reads = new CachedReads(openMemoryCache({ maxEntries: 100, maxBytes: 1 << 20 }), OPTIONS, quiet);
    let loads = 0;
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const loader = async () => {
      loads++;
      await gate;
      return { balance: 42 };
    };
    const pending = Array.from({ length: 10 }, () => reads.getOrLoad('account', 7, loader));
    // Every reader has looked at the cache and found it empty before the one load finishes.
    await new Promise((resolve) => setImmediate(resolve));
    release();
    const results = await Promise.all(pending);
    expect(loads).toBe(1);
    expect(results.map((r) => r.value)).toEqual(Array.from({ length: 10 }, () => ({ balance: 42 })));
    expect(results.every((r) => r.cache === 'MISS')).toBe(true);
    expect(await reads.getOrLoad('account', 7, loader)).toEqual({ value: { balance: 42 }, cache: 'HIT' });
    expect(loads).toBe(1);
  });

  it('different keys load separately', async () => {
    const reads = new CachedReads(openMemoryCache({ maxEntries: 100, maxBytes: 1 << 20 }), OPTIONS, quiet);
    let loads = 0;
    const loader = (v: number) => async () => {
      loads++;
      return { v };
    };
    const [a, b] = await Promise.all([reads.getOrLoad('account', 1, loader(1)), reads.getOrLoad('account', 2, loader(2))]);
    expect([a.value, b.value, loads]).toEqual([{ v: 1 }, { v: 2 }, 2]);
  });
});
