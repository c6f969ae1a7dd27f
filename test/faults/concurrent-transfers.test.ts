import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestApp, type TestApp } from '../support/app.ts';
import { ENGINES } from '../support/engines.ts';
import { checkLedger } from '../support/invariants.ts';
import { rng } from '../support/random.ts';

const CLIENTS = 16;
const TRANSFERS = 2_000;
const ACCOUNTS = 10;
const OPENING = 1_000;

describe.skipIf(!ENGINES.includes('postgres'))('concurrent transfers through the API on PostgreSQL', () => {
  let t: TestApp;
  let base: string;
  const ids: number[] = [];

  beforeAll(async () => {
    t = await startTestApp('postgres', 'concurrent-transfers', { demoData: false });
    base = await t.app.http.listen({ host: '127.0.0.1', port: 0 });
    const customer = await t.app.deps.customers.create({ role: 'admin', keyId: 0 }, { name: 'Load', date_of_birth: '1980-01-01' });
    for (let i = 0; i < ACCOUNTS; i++) {
      const account = await t.app.deps.accounts.open({ role: 'admin', keyId: 0 }, customer.id, { account_type: 'checking' });
      await t.app.deps.movements.deposit({ role: 'admin', keyId: 0 }, account.account_id, OPENING, null);
      ids.push(account.account_id);
    }
  });
  afterAll(async () => t?.close());

  it(`${CLIENTS} clients, ${TRANSFERS} random transfers among ${ACCOUNTS} accounts: money is conserved`, async () => {
    const statuses = new Map<number, number>();
    let next = 0;
    const client = async (seed: number) => {
      const random = rng(seed);
      while (next < TRANSFERS) {
        next++;
        const from = ids[Math.floor(random() * ACCOUNTS)] as number;
        let to = ids[Math.floor(random() * ACCOUNTS)] as number;
        if (to === from) to = ids[(ids.indexOf(from) + 1) % ACCOUNTS] as number;
        const res = await fetch(`${base}/transfers`, {
          method: 'POST',
          headers: { ...t.admin, 'content-type': 'application/json' },
          body: JSON.stringify({ from_account_id: from, to_account_id: to, amount: 1 + Math.floor(random() * 400) }),
        });
        await res.arrayBuffer();
        statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
      }
    };
    await Promise.all(Array.from({ length: CLIENTS }, (_, i) => client(i + 1)));

    const completed = statuses.get(201) ?? 0;
    const refused = statuses.get(409) ?? 0;
    expect([...statuses.keys()].filter((s) => s !== 201 && s !== 409)).toEqual([]);
    expect(completed + refused).toBe(TRANSFERS);
    expect(completed).toBeGreaterThan(TRANSFERS / 2);

    const check = await checkLedger(t.app.sql.db);
    expect(check.total).toBe(ACCOUNTS * OPENING);
    expect(check.negative).toEqual([]);
    expect(check.mismatched).toEqual([]);
    expect(check.unbalanced).toEqual([]);
    const recorded = await sql<{ n: number }>`
      select count(*)::bigint as n from ledger_transactions where kind = 'transfer'`.execute(t.app.sql.db);
    expect(recorded.rows[0]?.n).toBe(completed);
    const events = await sql<{ n: number }>`
      select count(*)::bigint as n from outbox where type = 'transfer.completed'`.execute(t.app.sql.db);
    expect(events.rows[0]?.n).toBe(completed);
  });

  it('the same Idempotency-Key sent by 8 clients at once moves money exactly once', async () => {
    const before = await checkLedger(t.app.sql.db);
    const [from, to] = [ids[0] as number, ids[1] as number];
    const fromBefore = await t.app.deps.accounts.get({ role: 'admin', keyId: 0 }, from);
    const send = () =>
      fetch(`${base}/transfers`, {
        method: 'POST',
        headers: { ...t.admin, 'content-type': 'application/json', 'idempotency-key': 'race-1' },
        body: JSON.stringify({ from_account_id: from, to_account_id: to, amount: 1 }),
      }).then(async (r) => ({ status: r.status, body: (await r.json()) as { code?: string; transfer_id?: number } }));
    const results = await Promise.all(Array.from({ length: 8 }, send));
    const ok = results.filter((r) => r.status === 201);
    expect(ok.length).toBeGreaterThanOrEqual(1);
    expect(new Set(ok.map((r) => r.body.transfer_id)).size).toBe(1);
    for (const r of results.filter((x) => x.status !== 201)) {
      expect(r.status).toBe(409);
      expect(r.body.code).toBe('DATABANK_ERR_IDEMPOTENCY_IN_FLIGHT');
    }
    const fromAfter = await t.app.deps.accounts.get({ role: 'admin', keyId: 0 }, from);
    expect(fromAfter.balance).toBe(fromBefore.balance - 1);
    expect((await checkLedger(t.app.sql.db)).total).toBe(before.total);
  });
});
