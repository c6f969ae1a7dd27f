import { BASE_CURRENCY, assertAmount, type Currency } from '../domain/money.ts';
import type { FeeRun, Principal } from '../domain/types.ts';
import type { Db } from '../stores/sql/port.ts';
import { assertAdmin } from './access.ts';
import type { IdempotencyClaim, IdempotencyService } from './idempotency.ts';
import { recordMovement } from './ledger.ts';
import { movedMoney, type CachedReads } from './cached-reads.ts';
import { inTransaction, type RetryOptions, type Tx } from './transaction.ts';

/** Accounts per batch: each batch is one transaction, and holds this many row locks at most. */
export const FEE_BATCH_SIZE = 1000;

interface BatchResult {
  readonly lastId: number | null;
  readonly transactionId: number | null;
  readonly charged: number[];
  readonly insufficient: number[];
  readonly already: number[];
  readonly owners: (readonly [number, number])[];
}

/**
 * The chapter's annual fee: charge an amount to every account of one currency. Accounts that
 * cannot pay are listed and left alone; a reference charges an account at most once, so running
 * the same fee again charges only the accounts it could not charge before.
 *
 * The run goes through the accounts in id order in batches of `batchSize`, each batch one
 * transaction that locks its accounts, books one ledger transaction (its accounts against
 * `fee_income:<currency>`) and records the charges. So a run over a million accounts never holds a
 * million locks, nor blocks transfers for its whole length; a run cut short (a crash, the database
 * gone) has charged whole batches only, and running it again with the same reference finishes it.
 * With an Idempotency-Key the first batch claims the key and the last stores the answer.
 */
export class FeesService {
  constructor(
    private readonly db: Db,
    private readonly idempotency: IdempotencyService,
    private readonly cache: CachedReads,
    private readonly retry?: RetryOptions,
    private readonly batchSize = FEE_BATCH_SIZE,
  ) {}

  async charge(
    principal: Principal,
    amount: number,
    reference: string,
    claim: IdempotencyClaim | null,
    currency: Currency = BASE_CURRENCY,
  ): Promise<FeeRun> {
    assertAmount(amount);
    assertAdmin(principal);
    const batches: BatchResult[] = [];
    for (let after = 0; ; ) {
      const first = batches.length === 0;
      const batch = await inTransaction(
        this.db.writer,
        async (trx) => {
          if (claim && first) await this.idempotency.claim(trx, claim);
          const result = await this.chargeBatch(trx, { amount, reference, currency, after });
          // The last batch (fewer accounts than a full one) stores the run's answer with its charges.
          if (claim && result.lastId === null) {
            await this.idempotency.complete(trx, claim, 200, runOf(reference, amount, currency, [...batches, result]));
          }
          return result;
        },
        this.retry,
      );
      batches.push(batch);
      await this.cache.invalidate(movedMoney(batch.owners));
      if (batch.lastId === null) return runOf(reference, amount, currency, batches);
      after = batch.lastId;
    }
  }

  /**
   * Locks the next batch of accounts of the currency after `after`, in id order like every other
   * writer, then reads which of them this reference already charged: read after the locks, so a
   * concurrent run of the same reference that charged one of them is seen.
   */
  private async chargeBatch(
    trx: Tx,
    run: { amount: number; reference: string; currency: Currency; after: number },
  ): Promise<BatchResult> {
    const { amount, reference, currency } = run;
    const accounts = await trx
      .selectFrom('accounts')
      .select(['account_id', 'customer_id', 'balance'])
      .where('currency', '=', currency)
      .where('account_id', '>', run.after)
      .orderBy('account_id')
      .limit(this.batchSize)
      .forUpdate()
      .execute();
    const ids = accounts.map((a) => a.account_id);
    const done =
      ids.length === 0
        ? new Set<number>()
        : new Set(
            (
              await trx
                .selectFrom('fee_charges')
                .select('account_id')
                .where('reference', '=', reference)
                .where('account_id', 'in', ids)
                .execute()
            ).map((r) => r.account_id),
          );
    const due = accounts.filter((a) => !done.has(a.account_id));
    const charged = due.filter((a) => a.balance >= amount).map((a) => a.account_id);
    let transactionId: number | null = null;
    const owner = new Map(accounts.map((a) => [a.account_id, a.customer_id]));
    if (charged.length > 0) {
      const recorded = await recordMovement(trx, {
        kind: 'fee',
        currency,
        reference,
        entries: [
          ...charged.map((account_id) => ({ account_id, amount: -amount })),
          { system_account: `fee_income:${currency}` as const, amount: amount * charged.length },
        ],
        type: 'fee.charged',
        // One event per charged account: each customer's activity holds only its own account.
        events: charged.map((account_id) => {
          const customer_id = owner.get(account_id) as number;
          return { aggregate_id: account_id, customer_ids: [customer_id], payload: { account_id, customer_id, reference, amount, currency } };
        }),
      });
      transactionId = recorded.transaction_id;
      await trx
        .insertInto('fee_charges')
        .values(charged.map((account_id) => ({ reference, account_id, transaction_id: recorded.transaction_id })))
        .execute();
    }
    return {
      lastId: accounts.length === this.batchSize ? (ids[ids.length - 1] as number) : null,
      transactionId,
      charged,
      insufficient: due.filter((a) => a.balance < amount).map((a) => a.account_id),
      already: ids.filter((id) => done.has(id)),
      owners: charged.map((id) => [id, owner.get(id) as number] as const),
    };
  }
}

/** The run's answer from its batches, in order. */
function runOf(reference: string, amount: number, currency: Currency, batches: readonly BatchResult[]): FeeRun {
  const ids = batches.flatMap((b) => (b.transactionId === null ? [] : [b.transactionId]));
  return {
    reference,
    amount,
    currency,
    transaction_id: ids[0] ?? null,
    transaction_ids: ids,
    charged: batches.flatMap((b) => b.charged),
    insufficient_funds: batches.flatMap((b) => b.insufficient),
    already_charged: batches.flatMap((b) => b.already),
  };
}
