import { sql } from 'kysely';
import { DatabankError } from '../domain/errors.ts';
import { assertAmount, balanceLimit } from '../domain/money.ts';
import type { Principal, Transfer } from '../domain/types.ts';
import type { Db } from '../stores/sql/port.ts';
import { IdempotentReplay, type IdempotencyClaim } from './idempotency.ts';
import { movedMoney, type CachedReads } from './cached-reads.ts';
import type { MoneyOutcome, MoneyWriter } from './money-writer.ts';
import { withRetry, type RetryOptions } from './transaction.ts';

export interface TransferCommand {
  readonly from_account_id: number;
  readonly to_account_id: number;
  readonly amount: number;
}

/**
 * Transfers between two accounts. Each is one ACID transaction and one round trip: the
 * `databank_transfer` function (migration 0002) locks both accounts in ascending id order, checks
 * that both exist, that the currencies match, that the source holds enough and, for a customer
 * key, that the customer owns the source, and that the target stays within `DATABANK_MAX_BALANCE`;
 * only then it writes both balances, the ledger transaction and its two entries, the
 * `transfer.completed` outbox event and, with an Idempotency-Key, the stored response. With a key
 * it first claims it (migration 0005: a lock held until the function's transaction ends) and
 * answers a response stored meanwhile. A refusal writes nothing. The function writes, so it runs
 * on `writer`; it also refuses an amount below 1 (migration 0004), a rule this service checks first.
 *
 * With a batching writer (`DATABANK_BATCH_MAX` above 1) the transfer goes to PostgreSQL with the
 * other movements of the moment in one `databank_money_batch` call (migration 0013), which checks
 * and writes each exactly as `databank_transfer` does; the answers are the same.
 */
export class TransfersService {
  constructor(
    private readonly db: Db,
    private readonly cache: CachedReads,
    /** `DATABANK_MAX_BALANCE`: a transfer never takes its target past it. */
    private readonly maxBalance: number,
    private readonly retry?: RetryOptions,
    /** The batching writer; without one (`DATABANK_BATCH_MAX=1`) each transfer is its own call. */
    private readonly writer?: MoneyWriter,
  ) {}

  async transfer(principal: Principal, cmd: TransferCommand, claim: IdempotencyClaim | null): Promise<Transfer> {
    const { from_account_id: from, to_account_id: to, amount } = cmd;
    assertAmount(amount);
    if (from === to) throw new DatabankError('DATABANK_ERR_SAME_ACCOUNT');
    const owner = principal.role === 'customer' ? principal.customerId : null;
    const row = this.writer
      ? await this.writer.submit({ kind: 'transfer', from, to, amount, owner, claim })
      : await this.single(from, to, amount, owner, claim);
    switch (row.outcome) {
      case 'completed':
        await this.cache.invalidate(movedMoney([
          [from, row.out_from_customer as number],
          [to, row.out_to_customer as number],
        ]));
        return {
          transfer_id: row.out_id as number,
          from_account_id: from,
          to_account_id: to,
          amount,
          created_at: row.out_created_at as string,
        };
      case 'source_not_found':
      case 'not_found':
        // The same answer whether the account is missing or another customer's: ids do not leak.
        throw new DatabankError('DATABANK_ERR_NOT_FOUND');
      case 'target_not_found':
        throw new DatabankError('DATABANK_ERR_NOT_FOUND', `account ${to} does not exist`);
      case 'currency_mismatch':
        throw new DatabankError('DATABANK_ERR_CURRENCY_MISMATCH');
      case 'insufficient_funds':
        throw new DatabankError('DATABANK_ERR_INSUFFICIENT_FUNDS', `account ${from} holds less than ${amount}`);
      case 'balance_limit':
        throw balanceLimit(to, this.maxBalance);
      case 'in_flight':
        throw new DatabankError('DATABANK_ERR_IDEMPOTENCY_IN_FLIGHT');
      case 'replay':
        if (row.out_replay_hash !== claim?.hash) throw new DatabankError('DATABANK_ERR_IDEMPOTENCY_KEY_REUSED');
        throw new IdempotentReplay(row.out_replay_status ?? 500, row.out_replay_body);
    }
  }

  /** One transfer, one call of `databank_transfer`. */
  private single(from: number, to: number, amount: number, owner: number | null, claim: IdempotencyClaim | null) {
    return withRetry(async () => {
      const result = await sql<MoneyOutcome>`
        select outcome, out_transfer_id as out_id, out_created_at, out_from_customer, out_to_customer,
          null::bigint as out_balance, out_replay_status, out_replay_body, out_replay_hash
        from databank_transfer(${from}::bigint, ${to}::bigint, ${amount}::bigint, ${owner}::bigint,
          ${claim?.scope ?? null}::text, ${claim?.key ?? null}::text, ${claim?.hash ?? null}::text,
          ${this.maxBalance}::bigint)`.execute(this.db.writer);
      return result.rows[0] as MoneyOutcome;
    }, this.retry);
  }
}
