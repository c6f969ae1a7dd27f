import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { seedIfEmpty } from '../../src/services/bootstrap.ts';
import { BALANCE_CEILING } from '../../src/config.ts';
import { inTransaction } from '../../src/services/transaction.ts';
import { openSqlStore, type SqlStore } from '../../src/stores/sql/index.ts';
import { createMigrator, unwrap } from '../../src/stores/sql/migrator.ts';
import { createTestDatabase, ENGINES, type TestDatabase } from '../support/engines.ts';

/** The database itself refuses amounts below 1 (migration 0004), whoever calls it. */
for (const engine of ENGINES) {
  describe(`amount checks in the database on ${engine}`, () => {
    let db: TestDatabase;
    let store: SqlStore;
    beforeAll(async () => {
      db = await createTestDatabase(engine, `amount-checks-${engine}`);
      store = await openSqlStore(db.sql);
      unwrap(await createMigrator(store.db).migrateToLatest());
      await inTransaction(store.db, (trx) => seedIfEmpty(trx));
    });
    afterAll(async () => {
      await store?.close();
      await db?.drop();
    });

    const transfer = (amount: number) =>
      sql<{ outcome: string }>`select outcome from databank_transfer(1, 2, ${amount}::bigint, null, null, null, null, ${BALANCE_CEILING}::bigint)`.execute(
        store.db,
      );
    /** Balances, ledger entries and outbox rows: what a refused transfer must leave alone. */
    const state = async () => {
      const r = await sql<{ balances: string; entries: string; events: string }>`
        select (select string_agg(account_id || ':' || balance, ',' order by account_id) from accounts) as balances,
          (select count(*) from ledger_entries) as entries, (select count(*) from outbox) as events`.execute(store.db);
      return r.rows[0];
    };

    it('databank_transfer refuses -500 and 0 with SQLSTATE 22023, and changes nothing', async () => {
      const before = await state();
      expect(before?.balances).toBe('1:1500,2:4853,3:2150');
      for (const amount of [-500, 0]) {
        await expect(transfer(amount), String(amount)).rejects.toMatchObject({
          code: '22023',
          message: expect.stringMatching(/amount must be a positive number of minor units, got -?\d+/),
        });
      }
      expect(await state()).toEqual(before);
    });

    it('databank_transfer still moves a positive amount', async () => {
      expect((await transfer(500)).rows[0]?.outcome).toBe('completed');
      expect((await state())?.balances).toBe('1:1000,2:5353,3:2150');
    });

    it('refuses a ledger entry of 0', async () => {
      const tx = await sql<{ id: number }>`insert into ledger_transactions (kind) values ('deposit') returning id`.execute(
        store.db,
      );
      await expect(
        sql`insert into ledger_entries (transaction_id, account_id, system_account, currency, amount)
            values (${tx.rows[0]?.id}::bigint, 1, null, 'USD', 0), (${tx.rows[0]?.id}::bigint, null, 'cash:USD', 'USD', 0)`.execute(store.db),
      ).rejects.toMatchObject({ code: '23514' });
    });

    it('refuses a money event whose amount is not above 0, and leaves other events alone', async () => {
      const event = (type: string, payload: object) =>
        sql`insert into outbox (type, aggregate_id, payload) values (${type}, '1', ${JSON.stringify(payload)}::jsonb)`.execute(
          store.db,
        );
      // The money events by their names since 0007.
      for (const topic of ['money.deposited', 'money.withdrawn', 'transfer.completed', 'fee.charged']) {
        for (const payload of [{ amount: -500 }, { amount: 0 }, { amount: '5' }, {}]) {
          await expect(event(topic, payload), `${topic} ${JSON.stringify(payload)}`).rejects.toMatchObject({
            code: '23514',
            message: expect.stringContaining('outbox_money_amount_positive'),
          });
        }
        await event(topic, { amount: 5 });
      }
      await event('customer.registered', { id: 1 });
    });

    it('down restores the function of 0002 and drops the check; up brings both back', async () => {
      const guarded = async () => {
        const r = await sql<{ src: string; checks: string }>`
          select (select prosrc from pg_proc where proname = 'databank_transfer') as src,
            (select count(*) from pg_constraint where conname = 'outbox_money_amount_positive') as checks`.execute(store.db);
        return { guard: r.rows[0]?.src.includes('must be a positive number') ?? false, checks: Number(r.rows[0]?.checks) };
      };
      const migrator = createMigrator(store.db);
      expect(await guarded()).toEqual({ guard: true, checks: 1 });
      unwrap(await migrator.migrateTo('0003_files'));
      expect(await guarded()).toEqual({ guard: false, checks: 0 });
      unwrap(await migrator.migrateTo('0004_amount_checks'));
      expect(await guarded()).toEqual({ guard: true, checks: 1 });
      // 0004's own signature, as 0005's down restored it.
      await expect(
        sql`select outcome from databank_transfer(1, 2, -500, null, null, null)`.execute(store.db),
      ).rejects.toMatchObject({ code: '22023' });
      unwrap(await migrator.migrateToLatest());
      expect(await guarded()).toEqual({ guard: true, checks: 1 });
      await expect(transfer(-500)).rejects.toMatchObject({ code: '22023' });
    });
  });
}
