import { assertAmount } from '../domain/money.ts';
import type { FeeRun, Principal } from '../domain/types.ts';
import type { Db } from '../stores/sql/port.ts';
import { assertAdmin } from './access.ts';
import type { IdempotencyClaim, IdempotencyService } from './idempotency.ts';
import { recordMovement } from './ledger.ts';
import { movedMoney, type CachedReads } from './cached-reads.ts';
import { inTransaction, type RetryOptions } from './transaction.ts';

/**
 * The chapter's annual fee: charge an amount to every account in one transaction, all or none.
 * Accounts that cannot pay are listed and left alone; a reference charges an account at most once,
 * so running the same fee again charges only the accounts it could not charge before.
 */
export class FeesService {
  constructor(
    private readonly db: Db,
    private readonly idempotency: IdempotencyService,
    private readonly cache: CachedReads,
    private readonly retry?: RetryOptions,
  ) {}

  async charge(principal: Principal, amount: number, reference: string, claim: IdempotencyClaim | null) {
    assertAmount(amount);
    assertAdmin(principal);
    const { run, owners } = await inTransaction(
      this.db.writer,
      async (trx) => {
        // Every account, locked in id order like every other writer.
        const accounts = await trx
          .selectFrom('accounts as a')
          .leftJoin('fee_charges as f', (j) => j.onRef('f.account_id', '=', 'a.account_id').on('f.reference', '=', reference))
          .select(['a.account_id', 'a.customer_id', 'a.balance', 'f.transaction_id as charged_in'])
          .orderBy('a.account_id')
          .forUpdate('a')
          .execute();
        const already = accounts.filter((a) => a.charged_in !== null).map((a) => a.account_id);
        const due = accounts.filter((a) => a.charged_in === null);
        const charged = due.filter((a) => a.balance >= amount).map((a) => a.account_id);
        const insufficient = due.filter((a) => a.balance < amount).map((a) => a.account_id);
        let transactionId: number | null = null;
        if (charged.length > 0) {
          const recorded = await recordMovement(trx, {
            kind: 'fee',
            reference,
            entries: [
              ...charged.map((account_id) => ({ account_id, amount: -amount })),
              { system_account: 'fee_income' as const, amount: amount * charged.length },
            ],
            topic: 'fee.charged',
            payload: { reference, amount, charged },
          });
          transactionId = recorded.transaction_id;
          await trx
            .insertInto('fee_charges')
            .values(charged.map((account_id) => ({ reference, account_id, transaction_id: recorded.transaction_id })))
            .execute();
        }
        const run: FeeRun = {
          reference,
          amount,
          transaction_id: transactionId,
          charged,
          insufficient_funds: insufficient,
          already_charged: already,
        };
        if (claim) await this.idempotency.complete(trx, claim, 200, run);
        const owner = new Map(accounts.map((a) => [a.account_id, a.customer_id]));
        return { run, owners: charged.map((id) => [id, owner.get(id) as number] as const) };
      },
      this.retry,
    );
    await this.cache.invalidate(movedMoney(owners));
    return run;
  }
}
