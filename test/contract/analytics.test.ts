import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DuckDBInstance } from '@duckdb/node-api';
import fc from 'fast-check';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isDatabankError } from '../../src/domain/errors.ts';
import type { Currency } from '../../src/domain/money.ts';
import type { Principal } from '../../src/domain/types.ts';
import { AnalyticsService, BOOK_QUERIES, type RefreshResult } from '../../src/services/analytics/index.ts';
import { recordMovement } from '../../src/services/ledger.ts';
import { primaryOnly } from '../../src/stores/sql/port.ts';
import { startTestApp, type TestApp } from '../support/app.ts';
import { ENGINES } from '../support/engines.ts';
import { fcParams } from '../support/property.ts';

/**
 * The analytics copy (DuckDB) against PostgreSQL, embedded and server: after any workload the
 * copy's balances equal `accounts.balance` to the unit, a second refresh loads nothing, a row that
 * commits after a refresh with an id below the watermark is loaded exactly once, an interrupted
 * refresh keeps nothing; the books report, the Parquet export and the read-only SQL.
 */

const ADMIN: Principal = { role: 'admin', keyId: 1 };
const SLOW = { timeout: 120_000 } as const;

for (const engine of ENGINES) {
  describe(`analytics on ${engine}`, () => {
    let t: TestApp;
    let analytics: AnalyticsService;
    /** The accounts of the workload: the demo's three USD accounts and one per other currency and type. */
    const accounts: { id: number; currency: Currency }[] = [
      { id: 1, currency: 'USD' },
      { id: 2, currency: 'USD' },
      { id: 3, currency: 'USD' },
    ];

    beforeAll(async () => {
      // No workers: every refresh here is the test's own.
      t = await startTestApp(engine, `analytics-contract-${engine}`, {}, undefined, { worker: false });
      analytics = t.app.deps.analytics;
      for (const [customer, account_type, currency] of [
        [1, 'savings', 'EUR'],
        [2, 'savings', 'GBP'],
        [3, 'checking', 'EUR'],
        [2, 'savings', 'USD'],
      ] as const) {
        const opened = await t.app.deps.accounts.open(ADMIN, customer, { account_type, currency });
        accounts.push({ id: opened.account_id, currency });
      }
    }, SLOW.timeout);
    afterAll(async () => t?.close());

    const pg = () => t.app.sql.db;
    /** Every account's balance as PostgreSQL holds it. */
    const pgBalances = async () =>
      Object.fromEntries(
        (await pg().selectFrom('accounts').select(['account_id', 'balance']).orderBy('account_id').execute()).map((r) => [r.account_id, r.balance]),
      );
    /** Every account's balance as the sum of its entries in the copy. */
    const duckBalances = async () => {
      const answer = await analytics.query(
        `select a.account_id, coalesce(sum(e.amount), 0) as balance
         from accounts a left join ledger_entries e on e.account_id = a.account_id group by a.account_id order by a.account_id`,
      );
      return Object.fromEntries(answer.rows.map(([id, balance]) => [id as number, balance as number]));
    };
    const pgGrouped = async (by: 'account_type' | 'currency') => {
      const keys = by === 'account_type' ? sql`account_type, currency` : sql`currency`;
      const rows = (
        await sql<Record<string, unknown>>`select ${keys}, count(*)::int as accounts, sum(balance)::bigint as balance
          from accounts group by ${keys} order by ${keys}`.execute(pg())
      ).rows;
      return rows.map((r) => ({ ...r, accounts: Number(r.accounts), balance: Number(r.balance) }));
    };
    const pgCounts = async () =>
      (
        await sql<{ transactions: number; entries: number; system: string }>`select
          (select count(*)::int from ledger_transactions) as transactions, (select count(*)::int from ledger_entries) as entries,
          (select coalesce(string_agg(s, ',' order by s), '') from (select system_account || '=' || sum(amount) as s
             from ledger_entries where system_account is not null group by system_account) x) as system`.execute(pg())
      ).rows[0];
    const duckCounts = async () => {
      const answer = await analytics.query(`select
          (select count(*) from ledger_transactions) as transactions, (select count(*) from ledger_entries) as entries,
          (select coalesce(string_agg(s, ',' order by s), '') from (select system_account || '=' || sum(amount) as s
             from ledger_entries where system_account is not null group by system_account)) as system,
          (select count(*) - count(distinct id) from ledger_entries) as duplicate_entries,
          (select count(*) - count(distinct id) from ledger_transactions) as duplicate_transactions`);
      const [transactions, entries, system, dupE, dupT] = answer.rows[0] as [number, number, string, number, number];
      expect({ dupE, dupT }).toEqual({ dupE: 0, dupT: 0 });
      return { transactions, entries, system };
    };
    /** The copy and PostgreSQL agree: per account, per type and currency, per currency, row counts, system accounts. */
    const expectExact = async () => {
      expect(await duckBalances()).toEqual(await pgBalances());
      for (const by of ['account_type', 'currency'] as const) {
        expect((await analytics.balances(by)).result).toEqual(await pgGrouped(by));
      }
      expect(await duckCounts()).toEqual(await pgCounts());
    };

    type Op =
      | { kind: 'deposit'; account: number; amount: number }
      | { kind: 'withdraw'; account: number; amount: number }
      | { kind: 'transfer'; from: number; to: number; amount: number }
      | { kind: 'rename'; customer: number; name: string };
    const op: fc.Arbitrary<Op> = fc.oneof(
      fc.record({ kind: fc.constant('deposit' as const), account: fc.nat(6), amount: fc.integer({ min: 1, max: 5_000 }) }),
      fc.record({ kind: fc.constant('withdraw' as const), account: fc.nat(6), amount: fc.integer({ min: 1, max: 5_000 }) }),
      fc.record({ kind: fc.constant('transfer' as const), from: fc.nat(6), to: fc.nat(6), amount: fc.integer({ min: 1, max: 3_000 }) }),
      fc.record({ kind: fc.constant('rename' as const), customer: fc.integer({ min: 1, max: 3 }), name: fc.constantFrom('Ann', 'Bo', 'Cy') }),
    );
    /** Runs an operation through the services; a refusal (funds, currencies) is part of the workload. */
    const apply = async (o: Op) => {
      const at = (i: number) => (accounts[i] as { id: number }).id;
      try {
        if (o.kind === 'deposit' || o.kind === 'withdraw') {
          const move = o.kind === 'deposit' ? t.app.deps.movements.deposit : t.app.deps.movements.withdraw;
          await move.call(t.app.deps.movements, ADMIN, at(o.account), o.amount, null);
        } else if (o.kind === 'transfer') await t.app.deps.transfers.transfer(ADMIN, { from_account_id: at(o.from), to_account_id: at(o.to), amount: o.amount }, null);
        else await t.app.deps.customers.update(ADMIN, o.customer, { name: o.name });
      } catch (err) {
        if (!isDatabankError(err) || err.statusCode >= 500) throw err;
      }
    };

    it('the first refresh loads everything; after random workloads each refresh makes the copy equal PostgreSQL to the unit', SLOW, async () => {
      const first = await analytics.refresh();
      expect(first).toMatchObject({ customers: 3, accounts: 7, pending_gaps: { transactions: 0, entries: 0 } });
      expect(first.transactions).toBe((await pgCounts())?.transactions);
      await expectExact();
      await fc.assert(
        fc.asyncProperty(fc.array(op, { minLength: 1, maxLength: 25 }), async (ops) => {
          for (const o of ops) await apply(o);
          await analytics.refresh();
          await expectExact();
        }),
        fcParams(4),
      );
    });

    it('a second refresh loads nothing and changes no report', SLOW, async () => {
      await apply({ kind: 'deposit', account: 4, amount: 77 });
      await apply({ kind: 'rename', customer: 2, name: 'Karen J.' });
      const opened = await t.app.deps.accounts.open(ADMIN, 3, { account_type: 'savings', currency: 'GBP' });
      accounts.push({ id: opened.account_id, currency: 'GBP' });
      const loaded = await analytics.refresh();
      expect(loaded).toMatchObject({ customers: 1, accounts: 1, transactions: 1, entries: 2 });
      const before = { balances: await analytics.balances('currency'), top: await analytics.topAccounts({ limit: 100 }) };
      const again = await analytics.refresh();
      expect(again).toMatchObject({ customers: 0, accounts: 0, transactions: 0, entries: 0, watermark: loaded.watermark });
      expect(Date.parse(again.as_of)).toBeGreaterThanOrEqual(Date.parse(loaded.as_of));
      const after = { balances: await analytics.balances('currency'), top: await analytics.topAccounts({ limit: 100 }) };
      expect({ ...after.balances, as_of: null }).toEqual({ ...before.balances, as_of: null });
      expect({ ...after.top, as_of: null }).toEqual({ ...before.top, as_of: null });
      expect(after.balances.as_of).toBe(again.as_of);
      await expectExact();
    });

    it('an interrupted refresh keeps nothing; the next one loads it all', SLOW, async () => {
      for (let i = 0; i < 5; i++) await apply({ kind: 'deposit', account: i, amount: 10 + i });
      const stop = new AbortController();
      const small = new AnalyticsService(primaryOnly(pg()), { path: analytics.file, batchSize: 2 });
      const counts = await duckCounts();
      await expect(small.refresh({ signal: stop.signal, onProgress: (done) => done > 3 && stop.abort() })).rejects.toThrow();
      expect(await duckCounts()).toEqual(counts);
      expect((await small.refresh()).entries).toBe(10);
      await small.close();
      await expectExact();
    });

    // Two transactions at once: a server's pool. (The embedded engine has one connection, on which
    // transactions commit in the order they start.)
    it.skipIf(engine !== 'postgres')(
      'a movement that commits after a refresh with ids below the watermark is loaded by the next refresh, exactly once',
      SLOW,
      async () => {
        const before = await analytics.refresh();
        const eur = (accounts[3] as { id: number }).id;
        let release!: () => void;
        const held = new Promise<void>((r) => (release = r));
        let signalInserted!: () => void;
        const inserted = new Promise<void>((r) => (signalInserted = r));
        // Takes its ids now, commits later.
        const late = pg()
          .transaction()
          .execute(async (trx) => {
            const recorded = await recordMovement(trx, {
              kind: 'deposit',
              currency: 'EUR',
              reference: 'late commit',
              entries: [
                { account_id: eur, amount: 555 },
                { system_account: 'cash:EUR', amount: -555 },
              ],
              type: 'money.deposited',
              events: [],
            });
            signalInserted();
            await held;
            return recorded;
          });
        let first: RefreshResult | null = null;
        try {
          await inserted;
          // Commits first, with greater ids.
          await apply({ kind: 'deposit', account: 0, amount: 1 });
          first = await analytics.refresh();
        } finally {
          release();
        }
        expect(first).toMatchObject({
          transactions: 1,
          entries: 2,
          pending_gaps: { transactions: before.pending_gaps.transactions + 1, entries: before.pending_gaps.entries + 2 },
        });
        const { transaction_id } = await late;
        if (!first) throw new Error('no refresh ran while the movement was held');
        // Committed now, below the watermark: PostgreSQL has it, the copy not yet.
        expect((await duckBalances())[eur]).toBe(Number((await pgBalances())[eur]) - 555);
        expect(transaction_id).toBeLessThan(first.watermark.transactions);
        const second = await analytics.refresh();
        expect(second).toMatchObject({ transactions: 1, entries: 2, watermark: first.watermark, pending_gaps: before.pending_gaps });
        expect((await analytics.refresh()).entries).toBe(0);
        const copies = await analytics.query(`select count(*), sum(amount) filter (where amount > 0) from ledger_entries where transaction_id = ${transaction_id}`);
        expect(copies.rows).toEqual([[2, 555]]);
        await expectExact();
      },
    );

    it('the books report: Table 19 and both of its queries, exact', async () => {
      const report = await analytics.books();
      expect(report.books).toEqual([
        { id: 1, title: 'Clean Code', genre: 'tech', year_published: 2008 },
        { id: 2, title: 'Code Complete', genre: 'tech', year_published: 1993 },
        { id: 3, title: 'The Giver', genre: 'sci-fi', year_published: 1993 },
        { id: 4, title: 'World War Z', genre: 'sci-fi', year_published: 2006 },
      ]);
      expect(report.queries).toEqual([
        {
          sql: 'SELECT * FROM books WHERE year_published = 1993',
          rows: [
            { id: 2, title: 'Code Complete', genre: 'tech', year_published: 1993 },
            { id: 3, title: 'The Giver', genre: 'sci-fi', year_published: 1993 },
          ],
        },
        { sql: 'SELECT COUNT(*) FROM books WHERE year_published = 1993', rows: [{ 'count_star()': 2 }] },
      ]);
      expect(report.queries.map((q) => q.sql)).toEqual([...BOOK_QUERIES]);
    });

    it('the Parquet export writes every table with its rows', async () => {
      const dir = mkdtempSync(join(tmpdir(), 'databank-parquet-'));
      try {
        const exported = await analytics.exportParquet(join(dir, 'out'));
        const counts = await duckCounts();
        const customers = (await pg().selectFrom('customers').select('id').execute()).length;
        expect(exported.files.map((f) => [f.table, f.rows])).toEqual([
          ['customers', customers],
          ['accounts', accounts.length],
          ['ledger_transactions', counts.transactions],
          ['ledger_entries', counts.entries],
          ['books', 4],
        ]);
        // Read back by another DuckDB: the files are real Parquet with the same rows.
        const reader = await DuckDBInstance.create(':memory:');
        const conn = await reader.connect();
        for (const f of exported.files) {
          const n = (await conn.runAndReadAll(`select count(*) as n from read_parquet('${f.file}')`)).getRowObjectsJS()[0]?.n;
          expect([f.table, Number(n)]).toEqual([f.table, f.rows]);
        }
        const sum = (await conn.runAndReadAll(`select sum(amount) as s from read_parquet('${join(dir, 'out', 'ledger_entries.parquet')}')`)).getRowObjectsJS()[0]?.s;
        expect(Number(sum)).toBe(0);
        conn.closeSync();
        reader.closeSync();
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });

    it('SQL is one read-only SELECT: writes, COPY, ATTACH, settings, file reads and several statements are 400 DATABANK_ERR_ANALYTICS_QUERY', async () => {
      const refused = [
        'insert into books values (5, \'x\', \'y\', 2000)',
        'create table t (a int)',
        'drop table books',
        'update books set title = \'x\'',
        'delete from books',
        `copy books to '${join(tmpdir(), 'databank-analytics-copy.csv')}'`,
        `attach '${join(tmpdir(), 'databank-analytics-other.duckdb')}' as other`,
        'set enable_external_access = true',
        'install postgres',
        'select 1; select 2',
        'select 1; drop table books',
        "select * from read_csv('/etc/passwd')",
        "select * from read_text('/etc/hostname')",
        'select * from books where id = $1',
        'select * from no_such_table',
        'this is not sql',
      ];
      for (const text of refused) {
        await expect(analytics.query(text), text).rejects.toMatchObject({ code: 'DATABANK_ERR_ANALYTICS_QUERY', statusCode: 400 });
      }
      const books = await analytics.query('with b as (select * from books) select year_published, count(*) as n from b group by all order by 1');
      expect(books.columns).toEqual([
        { name: 'year_published', type: 'INTEGER' },
        { name: 'n', type: 'BIGINT' },
      ]);
      expect(books.rows).toEqual([
        [1993, 2],
        [2006, 1],
        [2008, 1],
      ]);
      expect((await analytics.books()).books).toHaveLength(4);
      const capped = await analytics.query('select * from range(5)', { maxRows: 3 });
      expect(capped).toMatchObject({ row_count: 3, truncated: true, max_rows: 3, rows: [[0], [1], [2]] });
    });
  });
}

describe('the one-writer DuckDB file', () => {
  let child: ChildProcess | null = null;
  const dir = mkdtempSync(join(tmpdir(), 'databank-analytics-lock-'));
  afterAll(() => {
    child?.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });

  it('a report while another process writes the file is 503 DATABANK_ERR_UNAVAILABLE after the wait, and works once it lets go', SLOW, async () => {
    const path = join(dir, 'analytics.duckdb');
    // No SQL is needed to make the file: a report makes it (empty) when no refresh has.
    const service = new AnalyticsService(null, { path, waitMs: 300 });
    expect((await service.books()).as_of).toBeNull();
    // Another process opens it for writing and keeps it until its stdin closes.
    child = spawn(
      process.execPath,
      [
        '--input-type=module',
        '-e',
        `import { DuckDBInstance } from '@duckdb/node-api';
         const db = await DuckDBInstance.create(${JSON.stringify(path)});
         await (await db.connect()).run('select 1');
         process.stdout.write('held\\n');
         process.stdin.resume();
         process.stdin.on('end', () => { db.closeSync(); process.exit(0); });`,
      ],
      { stdio: ['pipe', 'pipe', 'inherit'], cwd: process.cwd(), timeout: 60_000 },
    );
    await new Promise<void>((resolve, reject) => {
      child?.stdout?.on('data', (d: Buffer) => d.toString().includes('held') && resolve());
      child?.once('exit', (code) => reject(new Error(`the holder exited with ${code}`)));
    });
    const started = Date.now();
    await expect(service.balances()).rejects.toMatchObject({ code: 'DATABANK_ERR_UNAVAILABLE', statusCode: 503 });
    expect(Date.now() - started).toBeGreaterThanOrEqual(250);
    const exited = new Promise((resolve) => child?.once('exit', resolve));
    child.stdin?.end();
    await exited;
    child = null;
    expect((await service.books()).books).toHaveLength(4);
    await service.close();
  });
});
