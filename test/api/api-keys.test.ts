import { sql } from 'kysely';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { openSqlStore, type SqlStore } from '../../src/stores/sql/index.ts';
import { createMigrator, unwrap } from '../../src/stores/sql/migrator.ts';
import { startTestApp, type TestApp } from '../support/app.ts';
import { createTestDatabase, ENGINES, type TestDatabase } from '../support/engines.ts';

/**
 * The admin API for API keys (src/http/routes/api-keys.ts): make one (shown once), list them
 * without secrets, revoke one, rotate one; and the rules a key lives by: expiry, revocation on its
 * very next request, the last use written in batches rather than per request.
 */

type Headers = Record<string, string>;
type Method = 'GET' | 'POST' | 'DELETE';

const KEY = /^dbk_[0-9a-f]{16}_[A-Za-z0-9_-]{43}$/;
const LISTED_FIELDS = ['created_at', 'customer_id', 'expires_at', 'id', 'last_used_at', 'prefix', 'revoked_at', 'role'];
const GHOST = 999_999;

interface Created {
  key: string;
  id: number;
  role: 'admin' | 'customer';
  customer_id: number | null;
  expires_at: string | null;
}

interface Listed {
  id: number;
  prefix: string;
  role: string;
  customer_id: number | null;
  created_at: string;
  expires_at: string | null;
  last_used_at: string | null;
  revoked_at: string | null;
}

const bearer = (key: string): Headers => ({ authorization: `Bearer ${key}` });

for (const engine of ENGINES) {
  describe(`API keys on ${engine}`, () => {
    let t: TestApp;
    beforeAll(async () => {
      t = await startTestApp(engine, 'api-keys');
    });
    afterAll(async () => {
      await t?.close();
    });
    afterEach(() => {
      vi.useRealTimers();
    });

    const call = (method: Method, url: string, headers: Headers, body?: object) =>
      t.app.http.inject({ method, url, headers, ...(body === undefined ? {} : { payload: body }) });
    const make = async (body: object): Promise<Created> => {
      const res = await call('POST', '/api-keys', t.admin, body);
      expect(res.statusCode, res.body).toBe(201);
      return res.json<Created>();
    };
    const row = (id: number) =>
      t.app.sql.db.selectFrom('api_keys').select(['revoked_at', 'expires_at', 'last_used_at']).where('id', '=', id).executeTakeFirstOrThrow();
    const countKeys = async () => (await t.app.sql.db.selectFrom('api_keys').select('id').execute()).length;
    const expectCode = (res: { statusCode: number; json: () => unknown }, status: number, code: string) =>
      expect({ status: res.statusCode, code: (res.json() as { code: string }).code }).toEqual({ status, code });

    it('makes a key, shown once, that works at once with its role and customer', async () => {
      const customer = await make({ role: 'customer', customer_id: 2 });
      expect(customer).toEqual({ key: expect.stringMatching(KEY), id: expect.any(Number), role: 'customer', customer_id: 2, expires_at: null });
      expect((await call('GET', '/customers/2', bearer(customer.key))).statusCode).toBe(200);
      expect((await call('GET', '/customers/1', bearer(customer.key))).statusCode).toBe(404);
      // An expiry in any zone comes back in UTC; null is "never", like no expiry at all.
      const admin = await make({ role: 'admin', customer_id: null, expires_at: '2999-12-31T23:59:59+02:00' });
      expect(admin).toMatchObject({ role: 'admin', customer_id: null, expires_at: '2999-12-31T21:59:59.000Z' });
      expect((await call('GET', '/api-keys', bearer(admin.key))).statusCode).toBe(200);
      expect(await make({ role: 'admin', expires_at: null })).toMatchObject({ expires_at: null });
      // Only its hash is stored.
      const stored = await t.app.sql.db.selectFrom('api_keys').select('secret_hash').where('id', '=', customer.id).executeTakeFirstOrThrow();
      expect(stored.secret_hash).toMatch(/^[0-9a-f]{64}$/);
      expect(customer.key).not.toContain(stored.secret_hash);
    });

    it('refuses an expiry in the past or not an ISO timestamp, and role/customer mismatches; makes nothing', async () => {
      const before = await countKeys();
      const refusals: Array<[object, number, string]> = [
        [{ role: 'admin', expires_at: '2000-01-01T00:00:00Z' }, 400, 'DATABANK_ERR_VALIDATION'],
        [{ role: 'admin', expires_at: new Date(Date.now() - 1000).toISOString() }, 400, 'DATABANK_ERR_VALIDATION'],
        [{ role: 'admin', expires_at: '2999-01-01' }, 400, 'DATABANK_ERR_VALIDATION'],
        [{ role: 'admin', expires_at: '2999-01-01T00:00:00' }, 400, 'DATABANK_ERR_VALIDATION'],
        [{ role: 'admin', expires_at: '2999-02-30T00:00:00Z' }, 400, 'DATABANK_ERR_VALIDATION'],
        [{ role: 'admin', expires_at: '2999-01-01T24:00:00Z' }, 400, 'DATABANK_ERR_VALIDATION'],
        [{ role: 'admin', expires_at: 'tomorrow' }, 400, 'DATABANK_ERR_VALIDATION'],
        [{ role: 'admin', expires_at: 32503680000000 }, 400, 'DATABANK_ERR_VALIDATION'],
        [{ role: 'admin', customer_id: 1 }, 400, 'DATABANK_ERR_VALIDATION'],
        [{ role: 'customer' }, 400, 'DATABANK_ERR_VALIDATION'],
        [{ role: 'customer', customer_id: '1' }, 400, 'DATABANK_ERR_VALIDATION'],
        [{ role: 'root' }, 400, 'DATABANK_ERR_VALIDATION'],
        [{ role: 'admin', scopes: [] }, 400, 'DATABANK_ERR_VALIDATION'],
        [{ role: 'customer', customer_id: GHOST }, 404, 'DATABANK_ERR_NOT_FOUND'],
      ];
      for (const [body, status, code] of refusals) {
        const res = await call('POST', '/api-keys', t.admin, body);
        expect({ body, status: res.statusCode, code: res.json<{ code: string }>().code }).toEqual({ body, status, code });
      }
      expect(await countKeys()).toBe(before);
    });

    it('lists every key without secrets, paged by id, with its last use (written in batches, not per request)', async () => {
      const used = await make({ role: 'customer', customer_id: 1 });
      const unused = await make({ role: 'customer', customer_id: 3 });
      expect((await call('GET', '/customers/1', bearer(used.key))).statusCode).toBe(200);
      const listed: Listed[] = [];
      let cursor: string | undefined;
      let pages = 0;
      do {
        const res = await call('GET', `/api-keys?limit=2${cursor ? `&cursor=${cursor}` : ''}`, t.admin);
        expect(res.statusCode).toBe(200);
        const page = res.json<{ result: Listed[]; next_cursor?: string }>();
        expect(page.result.length).toBeLessThanOrEqual(2);
        listed.push(...page.result);
        cursor = page.next_cursor;
        pages++;
      } while (cursor);
      const ids = (await t.app.sql.db.selectFrom('api_keys').select('id').orderBy('id').execute()).map((r) => r.id);
      expect(listed.map((k) => k.id)).toEqual(ids);
      expect(pages).toBeGreaterThan(1);
      for (const k of listed) expect(Object.keys(k).sort()).toEqual(LISTED_FIELDS);
      const usedRow = listed.find((k) => k.id === used.id) as Listed;
      expect(used.key).toContain(usedRow.prefix);
      expect(usedRow).toMatchObject({ role: 'customer', customer_id: 1, expires_at: null, revoked_at: null, last_used_at: expect.any(String) });
      expect(listed.find((k) => k.id === unused.id)?.last_used_at).toBeNull();
      // The use is in memory until the next batch: the request wrote nothing.
      expect((await row(used.id)).last_used_at).toBeNull();
      await t.app.deps.apiKeys.flushLastUsed();
      expect((await row(used.id)).last_used_at).toEqual(new Date(usedRow.last_used_at as string));
      expect((await row(unused.id)).last_used_at).toBeNull();
      expectCode(await call('GET', '/api-keys?cursor=bm9wZQ', t.admin), 400, 'DATABANK_ERR_INVALID_CURSOR');
      expectCode(await call('GET', '/api-keys?limit=0', t.admin), 400, 'DATABANK_ERR_VALIDATION');
    });

    it('revokes with 204: the key is refused on its very next request; again is 204, an unknown id 404', async () => {
      const doomed = await make({ role: 'customer', customer_id: 2 });
      // Used first, so that the cache holds it.
      for (let i = 0; i < 2; i++) expect((await call('GET', '/customers/2', bearer(doomed.key))).statusCode).toBe(200);
      const revoked = await call('DELETE', `/api-keys/${doomed.id}`, t.admin);
      expect([revoked.statusCode, revoked.body]).toEqual([204, '']);
      const refused = await call('GET', '/customers/2', bearer(doomed.key));
      expect([refused.statusCode, refused.json()]).toEqual([
        401,
        { statusCode: 401, code: 'DATABANK_ERR_UNAUTHORIZED', message: 'A valid API key is required' },
      ]);
      expect((await row(doomed.id)).revoked_at).toBeInstanceOf(Date);
      const first = (await row(doomed.id)).revoked_at;
      expect((await call('DELETE', `/api-keys/${doomed.id}`, t.admin)).statusCode).toBe(204);
      expect((await row(doomed.id)).revoked_at).toEqual(first);
      expectCode(await call('DELETE', `/api-keys/${GHOST}`, t.admin), 404, 'DATABANK_ERR_NOT_FOUND');
      const listed = (await call('GET', '/api-keys', t.admin)).json<{ result: Listed[] }>().result;
      expect(listed.find((k) => k.id === doomed.id)?.revoked_at).toBe((first as Date).toISOString());
    });

    it('rotates: a new key with the same role, customer and expiry, the old one refused at once', async () => {
      const old = await make({ role: 'customer', customer_id: 3, expires_at: '2999-06-01T12:00:00Z' });
      expect((await call('GET', '/customers/3', bearer(old.key))).statusCode).toBe(200);
      const res = await call('POST', `/api-keys/${old.id}/rotate`, t.admin);
      expect(res.statusCode).toBe(201);
      const fresh = res.json<Created>();
      expect(fresh).toEqual({
        key: expect.stringMatching(KEY),
        id: expect.any(Number),
        role: 'customer',
        customer_id: 3,
        expires_at: '2999-06-01T12:00:00.000Z',
      });
      expect(fresh.id).not.toBe(old.id);
      expect((await call('GET', '/customers/3', bearer(old.key))).statusCode).toBe(401);
      expect((await call('GET', '/customers/3', bearer(fresh.key))).statusCode).toBe(200);
      expect((await row(old.id)).revoked_at).toBeInstanceOf(Date);
      expect((await row(fresh.id)).expires_at).toEqual(new Date('2999-06-01T12:00:00Z'));
      // A revoked key, or one that does not exist, cannot be rotated; nothing is made.
      const before = await countKeys();
      expectCode(await call('POST', `/api-keys/${old.id}/rotate`, t.admin), 404, 'DATABANK_ERR_NOT_FOUND');
      expectCode(await call('POST', `/api-keys/${GHOST}/rotate`, t.admin), 404, 'DATABANK_ERR_NOT_FOUND');
      expect(await countKeys()).toBe(before);
    });

    it('an expired key is refused on its next request, though the cache still holds it', async () => {
      const inAnHour = new Date(Date.now() + 3_600_000).toISOString();
      const brief = await make({ role: 'customer', customer_id: 1, expires_at: inAnHour });
      expect((await call('GET', '/customers/1', bearer(brief.key))).statusCode).toBe(200);
      // Only the clock moves: the cache entry made by the request above is still there.
      vi.useFakeTimers({ toFake: ['Date'] });
      vi.setSystemTime(Date.parse(inAnHour) + 1);
      expectCode(await call('GET', '/customers/1', bearer(brief.key)), 401, 'DATABANK_ERR_UNAUTHORIZED');
      expectCode(await call('POST', `/api-keys/${brief.id}/rotate`, t.admin), 404, 'DATABANK_ERR_NOT_FOUND');
      vi.useRealTimers();
      expect((await call('GET', '/customers/1', bearer(brief.key))).statusCode).toBe(200);
    });
  });
}

for (const engine of ENGINES) {
  describe(`migration 0006_api_key_lifecycle on ${engine}`, () => {
    let db: TestDatabase;
    let store: SqlStore;
    beforeAll(async () => {
      db = await createTestDatabase(engine, `api-keys-0006-${engine}`);
      store = await openSqlStore(db.sql);
    });
    afterAll(async () => {
      await store?.close();
      await db?.drop();
    });

    const columns = async () =>
      (
        await sql<{ column_name: string; is_nullable: string; data_type: string }>`
          select column_name, is_nullable, data_type from information_schema.columns
          where table_name = 'api_keys' and column_name in ('expires_at', 'last_used_at') order by column_name`.execute(store.db)
      ).rows;

    it('up adds expires_at and last_used_at (nullable timestamptz), down drops them, up again adds them; keys survive', async () => {
      const migrator = createMigrator(store.db);
      unwrap(await migrator.migrateTo('0005_currency_ledgers'));
      expect(await columns()).toEqual([]);
      await sql`insert into api_keys (prefix, secret_hash, role) values ('0000000000000000', ${'0'.repeat(64)}, 'admin')`.execute(store.db);
      unwrap(await migrator.migrateToLatest());
      const added = [
        { column_name: 'expires_at', is_nullable: 'YES', data_type: 'timestamp with time zone' },
        { column_name: 'last_used_at', is_nullable: 'YES', data_type: 'timestamp with time zone' },
      ];
      expect(await columns()).toEqual(added);
      const key = () => store.db.selectFrom('api_keys').select(['prefix', 'expires_at', 'last_used_at']).executeTakeFirstOrThrow();
      expect(await key()).toEqual({ prefix: '0000000000000000', expires_at: null, last_used_at: null });
      unwrap(await migrator.migrateTo('0005_currency_ledgers'));
      expect(await columns()).toEqual([]);
      unwrap(await migrator.migrateToLatest());
      expect(await columns()).toEqual(added);
      expect(await key()).toEqual({ prefix: '0000000000000000', expires_at: null, last_used_at: null });
    });
  });
}
