import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Principal } from '../../src/domain/types.ts';
import { customerKey, startTestApp, type TestApp } from '../support/app.ts';
import { ENGINES } from '../support/engines.ts';

const ADMIN: Principal = { role: 'admin', keyId: 0 };
/** Not a whole number of minor units from 1: what a caller other than the HTTP layer might send. */
const BAD_AMOUNTS = [0, -5, 1.5, Number.NaN, 1e14 + 1];
const refused = { code: 'DATABANK_ERR_VALIDATION', statusCode: 400 };

for (const engine of ENGINES) {
  describe(`domain rules in the services on ${engine}`, () => {
    let t: TestApp;
    beforeAll(async () => {
      t = await startTestApp(engine, `domain-rules-${engine}`);
    });
    afterAll(async () => t?.close());

    /** Every balance and the number of ledger entries: a refused call changes none of them. */
    const snapshot = async () => {
      const db = t.app.sql.db;
      const balances = await db.selectFrom('accounts').select(['account_id', 'balance']).orderBy('account_id').execute();
      const entries = await sql<{ n: string }>`select count(*) as n from ledger_entries`.execute(db);
      return { balances, entries: Number(entries.rows[0]?.n) };
    };

    it('movements, transfers and fees refuse 0, negative, fractional and too large amounts', async () => {
      const { movements, transfers, fees } = t.app.deps;
      const before = await snapshot();
      for (const amount of BAD_AMOUNTS) {
        await expect(movements.deposit(ADMIN, 1, amount, null), `deposit ${amount}`).rejects.toMatchObject(refused);
        await expect(movements.withdraw(ADMIN, 1, amount, null), `withdraw ${amount}`).rejects.toMatchObject(refused);
        await expect(
          transfers.transfer(ADMIN, { from_account_id: 1, to_account_id: 2, amount }, null),
          `transfer ${amount}`,
        ).rejects.toMatchObject(refused);
        await expect(fees.charge(ADMIN, amount, `bad-${amount}`, null), `fee ${amount}`).rejects.toMatchObject(refused);
      }
      expect(await snapshot()).toEqual(before);
    });

    it('the same services still move a valid amount', async () => {
      const moved = await t.app.deps.transfers.transfer(ADMIN, { from_account_id: 1, to_account_id: 2, amount: 1 }, null);
      expect(moved).toMatchObject({ from_account_id: 1, to_account_id: 2, amount: 1 });
    });

    it('customers.create refuses a date of birth that is not a date, or out of range', async () => {
      const create = (date_of_birth: string) => t.app.deps.customers.create(ADMIN, { name: 'Rule Check', date_of_birth });
      await expect(create('2023-02-30')).rejects.toMatchObject({ ...refused, message: 'date_of_birth is not a calendar date' });
      for (const date of ['1899-12-31', '9999-01-01']) {
        await expect(create(date), date).rejects.toMatchObject({
          ...refused,
          message: 'date_of_birth must be between 1900-01-01 and today',
        });
      }
      await expect(
        t.app.deps.customers.list(ADMIN, { bornAfter: '1950-02-30', limit: 10 }),
      ).rejects.toMatchObject({ ...refused, message: 'born_after is not a calendar date' });
    });

    it('the API answers with the same status, code and message as before', async () => {
      const cases = [
        { url: '/customers?born_after=1950-02-30', message: 'born_after is not a calendar date' },
        { url: '/customers', body: { name: 'A', date_of_birth: '2023-02-29' }, message: 'date_of_birth is not a calendar date' },
        {
          url: '/customers',
          body: { name: 'A', date_of_birth: '1815-12-10' },
          message: 'date_of_birth must be between 1900-01-01 and today',
        },
      ];
      // A customer key gets the 400 too: the date is checked before the role, as it was in the route.
      for (const headers of [t.admin, await customerKey(t, 1)]) {
        for (const c of cases) {
          const res = await t.app.http.inject({
            method: c.body ? 'POST' : 'GET',
            url: c.url,
            headers,
            ...(c.body ? { payload: c.body } : {}),
          });
          expect(res.statusCode, c.url).toBe(400);
          expect(res.json(), c.url).toMatchObject({ statusCode: 400, code: 'DATABANK_ERR_VALIDATION', message: c.message });
        }
      }
    });
  });
}
