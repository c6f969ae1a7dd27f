import { sql, type Kysely } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openSqlStore, type SqlStore } from '../../src/stores/sql/index.ts';
import { createMigrator, unwrap } from '../../src/stores/sql/migrator.ts';
import { createTestDatabase, ENGINES, type TestDatabase } from '../support/engines.ts';

/**
 * Migration 0005 converts a ledger with one `cash` and one `fee_income` into one ledger per
 * currency without changing a balance, and its down restores the old shape exactly.
 */
for (const engine of ENGINES) {
  describe(`migration 0005 (one ledger per currency) on ${engine}`, () => {
    let db: TestDatabase;
    let store: SqlStore;
    let conn: Kysely<unknown>;
    beforeAll(async () => {
      db = await createTestDatabase(engine, `currency-ledgers-${engine}`);
      store = await openSqlStore(db.sql);
      conn = store.db as unknown as Kysely<unknown>;
      unwrap(await createMigrator(store.db).migrateTo('0004_amount_checks'));
      // The old shape, as 0004's code wrote it: deposits against `cash`, one fee run that charged a
      // USD, a EUR and a GBP account and booked the sum into one `fee_income`, and a transfer.
      for (const statement of [
        `insert into customers (id, name, date_of_birth) values (1, 'A', '1980-01-01'), (2, 'B', '1981-01-01')`,
        `insert into accounts (account_id, customer_id, account_type, currency) values
          (1, 1, 'checking', 'USD'), (2, 1, 'savings', 'EUR'), (3, 2, 'checking', 'GBP'), (4, 2, 'checking', 'USD')`,
        `insert into ledger_transactions (id, kind, reference) values
          (1, 'deposit', null), (2, 'deposit', null), (3, 'deposit', null), (4, 'deposit', null),
          (5, 'fee', 'annual'), (6, 'transfer', null), (7, 'withdrawal', null)`,
        `insert into ledger_entries (transaction_id, account_id, system_account, amount) values
          (1, 1, null, 1000), (1, null, 'cash', -1000),
          (2, 2, null, 2000), (2, null, 'cash', -2000),
          (3, 3, null, 3000), (3, null, 'cash', -3000),
          (4, 4, null, 400), (4, null, 'cash', -400)`,
        `insert into ledger_entries (transaction_id, account_id, system_account, amount) values
          (5, 1, null, -10), (5, 2, null, -10), (5, 3, null, -10), (5, 4, null, -10), (5, null, 'fee_income', 40)`,
        `insert into ledger_entries (transaction_id, account_id, system_account, amount) values
          (6, 1, null, -90), (6, 4, null, 90)`,
        `insert into ledger_entries (transaction_id, account_id, system_account, amount) values
          (7, 3, null, -5), (7, null, 'cash', 5)`,
        `update accounts set balance = case account_id when 1 then 900 when 2 then 1990 when 3 then 2985 when 4 then 480 end`,
        `select setval(pg_get_serial_sequence('ledger_transactions', 'id'), 7)`,
        `insert into idempotency_keys (scope, key, request_hash, state, locked_until, expires_at)
          values ('key:1', 'in-flight', 'h', 'in_flight', now() + interval '1 minute', now() + interval '1 day')`,
      ]) {
        await sql.raw(statement).execute(conn);
      }
    });
    afterAll(async () => {
      await store?.close();
      await db?.drop();
    });

    const balances = async () =>
      (await sql<{ account_id: number; balance: number }>`select account_id, balance from accounts order by account_id`.execute(conn))
        .rows;
    const systemEntries = async (withCurrency: boolean) =>
      (
        await sql.raw<{ transaction_id: number; system_account: string; amount: number; currency?: string }>(
          `select transaction_id, system_account, amount${withCurrency ? ', currency' : ''} from ledger_entries
           where system_account is not null order by transaction_id, system_account`,
        ).execute(conn)
      ).rows;
    const OLD_SYSTEM = [
      { transaction_id: 1, system_account: 'cash', amount: -1000 },
      { transaction_id: 2, system_account: 'cash', amount: -2000 },
      { transaction_id: 3, system_account: 'cash', amount: -3000 },
      { transaction_id: 4, system_account: 'cash', amount: -400 },
      { transaction_id: 5, system_account: 'fee_income', amount: 40 },
      { transaction_id: 7, system_account: 'cash', amount: 5 },
    ];
    const NEW_SYSTEM = [
      { transaction_id: 1, system_account: 'cash:USD', amount: -1000, currency: 'USD' },
      { transaction_id: 2, system_account: 'cash:EUR', amount: -2000, currency: 'EUR' },
      { transaction_id: 3, system_account: 'cash:GBP', amount: -3000, currency: 'GBP' },
      { transaction_id: 4, system_account: 'cash:USD', amount: -400, currency: 'USD' },
      { transaction_id: 5, system_account: 'fee_income:EUR', amount: 10, currency: 'EUR' },
      { transaction_id: 5, system_account: 'fee_income:GBP', amount: 10, currency: 'GBP' },
      { transaction_id: 5, system_account: 'fee_income:USD', amount: 20, currency: 'USD' },
      { transaction_id: 7, system_account: 'cash:GBP', amount: 5, currency: 'GBP' },
    ];
    const EXPECTED_BALANCES = [
      { account_id: 1, balance: 900 },
      { account_id: 2, balance: 1990 },
      { account_id: 3, balance: 2985 },
      { account_id: 4, balance: 480 },
    ];
    const perCurrencySums = async () =>
      (
        await sql<{ n: number }>`select count(*)::int as n from (select transaction_id, currency from ledger_entries
          group by transaction_id, currency having sum(amount) <> 0) bad`.execute(conn)
      ).rows[0]?.n;
    const customerEntries = async () =>
      (
        await sql<{ transaction_id: number; account_id: number; amount: number }>`select transaction_id, account_id, amount
          from ledger_entries where account_id is not null order by transaction_id, account_id`.execute(conn)
      ).rows;

    it('up: splits the fee into one fee_income per currency, names cash per currency, changes no balance', async () => {
      expect(await systemEntries(false)).toEqual(OLD_SYSTEM);
      const before = await customerEntries();
      unwrap(await createMigrator(store.db).migrateTo('0005_currency_ledgers'));
      expect(await balances()).toEqual(EXPECTED_BALANCES);
      expect(await systemEntries(true)).toEqual(NEW_SYSTEM);
      expect(await customerEntries()).toEqual(before);
      expect(await perCurrencySums()).toBe(0);
    });

    it('down restores one cash and one fee_income per transaction; up again gives the same ledger', async () => {
      const migrator = createMigrator(store.db);
      unwrap(await migrator.migrateTo('0004_amount_checks'));
      expect(await balances()).toEqual(EXPECTED_BALANCES);
      expect(await systemEntries(false)).toEqual(OLD_SYSTEM);
      const columns = await sql<{ n: number }>`select count(*)::int as n from information_schema.columns
        where table_name = 'ledger_entries' and column_name = 'currency'`.execute(conn);
      expect(columns.rows[0]?.n).toBe(0);
      unwrap(await migrator.migrateTo('0005_currency_ledgers'));
      expect(await balances()).toEqual(EXPECTED_BALANCES);
      expect(await systemEntries(true)).toEqual(NEW_SYSTEM);
      expect(await perCurrencySums()).toBe(0);
    });

    it('after up, a claim left in flight by the old code no longer blocks its key', async () => {
      unwrap(await createMigrator(store.db).migrateToLatest());
      const done = await sql<{ outcome: string; out_transfer_id: number }>`
        select outcome, out_transfer_id from databank_transfer(1, 4, 5, null, 'key:1', 'in-flight', 'h2', 100000000000000)`.execute(
        conn,
      );
      expect(done.rows[0]?.outcome).toBe('completed');
      const again = await sql<{ outcome: string; out_replay_status: number; out_replay_hash: string }>`
        select outcome, out_replay_status, out_replay_hash
        from databank_transfer(1, 4, 5, null, 'key:1', 'in-flight', 'h2', 100000000000000)`.execute(conn);
      expect(again.rows[0]).toEqual({ outcome: 'replay', out_replay_status: 201, out_replay_hash: 'h2' });
      expect(await balances()).toEqual([
        { account_id: 1, balance: 895 },
        { account_id: 2, balance: 1990 },
        { account_id: 3, balance: 2985 },
        { account_id: 4, balance: 485 },
      ]);
    });
  });
}
