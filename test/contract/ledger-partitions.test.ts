import { sql, type Kysely } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { coreAnswers, invariants, stableText, tableStats } from '../../src/services/backup/manifest.ts';
import { verifyDatabase, type Manifest } from '../../src/services/backup/service.ts';
import { LedgerPartitions } from '../../src/services/ledger-partitions.ts';
import { recordMovement } from '../../src/services/ledger.ts';
import { openingBalance, statementEntries } from '../../src/services/statements.ts';
import { openSqlStore, type SqlStore } from '../../src/stores/sql/index.ts';
import { createMigrator, unwrap } from '../../src/stores/sql/migrator.ts';
import { WorkerHost } from '../../src/workers/host.ts';
import { ledgerPartitions } from '../../src/workers/ledger-partitions.ts';
import { scheduleLock } from '../../src/workers/schedule-lock.ts';
import { checkLedger } from '../support/invariants.ts';
import { createTestDatabase, ENGINES, type TestDatabase } from '../support/engines.ts';
import { captureLogger, nextEvent } from '../workers/support.ts';

/**
 * Migration 0011 turns a populated `ledger_entries` into a table partitioned by month, keeping
 * every row and id; a month's statement reads one partition; the upkeep makes partitions ahead
 * and takes rows out of the default partition; the ledger's triggers hold; down and up again
 * give back the exact ledger.
 */

/** Every relation a JSON plan reads, in plan order. */
function relations(plan: unknown): string[] {
  if (Array.isArray(plan)) return plan.flatMap(relations);
  if (!plan || typeof plan !== 'object') return [];
  const node = plan as Record<string, unknown>;
  const own = typeof node['Relation Name'] === 'string' ? [node['Relation Name']] : [];
  return [...own, ...Object.values(node).flatMap(relations)];
}

/** `ledger_entries_YYYY_MM` of the month `offset` months after `yearMonth` ("2026-12"). */
function partitionOf(yearMonth: string, offset = 0): string {
  const [y, m] = yearMonth.split('-').map(Number) as [number, number];
  const d = new Date(Date.UTC(y, m - 1 + offset, 1));
  return `ledger_entries_${d.getUTCFullYear()}_${String(d.getUTCMonth() + 1).padStart(2, '0')}`;
}

for (const engine of ENGINES) {
  describe(`partitioned ledger (migration 0011) on ${engine}`, () => {
    let db: TestDatabase;
    let store: SqlStore;
    let conn: Kysely<unknown>;
    /** The database's current month, as YYYY-MM in UTC. */
    let thisMonth: string;
    /** The plain table's catalog entries at 0010, which down must give back. */
    let plainShape: unknown;
    /** The ledger as 0010 held it: entries without a time. */
    let before: unknown[];
    /** The ledger transaction the worker's test writes 10 months ahead. */
    let far = 0;

    const rows = async <T = Record<string, unknown>>(text: string) => (await sql.raw<T>(text).execute(conn)).rows;
    const entries = () =>
      rows(`select id, transaction_id, account_id, system_account, amount, currency from ledger_entries order by id`);
    const placement = () =>
      rows<{ id: number; tx: number; p: string }>(`select id, transaction_id as tx, tableoid::regclass::text as p from ledger_entries order by id`);
    /** The transactions whose entries sit in the default partition. */
    const inDefault = async () => [...new Set((await placement()).filter((r) => r.p === 'ledger_entries_default').map((r) => r.tx))];
    const totals = async () =>
      (await rows(`select count(*)::int as n, sum(amount)::text as total, sum(abs(amount))::text as volume from ledger_entries`))[0];
    const shape = () =>
      rows(`select
        (select relkind::text from pg_class where oid = 'ledger_entries'::regclass) as kind,
        (select json_agg(json_build_array(attname, format_type(atttypid, atttypmod), attnotnull, attidentity::text) order by attnum)
          from pg_attribute where attrelid = 'ledger_entries'::regclass and attnum > 0 and not attisdropped) as columns,
        (select json_agg(json_build_array(conname, pg_get_constraintdef(oid)) order by conname)
          from pg_constraint where conrelid = 'ledger_entries'::regclass) as constraints,
        (select json_agg(pg_get_indexdef(indexrelid) order by indexrelid::regclass::text)
          from pg_index where indrelid = 'ledger_entries'::regclass) as indexes,
        (select json_agg(pg_get_triggerdef(oid) order by tgname)
          from pg_trigger where tgrelid = 'ledger_entries'::regclass and not tgisinternal) as triggers`);

    beforeAll(async () => {
      db = await createTestDatabase(engine, `ledger-partitions-${engine}`);
      store = await openSqlStore(db.sql);
      conn = store.db as unknown as Kysely<unknown>;
      unwrap(await createMigrator(store.db).migrateTo('0010_backup_holds'));
      thisMonth = (await rows<{ m: string }>(`select to_char(now() at time zone 'UTC', 'YYYY-MM') as m`))[0]!.m;
      // Movements of several months, two on either side of a month's edge, one of this month and
      // one far ahead (beyond any partition made in advance: the default partition takes it).
      for (const statement of [
        `insert into customers (id, name, date_of_birth) values (1, 'A', '1980-01-01'), (2, 'B', '1981-01-01')`,
        `insert into accounts (account_id, customer_id, account_type, currency) values
          (1, 1, 'checking', 'USD'), (2, 1, 'savings', 'EUR'), (3, 2, 'checking', 'USD')`,
        `insert into ledger_transactions (id, kind, reference, created_at) values
          (1, 'deposit', null, '2026-01-15T10:00:00Z'), (2, 'deposit', null, '2026-02-03T08:00:00Z'),
          (3, 'transfer', null, '2026-02-28T23:59:59.999Z'), (4, 'transfer', null, '2026-03-01T00:00:00Z'),
          (5, 'fee', 'annual-2026', '2026-03-15T12:00:00Z'), (6, 'deposit', null, now()),
          (7, 'deposit', null, date_trunc('month', now() at time zone 'UTC') at time zone 'UTC' + interval '8 months 9 days')`,
        `insert into ledger_entries (transaction_id, account_id, system_account, currency, amount) values
          (1, 1, null, 'USD', 1000), (1, null, 'cash:USD', 'USD', -1000), (2, 2, null, 'EUR', 2000), (2, null, 'cash:EUR', 'EUR', -2000)`,
        `insert into ledger_entries (transaction_id, account_id, system_account, currency, amount) values
          (3, 1, null, 'USD', -100), (3, 3, null, 'USD', 100), (4, 3, null, 'USD', -30), (4, 1, null, 'USD', 30)`,
        `insert into ledger_entries (transaction_id, account_id, system_account, currency, amount) values
          (5, 1, null, 'USD', -10), (5, null, 'fee_income:USD', 'USD', 10), (5, 2, null, 'EUR', -5), (5, null, 'fee_income:EUR', 'EUR', 5)`,
        `insert into ledger_entries (transaction_id, account_id, system_account, currency, amount) values
          (6, 3, null, 'USD', 500), (6, null, 'cash:USD', 'USD', -500), (7, 1, null, 'USD', 70), (7, null, 'cash:USD', 'USD', -70)`,
        `update accounts a set balance = (select sum(amount) from ledger_entries e where e.account_id = a.account_id)`,
        `select setval(pg_get_serial_sequence('ledger_transactions', 'id'), 7)`,
      ]) {
        await sql.raw(statement).execute(conn);
      }
      plainShape = await shape();
      before = await entries();
    });
    afterAll(async () => {
      await store?.close();
      await db?.drop();
    });

    it('up: every row in its month, ids and amounts kept, each entry at its transaction’s time', async () => {
      unwrap(await createMigrator(store.db).migrateTo('0011_partitioned_ledger'));
      expect(await entries()).toEqual(before);
      expect(await totals()).toEqual({ n: 16, total: '0', volume: '7430' });
      const offTime = await rows(`select e.id from ledger_entries e join ledger_transactions t on t.id = e.transaction_id
        where e.created_at <> t.created_at`);
      expect(offTime).toEqual([]);
      const month = (p: string) => [p, p];
      expect((await placement()).map((r) => r.p)).toEqual([
        ...month('ledger_entries_2026_01'),
        ...month('ledger_entries_2026_02'),
        ...month('ledger_entries_2026_02'),
        ...month('ledger_entries_2026_03'),
        ...month('ledger_entries_2026_03'),
        ...month('ledger_entries_2026_03'),
        ...month(partitionOf(thisMonth)),
        ...month('ledger_entries_default'),
      ]);
      // Every month from the oldest entry's to 3 months ahead, then the default partition.
      const months: string[] = [];
      for (let i = 0; months.at(-1) !== partitionOf(thisMonth, 3); i++) months.push(partitionOf('2026-01', i));
      expect(await new LedgerPartitions(store.db).list()).toEqual([...months, 'ledger_entries_default']);
      expect(await checkLedger(store.db)).toMatchObject({ mismatched: [], negative: [], unbalanced: [], wrongCurrency: [] });
    });

    it('ids go on from the old sequence, and a movement’s entries take its time and month', async () => {
      const made = await store.db.transaction().execute((trx) =>
        recordMovement(trx, {
          kind: 'deposit',
          currency: 'USD',
          reference: null,
          entries: [
            { account_id: 1, amount: 7 },
            { system_account: 'cash:USD', amount: -7 },
          ],
          type: 'money.deposited',
          events: [],
        }),
      );
      const rowsOfIt = await rows<{ id: number; created_at: Date; p: string }>(
        `select id, created_at, tableoid::regclass::text as p from ledger_entries where transaction_id = ${made.transaction_id} order by id`,
      );
      expect(rowsOfIt.map((r) => [r.id, r.created_at.toISOString(), r.p])).toEqual([
        [17, made.created_at, partitionOf(thisMonth)],
        [18, made.created_at, partitionOf(thisMonth)],
      ]);
    });

    it('a month’s statement reads that month’s partition only; its opening balance the months before', async () => {
      const from = new Date('2026-02-01T00:00:00Z');
      const to = new Date('2026-03-01T00:00:00Z');
      const plan = await statementEntries(store.db, 1, from, to).explain('json');
      expect(relations(plan).filter((r) => r.startsWith('ledger_entries'))).toEqual(['ledger_entries_2026_02']);
      const opening = await openingBalance(store.db, 1, to).explain('json');
      expect(relations(opening).sort()).toEqual(['ledger_entries_2026_01', 'ledger_entries_2026_02', 'ledger_entries_default']);
      const feb = await statementEntries(store.db, 1, from, to).execute();
      expect(feb.map((e) => [e.id, e.transaction_id, e.created_at.toISOString(), e.kind, e.amount])).toEqual([
        [5, 3, '2026-02-28T23:59:59.999Z', 'transfer', -100],
      ]);
      expect(await openingBalance(store.db, 1, to).executeTakeFirstOrThrow()).toEqual({ sum: 900 });
    });

    it('keeps the zero-sum and append-only rules, on the parent and on each partition', async () => {
      const total = await totals();
      await expect(
        sql`insert into ledger_entries (transaction_id, account_id, currency, amount) values (6, 3, 'USD', 5)`.execute(conn),
      ).rejects.toMatchObject({ code: '23514', message: 'ledger transaction 6 is unbalanced in USD: its entries sum to 5' });
      // A statement naming a partition fires that partition's statement triggers, not the parent's.
      await expect(
        sql`insert into ledger_entries_2026_02 (id, transaction_id, account_id, currency, amount, created_at)
            values (1000, 3, 1, 'USD', 5, '2026-02-28T23:59:59.999Z')`.execute(conn),
      ).rejects.toMatchObject({ code: '23514', message: 'ledger transaction 3 is unbalanced in USD: its entries sum to 5' });
      for (const statement of [
        `update ledger_entries set amount = amount + 1`,
        `delete from ledger_entries where transaction_id = 1`,
        `update ledger_entries_2026_01 set amount = 1`,
        `delete from ledger_entries_default`,
        // Moving an entry to another month is an update too.
        `update ledger_entries set created_at = created_at + interval '1 month' where transaction_id = 2`,
      ]) {
        await expect(sql.raw(statement).execute(conn), statement).rejects.toMatchObject({ code: '42501', message: 'ledger entries are append-only' });
      }
      expect(await totals()).toEqual(total);
    });

    it('the upkeep makes the months ahead once, and takes a month’s rows out of the default partition', async () => {
      const partitions = new LedgerPartitions(store.db);
      expect(await partitions.ensure(3)).toEqual([]);
      expect(await partitions.ensure(5)).toEqual([
        { partition: partitionOf(thisMonth, 4), moved: 0 },
        { partition: partitionOf(thisMonth, 5), moved: 0 },
      ]);
      expect(await partitions.ensure(5)).toEqual([]);
      const total = await totals();
      const ids = await entries();
      expect(await inDefault()).toEqual([7]);
      expect(await partitions.ensure(8)).toEqual([
        { partition: partitionOf(thisMonth, 6), moved: 0 },
        { partition: partitionOf(thisMonth, 7), moved: 0 },
        { partition: partitionOf(thisMonth, 8), moved: 2 },
      ]);
      expect((await placement()).filter((r) => r.tx === 7).map((r) => r.p)).toEqual(Array(2).fill(partitionOf(thisMonth, 8)));
      expect(await rows(`select id from ledger_entries_default`)).toEqual([]);
      expect(await entries()).toEqual(ids);
      expect(await totals()).toEqual(total);
      await expect(partitions.ensure(-1)).rejects.toMatchObject({ code: '22023' });
    });

    it('the worker runs the upkeep as it starts', async () => {
      // A deposit 10 months ahead, written as a writer would (the entries at their transaction's time).
      await sql`with t as (
          insert into ledger_transactions (kind, created_at)
          values ('deposit', date_trunc('month', now() at time zone 'UTC') at time zone 'UTC' + interval '10 months')
          returning id, created_at)
        insert into ledger_entries (transaction_id, account_id, system_account, currency, amount, created_at)
        select t.id, e.account_id, e.system_account, 'USD', e.amount, t.created_at
        from t, (values (3, null, 40), (null, 'cash:USD', -40)) e(account_id, system_account, amount)`.execute(conn);
      await sql`update accounts set balance = balance + 40 where account_id = 3`.execute(conn);
      far = (await rows<{ id: number }>(`select max(id)::int as id from ledger_transactions`))[0]!.id;
      expect(await inDefault()).toEqual([far]);
      const { logger, lines } = captureLogger();
      const host = new WorkerHost([ledgerPartitions(new LedgerPartitions(store.db), scheduleLock(store), logger, { monthsAhead: 10 })], {
        logger,
      });
      const ran = nextEvent(host, (e) => e.type === 'run');
      host.start();
      expect(await ran).toMatchObject({ worker: 'ledger-partitions', ok: true });
      await host.stop();
      expect(lines.find((l) => l.msg === 'ledger partitions created')?.partitions).toEqual([partitionOf(thisMonth, 9), partitionOf(thisMonth, 10)]);
      expect(lines.find((l) => l.msg === 'ledger entries moved out of the default partition')?.partitions).toEqual([
        { partition: partitionOf(thisMonth, 10), moved: 2 },
      ]);
      expect((await placement()).filter((r) => r.tx === far).map((r) => r.p)).toEqual(Array(2).fill(partitionOf(thisMonth, 10)));
      expect(await inDefault()).toEqual([]);
    });

    it('down gives back the plain table with every row and id; up again the exact partitioned ledger', async () => {
      const ledger = await rows(`select * from ledger_entries order by id`);
      const plain = await entries();
      const sequence = async () =>
        (await rows(`select last_value::int as v from ${(await rows<{ s: string }>(`select pg_get_serial_sequence('ledger_entries', 'id') as s`))[0]!.s}`))[0];
      const last = await sequence();
      const migrator = createMigrator(store.db);
      unwrap(await migrator.migrateTo('0010_backup_holds'));
      expect(await shape()).toEqual(plainShape);
      expect(await entries()).toEqual(plain);
      expect(await sequence()).toEqual(last);
      expect(await rows(`select inhrelid from pg_inherits where inhparent = 'ledger_entries'::regclass`)).toEqual([]);
      expect(await rows(`select to_regproc('ledger_ensure_partitions')::text as f`)).toEqual([{ f: null }]);
      unwrap(await migrator.migrateTo('0011_partitioned_ledger'));
      expect(await rows(`select * from ledger_entries order by id`)).toEqual(ledger);
      expect(await sequence()).toEqual(last);
      // Made again from 3 months ahead only: the far months' rows wait in the default partition.
      expect(await inDefault()).toEqual([7, far]);
      expect((await new LedgerPartitions(store.db).ensure(10)).filter((p) => p.moved > 0)).toEqual([
        { partition: partitionOf(thisMonth, 8), moved: 2 },
        { partition: partitionOf(thisMonth, 10), moved: 2 },
      ]);
      expect(await rows(`select * from ledger_entries order by id`)).toEqual(ledger);
      expect(await checkLedger(store.db)).toMatchObject({ mismatched: [], negative: [], unbalanced: [], wrongCurrency: [] });
    });

    it('a backup counts the ledger once, and still checks a manifest that also counted its partitions', async () => {
      const facts = await store.db.transaction().execute(async (trx) => {
        await stableText(trx);
        return { tables: await tableStats(trx), invariants: await invariants(trx), answers: await coreAnswers(trx) };
      });
      const n = (await totals())!.n as number;
      expect(facts.tables['public.ledger_entries']?.rows).toBe(n);
      expect(Object.keys(facts.tables).filter((t) => t.startsWith('public.ledger_entries_'))).toEqual([]);
      // The manifests written before partitions were left out name them besides their parent.
      const older = { ...facts, tables: { ...facts.tables, [`public.${partitionOf('2026-02')}`]: { rows: 4, checksum: '1' } } };
      const checks: Array<[string, boolean]> = [];
      await verifyDatabase(store.db, older as unknown as Manifest, (name, ok) => checks.push([name, ok]));
      expect(checks.filter(([, ok]) => !ok)).toEqual([]);
      expect(checks.map(([name]) => name)).toContain('table public.ledger_entries');
      expect(checks.map(([name]) => name)).not.toContain(`table public.${partitionOf('2026-02')}`);
      // A table the restore lacks is still missing, partition or not.
      const wrong = { ...facts, tables: { ...facts.tables, 'public.ledger_entries_1999_01': { rows: 1, checksum: '1' } } };
      const failed: string[] = [];
      await verifyDatabase(store.db, wrong as unknown as Manifest, (name, ok) => void (ok || failed.push(name)));
      expect(failed).toEqual(['table public.ledger_entries_1999_01']);
    });
  });
}
