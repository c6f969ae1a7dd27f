import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { customerKey, startTestApp, type TestApp } from '../support/app.ts';
import { ENGINES } from '../support/engines.ts';
import { balances, checkLedger } from '../support/invariants.ts';
import { sql } from 'kysely';
import { claimLockKey } from '../../src/services/idempotency.ts';

for (const engine of ENGINES) {
  describe(`money movement on ${engine}`, () => {
    let t: TestApp;
    beforeAll(async () => {
      t = await startTestApp(engine, `money-api-${engine}`);
    });
    afterAll(async () => t?.close());

    const post = (url: string, payload: unknown, headers: Record<string, string> = t.admin) =>
      t.app.http.inject({ method: 'POST', url, headers, payload: payload as object });

    it("moves 100 from customer 1 to customer 2 as in the chapter: 1400 and 4953", async () => {
      const res = await post('/transfers', { from_account_id: 1, to_account_id: 2, amount: 100 });
      expect(res.statusCode).toBe(201);
      const body = res.json();
      expect(body).toEqual({
        transfer_id: body.transfer_id,
        from_account_id: 1,
        to_account_id: 2,
        amount: 100,
        created_at: body.created_at,
      });
      expect(Number.isInteger(body.transfer_id)).toBe(true);
      expect(Number.isNaN(Date.parse(body.created_at))).toBe(false);
      const customers = await t.app.http.inject({ method: 'GET', url: '/customers', headers: t.admin });
      expect(customers.json().result.map((c: { balance: number }) => c.balance)).toEqual([1400, 4953, 2150]);
      const entries = await t.app.http.inject({ method: 'GET', url: '/accounts/1/entries', headers: t.admin });
      expect(entries.json().result.map((e: { kind: string; amount: number }) => [e.kind, e.amount])).toEqual([
        ['transfer', -100],
        ['deposit', 1500],
      ]);
    });

    it('refuses insufficient funds (409), same account (400), unknown accounts (404), bad amounts (400)', async () => {
      const before = await balances(t.app.sql.db);
      const cases: Array<[unknown, number, string]> = [
        [{ from_account_id: 1, to_account_id: 2, amount: 1_000_000 }, 409, 'DATABANK_ERR_INSUFFICIENT_FUNDS'],
        [{ from_account_id: 2, to_account_id: 2, amount: 1 }, 400, 'DATABANK_ERR_SAME_ACCOUNT'],
        [{ from_account_id: 1, to_account_id: 999999, amount: 1 }, 404, 'DATABANK_ERR_NOT_FOUND'],
        [{ from_account_id: 999999, to_account_id: 1, amount: 1 }, 404, 'DATABANK_ERR_NOT_FOUND'],
        [{ from_account_id: 1, to_account_id: 2, amount: 0 }, 400, 'DATABANK_ERR_VALIDATION'],
        [{ from_account_id: 1, to_account_id: 2, amount: -5 }, 400, 'DATABANK_ERR_VALIDATION'],
        [{ from_account_id: 1, to_account_id: 2, amount: 1.5 }, 400, 'DATABANK_ERR_VALIDATION'],
        [{ from_account_id: 1, to_account_id: 2, amount: '100' }, 400, 'DATABANK_ERR_VALIDATION'],
        [{ from_account_id: 1, to_account_id: 2, amount: 100_000_000_000_001 }, 400, 'DATABANK_ERR_VALIDATION'],
        [{ from_account_id: 1, to_account_id: 2, amount: 1, memo: 'x' }, 400, 'DATABANK_ERR_VALIDATION'],
      ];
      for (const [payload, status, code] of cases) {
        const res = await post('/transfers', payload);
        expect(res.statusCode, JSON.stringify(payload)).toBe(status);
        expect(res.json(), JSON.stringify(payload)).toMatchObject({ statusCode: status, code });
      }
      expect(await balances(t.app.sql.db)).toEqual(before);
    });

    it('deposits and withdraws with exact balances; overdraft refused', async () => {
      const dep = await post('/accounts/3/deposits', { amount: 50 });
      expect(dep.statusCode).toBe(201);
      expect(dep.json()).toMatchObject({ account_id: 3, kind: 'deposit', amount: 50, balance: 2200 });
      const wd = await post('/accounts/3/withdrawals', { amount: 200 });
      expect(wd.statusCode).toBe(201);
      expect(wd.json()).toMatchObject({ account_id: 3, kind: 'withdrawal', amount: 200, balance: 2000 });
      const over = await post('/accounts/3/withdrawals', { amount: 2001 });
      expect(over.statusCode).toBe(409);
      expect(over.json().code).toBe('DATABANK_ERR_INSUFFICIENT_FUNDS');
      const missing = await post('/accounts/424242/deposits', { amount: 1 });
      expect(missing.statusCode).toBe(404);
      expect((await balances(t.app.sql.db))[3]).toBe(2000);
    });

    it('a customer key transfers only from its own accounts', async () => {
      const key = await customerKey(t, 2);
      const theirs = await post('/transfers', { from_account_id: 1, to_account_id: 2, amount: 1 }, key);
      expect(theirs.statusCode).toBe(404);
      expect(theirs.json().code).toBe('DATABANK_ERR_NOT_FOUND');
      const own = await post('/transfers', { from_account_id: 2, to_account_id: 1, amount: 3 }, key);
      expect(own.statusCode).toBe(201);
      const deposit = await post('/accounts/2/deposits', { amount: 1 }, key);
      expect(deposit.statusCode).toBe(403);
      expect(deposit.json().code).toBe('DATABANK_ERR_FORBIDDEN');
    });

    it('charges the annual fee to every account that can pay, once per reference', async () => {
      // An account that cannot pay the fee.
      const acc = await post('/customers/1/accounts', { account_type: 'savings' });
      const poorId = acc.json().account_id as number;
      const before = await balances(t.app.sql.db);
      const first = await post('/fees', { amount: 100, reference: 'annual-2026' });
      expect(first.statusCode).toBe(200);
      const payers = Object.keys(before).map(Number).filter((id) => id !== poorId);
      expect(first.json()).toMatchObject({
        reference: 'annual-2026',
        amount: 100,
        charged: payers,
        insufficient_funds: [poorId],
        already_charged: [],
      });
      const after = await balances(t.app.sql.db);
      for (const id of payers) expect(after[id]).toBe((before[id] as number) - 100);
      expect(after[poorId]).toBe(0);

      await post(`/accounts/${poorId}/deposits`, { amount: 150 });
      const again = await post('/fees', { amount: 100, reference: 'annual-2026' });
      expect(again.json()).toMatchObject({ charged: [poorId], insufficient_funds: [], already_charged: payers });
      const third = await post('/fees', { amount: 100, reference: 'annual-2026' });
      expect(third.json()).toMatchObject({ charged: [], transaction_id: null });
      const final = await balances(t.app.sql.db);
      expect(final[poorId]).toBe(50);
      for (const id of payers) expect(final[id]).toBe(after[id]);
    });

    it('replays an Idempotency-Key: same key and body → same response, no second movement', async () => {
      const headers = { ...t.admin, 'idempotency-key': 'transfer-abc-1' };
      const payload = { from_account_id: 2, to_account_id: 3, amount: 7 };
      const before = await balances(t.app.sql.db);
      const first = await post('/transfers', payload, headers);
      const second = await post('/transfers', payload, headers);
      expect(first.statusCode).toBe(201);
      expect(second.statusCode).toBe(201);
      expect(second.json()).toEqual(first.json());
      expect(second.headers['idempotent-replayed']).toBe('true');
      const after = await balances(t.app.sql.db);
      expect(after[2]).toBe((before[2] as number) - 7);
      expect(after[3]).toBe((before[3] as number) + 7);

      const other = await post('/transfers', { ...payload, amount: 8 }, headers);
      expect(other.statusCode).toBe(422);
      expect(other.json().code).toBe('DATABANK_ERR_IDEMPOTENCY_KEY_REUSED');
      expect(await balances(t.app.sql.db)).toEqual(after);
    });

    it('replays a refusal too, and keys are scoped per API key', async () => {
      const headers = { ...t.admin, 'idempotency-key': 'too-much' };
      const payload = { from_account_id: 1, to_account_id: 2, amount: 999_999_999 };
      const first = await post('/transfers', payload, headers);
      const second = await post('/transfers', payload, headers);
      expect(first.statusCode).toBe(409);
      expect(second.statusCode).toBe(409);
      expect(second.json()).toEqual(first.json());
      const key = await customerKey(t, 1);
      const otherScope = await post('/transfers', { from_account_id: 1, to_account_id: 2, amount: 1 }, {
        ...key,
        'idempotency-key': 'too-much',
      });
      expect(otherScope.statusCode).toBe(201);
    });

    it.runIf(engine === 'postgres')(
      'answers 409 while a transaction holds the key, and runs once that transaction has ended',
      async () => {
        const principal = await t.app.deps.apiKeys.authenticate(t.adminKey);
        const payload = { from_account_id: 2, to_account_id: 3, amount: 1 };
        const headers = { ...t.admin, 'idempotency-key': 'in-flight-1' };
        const before = await balances(t.app.sql.db);
        // Hold the key's claim exactly as a concurrent, still-running request does: its lock, in a
        // transaction of another connection; rolling back is that request failing (or crashing).
        await t.app.sql.db
          .transaction()
          .execute(async (trx) => {
            await sql`select pg_advisory_xact_lock(${claimLockKey(`key:${principal.keyId}`, 'in-flight-1')})`.execute(trx);
            const busy = await post('/transfers', payload, headers);
            expect(busy.statusCode).toBe(409);
            expect(busy.json().code).toBe('DATABANK_ERR_IDEMPOTENCY_IN_FLIGHT');
            expect(await balances(t.app.sql.db)).toEqual(before);
            throw new Error('roll back');
          })
          .catch((err: Error) => expect(err.message).toBe('roll back'));
        const retried = await post('/transfers', payload, headers);
        expect(retried.statusCode).toBe(201);
        expect((await balances(t.app.sql.db))[2]).toBe((before[2] as number) - 1);
      },
    );

    it('runs concurrent requests with one key once: each answer is the movement or 409 in flight', async () => {
      const before = await balances(t.app.sql.db);
      const headers = { ...t.admin, 'idempotency-key': 'concurrent-1' };
      const answers = await Promise.all(
        Array.from({ length: 8 }, () => post('/accounts/3/deposits', { amount: 11 }, headers)),
      );
      const created = answers.filter((r) => r.statusCode === 201);
      const busy = answers.filter((r) => r.statusCode === 409);
      expect(created.length + busy.length).toBe(8);
      expect(created.length).toBeGreaterThanOrEqual(1);
      for (const r of busy) expect(r.json().code).toBe('DATABANK_ERR_IDEMPOTENCY_IN_FLIGHT');
      expect(new Set(created.map((r) => r.json().transaction_id)).size).toBe(1);
      expect((await balances(t.app.sql.db))[3]).toBe((before[3] as number) + 11);
    });

    it("keeps keys for 24 hours by the database's clock, not the app's", async () => {
      const rows = await sql<{ ok: boolean; n: number }>`
        select bool_and(expires_at - created_at = interval '24 hours') as ok, count(*)::int as n
        from idempotency_keys`.execute(t.app.sql.db);
      expect(rows.rows[0]?.n).toBeGreaterThan(2);
      expect(rows.rows[0]?.ok).toBe(true);
    });

    it.runIf(engine === 'postgres')('names its sessions and bounds lock waits on the pool', async () => {
      const r = await sql<{ lock_timeout: string; application_name: string }>`
        select current_setting('lock_timeout') as lock_timeout, current_setting('application_name') as application_name`.execute(
        t.app.sql.db,
      );
      expect(r.rows[0]).toEqual({ lock_timeout: '10s', application_name: 'databank' });
    });

    it('rejects malformed Idempotency-Key headers', async () => {
      for (const key of ['', 'x'.repeat(256), 'sp ace']) {
        const res = await post('/transfers', { from_account_id: 2, to_account_id: 3, amount: 1 }, {
          ...t.admin,
          'idempotency-key': key,
        });
        expect(res.statusCode, JSON.stringify(key)).toBe(400);
      }
    });

    it('keeps every ledger invariant', async () => {
      const check = await checkLedger(t.app.sql.db);
      expect(check.mismatched).toEqual([]);
      expect(check.negative).toEqual([]);
      expect(check.unbalanced).toEqual([]);
    });
  });
}
