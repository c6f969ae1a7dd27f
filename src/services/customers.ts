import { sql, type Kysely } from 'kysely';
import { assertBirthDate, assertRealDate } from '../domain/dates.ts';
import { DatabankError } from '../domain/errors.ts';
import { BASE_CURRENCY } from '../domain/money.ts';
import type { Customer, Page, Principal } from '../domain/types.ts';
import type { Db } from '../stores/sql/port.ts';
import type { Database } from '../stores/sql/schema.ts';
import { assertAdmin, assertOwns } from './access.ts';
import { decodeCursor, toPage } from './paging.ts';
import type { CachedReads, CacheOutcome } from './cached-reads.ts';
import { appendEvents } from './outbox.ts';
import { inTransaction, read } from './transaction.ts';

export interface ListCustomersQuery {
  readonly bornAfter?: string;
  readonly limit: number;
  readonly cursor?: string;
}

/**
 * Customers: who they are, and what their accounts hold: `balances` per currency, and `balance`,
 * the sum of the accounts in the base currency (USD) only.
 */
export class CustomersService {
  constructor(
    private readonly db: Db,
    private readonly cache: CachedReads,
  ) {}

  /** Customers ordered by id; a customer key sees only its own customer. */
  async list(principal: Principal, query: ListCustomersQuery): Promise<Page<Customer>> {
    if (query.bornAfter !== undefined) assertRealDate(query.bornAfter, 'born_after');
    const after = decodeCursor(query.cursor) ?? 0;
    const own = principal.role === 'customer' ? principal.customerId : null;
    const rows = await read(() =>
      this.selectCustomers()
        .where('c.id', '>', after)
        .$if(query.bornAfter !== undefined, (q) => q.where('c.date_of_birth', '>', query.bornAfter as string))
        .$if(own !== null, (q) => q.where('c.id', '=', own as number))
        .orderBy('c.id')
        .limit(query.limit + 1)
        .execute(),
    );
    return toPage(rows, query.limit, (c) => c.id);
  }

  async get(principal: Principal, id: number): Promise<Customer> {
    return (await this.getCached(principal, id)).value;
  }

  /** The customer, read through the cache; `cache` says where it came from. */
  async getCached(principal: Principal, id: number): Promise<{ value: Customer; cache: CacheOutcome }> {
    assertOwns(principal, id);
    const { value, cache } = await this.cache.getOrLoad('customer', id, async () => {
      const row = await read(() => this.selectCustomers().where('c.id', '=', id).executeTakeFirst());
      return row ?? null;
    });
    if (!value) throw new DatabankError('DATABANK_ERR_NOT_FOUND', `customer ${id} does not exist`);
    return { value, cache };
  }

  async create(principal: Principal, input: { name: string; date_of_birth: string }): Promise<Customer> {
    // Before the role check, as when the HTTP layer checked the date: a bad date is a 400 for anyone.
    assertBirthDate(input.date_of_birth);
    assertAdmin(principal);
    const created = await inTransaction(this.db.writer, async (trx) => {
      const row = await trx
        .insertInto('customers')
        .values({ name: input.name, date_of_birth: input.date_of_birth })
        .returning(['id', 'name', 'date_of_birth'])
        .executeTakeFirstOrThrow();
      const customer: Customer = { ...row, balance: 0, balances: {} };
      await appendEvents(trx, [
        { type: 'customer.registered', aggregate_id: row.id, customer_ids: [row.id], payload: customerPayload(row) },
      ]);
      return customer;
    });
    // A "does not exist" may be cached for this id.
    await this.cache.invalidate([['customer', created.id]]);
    return created;
  }

  async update(principal: Principal, id: number, input: { name?: string }): Promise<Customer> {
    assertOwns(principal, id);
    const name = input.name;
    if (name === undefined) return this.get(principal, id);
    const updated = await inTransaction(this.db.writer, async (trx) => {
      await trx.updateTable('customers').set({ name }).where('id', '=', id).execute();
      const customer = await this.selectCustomers(trx).where('c.id', '=', id).executeTakeFirst();
      if (!customer) throw new DatabankError('DATABANK_ERR_NOT_FOUND', `customer ${id} does not exist`);
      await appendEvents(trx, [{ type: 'customer.updated', aggregate_id: id, customer_ids: [id], payload: customerPayload(customer) }]);
      return customer;
    });
    await this.cache.invalidate([['customer', id]]);
    return updated;
  }

  /** Customers with their balances; on `reader` unless a transaction passes itself. */
  private selectCustomers(db: Kysely<Database> = this.db.reader) {
    return db
      .selectFrom('customers as c')
      .select([
        'c.id',
        'c.name',
        'c.date_of_birth',
        sql<number>`coalesce((select sum(a.balance) from accounts a
          where a.customer_id = c.id and a.currency = ${BASE_CURRENCY}), 0)::bigint`.as('balance'),
        // jsonb keeps the sums exact: each is at most DATABANK_MAX_ACCOUNTS_PER_CUSTOMER × 10^14.
        sql<Customer['balances']>`coalesce((select jsonb_object_agg(s.currency, s.total) from (
          select a.currency, sum(a.balance) as total from accounts a where a.customer_id = c.id group by a.currency
        ) s), '{}'::jsonb)`.as('balances'),
      ]);
  }
}

/** A customer's event payload: who the customer is, not its balances (which other events carry). */
export function customerPayload(c: { id: number; name: string; date_of_birth: string }) {
  return { customer_id: c.id, name: c.name, date_of_birth: c.date_of_birth };
}
