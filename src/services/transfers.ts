import { sql } from 'kysely';
import { DatabankError } from '../domain/errors.ts';
import { assertAmount, balanceLimit } from '../domain/money.ts';
import type { Principal, Transfer } from '../domain/types.ts';
import type { Db } from '../stores/sql/port.ts';
import { IdempotentReplay, type IdempotencyClaim } from './idempotency.ts';
import { movedMoney, type CachedReads } from './cached-reads.ts';
import { withRetry, type RetryOptions } from './transaction.ts';

export interface TransferCommand {
  readonly from_account_id: number;
  readonly to_account_id: number;
  readonly amount: number;
}

interface TransferRow {
  readonly outcome:
    | 'completed'
    | 'source_not_found'
    | 'target_not_found'
    | 'currency_mismatch'
    | 'insufficient_funds'
    | 'balance_limit'
    | 'in_flight'
    | 'replay';
  readonly out_transfer_id: number | null;
  readonly out_created_at: string | null;
  readonly out_from_customer: number | null;
  readonly out_to_customer: number | null;
  readonly out_replay_status: number | null;
  readonly out_replay_body: unknown;
  readonly out_replay_hash: string | null;
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
 */
export class TransfersService {
  constructor(
    private readonly db: Db,
    private readonly cache: CachedReads,
    /** `DATABANK_MAX_BALANCE`: a transfer never takes its target past it. */
    private readonly maxBalance: number,
    private readonly retry?: RetryOptions,
  ) {}

  async transfer(principal: Principal, cmd: TransferCommand, claim: IdempotencyClaim | null): Promise<Transfer> {
    const { from_account_id: from, to_account_id: to, amount } = cmd;
    assertAmount(amount);
    if (from === to) throw new DatabankError('DATABANK_ERR_SAME_ACCOUNT');
    const owner = principal.role === 'customer' ? principal.customerId : null;
    const row = await withRetry(async () => {
      const result = await sql<TransferRow>`
        select outcome, out_transfer_id, out_created_at, out_from_customer, out_to_customer,
          out_replay_status, out_replay_body, out_replay_hash
        from databank_transfer(${from}::bigint, ${to}::bigint, ${amount}::bigint, ${owner}::bigint,
          ${claim?.scope ?? null}::text, ${claim?.key ?? null}::text, ${claim?.hash ?? null}::text,
          ${this.maxBalance}::bigint)`.execute(this.db.writer);
      return result.rows[0] as TransferRow;
    }, this.retry);
    switch (row.outcome) {
      case 'completed':
        await this.cache.invalidate(movedMoney([
          [from, row.out_from_customer as number],
          [to, row.out_to_customer as number],
        ]));
        return {
          transfer_id: row.out_transfer_id as number,
          from_account_id: from,
          to_account_id: to,
          amount,
          created_at: row.out_created_at as string,
        };
      case 'source_not_found':
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
}
