import { sql, type Kysely } from 'kysely';
import type { Db } from '../stores/sql/port.ts';
import type { Database } from '../stores/sql/schema.ts';
import type { ApiKeysService } from './api-keys.ts';
import { accountPayload } from './accounts.ts';
import { customerPayload } from './customers.ts';
import { recordMovement } from './ledger.ts';
import { appendEvents } from './outbox.ts';
import { inTransaction } from './transaction.ts';

/** The chapter's customers (Table 18), each with one checking account holding its balance. */
export const CHAPTER_CUSTOMERS = [
  { id: 1, name: 'Brian Kim', date_of_birth: '1948-09-23', balance: 1500 },
  { id: 2, name: 'Karen Johnson', date_of_birth: '1989-11-18', balance: 4853 },
  { id: 3, name: 'Wade Feinstein', date_of_birth: '1965-02-25', balance: 2150 },
] as const;

/** Any number for the advisory lock, as long as it is the same in every process. */
const BOOTSTRAP_LOCK = 7_270_001;

export interface BootstrapResult {
  readonly seeded: boolean;
  /** The admin key made on this start, or null when one existed already. Show it once. */
  readonly adminKey: string | null;
}

/**
 * What a first start does to an empty database: load the demo customers (when asked and when there
 * are no customers yet) and make an admin key (when there is none). Runs under an advisory lock so
 * that several instances starting at once do it once. Every statement runs on the primary: what is
 * there decides what is written.
 */
export async function bootstrap(
  db: Db,
  apiKeys: ApiKeysService,
  options: { demoData: boolean },
): Promise<BootstrapResult> {
  return inTransaction(db.writer, async (trx) => {
    await sql`select pg_advisory_xact_lock(${BOOTSTRAP_LOCK})`.execute(trx);
    const seeded = options.demoData ? await seedIfEmpty(trx) : false;
    const adminKey = (await apiKeys.hasAdminKey(trx)) ? null : (await apiKeys.create('admin', null, trx)).key;
    return { seeded, adminKey };
  });
}

/** Loads the chapter's customers when there are none; returns whether it did. */
export async function seedIfEmpty(db: Kysely<Database>): Promise<boolean> {
  const any = await db.selectFrom('customers').select('id').limit(1).executeTakeFirst();
  if (any) return false;
  await db
    .insertInto('customers')
    .values(CHAPTER_CUSTOMERS.map(({ id, name, date_of_birth }) => ({ id, name, date_of_birth })))
    .execute();
  await db
    .insertInto('accounts')
    .values(CHAPTER_CUSTOMERS.map((c) => ({ account_id: c.id, customer_id: c.id, account_type: 'checking' as const })))
    .execute();
  await appendEvents(
    db,
    CHAPTER_CUSTOMERS.flatMap((c) => [
      { type: 'customer.registered' as const, aggregate_id: c.id, customer_ids: [c.id], payload: customerPayload(c) },
      {
        type: 'account.opened' as const,
        aggregate_id: c.id,
        customer_ids: [c.id],
        payload: accountPayload({ account_id: c.id, customer_id: c.id, account_type: 'checking', currency: 'USD' }),
      },
    ]),
  );
  // Explicit ids leave the identity sequences behind; move them past the demo rows.
  await sql`select setval(pg_get_serial_sequence('customers', 'id'), (select max(id) from customers))`.execute(db);
  await sql`select setval(pg_get_serial_sequence('accounts', 'account_id'), (select max(account_id) from accounts))`.execute(db);
  for (const c of CHAPTER_CUSTOMERS) {
    // Opening balances are deposits, so that every balance equals the sum of its ledger entries.
    await recordMovement(db, {
      kind: 'deposit',
      currency: 'USD',
      reference: 'opening-balance',
      entries: [
        { account_id: c.id, amount: c.balance },
        { system_account: 'cash:USD', amount: -c.balance },
      ],
      type: 'money.deposited',
      events: [
        { aggregate_id: c.id, customer_ids: [c.id], payload: { account_id: c.id, customer_id: c.id, amount: c.balance, currency: 'USD' } },
      ],
    });
  }
  return true;
}
