import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestApp, TEST_LIMITS, type TestApp } from '../support/app.ts';
import { ENGINES } from '../support/engines.ts';

/** What one customer may hold: accounts, files and bytes of files; and the paged account list. */
for (const engine of ENGINES) {
  describe(`quotas on ${engine}`, () => {
    let t: TestApp;
    beforeAll(async () => {
      t = await startTestApp(engine, `quotas-${engine}`, {
        limits: { ...TEST_LIMITS, maxAccountsPerCustomer: 5, maxFilesPerCustomer: 3, maxFileBytesPerCustomer: 100 },
      });
    });
    afterAll(async () => t?.close());

    const openAccount = (customer: number) =>
      t.app.http.inject({
        method: 'POST',
        url: `/customers/${customer}/accounts`,
        headers: t.admin,
        payload: { account_type: 'savings' },
      });
    const upload = (customer: number, body: Buffer | Readable, name = 'note.txt') =>
      t.app.http.inject({
        method: 'POST',
        url: `/customers/${customer}/files?filename=${name}`,
        headers: {
          ...t.admin,
          'content-type': 'application/octet-stream',
          ...(Buffer.isBuffer(body) ? {} : { 'transfer-encoding': 'chunked' }),
        },
        payload: body,
      });
    const count = async (table: 'accounts' | 'files', customer: number) =>
      Number(
        (
          await t.app.sql.db
            .selectFrom(table)
            .select((eb) => eb.fn.countAll<number>().as('n'))
            .where('customer_id', '=', customer)
            .executeTakeFirstOrThrow()
        ).n,
      );

    it('opens accounts up to DATABANK_MAX_ACCOUNTS_PER_CUSTOMER, even when asked all at once', async () => {
      // Customer 1 holds one account; 10 concurrent opens may add 4.
      const answers = await Promise.all(Array.from({ length: 10 }, () => openAccount(1)));
      expect(answers.filter((r) => r.statusCode === 201)).toHaveLength(4);
      const refused = answers.filter((r) => r.statusCode === 409);
      expect(refused).toHaveLength(6);
      for (const r of refused) {
        expect(r.json()).toEqual({
          statusCode: 409,
          code: 'DATABANK_ERR_QUOTA_EXCEEDED',
          message: 'accounts: customer 1 already holds 5 accounts (DATABANK_MAX_ACCOUNTS_PER_CUSTOMER)',
        });
      }
      expect(await count('accounts', 1)).toBe(5);
    });

    it('pages GET /customers/:id/accounts with limit, cursor and next_cursor', async () => {
      const get = (query: string) => t.app.http.inject({ method: 'GET', url: `/customers/1/accounts${query}`, headers: t.admin });
      const all = (await get('')).json();
      expect(all.result).toHaveLength(5);
      expect(all.next_cursor).toBeUndefined();
      const ids = all.result.map((a: { account_id: number }) => a.account_id);
      const first = (await get('?limit=2')).json();
      expect(first.result.map((a: { account_id: number }) => a.account_id)).toEqual(ids.slice(0, 2));
      const second = (await get(`?limit=2&cursor=${first.next_cursor}`)).json();
      expect(second.result.map((a: { account_id: number }) => a.account_id)).toEqual(ids.slice(2, 4));
      const third = (await get(`?limit=2&cursor=${second.next_cursor}`)).json();
      expect(third.result.map((a: { account_id: number }) => a.account_id)).toEqual(ids.slice(4));
      expect(third.next_cursor).toBeUndefined();
      const bad = await get('?limit=0');
      expect(bad.statusCode).toBe(400);
      expect((await get('?cursor=bm9wZQ')).json().code).toBe('DATABANK_ERR_INVALID_CURSOR');
    });

    it('refuses a file past DATABANK_MAX_FILE_BYTES_PER_CUSTOMER, declared or streamed, and stores nothing', async () => {
      expect((await upload(2, Buffer.from('a'.repeat(60)))).statusCode).toBe(201);
      const declared = await upload(2, Buffer.from('b'.repeat(41)));
      expect(declared.statusCode).toBe(409);
      expect(declared.json()).toEqual({
        statusCode: 409,
        code: 'DATABANK_ERR_QUOTA_EXCEEDED',
        message: 'file bytes: customer 2 would hold more than 100 bytes of files (DATABANK_MAX_FILE_BYTES_PER_CUSTOMER)',
      });
      // Without a Content-Length the stream is cut where it passes the room left.
      const streamed = await upload(2, Readable.from([Buffer.from('c'.repeat(30)), Buffer.from('c'.repeat(30))]));
      expect(streamed.statusCode).toBe(409);
      expect(streamed.json().code).toBe('DATABANK_ERR_QUOTA_EXCEEDED');
      expect(await count('files', 2)).toBe(1);
      expect((await upload(2, Buffer.from('d'.repeat(40)))).statusCode).toBe(201);
    });

    it('refuses a file past DATABANK_MAX_FILES_PER_CUSTOMER, even when sent all at once', async () => {
      const answers = await Promise.all(Array.from({ length: 6 }, () => upload(3, Buffer.from('tiny note\n'))));
      expect(answers.filter((r) => r.statusCode === 201)).toHaveLength(3);
      const refused = answers.filter((r) => r.statusCode === 409);
      expect(refused).toHaveLength(3);
      for (const r of refused) {
        expect(r.json().message).toBe('files: customer 3 already holds 3 files (DATABANK_MAX_FILES_PER_CUSTOMER)');
      }
      expect(await count('files', 3)).toBe(3);
      // The refused uploads left no object behind.
      const sweep = await t.app.deps.files.sweep({ dryRun: true, graceMs: 0 });
      expect(sweep.orphanObjects).toEqual([]);
    });
  });
}
