import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { customerKey, startTestApp, type TestApp } from '../support/app.ts';
import { ENGINES } from '../support/engines.ts';

for (const engine of ENGINES) {
  describe(`customers API on ${engine}`, () => {
    let t: TestApp;
    beforeAll(async () => {
      t = await startTestApp(engine, `customers-api-${engine}`);
    });
    afterAll(async () => t?.close());

    const get = (url: string, headers = t.admin) => t.app.http.inject({ method: 'GET', url, headers });

    it("answers the chapter's query exactly", async () => {
      const res = await get('/customers?born_after=1950-12-31');
      expect(res.statusCode).toBe(200);
      expect(res.body).toBe(
        '{"result":[{"id":2,"name":"Karen Johnson","date_of_birth":"1989-11-18","balance":4853,"balances":{"USD":4853}},' +
          '{"id":3,"name":"Wade Feinstein","date_of_birth":"1965-02-25","balance":2150,"balances":{"USD":2150}}]}',
      );
    });

    it('pages with limit and cursor, in id order', async () => {
      const first = await get('/customers?limit=2');
      expect(first.json().result.map((c: { id: number }) => c.id)).toEqual([1, 2]);
      const cursor = first.json().next_cursor as string;
      expect(typeof cursor).toBe('string');
      const second = await get(`/customers?limit=2&cursor=${cursor}`);
      expect(second.json()).toEqual({
        result: [{ id: 3, name: 'Wade Feinstein', date_of_birth: '1965-02-25', balance: 2150, balances: { USD: 2150 } }],
      });
      const bad = await get('/customers?cursor=bm90LWEtY3Vyc29y');
      expect(bad.statusCode).toBe(400);
      expect(bad.json().code).toBe('DATABANK_ERR_INVALID_CURSOR');
    });

    it('rejects impossible dates and unknown query parameters', async () => {
      for (const url of ['/customers?born_after=1950-02-30', '/customers?born_after=yesterday', '/customers?sort=name']) {
        const res = await get(url);
        expect(res.statusCode, url).toBe(400);
        expect(res.json().code, url).toBe('DATABANK_ERR_VALIDATION');
      }
    });

    it('creates, reads and renames a customer; balance is the sum of its accounts', async () => {
      const created = await t.app.http.inject({
        method: 'POST',
        url: '/customers',
        headers: t.admin,
        payload: { name: 'Ada Lovelace', date_of_birth: '1815-12-10' },
      });
      expect(created.statusCode).toBe(400);
      expect(created.json().code).toBe('DATABANK_ERR_VALIDATION');

      const ok = await t.app.http.inject({
        method: 'POST',
        url: '/customers',
        headers: t.admin,
        payload: { name: 'Ada Lovelace', date_of_birth: '1990-12-10' },
      });
      expect(ok.statusCode).toBe(201);
      const id = ok.json().id as number;
      expect(ok.json()).toEqual({ id, name: 'Ada Lovelace', date_of_birth: '1990-12-10', balance: 0, balances: {} });
      expect(id).toBeGreaterThan(3);

      for (const account_type of ['checking', 'savings']) {
        const acc = await t.app.http.inject({
          method: 'POST',
          url: `/customers/${id}/accounts`,
          headers: t.admin,
          payload: { account_type },
        });
        expect(acc.statusCode).toBe(201);
        expect(acc.json()).toMatchObject({ account_type, balance: 0, customer_id: id, currency: 'USD' });
        const dep = await t.app.http.inject({
          method: 'POST',
          url: `/accounts/${acc.json().account_id}/deposits`,
          headers: t.admin,
          payload: { amount: 250 },
        });
        expect(dep.statusCode).toBe(201);
      }
      expect((await get(`/customers/${id}`)).json()).toEqual({
        id,
        name: 'Ada Lovelace',
        date_of_birth: '1990-12-10',
        balance: 500,
        balances: { USD: 500 },
      });
      const renamed = await t.app.http.inject({
        method: 'PATCH',
        url: `/customers/${id}`,
        headers: t.admin,
        payload: { name: 'Ada King' },
      });
      expect(renamed.statusCode).toBe(200);
      expect(renamed.json().name).toBe('Ada King');
      const accounts = await get(`/customers/${id}/accounts`);
      expect(accounts.json().result.map((a: { balance: number }) => a.balance)).toEqual([250, 250]);
    });

    it('refuses to patch balance, id or unknown fields, and changes nothing', async () => {
      for (const payload of [{ balance: 1_000_000 }, { id: 9 }, { name: 'X', balance: 1 }, { date_of_birth: '1990-01-01' }]) {
        const res = await t.app.http.inject({ method: 'PATCH', url: '/customers/1', headers: t.admin, payload });
        expect(res.statusCode, JSON.stringify(payload)).toBe(400);
        expect(res.json().code).toBe('DATABANK_ERR_VALIDATION');
      }
      expect((await get('/customers/1')).json()).toEqual({
        id: 1,
        name: 'Brian Kim',
        date_of_birth: '1948-09-23',
        balance: 1500,
        balances: { USD: 1500 },
      });
    });

    it('validates names: empty, blank, too long, control characters', async () => {
      for (const name of ['', '   ', 'x'.repeat(129), 'a\u0000b', 'line\nbreak']) {
        const res = await t.app.http.inject({
          method: 'POST',
          url: '/customers',
          headers: t.admin,
          payload: { name, date_of_birth: '1990-01-01' },
        });
        expect(res.statusCode, JSON.stringify(name)).toBe(400);
        expect(res.json().code).toBe('DATABANK_ERR_VALIDATION');
      }
      const max = await t.app.http.inject({
        method: 'POST',
        url: '/customers',
        headers: t.admin,
        payload: { name: 'ü'.repeat(128), date_of_birth: '1990-01-01' },
      });
      expect(max.statusCode).toBe(201);
    });

    it('a customer key sees only its own customer', async () => {
      const key = await customerKey(t, 2);
      expect((await get('/customers', key)).json().result.map((c: { id: number }) => c.id)).toEqual([2]);
      expect((await get('/customers/2', key)).statusCode).toBe(200);
      const other = await get('/customers/3', key);
      expect(other.statusCode).toBe(404);
      expect(other.json().code).toBe('DATABANK_ERR_NOT_FOUND');
    });

    it('answers 404 with a code for unknown customers and routes', async () => {
      const missing = await get('/customers/999999');
      expect(missing.statusCode).toBe(404);
      expect(missing.json().code).toBe('DATABANK_ERR_NOT_FOUND');
      const route = await get('/nope');
      expect(route.statusCode).toBe(404);
      expect(route.json().code).toBe('DATABANK_ERR_ROUTE_NOT_FOUND');
    });
  });
}
