import type { InjectOptions } from 'fastify';
import { sql, type Kysely } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BALANCE_CEILING } from '../../src/config.ts';
import type { Currency } from '../../src/domain/money.ts';
import type { Principal } from '../../src/domain/types.ts';
import { MoneyWriter, type MoneyCommand, type MoneyOutcome } from '../../src/services/money-writer.ts';
import type { Database } from '../../src/stores/sql/schema.ts';
import { customerKey, startTestApp, TEST_LIMITS, type TestApp } from '../support/app.ts';
import { ENGINES } from '../support/engines.ts';
import { balances, checkLedger } from '../support/invariants.ts';

/**
 * The batching writer and `databank_money_batch` (migration 0013) on every engine: each movement
 * of a batch gets its own outcome against the running balances in arrival order, a refusal refuses
 * only itself, a hot account's row is written once per batch, and the HTTP answers and the rows
 * written are the same as those of the single path (`DATABANK_BATCH_MAX=1`).
 */

const ADMIN: Principal = { role: 'admin', keyId: 0 };

/** A writer of our own, with an observer that records the size of every batch it sent. */
function ownWriter(db: Kysely<Database>, maxBalance: number = BALANCE_CEILING) {
  const sizes: number[] = [];
  const writer = new MoneyWriter(db, 256, maxBalance, undefined, { batch: (size) => sizes.push(size) });
  /** Every command submitted in the same tick: they leave together, as one batch. */
  const batch = (commands: readonly MoneyCommand[]) => Promise.all(commands.map((c) => writer.submit(c)));
  return { writer, sizes, batch };
}

const transfer = (from: number, to: number, amount: number, extra: Partial<Extract<MoneyCommand, { kind: 'transfer' }>> = {}): MoneyCommand => ({
  kind: 'transfer',
  from,
  to,
  amount,
  owner: null,
  claim: null,
  ...extra,
});
const deposit = (account: number, amount: number): MoneyCommand => ({ kind: 'deposit', account, amount, claim: null });
const withdrawal = (account: number, amount: number): MoneyCommand => ({ kind: 'withdrawal', account, amount, claim: null });

interface Written {
  readonly transactions: Array<{ id: number; kind: string }>;
  readonly entries: Array<{ transaction_id: number; account_id: number | null; system_account: string | null; currency: string; amount: number }>;
  readonly outbox: Array<{ type: string; aggregate_id: string; customer_ids: number[]; payload: Record<string, unknown> }>;
}

/** The ledger transactions, entries and outbox rows written after the ids `since` names. */
async function writtenSince(db: Kysely<Database>, since: { tx: number; outbox: number }): Promise<Written> {
  const transactions = await sql<{ id: number; kind: string }>`
    select id, kind from ledger_transactions where id > ${since.tx} order by id`.execute(db);
  const entries = await sql<Written['entries'][number]>`
    select transaction_id, account_id, system_account, currency, amount from ledger_entries
    where transaction_id > ${since.tx} order by transaction_id, id`.execute(db);
  const outbox = await sql<Written['outbox'][number]>`
    select type, aggregate_id, customer_ids, payload from outbox where id > ${since.outbox} order by id`.execute(db);
  return {
    transactions: transactions.rows,
    entries: entries.rows,
    outbox: outbox.rows.map((r) => ({ ...r, customer_ids: r.customer_ids.map(Number) })),
  };
}

async function marks(db: Kysely<Database>): Promise<{ tx: number; outbox: number }> {
  const r = await sql<{ tx: number; outbox: number }>`
    select coalesce((select max(id) from ledger_transactions), 0)::bigint as tx,
      coalesce((select max(id) from outbox), 0)::bigint as outbox`.execute(db);
  return r.rows[0] as { tx: number; outbox: number };
}

/** What an outcome row says, without the columns a test does not care about. */
const brief = (o: MoneyOutcome) => o.outcome;

for (const engine of ENGINES) {
  describe(`databank_money_batch and the batching writer on ${engine}`, () => {
    let t: TestApp;
    const customer = async (name: string) => (await t.app.deps.customers.create(ADMIN, { name, date_of_birth: '1980-01-01' })).id;
    const account = async (owner: number, opening: number, currency: Currency = 'USD') => {
      const opened = await t.app.deps.accounts.open(ADMIN, owner, { account_type: 'checking', currency });
      if (opening > 0) await t.app.deps.movements.deposit(ADMIN, opened.account_id, opening, null);
      return opened.account_id;
    };

    beforeAll(async () => {
      t = await startTestApp(engine, `money-batch-contract-${engine}`, { demoData: false });
    });
    afterAll(async () => t?.close());

    it('three transfers in one batch, the middle one overdrawing: completed, insufficient_funds, completed; only two written', async () => {
      const owner = await customer('Three');
      const [a, b] = [await account(owner, 100), await account(owner, 50)];
      const db = t.app.sql.db;
      const since = await marks(db);
      const { sizes, batch } = ownWriter(db);

      const out = await batch([transfer(a, b, 30), transfer(b, a, 500), transfer(b, a, 20)]);

      expect(sizes).toEqual([3]);
      expect(out.map(brief)).toEqual(['completed', 'insufficient_funds', 'completed']);
      const [first, , third] = out as [MoneyOutcome, MoneyOutcome, MoneyOutcome];
      expect(out[1]).toMatchObject({ out_id: null, out_created_at: null });
      expect((third.out_id as number) - (first.out_id as number)).toBe(1);
      const written = await writtenSince(db, since);
      expect(written.transactions).toEqual([
        { id: first.out_id, kind: 'transfer' },
        { id: third.out_id, kind: 'transfer' },
      ]);
      expect(written.entries).toEqual([
        { transaction_id: first.out_id, account_id: a, system_account: null, currency: 'USD', amount: -30 },
        { transaction_id: first.out_id, account_id: b, system_account: null, currency: 'USD', amount: 30 },
        { transaction_id: third.out_id, account_id: b, system_account: null, currency: 'USD', amount: -20 },
        { transaction_id: third.out_id, account_id: a, system_account: null, currency: 'USD', amount: 20 },
      ]);
      expect(written.outbox).toEqual(
        [first, third].map((o, i) => ({
          type: 'transfer.completed',
          aggregate_id: String(o.out_id),
          customer_ids: [owner],
          payload: {
            transfer_id: o.out_id,
            transaction_id: o.out_id,
            from_account_id: i === 0 ? a : b,
            to_account_id: i === 0 ? b : a,
            amount: i === 0 ? 30 : 20,
            currency: 'USD',
            created_at: o.out_created_at,
          },
        })),
      );
      const after = await balances(db);
      expect([after[a], after[b]]).toEqual([90, 60]);
    });

    it('a refusal of each kind in one batch refuses only itself', async () => {
      const db = t.app.sql.db;
      const [p, q] = [await customer('Payer'), await customer('Other')];
      const p1 = await account(p, 1_000);
      const p2 = await account(p, 0);
      const pe = await account(p, 500, 'EUR');
      const q1 = await account(q, 300);
      const near = await account(q, 1_900);
      const MAX = 2_000;
      const { sizes, batch } = ownWriter(db, MAX);
      const claim = (key: string, hash = `hash-${key}`) => ({ scope: `test:${engine}`, key, hash });

      // A key whose answer is stored: in a later batch it replays.
      const [stored] = (await batch([transfer(p1, p2, 5, { claim: claim('stored') })])) as [MoneyOutcome];
      expect(stored.outcome).toBe('completed');
      const before = await balances(db);
      const since = await marks(db);
      const keysBefore = await sql<{ n: number }>`select count(*)::int as n from idempotency_keys`.execute(db);

      const out = await batch([
        transfer(p1, p2, 10),
        transfer(999_999, p2, 1),
        transfer(q1, p2, 1, { owner: p }),
        transfer(p1, 999_999, 1),
        transfer(p1, pe, 1),
        transfer(p2, p1, 100_000),
        transfer(p1, near, 200),
        transfer(p1, q1, 7, { claim: claim('dup') }),
        transfer(p1, q1, 7, { claim: claim('dup') }),
        transfer(p1, p2, 5, { claim: claim('stored') }),
        deposit(999_999, 1),
        withdrawal(p2, 100_000),
        deposit(near, 200),
        withdrawal(p1, 3),
        transfer(q1, p1, 4, { owner: q }),
        deposit(p2, 11),
        withdrawal(999_999, 1),
      ]);

      expect(sizes).toEqual([1, 17]);
      expect(out.map(brief)).toEqual([
        'completed',
        'source_not_found',
        'source_not_found',
        'target_not_found',
        'currency_mismatch',
        'insufficient_funds',
        'balance_limit',
        'completed',
        'in_flight',
        'replay',
        'not_found',
        'insufficient_funds',
        'balance_limit',
        'completed',
        'completed',
        'completed',
        'not_found',
      ]);
      const o = (i: number) => out[i] as MoneyOutcome;
      // The replay answers the stored response, with its hash for the service to compare.
      expect(o(9)).toMatchObject({
        out_id: null,
        out_replay_status: 201,
        out_replay_hash: 'hash-stored',
        out_replay_body: { transfer_id: stored.out_id, from_account_id: p1, to_account_id: p2, amount: 5, created_at: stored.out_created_at },
      });
      // Running balances: the withdrawal sees the two transfers before it, the deposit the first transfer.
      const p1After = (before[p1] as number) - 10 - 7 - 3 + 4;
      const p2After = (before[p2] as number) + 10 + 11;
      expect(o(13)).toMatchObject({ out_balance: (before[p1] as number) - 10 - 7 - 3, out_from_customer: p });
      expect(o(15)).toMatchObject({ out_balance: p2After, out_to_customer: p });
      expect(o(14)).toMatchObject({ out_from_customer: q, out_to_customer: p });
      const done = [0, 7, 13, 14, 15].map((i) => o(i).out_id as number);
      expect(done.map((id) => id - (done[0] as number))).toEqual([0, 1, 2, 3, 4]);

      expect(await balances(db)).toEqual({ ...before, [p1]: p1After, [p2]: p2After, [q1]: (before[q1] as number) + 7 - 4 });
      const written = await writtenSince(db, since);
      expect(written.transactions).toEqual(
        done.map((id, i) => ({ id, kind: ['transfer', 'transfer', 'withdrawal', 'transfer', 'deposit'][i] })),
      );
      const entry = (tx: number, account_id: number | null, amount: number, system_account: string | null = null) => ({
        transaction_id: tx,
        account_id,
        system_account,
        currency: 'USD',
        amount,
      });
      const [d0, d7, d13, d14, d15] = done as [number, number, number, number, number];
      expect(written.entries).toEqual([
        entry(d0, p1, -10),
        entry(d0, p2, 10),
        entry(d7, p1, -7),
        entry(d7, q1, 7),
        entry(d13, p1, -3),
        entry(d13, null, 3, 'cash:USD'),
        entry(d14, q1, -4),
        entry(d14, p1, 4),
        entry(d15, p2, 11),
        entry(d15, null, -11, 'cash:USD'),
      ]);
      expect(written.outbox.map((r) => [r.type, r.aggregate_id, r.customer_ids, r.payload.amount, r.payload.transaction_id])).toEqual([
        ['transfer.completed', String(d0), [p], 10, d0],
        ['transfer.completed', String(d7), [p, q], 7, d7],
        ['money.withdrawn', String(p1), [p], 3, d13],
        ['transfer.completed', String(d14), [p, q], 4, d14],
        ['money.deposited', String(p2), [p], 11, d15],
      ]);
      // One stored answer more: the first `dup`; `stored` kept its own.
      const keys = await sql<{ key: string; response_status: number; response_body: Record<string, unknown> }>`
        select key, response_status, response_body from idempotency_keys where scope = ${`test:${engine}`} order by key`.execute(db);
      expect(keys.rows).toEqual([
        { key: 'dup', response_status: 201, response_body: { transfer_id: d7, from_account_id: p1, to_account_id: q1, amount: 7, created_at: o(7).out_created_at } },
        { key: 'stored', response_status: 201, response_body: o(9).out_replay_body },
      ]);
      expect((await sql<{ n: number }>`select count(*)::int as n from idempotency_keys`.execute(db)).rows[0]?.n).toBe(
        (keysBefore.rows[0]?.n as number) + 1,
      );
    });

    it('checks against running balances in arrival order, and writes a hot account once per batch', async () => {
      const db = t.app.sql.db;
      const owner = await customer('Hot');
      const [a, b, c] = [await account(owner, 100), await account(owner, 0), await account(owner, 0)];
      const since = await marks(db);
      const { outcomes, updated, xmins, sizes } = await db.transaction().execute(async (trx) => {
        // This backend's count of updated rows of `accounts`, which goes on counting without a flush
        // inside a transaction: the difference is exact, where the shared statistics lag.
        const counted = async () =>
          (await sql<{ n: number }>`select pg_stat_get_xact_tuples_updated('accounts'::regclass)::int as n`.execute(trx)).rows[0]
            ?.n as number;
        const own = ownWriter(trx);
        const start = await counted();
        const outcomes = await own.batch([transfer(a, b, 80), transfer(a, c, 30), transfer(b, a, 50), transfer(a, c, 60)]);
        const updated = (await counted()) - start;
        const xmins = await sql<{ account_id: number; mine: boolean }>`
          select account_id, xmin::text = (pg_current_xact_id()::text::bigint % 4294967296)::text as mine
          from accounts where account_id in (${a}, ${b}, ${c}) order by account_id`.execute(trx);
        return { outcomes, updated, xmins: xmins.rows, sizes: own.sizes };
      });
      expect(sizes).toEqual([4]);
      expect(outcomes.map(brief)).toEqual(['completed', 'insufficient_funds', 'completed', 'completed']);
      expect(await balances(db)).toMatchObject({ [a]: 10, [b]: 30, [c]: 60 });
      // Three accounts changed, each row written once: A moved three times but is one update.
      expect(updated).toBe(3);
      expect(xmins).toEqual([a, b, c].map((account_id) => ({ account_id, mine: true })));
      const written = await writtenSince(db, since);
      expect(written.entries.map((e) => [e.account_id, e.amount])).toEqual([
        [a, -80],
        [b, 80],
        [b, -50],
        [a, 50],
        [a, -60],
        [c, 60],
      ]);
      expect(await checkLedger(db)).toMatchObject({ mismatched: [], negative: [], unbalanced: [], wrongCurrency: [] });
    });
  });

  describe(`the same answers with and without batching on ${engine}`, () => {
    let single: TestApp;
    let batched: TestApp;
    const limits = (batchMax: number) => ({ ...TEST_LIMITS, batchMax, maxBalance: 100_000 });
    beforeAll(async () => {
      [single, batched] = await Promise.all([
        startTestApp(engine, `money-batch-single-${engine}`, { demoData: false, limits: limits(1) }),
        startTestApp(engine, `money-batch-batched-${engine}`, { demoData: false, limits: limits(256) }),
      ]);
    });
    afterAll(async () => Promise.all([single?.close(), batched?.close()]));

    /** The script: every kind of answer a money route gives, through the API, one request at a time. */
    async function script(t: TestApp) {
      const inject = async (opts: InjectOptions) => {
        const res = await t.app.http.inject(opts);
        return { status: res.statusCode, body: res.json() as Record<string, unknown>, replayed: res.headers['idempotent-replayed'] ?? null };
      };
      const admin = (key?: string) => ({ ...t.admin, ...(key ? { 'idempotency-key': key } : {}) });
      const made = async (url: string, payload: object) => {
        const r = await inject({ method: 'POST', url, headers: t.admin, payload });
        expect(r.status, JSON.stringify(r.body)).toBe(201);
        return r.body;
      };
      const alice = (await made('/customers', { name: 'Alice', date_of_birth: '1980-01-01' })).id as number;
      const bob = (await made('/customers', { name: 'Bob', date_of_birth: '1981-02-02' })).id as number;
      const open = async (owner: number, currency = 'USD') =>
        (await made(`/customers/${owner}/accounts`, { account_type: 'checking', currency })).account_id as number;
      const [a1, a2, ae, b1] = [await open(alice), await open(alice), await open(alice, 'EUR'), await open(bob)];
      const bobKey = await customerKey(t, bob);
      const move = (url: string, payload: object, headers: Record<string, string> = admin()) =>
        inject({ method: 'POST', url, headers, payload });
      const tr = (from: number, to: number, amount: number, headers: Record<string, string> = admin()) =>
        move('/transfers', { from_account_id: from, to_account_id: to, amount }, headers);
      const answers = [
        await move(`/accounts/${a1}/deposits`, { amount: 1_000 }, admin('k1')),
        await move(`/accounts/${a1}/deposits`, { amount: 1_000 }, admin('k1')),
        await move(`/accounts/${a2}/deposits`, { amount: 500 }),
        await tr(a1, a2, 300, admin('k2')),
        await tr(a1, a2, 300, admin('k2')),
        await tr(a1, a2, 301, admin('k2')),
        await tr(a1, b1, 5_000, admin('k3')),
        await tr(a1, b1, 5_000, admin('k3')),
        await tr(a1, ae, 1),
        await tr(a1, 999_999, 1),
        await tr(999_999, a1, 1),
        await tr(a1, a1, 1),
        await move(`/accounts/${a2}/withdrawals`, { amount: 100 }, admin('k4')),
        await move(`/accounts/${a2}/withdrawals`, { amount: 100_000 }, admin('k5')),
        await move(`/accounts/${a2}/withdrawals`, { amount: 100_000 }, admin('k5')),
        await move(`/accounts/999999/deposits`, { amount: 1 }),
        await move(`/accounts/999999/withdrawals`, { amount: 1 }),
        await move(`/accounts/${b1}/deposits`, { amount: 99_990 }),
        await tr(a1, b1, 20),
        await move(`/accounts/${b1}/deposits`, { amount: 20 }, admin('k6')),
        await move(`/accounts/${b1}/deposits`, { amount: 10 }),
        await tr(a1, b1, 1),
        await tr(a1, b1, 1, { ...bobKey }),
        await tr(b1, a1, 10, { ...bobKey, 'idempotency-key': 'k7' }),
        await tr(b1, a1, 10, { ...bobKey, 'idempotency-key': 'k7' }),
        await tr(a1, b1, 10, admin('k7')),
        await move(`/accounts/${b1}/deposits`, { amount: 1 }, bobKey),
        await move(`/accounts/${ae}/deposits`, { amount: 50 }),
        await tr(ae, a1, 1),
        await move(`/accounts/${ae}/withdrawals`, { amount: 50 }),
        await move(`/accounts/${ae}/withdrawals`, { amount: 1 }),
        await move(`/accounts/${a1}/withdrawals`, { amount: 1 }, admin('k1')),
      ];
      return { answers, accounts: [a1, a2, ae, b1] };
    }

    /** What a database holds of money, with ledger ids as their rank and times left out. */
    async function contents(t: TestApp) {
      const db = t.app.sql.db;
      const ids = await sql<{ id: number }>`select id from ledger_transactions order by id`.execute(db);
      const rank = new Map(ids.rows.map((r, i) => [r.id, i]));
      const norm = (value: unknown): unknown => {
        if (Array.isArray(value)) return value.map(norm);
        if (value && typeof value === 'object') {
          return Object.fromEntries(
            Object.entries(value).map(([k, v]) => [
              k,
              k === 'created_at' ? typeof v : k === 'transfer_id' || k === 'transaction_id' ? `tx#${rank.get(v as number) ?? `?${String(v)}`}` : norm(v),
            ]),
          );
        }
        return value;
      };
      const entries = await sql`
        select t.kind, e.account_id, e.system_account, e.currency, e.amount from ledger_entries e
        join ledger_transactions t on t.id = e.transaction_id order by t.id, e.id`.execute(db);
      const outbox = await sql<{ type: string; aggregate_id: string; customer_ids: number[]; payload: Record<string, unknown> }>`
        select type, aggregate_id, customer_ids, payload from outbox
        where type in ('transfer.completed', 'money.deposited', 'money.withdrawn') order by id`.execute(db);
      const keys = await sql<{ scope: string; key: string; state: string; request_hash: string; response_status: number; response_body: unknown }>`
        select scope, key, state, request_hash, response_status, response_body from idempotency_keys order by scope, key`.execute(db);
      return {
        norm,
        entries: entries.rows,
        outbox: outbox.rows.map((r) => ({
          type: r.type,
          aggregate:
            r.aggregate_id === String(r.payload.transfer_id) ? 'transfer_id' : r.aggregate_id === String(r.payload.account_id) ? 'account_id' : r.aggregate_id,
          customer_ids: r.customer_ids.map(Number),
          payload: norm(r.payload),
        })),
        keys: keys.rows.map((r) => ({ ...r, response_body: norm(r.response_body) })),
        balances: await balances(db),
      };
    }

    it('a scripted sequence of movements, replays, reused keys and refusals: equal answers and equal rows', async () => {
      const [one, many] = [await script(single), await script(batched)];
      expect(many.accounts).toEqual(one.accounts);
      const [c1, cN] = [await contents(single), await contents(batched)];
      const answers = (s: typeof one, c: typeof c1) => s.answers.map((a, i) => ({ i, ...a, body: c.norm(a.body) }));
      expect(answers(many, cN)).toEqual(answers(one, c1));
      expect(cN.entries).toEqual(c1.entries);
      expect(cN.outbox).toEqual(c1.outbox);
      expect(cN.keys).toEqual(c1.keys);
      expect(cN.balances).toEqual(c1.balances);

      // The script is what it claims: every kind of answer, the batch path really taken.
      expect(one.answers.map((a) => `${a.status}${a.body.code ? ` ${String(a.body.code)}` : ''}${a.replayed ? ' replayed' : ''}`)).toEqual([
        '201', '201 replayed', '201', '201', '201 replayed', '422 DATABANK_ERR_IDEMPOTENCY_KEY_REUSED',
        '409 DATABANK_ERR_INSUFFICIENT_FUNDS', '409 DATABANK_ERR_INSUFFICIENT_FUNDS replayed', '400 DATABANK_ERR_CURRENCY_MISMATCH',
        '404 DATABANK_ERR_NOT_FOUND', '404 DATABANK_ERR_NOT_FOUND', '400 DATABANK_ERR_SAME_ACCOUNT', '201',
        '409 DATABANK_ERR_INSUFFICIENT_FUNDS', '409 DATABANK_ERR_INSUFFICIENT_FUNDS replayed', '404 DATABANK_ERR_NOT_FOUND',
        '404 DATABANK_ERR_NOT_FOUND', '201', '409 DATABANK_ERR_BALANCE_LIMIT', '409 DATABANK_ERR_BALANCE_LIMIT',
        '201', '409 DATABANK_ERR_BALANCE_LIMIT', '404 DATABANK_ERR_NOT_FOUND', '201', '201 replayed', '201',
        '403 DATABANK_ERR_FORBIDDEN', '201', '400 DATABANK_ERR_CURRENCY_MISMATCH', '201', '409 DATABANK_ERR_INSUFFICIENT_FUNDS',
        '422 DATABANK_ERR_IDEMPOTENCY_KEY_REUSED',
      ]);
      // 23 requests reached the writer (the others were answered before: validation, stored keys,
      // a customer key's deposit), each alone in its batch; the single path has no writer.
      const batches = async (app: TestApp) =>
        (await app.app.deps.metrics.moneyBatchSize.get()).values.find((v) => v.metricName === 'databank_money_batch_size_count')?.value;
      expect(await batches(batched)).toBe(23);
      expect(await batches(single)).toBe(0);
      expect(await checkLedger(batched.app.sql.db)).toMatchObject({ mismatched: [], negative: [], unbalanced: [], wrongCurrency: [] });
    });
  });
}
