import { DatabankError } from '../domain/errors.ts';
import type { AccountType, Currency } from '../domain/money.ts';
import type { Account, LedgerEntry, Page, Principal } from '../domain/types.ts';
import type { Db } from '../stores/sql/port.ts';
import { assertOwns } from './access.ts';
import { decodeCursor, toPage } from './paging.ts';
import { movedMoney, type CachedReads, type CacheOutcome } from './cached-reads.ts';
import { appendEvents } from './outbox.ts';
import { inTransaction, read } from './transaction.ts';

const ACCOUNT_COLUMNS = ['account_id', 'account_type', 'balance', 'customer_id', 'currency'] as const;

/** Accounts and their ledger. Money moves through the movement services, never here. */
export class AccountsService {
  constructor(
    private readonly db: Db,
    private readonly cache: CachedReads,
    /** `DATABANK_MAX_ACCOUNTS_PER_CUSTOMER`. */
    private readonly maxAccountsPerCustomer: number,
  ) {}

  async open(principal: Principal, customerId: number, input: { account_type: AccountType; currency?: Currency }) {
    assertOwns(principal, customerId);
    const account = await inTransaction(this.db.writer, async (trx): Promise<Account> => {
      // The customer's row lock queues concurrent opens for one customer, so the count holds.
      const customer = await trx
        .selectFrom('customers')
        .select('id')
        .where('id', '=', customerId)
        .forUpdate()
        .executeTakeFirst();
      if (!customer) throw new DatabankError('DATABANK_ERR_NOT_FOUND', `customer ${customerId} does not exist`);
      const { count } = await trx
        .selectFrom('accounts')
        .select((eb) => eb.fn.countAll<number>().as('count'))
        .where('customer_id', '=', customerId)
        .executeTakeFirstOrThrow();
      if (Number(count) >= this.maxAccountsPerCustomer) {
        throw new DatabankError(
          'DATABANK_ERR_QUOTA_EXCEEDED',
          `accounts: customer ${customerId} already holds ${this.maxAccountsPerCustomer} accounts (DATABANK_MAX_ACCOUNTS_PER_CUSTOMER)`,
        );
      }
      const account = await trx
        .insertInto('accounts')
        .values({ customer_id: customerId, account_type: input.account_type, currency: input.currency ?? 'USD' })
        .returning(ACCOUNT_COLUMNS)
        .executeTakeFirstOrThrow();
      await appendEvents(trx, [{ type: 'account.opened', aggregate_id: account.account_id, customer_ids: [customerId], payload: accountPayload(account) }]);
      return account;
    });
    await this.cache.invalidate(movedMoney([[account.account_id, customerId]]));
    return account;
  }

  async get(principal: Principal, accountId: number): Promise<Account> {
    return (await this.getCached(principal, accountId)).value;
  }

  /** The account, read through the cache; `cache` says where it came from. */
  async getCached(principal: Principal, accountId: number): Promise<{ value: Account; cache: CacheOutcome }> {
    const { value, cache } = await this.cache.getOrLoad('account', accountId, async () => {
      const row = await read(() =>
        this.db.reader.selectFrom('accounts').select(ACCOUNT_COLUMNS).where('account_id', '=', accountId).executeTakeFirst(),
      );
      return row ?? null;
    });
    // Ownership is checked on every read, cached or not.
    assertOwns(principal, value?.customer_id);
    return { value: value as Account, cache };
  }

  /**
   * A page of the customer's accounts in id order. The whole list (at most the account quota) is
   * what the cache holds; pages are cut from it.
   */
  async listForCustomer(
    principal: Principal,
    customerId: number,
    query: { limit: number; cursor?: string },
  ): Promise<{ value: Page<Account>; cache: CacheOutcome }> {
    assertOwns(principal, customerId);
    const after = decodeCursor(query.cursor) ?? 0;
    const { value, cache } = await this.cache.getOrLoad('customer-accounts', customerId, async () => {
      const [customer, accounts] = await read(() =>
        Promise.all([
          this.db.reader.selectFrom('customers').select('id').where('id', '=', customerId).executeTakeFirst(),
          this.db.reader
            .selectFrom('accounts')
            .select(ACCOUNT_COLUMNS)
            .where('customer_id', '=', customerId)
            .orderBy('account_id')
            .execute(),
        ]),
      );
      return customer ? { result: accounts } : null;
    });
    if (!value) throw new DatabankError('DATABANK_ERR_NOT_FOUND', `customer ${customerId} does not exist`);
    const rest = value.result.filter((a) => a.account_id > after);
    return { value: toPage(rest.slice(0, query.limit + 1), query.limit, (a) => a.account_id), cache };
  }

  /** The account's ledger entries, newest first. */
  async entries(principal: Principal, accountId: number, query: { limit: number; cursor?: string }) {
    await this.get(principal, accountId);
    const before = decodeCursor(query.cursor);
    const rows = await read(() =>
      this.db.reader
        .selectFrom('ledger_entries as e')
        .innerJoin('ledger_transactions as t', 't.id', 'e.transaction_id')
        .select(['e.id as entry_id', 'e.transaction_id', 't.kind', 'e.amount', 't.reference', 't.created_at'])
        .where('e.account_id', '=', accountId)
        .$if(before !== null, (q) => q.where('e.id', '<', before as number))
        .orderBy('e.id', 'desc')
        .limit(query.limit + 1)
        .execute(),
    );
    const entries: LedgerEntry[] = rows.map((r) => ({ ...r, created_at: r.created_at.toISOString() }));
    return toPage(entries, query.limit, (e) => e.entry_id);
  }
}

/** An account's event payload: the account as opened. */
export function accountPayload(a: { account_id: number; customer_id: number; account_type: string; currency: string }) {
  return { account_id: a.account_id, customer_id: a.customer_id, account_type: a.account_type, currency: a.currency };
}
