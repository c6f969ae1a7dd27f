import type { Kysely } from 'kysely';
import { DatabankError } from '../domain/errors.ts';
import type { Principal, Transfer } from '../domain/types.ts';
import type { Database } from '../stores/sql/schema.ts';
import { assertOwns } from './access.ts';
import type { IdempotencyClaim, IdempotencyService } from './idempotency.ts';
import { recordMovement } from './ledger.ts';
import { lockAccounts } from './locks.ts';
import { inTransaction, type RetryOptions } from './transaction.ts';

export interface TransferCommand {
  readonly from_account_id: number;
  readonly to_account_id: number;
  readonly amount: number;
}

/** Transfers between two accounts: one ACID transaction, both accounts locked in id order. */
export class TransfersService {
  constructor(
    private readonly db: Kysely<Database>,
    private readonly idempotency: IdempotencyService,
    private readonly retry?: RetryOptions,
  ) {}

  async transfer(principal: Principal, cmd: TransferCommand, claim: IdempotencyClaim | null): Promise<Transfer> {
    const { from_account_id: from, to_account_id: to, amount } = cmd;
    if (from === to) throw new DatabankError('DATABANK_ERR_SAME_ACCOUNT');
    return inTransaction(
      this.db,
      async (trx) => {
        const locked = await lockAccounts(trx, [from, to]);
        const source = locked.get(from);
        // A customer may move money only out of its own accounts; others look nonexistent.
        assertOwns(principal, source?.customer_id);
        const target = locked.get(to);
        if (!source) throw new DatabankError('DATABANK_ERR_NOT_FOUND', `account ${from} does not exist`);
        if (!target) throw new DatabankError('DATABANK_ERR_NOT_FOUND', `account ${to} does not exist`);
        if (source.currency !== target.currency) throw new DatabankError('DATABANK_ERR_CURRENCY_MISMATCH');
        if (source.balance < amount) {
          throw new DatabankError('DATABANK_ERR_INSUFFICIENT_FUNDS', `account ${from} holds less than ${amount}`);
        }
        const recorded = await recordMovement(trx, {
          kind: 'transfer',
          reference: null,
          entries: [
            { account_id: from, amount: -amount },
            { account_id: to, amount },
          ],
          topic: 'transfer.completed',
          payload: { from_account_id: from, to_account_id: to, amount },
        });
        const transfer: Transfer = {
          transfer_id: recorded.transaction_id,
          from_account_id: from,
          to_account_id: to,
          amount,
          created_at: recorded.created_at,
        };
        if (claim) await this.idempotency.complete(trx, claim, 201, transfer);
        return transfer;
      },
      this.retry,
    );
  }
}
