import type { InjectOptions } from 'fastify';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BALANCE_CEILING } from '../../src/config.ts';
import { FeesService } from '../../src/services/fees.ts';
import { startTestApp, TEST_LIMITS, type TestApp } from '../support/app.ts';
import { ENGINES } from '../support/engines.ts';
import { checkLedger } from '../support/invariants.ts';

/** Small helpers over one app: open an account, deposit, read. */
function client(t: () => TestApp) {
  const inject = (opts: InjectOptions) => t().app.http.inject(opts);
  return {
    async customer(name: string): Promise<number> {
      const res = await inject({ method: 'POST', url: '/customers', headers: t().admin, payload: { name, date_of_birth: '1990-01-01' } });
      expect(res.statusCode).toBe(201);
      return res.json().id;
    },
    async account(customerId: number, currency: string): Promise<number> {
      const res = await inject({
        method: 'POST',
        url: `/customers/${customerId}/accounts`,
        headers: t().admin,
        payload: { account_type: 'checking', currency },
      });
      expect(res.statusCode, res.body).toBe(201);
      return res.json().account_id;
    },
    deposit(accountId: number, amount: number) {
      return inject({ method: 'POST', url: `/accounts/${accountId}/deposits`, headers: t().admin, payload: { amount } });
    },
    transfer(from: number, to: number, amount: number) {
      return inject({
        method: 'POST',
        url: '/transfers',
        headers: t().admin,
        payload: { from_account_id: from, to_account_id: to, amount },
      });
    },
    fee(payload: object) {
      return inject({ method: 'POST', url: '/fees', headers: t().admin, payload });
    },
    get(url: string) {
      return inject({ method: 'GET', url, headers: t().admin });
    },
  };
}

for (const engine of ENGINES) {
  describe(`one ledger per currency on ${engine}`, () => {
    let t: TestApp;
    const c = client(() => t);
    let usd: number;
    let eur: number;
    let gbp: number;
    let owner: number;
    beforeAll(async () => {
      t = await startTestApp(engine, `currencies-${engine}`);
      owner = await c.customer('Multi Currency');
      usd = await c.account(owner, 'USD');
      eur = await c.account(owner, 'EUR');
      gbp = await c.account(owner, 'GBP');
      for (const [id, amount] of [
        [usd, 1000],
        [eur, 2000],
        [gbp, 3000],
      ] as const) {
        expect((await c.deposit(id, amount)).statusCode).toBe(201);
      }
    });
    afterAll(async () => t?.close());

    it('shows balances per currency, and balance as the USD sum only', async () => {
      const res = await c.get(`/customers/${owner}`);
      expect(res.json()).toEqual({
        id: owner,
        name: 'Multi Currency',
        date_of_birth: '1990-01-01',
        balance: 1000,
        balances: { USD: 1000, EUR: 2000, GBP: 3000 },
      });
    });

    it('books each deposit against its own currency’s cash account', async () => {
      const rows = await sql<{ system_account: string; currency: string; total: number }>`
        select system_account, currency, sum(amount)::bigint as total from ledger_entries
        where system_account is not null group by system_account, currency order by system_account`.execute(t.app.sql.db);
      // The chapter's demo data: 1500 + 4853 + 2150 deposited in USD at bootstrap.
      expect(rows.rows).toEqual([
        { system_account: 'cash:EUR', currency: 'EUR', total: -2000 },
        { system_account: 'cash:GBP', currency: 'GBP', total: -3000 },
        { system_account: 'cash:USD', currency: 'USD', total: -(1500 + 4853 + 2150 + 1000) },
      ]);
    });

    it('charges a EUR fee to EUR accounts only, into fee_income:EUR', async () => {
      const res = await c.fee({ amount: 5, reference: 'eur-fee-1', currency: 'EUR' });
      expect(res.statusCode).toBe(200);
      const run = res.json();
      expect(run).toEqual({
        reference: 'eur-fee-1',
        amount: 5,
        currency: 'EUR',
        transaction_id: run.transaction_id,
        transaction_ids: [run.transaction_id],
        charged: [eur],
        insufficient_funds: [],
        already_charged: [],
      });
      expect((await c.get(`/customers/${owner}`)).json().balances).toEqual({ USD: 1000, EUR: 1995, GBP: 3000 });
      const income = await sql<{ system_account: string; amount: number; currency: string }>`
        select system_account, amount, currency from ledger_entries
        where transaction_id = ${run.transaction_id} and system_account is not null`.execute(t.app.sql.db);
      expect(income.rows).toEqual([{ system_account: 'fee_income:EUR', amount: 5, currency: 'EUR' }]);
      // A fee without a currency is a USD fee: the chapter's three customers and the USD account.
      const plain = await c.fee({ amount: 1, reference: 'usd-fee-1' });
      expect(plain.json()).toMatchObject({ currency: 'USD', charged: [1, 2, 3, usd] });
      expect((await c.get(`/customers/${owner}`)).json().balances).toEqual({ USD: 999, EUR: 1995, GBP: 3000 });
    });

    it('refuses a currency outside the list', async () => {
      const res = await c.fee({ amount: 1, reference: 'x', currency: 'JPY' });
      expect(res.statusCode).toBe(400);
      expect(res.json().code).toBe('DATABANK_ERR_VALIDATION');
    });

    it('the database refuses entries that do not balance per currency, or are not in their account’s currency', async () => {
      const tx = (await sql<{ id: number }>`insert into ledger_transactions (kind) values ('deposit') returning id`.execute(
        t.app.sql.db,
      )).rows[0]?.id;
      // Sums to zero across currencies, not in each: refused.
      await expect(
        sql`insert into ledger_entries (transaction_id, account_id, system_account, currency, amount)
          values (${tx}::bigint, ${usd}::bigint, null, 'USD', 5), (${tx}::bigint, null, 'cash:EUR', 'EUR', -5)`.execute(
          t.app.sql.db,
        ),
      ).rejects.toMatchObject({ code: '23514' });
      // An entry in EUR on a USD account: refused by the foreign key.
      await expect(
        sql`insert into ledger_entries (transaction_id, account_id, system_account, currency, amount)
          values (${tx}::bigint, ${usd}::bigint, null, 'EUR', 5), (${tx}::bigint, null, 'cash:EUR', 'EUR', -5)`.execute(
          t.app.sql.db,
        ),
      ).rejects.toMatchObject({ code: '23503' });
      // A system account named for one currency used in another: refused too.
      await expect(
        sql`insert into ledger_entries (transaction_id, account_id, system_account, currency, amount)
          values (${tx}::bigint, ${eur}::bigint, null, 'EUR', 5), (${tx}::bigint, null, 'cash:USD', 'EUR', -5)`.execute(
          t.app.sql.db,
        ),
      ).rejects.toMatchObject({ code: '23503' });
    });

    it('keeps every currency’s ledger at zero and every entry in its account’s currency', async () => {
      const check = await checkLedger(t.app.sql.db);
      expect(check.unbalanced).toEqual([]);
      expect(check.wrongCurrency).toEqual([]);
      expect(check.mismatched).toEqual([]);
      const sums = await sql<{ currency: string; total: number }>`
        select currency, sum(amount)::bigint as total from ledger_entries group by currency order by currency`.execute(
        t.app.sql.db,
      );
      expect(sums.rows).toEqual([
        { currency: 'EUR', total: 0 },
        { currency: 'GBP', total: 0 },
        { currency: 'USD', total: 0 },
      ]);
    });

    it('runs a fee in batches: one ledger transaction per batch, each account charged once', async () => {
      const fees = new FeesService(
        { reader: t.app.sql.db, writer: t.app.sql.db },
        t.app.deps.idempotency,
        t.app.deps.cache,
        undefined,
        2,
      );
      const principal = await t.app.deps.apiKeys.authenticate(t.adminKey);
      const run = await fees.charge(principal, 1, 'batched-1', null, 'USD');
      // USD accounts 1, 2, 3 and `usd`: batches [1, 2], [3, usd], [] (the last short batch ends the run).
      expect(run.charged).toEqual([1, 2, 3, usd]);
      expect(run.transaction_ids).toHaveLength(2);
      expect(run.transaction_id).toBe(run.transaction_ids[0]);
      const again = await fees.charge(principal, 1, 'batched-1', null, 'USD');
      expect(again).toMatchObject({ charged: [], already_charged: [1, 2, 3, usd], transaction_id: null, transaction_ids: [] });
      const perTx = await sql<{ transaction_id: number; n: number }>`
        select transaction_id, count(*)::int as n from ledger_entries
        where transaction_id in (${sql.join(run.transaction_ids)}) and account_id is not null
        group by transaction_id order by transaction_id`.execute(t.app.sql.db);
      expect(perTx.rows.map((r) => r.n)).toEqual([2, 2]);
    });
  });

  describe(`balance limits on ${engine}`, () => {
    let t: TestApp;
    const c = client(() => t);
    beforeAll(async () => {
      t = await startTestApp(engine, `balance-limits-${engine}`);
    });
    afterAll(async () => t?.close());

    it('with 20 accounts at 10^14 each, every number the API returns stays exact and nothing answers 500', async () => {
      expect(t.app.config.limits).toMatchObject({ maxBalance: BALANCE_CEILING, maxAccountsPerCustomer: 20 });
      const owner = await c.customer('Rich');
      const ids: number[] = [];
      for (let i = 0; i < 20; i++) ids.push(await c.account(owner, 'USD'));
      for (const id of ids) {
        const res = await c.deposit(id, BALANCE_CEILING);
        expect(res.statusCode).toBe(201);
        expect(res.json().balance).toBe(BALANCE_CEILING);
      }
      // One more unit anywhere is refused, and nothing moves.
      const over = await c.deposit(ids[0] as number, 1);
      expect(over.statusCode).toBe(409);
      expect(over.json()).toMatchObject({ code: 'DATABANK_ERR_BALANCE_LIMIT', message: expect.stringContaining('DATABANK_MAX_BALANCE') });
      const withdraw = await t.app.http.inject({
        method: 'POST',
        url: `/accounts/${ids[1]}/withdrawals`,
        headers: t.admin,
        payload: { amount: 1 },
      });
      expect(withdraw.statusCode).toBe(201);
      const into = await c.transfer(ids[1] as number, ids[0] as number, 1);
      expect(into.statusCode).toBe(409);
      expect(into.json().code).toBe('DATABANK_ERR_BALANCE_LIMIT');
      // A 21st account is refused.
      const extra = await t.app.http.inject({
        method: 'POST',
        url: `/customers/${owner}/accounts`,
        headers: t.admin,
        payload: { account_type: 'savings' },
      });
      expect(extra.statusCode).toBe(409);
      expect(extra.json().code).toBe('DATABANK_ERR_QUOTA_EXCEEDED');

      const total = 20 * BALANCE_CEILING - 1;
      expect(Number.isSafeInteger(total)).toBe(true);
      const customer = await c.get(`/customers/${owner}`);
      expect(customer.statusCode).toBe(200);
      // The text itself: JSON.parse would round a number past 2^53 without a trace.
      expect(customer.body).toContain(`"balance":${total}`);
      expect(customer.json().balances).toEqual({ USD: total });
      const list = await c.get(`/customers?limit=100`);
      expect(list.statusCode).toBe(200);
      const accounts = await c.get(`/customers/${owner}/accounts`);
      expect(accounts.statusCode).toBe(200);
      expect(accounts.json().result.map((a: { balance: number }) => a.balance)).toEqual([
        BALANCE_CEILING,
        BALANCE_CEILING - 1,
        ...Array(18).fill(BALANCE_CEILING),
      ]);
      const entries = await c.get(`/accounts/${ids[0]}/entries`);
      expect(entries.statusCode).toBe(200);
      // A bank-wide fee of the largest amount: every full account pays it, the answer is exact.
      const fee = await c.fee({ amount: BALANCE_CEILING, reference: 'max-fee' });
      expect(fee.statusCode).toBe(200);
      expect(fee.json().charged).toEqual([...ids.slice(0, 1), ...ids.slice(2)]);
      expect(fee.json().insufficient_funds).toEqual([1, 2, 3, ids[1]]);
      expect((await c.get(`/customers/${owner}`)).json().balance).toBe(BALANCE_CEILING - 1);
      const check = await checkLedger(t.app.sql.db);
      expect(check.unbalanced).toEqual([]);
      expect(check.mismatched).toEqual([]);
    });

    it('the database refuses a balance past 10^14 whoever writes it', async () => {
      await expect(
        sql`update accounts set balance = ${BALANCE_CEILING + 1}::bigint where account_id = 1`.execute(t.app.sql.db),
      ).rejects.toMatchObject({ code: '23514' });
    });
  });

  describe(`a lower DATABANK_MAX_BALANCE on ${engine}`, () => {
    let t: TestApp;
    const c = client(() => t);
    beforeAll(async () => {
      t = await startTestApp(engine, `max-balance-${engine}`, { limits: { ...TEST_LIMITS, maxBalance: 5000 } });
    });
    afterAll(async () => t?.close());

    it('refuses a deposit or transfer that would pass it with 409, and moves nothing', async () => {
      // Customer 2 holds 4853 (the chapter's data).
      const deposit = await c.deposit(2, 148);
      expect(deposit.statusCode).toBe(409);
      expect(deposit.json()).toEqual({
        statusCode: 409,
        code: 'DATABANK_ERR_BALANCE_LIMIT',
        message: 'account 2 would hold more than 5000 (DATABANK_MAX_BALANCE)',
      });
      const transfer = await c.transfer(1, 2, 148);
      expect(transfer.statusCode).toBe(409);
      expect(transfer.json().code).toBe('DATABANK_ERR_BALANCE_LIMIT');
      expect((await c.get('/customers')).json().result.map((x: { balance: number }) => x.balance)).toEqual([1500, 4853, 2150]);
      expect((await c.deposit(2, 147)).statusCode).toBe(201);
      expect((await c.transfer(2, 1, 1)).statusCode).toBe(201);
      expect((await c.transfer(1, 2, 1)).statusCode).toBe(201);
    });
  });
}
