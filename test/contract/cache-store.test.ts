import { createHash, randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openMemoryCache } from '../../src/stores/cache/memory.ts';
import type { CacheStore } from '../../src/stores/cache/port.ts';
import { openRedisCache } from '../../src/stores/cache/redis.ts';

/**
 * One contract over every CacheStore: the in-process LRU always, Redis when REDIS_URL is set and
 * answers. Same rule as test/support/engines.ts: with REQUIRE_SERVICES=1 an unreachable Redis fails
 * the run instead of skipping. (Read here rather than imported from engines.ts, which would probe
 * PostgreSQL too.)
 */
const REDIS_URL = process.env.REDIS_URL || null;
const REQUIRE_SERVICES = process.env.REQUIRE_SERVICES === '1';

async function redisReachable(url: string): Promise<boolean> {
  let client: Redis | undefined;
  try {
    client = new Redis(url, {
      lazyConnect: true,
      connectTimeout: 3_000,
      maxRetriesPerRequest: 0,
      enableOfflineQueue: false,
      retryStrategy: () => null,
    });
    client.on('error', () => undefined);
    await client.connect();
    return (await client.ping()) === 'PONG';
  } catch {
    return false;
  } finally {
    client?.disconnect();
  }
}

const REDIS_UP: boolean = REDIS_URL ? await redisReachable(REDIS_URL) : false;

if (REDIS_URL && !REDIS_UP && REQUIRE_SERVICES) {
  throw new Error('REQUIRE_SERVICES=1 but Redis at REDIS_URL does not answer');
}
if (!REDIS_UP) {
  console.warn(
    REDIS_URL
      ? 'Redis cache suites skipped: REDIS_URL does not answer'
      : 'Redis cache suites skipped: set REDIS_URL (e.g. redis://127.0.0.1:6379) to run them',
  );
}

/** Every key this file writes starts with this, so parallel runs on one Redis never meet. */
const RUN = `test:${randomBytes(6).toString('hex')}:`;

const LONG_TTL = 60_000;
/** How long a short-lived value may take to disappear before the test fails. */
const EXPIRY_LIMIT_MS = 3_000;

interface Implementation {
  readonly kind: CacheStore['kind'];
  readonly available: boolean;
  open(): Promise<CacheStore>;
}

const IMPLEMENTATIONS: readonly Implementation[] = [
  {
    kind: 'memory',
    available: true,
    open: async () => openMemoryCache({ maxEntries: 10_000, maxBytes: 64 * 1024 * 1024 }),
  },
  {
    kind: 'redis',
    available: REDIS_UP,
    // 2 s, not the 50 ms default: beside a second suite on 2 cores a reply can wait past 200 ms,
    // and these tests check answers, not the timeout (the outage tests check that).
    open: () => openRedisCache({ url: REDIS_URL ?? '', commandTimeoutMs: 2_000 }),
  },
];

function sha256(s: string | null): string | null {
  return s === null ? null : createHash('sha256').update(s, 'utf8').digest('hex');
}

/** Polls `probe` until it returns null; fails if that has not happened `limitMs` after `since`. */
async function untilNull(what: string, probe: () => Promise<string | null>, since: number, limitMs = EXPIRY_LIMIT_MS) {
  for (;;) {
    const value = await probe();
    if (value === null) return performance.now() - since;
    if (performance.now() - since > limitMs) {
      throw new Error(`${what} still held ${JSON.stringify(value)} ${limitMs} ms after it was written`);
    }
    await sleep(20);
  }
}

for (const impl of IMPLEMENTATIONS) {
  describe.skipIf(!impl.available)(`cache store contract on ${impl.kind}`, () => {
    const P = `${RUN}${impl.kind}:`;
    let cache: CacheStore;
    beforeAll(async () => {
      cache = await impl.open();
    });
    afterAll(async () => {
      if (!cache) return;
      try {
        await cache.deletePrefix(P);
      } finally {
        await cache.close();
      }
    });

    it('names its kind and capabilities', () => {
      expect(cache.kind).toBe(impl.kind);
      expect(cache.capabilities).toEqual({ shared: impl.kind === 'redis' });
    });

    it('returns null for a key that was never written', async () => {
      expect(await cache.get(`${P}missing`)).toBeNull();
      expect(await cache.get(`${P}missing:${'x'.repeat(200)}`)).toBeNull();
    });

    it('fill stores over its own lease or an older tombstone, never into an empty key, over a value or a newer tombstone', async () => {
      const k = `${P}fill:a`;
      // Empty: flushed or evicted since the reader looked, which would have left a lease.
      expect(await cache.fill(k, 'v1', LONG_TTL, 1_000, null)).toBe(false);
      expect(await cache.get(k)).toBeNull();
      // Someone else's lease, taken after this load started: refused; its own: accepted.
      expect(await cache.setIfAbsent(k, 'T:1000:0123abcd', LONG_TTL)).toBe(true);
      expect(await cache.fill(k, 'old', LONG_TTL, 999, 'T:999:4567ef')).toBe(false);
      expect(await cache.fill(k, 'v1', LONG_TTL, 1_000, 'T:1000:0123abcd')).toBe(true);
      expect(await cache.get(k)).toBe('v1');
      expect(await cache.fill(k, 'v2', LONG_TTL, 2_000, null)).toBe(false);
      expect(await cache.get(k)).toBe('v1');
      await cache.setMany([k], 'T:5000', LONG_TTL);
      // A load that started before the invalidation may have read the old row: refused.
      expect(await cache.fill(k, 'stale', LONG_TTL, 4_999, null)).toBe(false);
      expect(await cache.fill(k, 'stale', LONG_TTL, 5_000, null)).toBe(false);
      expect(await cache.get(k)).toBe('T:5000');
      // One that started after it read the committed row: accepted.
      expect(await cache.fill(k, 'fresh', LONG_TTL, 5_001, null)).toBe(true);
      expect(await cache.get(k)).toBe('fresh');
      // A value that merely looks like a tombstone's prefix is a value.
      const v = `${P}fill:b`;
      await cache.setMany([v], 'T:abc', LONG_TTL);
      expect(await cache.fill(v, 'x', LONG_TTL, 9_999_999_999_999, null)).toBe(false);
    });

    it('setIfAbsent stores once; a second call returns false and keeps the first value', async () => {
      const k = `${P}nx:a`;
      expect(await cache.setIfAbsent(k, 'first', LONG_TTL)).toBe(true);
      expect(await cache.get(k)).toBe('first');
      expect(await cache.setIfAbsent(k, 'second', LONG_TTL)).toBe(false);
      expect(await cache.get(k)).toBe('first');
      // An empty string is a value, not an absence.
      expect(await cache.setIfAbsent(`${P}nx:empty`, '', LONG_TTL)).toBe(true);
      expect(await cache.get(`${P}nx:empty`)).toBe('');
      expect(await cache.setIfAbsent(`${P}nx:empty`, 'later', LONG_TTL)).toBe(false);
      expect(await cache.get(`${P}nx:empty`)).toBe('');
    });

    it('concurrent setIfAbsent calls on one key: exactly one wins and its value stays', async () => {
      const k = `${P}nx:race`;
      const results = await Promise.all(Array.from({ length: 20 }, (_, i) => cache.setIfAbsent(k, `v${i}`, LONG_TTL)));
      expect(results.filter(Boolean)).toHaveLength(1);
      expect(await cache.get(k)).toBe(`v${results.indexOf(true)}`);
    });

    it('a value written with a short TTL expires, and the key is then absent again', async () => {
      const k = `${P}ttl:a`;
      const t0 = performance.now();
      expect(await cache.setIfAbsent(k, 'short-lived', 150)).toBe(true);
      const early = await cache.get(k);
      // Only when the read came back inside the TTL must it have seen the value.
      if (performance.now() - t0 < 150) expect(early).toBe('short-lived');
      await untilNull(k, () => cache.get(k), t0);
      expect(await cache.setIfAbsent(k, 'again', LONG_TTL)).toBe(true);
      expect(await cache.get(k)).toBe('again');
    });

    it('setMany overwrites existing keys with a tombstone that blocks setIfAbsent until it expires', async () => {
      const held = `${P}tomb:held`;
      const fresh = `${P}tomb:fresh`;
      const bystander = `${P}tomb:bystander`;
      expect(await cache.setIfAbsent(held, 'cached', LONG_TTL)).toBe(true);
      expect(await cache.setIfAbsent(bystander, 'untouched', LONG_TTL)).toBe(true);
      await cache.setMany([], 'TOMB', 1_000);
      const t0 = performance.now();
      await cache.setMany([held, fresh], 'TOMB', 1_000);
      expect(await cache.get(held)).toBe('TOMB');
      expect(await cache.get(fresh)).toBe('TOMB');
      expect(await cache.setIfAbsent(held, 'refill', LONG_TTL)).toBe(false);
      expect(await cache.setIfAbsent(fresh, 'refill', LONG_TTL)).toBe(false);
      expect(await cache.get(held)).toBe('TOMB');
      await untilNull(held, () => cache.get(held), t0);
      await untilNull(fresh, () => cache.get(fresh), t0);
      expect(await cache.setIfAbsent(held, 'refill', LONG_TTL)).toBe(true);
      expect(await cache.get(held)).toBe('refill');
      expect(await cache.get(bystander)).toBe('untouched');
    });

    it('setMany replaces a tombstone with a new value and a new TTL', async () => {
      const k = `${P}tomb:replace`;
      await cache.setMany([k], 'TOMB', 150);
      await cache.setMany([k], 'TOMB2', LONG_TTL);
      await sleep(300);
      expect(await cache.get(k)).toBe('TOMB2');
    });

    it('deletePrefix removes exactly the keys with that prefix and returns their count', async () => {
      const doomed = [`${P}dp:a`, `${P}dp:b`, `${P}dp:c:d`, `${P}dp:`];
      const kept = [`${P}dp2:a`, `${P}dp2:`, `${P}d:p`, `${P}dpx`, `${P}Dp:a`, `${P}other`];
      for (const k of [...doomed, ...kept]) expect(await cache.setIfAbsent(k, `value of ${k}`, LONG_TTL)).toBe(true);
      expect(await cache.deletePrefix(`${P}dp:`)).toBe(doomed.length);
      for (const k of doomed) expect(await cache.get(k)).toBeNull();
      for (const k of kept) expect(await cache.get(k)).toBe(`value of ${k}`);
      expect(await cache.deletePrefix(`${P}dp:`)).toBe(0);
      expect(await cache.deletePrefix(`${P}nothing-here:`)).toBe(0);
      expect((await cache.stats(`${P}dp2:`)).entries).toBe(2);
    });

    it('deletePrefix counts more keys than one SCAN page', async () => {
      const n = 1_234;
      const keys = Array.from({ length: n }, (_, i) => `${P}many:${i}`);
      await cache.setMany(keys, 'x', LONG_TTL);
      expect((await cache.stats(`${P}many:`)).entries).toBe(n);
      expect(await cache.deletePrefix(`${P}many:`)).toBe(n);
      expect((await cache.stats(`${P}many:`)).entries).toBe(0);
    });

    it('treats glob characters in a prefix literally', async () => {
      const G = `${P}glob:`;
      const cases: ReadonlyArray<{ prefix: string; matches: string[]; lookalikes: string[] }> = [
        { prefix: `${G}a*`, matches: [`${G}a*`, `${G}a*b`], lookalikes: [`${G}a`, `${G}ab`, `${G}aXb`] },
        { prefix: `${G}c?d`, matches: [`${G}c?d:1`], lookalikes: [`${G}cXd:1`, `${G}cd:1`] },
        { prefix: `${G}[ef]`, matches: [`${G}[ef]:1`], lookalikes: [`${G}e:1`, `${G}f:1`, `${G}[e:1`] },
        { prefix: `${G}[`, matches: [`${G}[`, `${G}[g]`], lookalikes: [`${G}g`] },
        { prefix: `${G}h]`, matches: [`${G}h]i`], lookalikes: [`${G}hi`] },
        { prefix: `${G}j\\`, matches: [`${G}j\\k`], lookalikes: [`${G}jk`, `${G}j`] },
        { prefix: `${G}[^l]`, matches: [`${G}[^l]m`], lookalikes: [`${G}xm`, `${G}^m`] },
        { prefix: `${G}[n-p]`, matches: [`${G}[n-p]`], lookalikes: [`${G}o`, `${G}-`] },
      ];
      const all = [...new Set(cases.flatMap((c) => [...c.matches, ...c.lookalikes]))];
      for (const c of cases) {
        for (const k of all) await cache.setMany([k], `value of ${k}`, LONG_TTL);
        const expected = all.filter((k) => k.startsWith(c.prefix));
        for (const k of c.matches) expect(expected, c.prefix).toContain(k);
        for (const k of c.lookalikes) expect(expected, c.prefix).not.toContain(k);
        expect((await cache.stats(c.prefix)).entries, `stats(${c.prefix})`).toBe(expected.length);
        expect(await cache.deletePrefix(c.prefix), `deletePrefix(${c.prefix})`).toBe(expected.length);
        for (const k of all) {
          expect(await cache.get(k), `${k} after deletePrefix(${c.prefix})`).toBe(
            expected.includes(k) ? null : `value of ${k}`,
          );
        }
      }
      const last = cases.at(-1)?.prefix ?? G;
      expect(await cache.deletePrefix(G)).toBe(all.filter((k) => !k.startsWith(last)).length);
    });

    it('stats(prefix).entries counts exactly the live keys under the prefix', async () => {
      expect((await cache.stats(`${P}st:`)).entries).toBe(0);
      await cache.setMany([1, 2, 3, 4, 5].map((i) => `${P}st:${i}`), 'v', LONG_TTL);
      await cache.setMany([`${P}st2:1`, `${P}st2:2`, `${P}s:t`], 'v', LONG_TTL);
      await cache.setMany([`${P}st:3`], 'overwritten', LONG_TTL);
      expect(await cache.setIfAbsent(`${P}st:1`, 'no', LONG_TTL)).toBe(false);
      const s = await cache.stats(`${P}st:`);
      expect(s.entries).toBe(5);
      expect((await cache.stats(`${P}st2:`)).entries).toBe(2);
      expect((await cache.stats(`${P}st`)).entries).toBe(7);
      expect((await cache.stats(`${P}s?:`)).entries).toBe(0);
      expect(Number.isInteger(s.evictions) && s.evictions >= 0).toBe(true);
      expect(s.bytes === null || (Number.isFinite(s.bytes) && s.bytes > 0)).toBe(true);
      const t0 = performance.now();
      await cache.setMany([`${P}st:short`], 'v', 150);
      expect((await cache.stats(`${P}st:`)).entries).toBeGreaterThanOrEqual(5);
      await untilNull(`${P}st:short`, () => cache.get(`${P}st:short`), t0);
      expect((await cache.stats(`${P}st:`)).entries).toBe(5);
    });

    it('round-trips unicode keys and values byte-identical', async () => {
      const values = [
        'héllo wörld',
        '日本語のテキスト',
        '🏦💶🇪🇺 astral and flags',
        'e\u0301 vs \u00e9 (not normalised)',
        'עברית العربية mixed RTL',
        'nul\u0000inside\u0000',
        'line\nbreaks\r\nand\ttabs',
        '{"json":"\\u2028 \u2028 \u2029"}',
        '\uFEFFbom first',
      ];
      for (const [i, v] of values.entries()) {
        const k = `${P}uni:ключ🔑:${i}`;
        expect(await cache.setIfAbsent(k, v, LONG_TTL)).toBe(true);
        const got = await cache.get(k);
        expect(got).toBe(v);
        expect(Buffer.from(got ?? '', 'utf8').equals(Buffer.from(v, 'utf8'))).toBe(true);
      }
      expect((await cache.stats(`${P}uni:ключ🔑:`)).entries).toBe(values.length);
      expect(await cache.deletePrefix(`${P}uni:ключ🔑:`)).toBe(values.length);
    });

    it('round-trips 100 KiB values byte-identical', async () => {
      const ascii = randomBytes(76_800).toString('base64');
      const mixed = 'aé日🏦'.repeat(10_240); // 1 + 2 + 3 + 4 UTF-8 bytes, 10 240 times
      expect(Buffer.byteLength(ascii, 'utf8')).toBe(100 * 1024);
      expect(Buffer.byteLength(mixed, 'utf8')).toBe(100 * 1024);
      for (const [name, v] of [['ascii', ascii], ['mixed', mixed]] as const) {
        expect(await cache.setIfAbsent(`${P}big:nx:${name}`, v, LONG_TTL)).toBe(true);
        await cache.setMany([`${P}big:many:${name}`], v, LONG_TTL);
        for (const k of [`${P}big:nx:${name}`, `${P}big:many:${name}`]) {
          const got = await cache.get(k);
          expect(got?.length, k).toBe(v.length);
          expect(sha256(got), k).toBe(sha256(v));
        }
      }
    });
  });
}

describe('memory cache bounds', () => {
  it('the entry bound evicts the least recently used key and counts it', async () => {
    const cache = openMemoryCache({ maxEntries: 3, maxBytes: 1_000_000 });
    try {
      for (const k of ['a', 'b', 'c']) expect(await cache.setIfAbsent(k, `v${k}`, LONG_TTL)).toBe(true);
      expect(await cache.get('a')).toBe('va'); // a is now the most recently used; b the least
      expect(await cache.setIfAbsent('d', 'vd', LONG_TTL)).toBe(true);
      expect((await cache.stats('')).evictions).toBe(1);
      expect(await cache.setIfAbsent('e', 've', LONG_TTL)).toBe(true); // c is now the least recently used
      const s = await cache.stats('');
      expect(s.evictions).toBe(2);
      expect(s.entries).toBe(3);
      expect(await cache.get('b')).toBeNull();
      expect(await cache.get('c')).toBeNull();
      expect([await cache.get('a'), await cache.get('d'), await cache.get('e')]).toEqual(['va', 'vd', 've']);
    } finally {
      await cache.close();
    }
  });

  it('the byte bound evicts the least recently used key and counts it', async () => {
    // Each entry is (2 + 198) UTF-16 code units = 400 bytes; three do not fit in 1 000.
    const cache = openMemoryCache({ maxEntries: 1_000, maxBytes: 1_000 });
    const v = 'v'.repeat(198);
    try {
      expect(await cache.setIfAbsent('k1', v, LONG_TTL)).toBe(true);
      expect(await cache.setIfAbsent('k2', v, LONG_TTL)).toBe(true);
      expect(await cache.stats('')).toEqual({ entries: 2, bytes: 800, evictions: 0 });
      expect(await cache.setIfAbsent('k3', v, LONG_TTL)).toBe(true);
      expect(await cache.stats('')).toEqual({ entries: 2, bytes: 800, evictions: 1 });
      expect(await cache.get('k1')).toBeNull();
      expect(await cache.get('k2')).toBe(v);
      expect(await cache.get('k3')).toBe(v);
    } finally {
      await cache.close();
    }
  });

  it('overwrites, deletes and expiries are not counted as evictions', async () => {
    const cache = openMemoryCache({ maxEntries: 100, maxBytes: 1_000_000 });
    try {
      await cache.setMany(['a', 'b', 'c'], 'x', LONG_TTL);
      await cache.setMany(['a', 'b'], 'TOMB', 150);
      const t0 = performance.now();
      await untilNull('a', () => cache.get('a'), t0);
      await untilNull('b', () => cache.get('b'), t0);
      expect(await cache.deletePrefix('c')).toBe(1);
      expect(await cache.stats('')).toEqual({ entries: 0, bytes: 0, evictions: 0 });
    } finally {
      await cache.close();
    }
  });
});

describe('redis cache when Redis is unreachable', () => {
  // Port 1 on loopback: nothing listens there, so connecting is refused at once.
  const DEAD_URL = 'redis://127.0.0.1:1';

  it('opens anyway, and every command rejects instead of throwing or hanging', async ({ annotate }) => {
    const errors: Error[] = [];
    const cache = await openRedisCache({ url: DEAD_URL, commandTimeoutMs: 200, onError: (err) => errors.push(err) });
    try {
      const calls: Array<[string, () => Promise<unknown>]> = [
        ['get', () => cache.get(`${RUN}dead`)],
        ['setIfAbsent', () => cache.setIfAbsent(`${RUN}dead`, 'v', LONG_TTL)],
        ['setMany', () => cache.setMany([`${RUN}dead`], 'v', LONG_TTL)],
        ['deletePrefix', () => cache.deletePrefix(`${RUN}dead:`)],
        ['stats', () => cache.stats(`${RUN}dead:`)],
      ];
      const timings: string[] = [];
      for (const [name, call] of calls) {
        let pending: Promise<unknown> | undefined;
        const t0 = performance.now();
        expect(() => {
          pending = call();
        }, name).not.toThrow();
        await expect(pending, name).rejects.toBeInstanceOf(Error);
        timings.push(`${name} ${Math.round(performance.now() - t0)} ms`);
      }
      await annotate(`rejections: ${timings.join(', ')}`);
      expect(errors.length).toBeGreaterThan(0);
      expect(errors.every((e) => e instanceof Error)).toBe(true);
    } finally {
      await cache.close();
    }
  });

  it('does not crash the process without an onError listener', async () => {
    const cache = await openRedisCache({ url: DEAD_URL, commandTimeoutMs: 200 });
    try {
      await expect(cache.get(`${RUN}dead`)).rejects.toBeInstanceOf(Error);
      // Let the background reconnect attempts fail a few times with no listener of ours attached.
      await sleep(300);
      await expect(cache.setIfAbsent(`${RUN}dead`, 'v', LONG_TTL)).rejects.toBeInstanceOf(Error);
    } finally {
      await cache.close();
    }
  });
});
