import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApp, type App } from '../../src/app.ts';
import { loadConfig, type Config, type LimitsSettings } from '../../src/config.ts';
import { ERRORS } from '../../src/domain/errors.ts';
import { localFiles, startTestApp, testConfig, type TestApp } from '../support/app.ts';
import { freePort } from '../support/cli.ts';
import { createTestDatabase, ENGINES, type TestDatabase } from '../support/engines.ts';
import { QueryLog, type RecordedQuery } from '../support/recording-db.ts';
import { cacheSettings, REDIS_UP } from '../support/redis.ts';

/**
 * Request limits (src/http/rate-limit.ts): per API key, and per client address for requests
 * without a valid key, checked before a presented key is looked up in the database. 429s are the
 * catalog's, with Retry-After and RateLimit-* headers; health checks and the site are not limited.
 */

type Headers = Record<string, string>;
type Response = Awaited<ReturnType<App['http']['inject']>>;

const SITE = fileURLToPath(new URL('../../site', import.meta.url));
const RATE_LIMITED = {
  statusCode: 429,
  code: 'DATABANK_ERR_RATE_LIMITED',
  message: ERRORS.DATABANK_ERR_RATE_LIMITED.message,
};

/** The default limits (not the test apps' huge ones) with `overrides`. */
const DEFAULT_LIMITS = loadConfig({}).limits;
const limits = (overrides: Partial<LimitsSettings>): Pick<Config, 'limits'> => ({ limits: { ...DEFAULT_LIMITS, ...overrides } });

function wrongKey(): string {
  return `dbk_${randomBytes(8).toString('hex')}_${randomBytes(32).toString('base64url')}`;
}

/** Authentication's database lookup of a presented key. */
const isKeyLookup = (q: RecordedQuery) => /from "api_keys" where "prefix" = /.test(q.sql);

/** The RateLimit headers of an answer, as numbers (Retry-After null when absent). */
function rateHeaders(res: Response) {
  const n = (name: string) => (res.headers[name] === undefined ? null : Number(res.headers[name]));
  return { limit: n('ratelimit-limit'), remaining: n('ratelimit-remaining'), reset: n('ratelimit-reset'), retryAfter: n('retry-after') };
}

function expectRateLimited(res: Response, limit: number, what: string): void {
  expect({ what, status: res.statusCode, body: res.json() as unknown }).toEqual({ what, status: 429, body: RATE_LIMITED });
  const h = rateHeaders(res);
  expect({ what, limit: h.limit, remaining: h.remaining }).toEqual({ what, limit, remaining: 0 });
  expect(h.retryAfter, what).toBe(h.reset);
  expect(h.retryAfter, what).toBeGreaterThanOrEqual(1);
  expect(h.retryAfter, what).toBeLessThanOrEqual(60);
}

for (const engine of ENGINES) {
  describe(`rate limits on ${engine}`, () => {
    const log = new QueryLog();
    let t: TestApp;
    const PER_KEY = 70;
    const PER_ADDRESS = 60;

    beforeAll(async () => {
      t = await startTestApp(
        engine,
        'rate-limit',
        { ...limits({ rateLimitPerMinute: PER_KEY, authFailureLimitPerMinute: PER_ADDRESS }), files: localFiles({ siteDir: SITE }) },
        undefined,
        { wrapDb: log.wrapDb },
      );
    });
    afterAll(async () => {
      await t?.close();
    });

    const get = (url: string, headers: Headers, remoteAddress = '127.0.0.1') => t.app.http.inject({ method: 'GET', url, headers, remoteAddress });
    const newKey = async () => `Bearer ${(await t.app.deps.apiKeys.create('admin', null)).key}`;

    it('per API key: RateLimit headers count down; past the limit, 429 with Retry-After; other keys go on', async () => {
      const key = await newKey();
      for (let i = 1; i <= PER_KEY; i++) {
        const res = await get('/customers/1', { authorization: key });
        expect(res.statusCode).toBe(200);
        const h = rateHeaders(res);
        expect({ i, limit: h.limit, remaining: h.remaining, retryAfter: h.retryAfter }).toEqual({ i, limit: PER_KEY, remaining: PER_KEY - i, retryAfter: null });
        expect(h.reset).toBeGreaterThanOrEqual(1);
        expect(h.reset).toBeLessThanOrEqual(60);
      }
      // The same key from another address is the same budget.
      expectRateLimited(await get('/customers/1', { authorization: key }, '10.9.9.9'), PER_KEY, 'past the per-key limit');
      const other = await get('/customers/1', { authorization: await newKey() });
      expect([other.statusCode, rateHeaders(other).remaining]).toEqual([200, PER_KEY - 1]);
    });

    it('health checks and the public site are not limited, and say nothing of limits', async () => {
      const spent = await newKey();
      for (let i = 0; i <= PER_KEY; i++) await get('/customers/1', { authorization: spent });
      expect((await get('/customers/1', { authorization: spent })).statusCode).toBe(429);
      for (let i = 0; i < PER_ADDRESS + 10; i++) {
        for (const [url, status] of [['/healthz', 200], ['/readyz', 200], ['/', 200], ['/styles.css', 200], ['/no-such-page', 404]] as const) {
          for (const headers of [{ authorization: spent }, { authorization: `Bearer ${wrongKey()}` }, {}] as Headers[]) {
            const res = await get(url, headers, '10.8.8.8');
            expect([url, res.statusCode, rateHeaders(res)]).toEqual([url, status, { limit: null, remaining: null, reset: null, retryAfter: null }]);
          }
        }
      }
      // None of it counted against the address.
      const after = await get('/customers/1', { authorization: `Bearer ${wrongKey()}` }, '10.8.8.8');
      expect([after.statusCode, rateHeaders(after).remaining]).toEqual([401, PER_ADDRESS - 1]);
    });

    it('100 wrong keys from one address get 429s, and past its budget its guesses never reach the database', async () => {
      const address = '10.1.0.1';
      const outcomes: Array<{ status: number; lookups: number }> = [];
      log.take();
      for (let i = 0; i < 100; i++) {
        const res = await get('/customers/1', { authorization: `Bearer ${wrongKey()}` }, address);
        outcomes.push({ status: res.statusCode, lookups: log.take().filter(isKeyLookup).length });
        if (res.statusCode === 401) {
          expect([i, rateHeaders(res)]).toEqual([i, { limit: PER_ADDRESS, remaining: PER_ADDRESS - 1 - i, reset: expect.any(Number), retryAfter: null }]);
          expect(res.headers['www-authenticate']).toBe('Bearer realm="databank"');
        } else {
          expectRateLimited(res, PER_ADDRESS, `wrong key ${i + 1}`);
          expect(res.headers['www-authenticate']).toBeUndefined();
        }
      }
      expect(outcomes.slice(0, PER_ADDRESS)).toEqual(Array(PER_ADDRESS).fill({ status: 401, lookups: 1 }));
      expect(outcomes.slice(PER_ADDRESS)).toEqual(Array(100 - PER_ADDRESS).fill({ status: 429, lookups: 0 }));
      // No key, a malformed one, another scheme: the same 429, and still no lookup.
      for (const headers of [{}, { authorization: 'Bearer nonsense' }, { authorization: `Basic ${wrongKey()}` }] as Headers[]) {
        expectRateLimited(await get('/accounts/1', headers, address), PER_ADDRESS, JSON.stringify(headers));
      }
      expect(log.take().filter(isKeyLookup)).toEqual([]);
      // Another address has a budget of its own.
      const elsewhere = await get('/customers/1', { authorization: `Bearer ${wrongKey()}` }, '10.1.0.2');
      expect([elsewhere.statusCode, rateHeaders(elsewhere).remaining]).toEqual([401, PER_ADDRESS - 1]);
    });

    it('a valid key is never counted against its address, and one the cache holds is served even from a blocked address', async () => {
      const key = await newKey();
      // More valid requests than the address budget, from one address: none is counted against it.
      for (let i = 0; i < PER_ADDRESS + 5; i++) expect((await get('/customers/1', { authorization: key }, '10.2.0.1')).statusCode).toBe(200);
      const wrong = await get('/customers/1', { authorization: `Bearer ${wrongKey()}` }, '10.2.0.1');
      expect([wrong.statusCode, rateHeaders(wrong).remaining]).toEqual([401, PER_ADDRESS - 1]);
      // 10.1.0.1 is over its budget (previous test). The key above is in the cache: served, with
      // its own key's headers, and no database lookup.
      log.take();
      const served = await get('/customers/1', { authorization: key }, '10.1.0.1');
      expect([served.statusCode, rateHeaders(served).limit]).toEqual([200, PER_KEY]);
      expect(log.take().filter(isKeyLookup)).toEqual([]);
      // A valid key the cache does not hold would cost a lookup: the blocked address is refused it.
      expectRateLimited(await get('/customers/1', { authorization: await newKey() }, '10.1.0.1'), PER_ADDRESS, 'an uncached key');
      expect(log.take().filter(isKeyLookup)).toEqual([]);
    });

    it('without TRUST_PROXY, X-Forwarded-For does not change the address', async () => {
      const address = '10.3.0.1';
      for (let i = 0; i < PER_ADDRESS; i++) {
        const res = await get('/customers/1', { authorization: `Bearer ${wrongKey()}`, 'x-forwarded-for': `198.51.100.${i}` }, address);
        expect(res.statusCode).toBe(401);
      }
      const res = await get('/customers/1', { authorization: `Bearer ${wrongKey()}`, 'x-forwarded-for': '198.51.100.250' }, address);
      expectRateLimited(res, PER_ADDRESS, 'a forged X-Forwarded-For');
    });
  });
}

describe('rate limits behind a trusted proxy (TRUST_PROXY)', () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await startTestApp('pglite', 'rate-limit-proxy', limits({ authFailureLimitPerMinute: 3, trustProxy: true }));
  });
  afterAll(async () => {
    await t?.close();
  });

  it('counts the client address from X-Forwarded-For, each on its own budget', async () => {
    // server.ts must pass Fastify `trustProxy: deps.limits.trustProxy` for this to hold.
    const wrong = (client: string) =>
      t.app.http.inject({ method: 'GET', url: '/customers/1', remoteAddress: '127.0.0.1', headers: { authorization: `Bearer ${wrongKey()}`, 'x-forwarded-for': client } });
    for (let i = 0; i < 3; i++) expect((await wrong('203.0.113.1')).statusCode).toBe(401);
    expectRateLimited(await wrong('203.0.113.1'), 3, 'the fourth from 203.0.113.1');
    const other = await wrong('203.0.113.2');
    expect([other.statusCode, rateHeaders(other).remaining]).toEqual([401, 2]);
  });
});

describe('rate limits with a Redis that does not answer', () => {
  let t: TestApp;
  beforeAll(async () => {
    const port = await freePort();
    t = await startTestApp('pglite', 'rate-limit-no-redis', {
      ...limits({ rateLimitPerMinute: 2, authFailureLimitPerMinute: 2 }),
      cache: { store: { kind: 'redis', url: `redis://127.0.0.1:${port}`, commandTimeoutMs: 50 }, prefix: 'no-redis', ttlSeconds: 300 },
    });
  });
  afterAll(async () => {
    await t?.close();
  });

  it('serves every request, uncounted: nothing is refused for want of a counter', async () => {
    for (let i = 0; i < 10; i++) {
      const ok = await t.app.http.inject({ method: 'GET', url: '/accounts/1', headers: t.admin });
      expect([ok.statusCode, ok.headers['x-cache']]).toEqual([200, 'BYPASS']);
      const wrong = await t.app.http.inject({ method: 'GET', url: '/accounts/1', headers: { authorization: `Bearer ${wrongKey()}` } });
      expect(wrong.statusCode).toBe(401);
    }
  });
});

const POSTGRES = ENGINES.includes('postgres');
describe.skipIf(!REDIS_UP || !POSTGRES)('rate limits shared by two instances through Redis', () => {
  let db: TestDatabase;
  const apps: App[] = [];
  let key: string;

  beforeAll(async () => {
    db = await createTestDatabase('postgres', 'rate-limit-shared');
    const overrides = { ...limits({ rateLimitPerMinute: 6, authFailureLimitPerMinute: 10 }), cache: cacheSettings('redis', 'rate-limit') };
    const logger = pino({ level: 'silent' });
    apps.push(await createApp(testConfig(db, overrides), { logger, defaultMetrics: false }));
    apps.push(await createApp(testConfig(db, overrides), { logger, defaultMetrics: false, bootstrap: false }));
    key = `Bearer ${(await (apps[0] as App).deps.apiKeys.create('admin', null)).key}`;
  });
  afterAll(async () => {
    for (const app of apps) await app.close();
    await db?.drop();
  });

  const on = (i: number, headers: Headers, remoteAddress = '127.0.0.1') =>
    (apps[i] as App).http.inject({ method: 'GET', url: '/customers/1', headers, remoteAddress });

  it('one budget per key across instances', async () => {
    const remaining: number[] = [];
    for (let i = 0; i < 6; i++) {
      const res = await on(i % 2, { authorization: key });
      expect(res.statusCode).toBe(200);
      remaining.push(rateHeaders(res).remaining as number);
    }
    expect(remaining).toEqual([5, 4, 3, 2, 1, 0]);
    expectRateLimited(await on(0, { authorization: key }), 6, 'the 7th, on the first instance');
    expectRateLimited(await on(1, { authorization: key }), 6, 'the 8th, on the second instance');
  });

  it('one budget per address across instances', async () => {
    const address = '10.4.0.1';
    for (let i = 0; i < 10; i++) expect((await on(i % 2, { authorization: `Bearer ${wrongKey()}` }, address)).statusCode).toBe(401);
    expectRateLimited(await on(0, { authorization: `Bearer ${wrongKey()}` }, address), 10, 'the 11th, on the first instance');
    expectRateLimited(await on(1, { authorization: `Bearer ${wrongKey()}` }, address), 10, 'the 12th, on the second instance');
  });
});
