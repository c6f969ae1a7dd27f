import { DatabankError } from '../domain/errors.ts';
import { assertAmount, assertWithinBalance, balanceLimit } from '../domain/money.ts';
import type { Movement, Principal } from '../domain/types.ts';
import type { Db } from '../stores/sql/port.ts';
import { assertAdmin } from './access.ts';
import { IdempotentReplay, type IdempotencyClaim, type IdempotencyService } from './idempotency.ts';
import { recordMovement } from './ledger.ts';
import { lockAccounts } from './locks.ts';
import { movedMoney, type CachedReads } from './cached-reads.ts';
import type { MoneyWriter } from './money-writer.ts';
import { inTransaction, type RetryOptions } from './transaction.ts';

/**
 * Money entering or leaving the bank: a deposit credits an account from cash, a withdrawal pays out.
 * With a batching writer (`DATABANK_BATCH_MAX` above 1) they go with the transfers of the moment in
 * one `databank_money_batch` call, which checks and writes them as the transaction below does.
 */
export class MovementsService {
  constructor(
    private readonly db: Db,
    private readonly idempotency: IdempotencyService,
    private readonly cache: CachedReads,
    /** `DATABANK_MAX_BALANCE`: a deposit never takes an account past it. */
    private readonly maxBalance: number,
    private readonly retry?: RetryOptions,
    /** The batching writer; without one each movement is its own transaction. */
    private readonly writer?: MoneyWriter,
  ) {}

  deposit(principal: Principal, accountId: number, amount: number, claim: IdempotencyClaim | null) {
    return this.move(principal, 'deposit', accountId, amount, claim);
  }

  withdraw(principal: Principal, accountId: number, amount: number, claim: IdempotencyClaim | null) {
    return this.move(principal, 'withdrawal', accountId, amount, claim);
  }

  private async move(
    principal: Principal,
    kind: 'deposit' | 'withdrawal',
    accountId: number,
    amount: number,
    claim: IdempotencyClaim | null,
  ): Promise<Movement> {
    assertAmount(amount);
    assertAdmin(principal);
    if (this.writer) return this.batched(kind, accountId, amount, claim, this.writer);
    const { movement, customerId } = await inTransaction(
      this.db.writer,
      async (trx) => {
        if (claim) await this.idempotency.claim(trx, claim);
        const account = (await lockAccounts(trx, [accountId])).get(accountId);
        if (!account) throw new DatabankError('DATABANK_ERR_NOT_FOUND', `account ${accountId} does not exist`);
        if (kind === 'withdrawal' && account.balance < amount) {
          throw new DatabankError('DATABANK_ERR_INSUFFICIENT_FUNDS', `account ${accountId} holds less than ${amount}`);
        }
        if (kind === 'deposit') assertWithinBalance(accountId, account.balance, amount, this.maxBalance);
        const delta = kind === 'deposit' ? amount : -amount;
        const recorded = await recordMovement(trx, {
          kind,
          currency: account.currency,
          reference: null,
          entries: [
            { account_id: accountId, amount: delta },
            { system_account: `cash:${account.currency}`, amount: -delta },
          ],
          type: kind === 'deposit' ? 'money.deposited' : 'money.withdrawn',
          events: [
            {
              aggregate_id: accountId,
              customer_ids: [account.customer_id],
              payload: { account_id: accountId, customer_id: account.customer_id, amount, currency: account.currency },
            },
          ],
        });
        const movement: Movement = {
          transaction_id: recorded.transaction_id,
          account_id: accountId,
          kind,
          amount,
          balance: recorded.balances.get(accountId) ?? account.balance + delta,
          created_at: recorded.created_at,
        };
        if (claim) await this.idempotency.complete(trx, claim, 201, movement);
        return { movement, customerId: account.customer_id };
      },
      this.retry,
    );
    await this.cache.invalidate(movedMoney([[accountId, customerId]]));
    return movement;
  }

  private async batched(
    kind: 'deposit' | 'withdrawal',
    accountId: number,
    amount: number,
    claim: IdempotencyClaim | null,
    writer: MoneyWriter,
  ): Promise<Movement> {
    const row = await writer.submit({ kind, account: accountId, amount, claim });
    switch (row.outcome) {
      case 'completed': {
        await this.cache.invalidate(movedMoney([[accountId, (row.out_to_customer ?? row.out_from_customer) as number]]));
        return {
          transaction_id: row.out_id as number,
          account_id: accountId,
          kind,
          amount,
          balance: row.out_balance as number,
          created_at: row.out_created_at as string,
        };
      }
      case 'insufficient_funds':
        throw new DatabankError('DATABANK_ERR_INSUFFICIENT_FUNDS', `account ${accountId} holds less than ${amount}`);
      case 'balance_limit':
        throw balanceLimit(accountId, this.maxBalance);
      case 'in_flight':
        throw new DatabankError('DATABANK_ERR_IDEMPOTENCY_IN_FLIGHT');
      case 'replay':
        if (row.out_replay_hash !== claim?.hash) throw new DatabankError('DATABANK_ERR_IDEMPOTENCY_KEY_REUSED');
        throw new IdempotentReplay(row.out_replay_status ?? 500, row.out_replay_body);
      default:
        throw new DatabankError('DATABANK_ERR_NOT_FOUND', `account ${accountId} does not exist`);
    }
  }
}
