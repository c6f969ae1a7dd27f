import { NO_MIGRATIONS, sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openSqlStore, type SqlStore } from '../../src/stores/sql/index.ts';
import { createMigrator, migrationStatus, unwrap } from '../../src/stores/sql/migrator.ts';
import { MIGRATIONS } from '../../src/stores/sql/migrations/index.ts';
import { createTestDatabase, ENGINES, type TestDatabase } from '../support/engines.ts';

const TABLES = [
  'accounts', 'api_keys', 'audit_events', 'backup_holds', 'collection_schemas', 'customers', 'documents', 'event_log', 'fee_charges',
  'file_variants', 'files', 'idempotency_keys', 'jobs', 'ledger_entries', 'ledger_transactions', 'outbox', 'processed_messages',
  'search_index', 'search_words', 'stream_groups', 'system_accounts',
];

/** The schema's tables; partitions (the ledger's months: test/contract/ledger-partitions.test.ts) left out. */
async function tables(store: SqlStore): Promise<string[]> {
  const rows = await sql<{ table_name: string }>`
    select table_name from information_schema.tables t
    where table_schema = 'public' and table_name not like 'databank_migrations%'
      and not exists (select 1 from pg_class c where c.oid = to_regclass(quote_ident(t.table_name)) and c.relispartition)
    order by table_name`.execute(store.db);
  return rows.rows.map((r) => r.table_name);
}

for (const engine of ENGINES) {
  describe(`SQL store on ${engine}`, () => {
    let db: TestDatabase;
    let store: SqlStore;
    beforeAll(async () => {
      db = await createTestDatabase(engine, `sql-store-${engine}`);
      store = await openSqlStore(db.sql);
    });
    afterAll(async () => {
      await store?.close();
      await db?.drop();
    });

    it('runs every migration up, all the way down, and up again', async () => {
      const migrator = createMigrator(store.db);
      const names = Object.keys(MIGRATIONS);
      const up = unwrap(await migrator.migrateToLatest());
      expect(up.results?.map((r) => [r.migrationName, r.direction, r.status])).toEqual(
        names.map((n) => [n, 'Up', 'Success']),
      );
      expect(await tables(store)).toEqual(TABLES);
      const down = unwrap(await migrator.migrateTo(NO_MIGRATIONS));
      expect(down.results?.map((r) => r.direction)).toEqual(names.map(() => 'Down'));
      expect(await tables(store)).toEqual([]);
      unwrap(await migrator.migrateToLatest());
      expect(await tables(store)).toEqual(TABLES);
      expect((await migrationStatus(store.db)).every((m) => m.executedAt instanceof Date)).toBe(true);
    });

    it('refuses a ledger transaction whose entries do not sum to zero', async () => {
      await sql`insert into customers (name, date_of_birth) values ('T', '1990-01-01')`.execute(store.db);
      await sql`insert into accounts (customer_id, account_type) select max(id), 'checking' from customers`.execute(store.db);
      const tx = await sql<{ id: number }>`insert into ledger_transactions (kind) values ('deposit') returning id`.execute(
        store.db,
      );
      const id = tx.rows[0]?.id;
      await expect(
        sql`insert into ledger_entries (transaction_id, account_id, currency, amount)
            select ${id}::bigint, max(account_id), 'USD', 5 from accounts`.execute(store.db),
      ).rejects.toThrow(/unbalanced in USD: its entries sum to 5/);
      await expect(
        sql`insert into ledger_entries (transaction_id, account_id, system_account, currency, amount)
            select ${id}::bigint, max(account_id), null, 'USD', 5 from accounts
            union all select ${id}::bigint, null, 'cash:USD', 'USD', -4`.execute(store.db),
      ).rejects.toThrow(/unbalanced/);
      await sql`insert into ledger_entries (transaction_id, account_id, system_account, currency, amount)
          select ${id}::bigint, max(account_id), null, 'USD', 5 from accounts
          union all select ${id}::bigint, null, 'cash:USD', 'USD', -5`.execute(store.db);
    });

    it('keeps ledger entries append-only and balances non-negative', async () => {
      await expect(sql`update ledger_entries set amount = amount + 1`.execute(store.db)).rejects.toThrow(/append-only/);
      await expect(sql`delete from ledger_entries`.execute(store.db)).rejects.toThrow(/append-only/);
      await expect(sql`update accounts set balance = -1`.execute(store.db)).rejects.toThrow(/check constraint/);
    });

    it('returns bigints as exact numbers and dates as YYYY-MM-DD', async () => {
      const r = await sql<{ big: number; d: string; s: number }>`
        select 9007199254740991::bigint as big, '1965-02-25'::date as d, sum(x)::bigint as s from (values (1::bigint), (2)) v(x)`.execute(
        store.db,
      );
      expect(r.rows[0]).toEqual({ big: 9007199254740991, d: '1965-02-25', s: 3 });
      await expect(sql`select 9007199254740993::bigint as big`.execute(store.db)).rejects.toThrow(/safe range/);
    });

    it('answers ping and reports capabilities as data', async () => {
      await store.ping(2_000);
      expect(store.capabilities).toEqual(
        engine === 'pglite' ? { multipleConnections: false, listen: false } : { multipleConnections: true, listen: true },
      );
    });
  });
}

describe.skipIf(!ENGINES.includes('postgres'))('migration lock on PostgreSQL', () => {
  it('two processes migrating at once apply each migration exactly once', async () => {
    const db = await createTestDatabase('postgres', 'migration-lock');
    const stores = await Promise.all([openSqlStore(db.sql), openSqlStore(db.sql), openSqlStore(db.sql)]);
    try {
      const results = await Promise.all(stores.map((s) => createMigrator(s.db).migrateToLatest()));
      for (const r of results) expect(r.error).toBeUndefined();
      const applied = results.flatMap((r) => r.results ?? []).map((r) => r.migrationName);
      expect(applied.sort()).toEqual(Object.keys(MIGRATIONS).sort());
      const rows = await sql<{ n: number }>`select count(*)::bigint as n from databank_migrations`.execute(stores[0]!.db);
      expect(rows.rows[0]?.n).toBe(Object.keys(MIGRATIONS).length);
    } finally {
      for (const s of stores) await s.close();
      await db.drop();
    }
  });
});
