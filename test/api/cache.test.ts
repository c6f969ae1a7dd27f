import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { customerKey, startTestApp, type TestApp } from '../support/app.ts';
import { CACHES, cacheSettings } from '../support/redis.ts';

for (const kind of CACHES) {
  describe(`cache-aside reads with the ${kind} cache`, () => {
    let t: TestApp;
    beforeAll(async () => {
      t = await startTestApp('pglite', `cache-api-${kind}`, { cache: cacheSettings(kind, 'api') });
    });
    afterAll(async () => {
      await t?.app.deps.cache.flush();
      await t?.close();
    });

    const get = (url: string, headers: Record<string, string> = t.admin) => t.app.http.inject({ method: 'GET', url, headers });
    /**
     * Reads until the answer is a HIT (a load may refill an invalidated key only once it started
     * a little after the invalidation), checking every answer on the way; bounded.
     */
    const readUntilHit = async (url: string, check: (body: { balance?: number }) => void) => {
      const seen: string[] = [];
      for (let i = 0; i < 100; i++) {
        const res = await get(url);
        check(res.json());
        seen.push(String(res.headers['x-cache']));
        if (res.headers['x-cache'] === 'HIT') return seen;
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      throw new Error(`${url} never became a HIT: ${seen.join(',')}`);
    };
    const post = (url: string, payload: object) => t.app.http.inject({ method: 'POST', url, headers: t.admin, payload });

    it('MISS then HIT, and the new balance right after a transfer', async () => {
      const first = await get('/accounts/2');
      expect([first.headers['x-cache'], first.json().balance]).toEqual(['MISS', 4853]);
      const second = await get('/accounts/2');
      expect([second.headers['x-cache'], second.json().balance]).toEqual(['HIT', 4853]);
      const customer = await get('/customers/2');
      expect(customer.headers['x-cache']).toBe('MISS');
      expect((await get('/customers/2')).headers['x-cache']).toBe('HIT');

      expect((await post('/transfers', { from_account_id: 1, to_account_id: 2, amount: 100 })).statusCode).toBe(201);
      const after = await get('/accounts/2');
      expect([after.headers['x-cache'], after.json().balance]).toEqual(['MISS', 4953]);
      expect((await get('/customers/2')).json().balance).toBe(4953);
      expect((await get('/customers/1')).json().balance).toBe(1400);
      const seen = await readUntilHit('/accounts/2', (body) => expect(body.balance).toBe(4953));
      expect(seen[seen.length - 1]).toBe('HIT');
    });

    it('every kind of write invalidates what it changed', async () => {
      const balance = async (id: number) => {
        await get(`/accounts/${id}`);
        return (await get(`/accounts/${id}`)).json().balance as number;
      };
      const start = await balance(3);
      await post('/accounts/3/deposits', { amount: 50 });
      expect(await balance(3)).toBe(start + 50);
      await post('/accounts/3/withdrawals', { amount: 20 });
      expect(await balance(3)).toBe(start + 30);
      await post('/fees', { amount: 10, reference: `cache-fee-${kind}` });
      expect(await balance(3)).toBe(start + 20);
      expect((await get('/customers/3')).json().balance).toBe(start + 20);

      await get('/customers/3/accounts');
      const opened = await post('/customers/3/accounts', { account_type: 'savings' });
      const list = await get('/customers/3/accounts');
      expect(list.headers['x-cache']).toBe('MISS');
      expect(list.json().result.map((a: { account_id: number }) => a.account_id)).toContain(opened.json().account_id);

      await get('/customers/3');
      await t.app.http.inject({ method: 'PATCH', url: '/customers/3', headers: t.admin, payload: { name: 'Wade F.' } });
      expect((await get('/customers/3')).json().name).toBe('Wade F.');
    });

    it('caches "not found" briefly, and a creation replaces it at once', async () => {
      const missing = await get('/customers/4');
      expect([missing.statusCode, missing.headers['x-cache']]).toEqual([404, undefined]);
      const created = await post('/customers', { name: 'New Customer', date_of_birth: '1991-01-01' });
      expect(created.json().id).toBe(4);
      const found = await get('/customers/4');
      expect([found.statusCode, found.json().name]).toEqual([200, 'New Customer']);
    });

    it('checks ownership on cached values too', async () => {
      await get('/accounts/1');
      const key = await customerKey(t, 2);
      const other = await get('/accounts/1', key);
      expect([other.statusCode, other.json().code]).toEqual([404, 'DATABANK_ERR_NOT_FOUND']);
      expect((await get('/accounts/2', key)).statusCode).toBe(200);
    });

    it('reports stats and flushes by family through the admin routes', async () => {
      await get('/accounts/1');
      const stats = await get('/cache/stats');
      expect(stats.json().cache.kind).toBe(kind);
      expect(stats.json().cache.entries).toBeGreaterThan(0);
      const flushed = await post('/cache/flush', { prefix: 'account:' });
      expect(flushed.json().deleted).toBeGreaterThan(0);
      expect((await get('/accounts/1')).headers['x-cache']).toBe('MISS');
      const current = (await t.app.deps.customers.get({ role: 'admin', keyId: 0 }, 2)).balance;
      await readUntilHit('/customers/2', (body) => expect(body.balance).toBe(current));
      const again = await get('/customers/2');
      expect(again.headers['x-cache']).toBe('HIT');
      const key = await customerKey(t, 1);
      expect((await get('/cache/stats', key)).statusCode).toBe(403);
    });

    it('counts hits and misses per family in /metrics', async () => {
      const metrics = (await get('/metrics')).body;
      expect(metrics).toMatch(/databank_cache_requests_total\{family="account",result="hit"\} [1-9]\d*/);
      expect(metrics).toMatch(/databank_cache_requests_total\{family="account",result="miss"\} [1-9]\d*/);
      expect(metrics).toMatch(/databank_cache_hit_ratio\{family="account"\} 0\.\d+/);
    });
  });
}

describe('cache off', () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await startTestApp('pglite', 'cache-off', { cache: { store: { kind: 'off' }, prefix: 'off', ttlSeconds: 300 } });
  });
  afterAll(async () => t?.close());

  it('answers BYPASS and reads PostgreSQL every time', async () => {
    for (let i = 0; i < 2; i++) {
      const res = await t.app.http.inject({ method: 'GET', url: '/accounts/1', headers: t.admin });
      expect([res.headers['x-cache'], res.json().balance]).toEqual(['BYPASS', 1500]);
    }
    expect((await t.app.http.inject({ method: 'GET', url: '/cache/stats', headers: t.admin })).json()).toEqual({ cache: null });
  });
});
