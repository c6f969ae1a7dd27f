import { sql, type Kysely } from 'kysely';
import { DatabankError } from '../domain/errors.ts';
import type { Principal, Transfer } from '../domain/types.ts';
import type { Database } from '../stores/sql/schema.ts';
import { assertOwns } from './access.ts';
import type { IdempotencyClaim } from './idempotency.ts';
import type { LockedAccount } from './locks.ts';
import { withRetry, type RetryOptions } from './transaction.ts';

export interface TransferCommand {
  readonly from_account_id: number;
  readonly to_account_id: number;
  readonly amount: number;
}

interface TransferRow {
  readonly transfer_id: number | null;
  readonly created_at: string | null;
  readonly locked: LockedAccount[] | null;
}

/**
 * Transfers between two accounts, each one ACID transaction in a single SQL statement: one round
 * trip to PostgreSQL. The statement
 *
 * 1. locks both accounts `FOR UPDATE` in ascending id order (every writer uses that one order, so
 *    writers queue instead of deadlocking; under READ COMMITTED the lock returns the newest
 *    committed balance),
 * 2. checks the rules on the locked rows (both exist, same currency, and for a customer key,
 *    that it owns the source account),
 * 3. only if they hold, writes the ledger transaction, both entries, both balances, the
 *    `transfer.completed` outbox event and, with an Idempotency-Key, the stored response.
 *
 * Funds are checked by the schema itself: `check (balance >= 0)` on the debit aborts the whole
 * statement. (The balances a locking CTE returns may predate a concurrent commit, so they are
 * not used for the decision; the UPDATE always applies to the newest committed balance.) When
 * a rule fails nothing is written, and the locked rows it returns say which rule it was.
 */
export class TransfersService {
  constructor(
    private readonly db: Kysely<Database>,
    private readonly retry?: RetryOptions,
  ) {}

  async transfer(principal: Principal, cmd: TransferCommand, claim: IdempotencyClaim | null): Promise<Transfer> {
    const { from_account_id: from, to_account_id: to, amount } = cmd;
    if (from === to) throw new DatabankError('DATABANK_ERR_SAME_ACCOUNT');
    const owner = principal.role === 'customer' ? principal.customerId : null;
    const row = await withRetry(async () => {
      const result = await sql<TransferRow>`
        with locked as (
          select account_id, customer_id, currency, balance from accounts
          where account_id in (${from}::bigint, ${to}::bigint)
          order by account_id
          for update
        ),
        allowed as (
          select 1 from locked src, locked dst
          where src.account_id = ${from}::bigint and dst.account_id = ${to}::bigint
            and src.currency = dst.currency
            and (${owner}::bigint is null or src.customer_id = ${owner}::bigint)
        ),
        t as (
          insert into ledger_transactions (kind) select 'transfer' from allowed
          returning id, to_char(created_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') as created_at
        ),
        d (account_id, amount) as (values (${from}::bigint, ${-amount}::bigint), (${to}::bigint, ${amount}::bigint)),
        u as (
          update accounts a set balance = a.balance + d.amount from t, d
          where a.account_id = d.account_id
          returning a.account_id
        ),
        e as (
          insert into ledger_entries (transaction_id, account_id, amount) select t.id, d.account_id, d.amount from t, d
        ),
        body as (
          select t.id, t.created_at, jsonb_build_object(
            'transfer_id', t.id, 'from_account_id', ${from}::bigint, 'to_account_id', ${to}::bigint,
            'amount', ${amount}::bigint, 'created_at', t.created_at) as json
          from t
        ),
        o as (
          insert into outbox (topic, aggregate_id, payload)
          select 'transfer.completed', body.id::text, body.json || jsonb_build_object('transaction_id', body.id) from body
        ),
        i as (
          update idempotency_keys k set state = 'done', response_status = 201, response_body = body.json
          from body where k.scope = ${claim?.scope ?? null}::text and k.key = ${claim?.key ?? null}::text
        )
        select body.id as transfer_id, body.created_at,
          (select json_agg(locked) from locked) as locked
        from (select 1) as one left join body on true
      `.execute(this.db).catch((err: unknown) => {
        // The balance check constraint is the authority on funds: the debit that would take the
        // source below zero aborts the whole statement, so nothing at all is written.
        if (isConstraintViolation(err, 'accounts_balance_check')) {
          throw new DatabankError('DATABANK_ERR_INSUFFICIENT_FUNDS', `account ${from} holds less than ${amount}`);
        }
        throw err;
      });
      return result.rows[0] as TransferRow;
    }, this.retry);
    if (row.transfer_id !== null && row.created_at !== null) {
      return { transfer_id: row.transfer_id, from_account_id: from, to_account_id: to, amount, created_at: row.created_at };
    }
    throw refusal(principal, row.locked ?? [], cmd);
  }
}

/** Which rule refused the transfer, checked in the order that leaks nothing to a customer key. */
function refusal(principal: Principal, locked: readonly LockedAccount[], cmd: TransferCommand): DatabankError {
  const source = locked.find((a) => Number(a.account_id) === cmd.from_account_id);
  const target = locked.find((a) => Number(a.account_id) === cmd.to_account_id);
  // A customer may move money only out of its own accounts; others look nonexistent.
  assertOwns(principal, source ? Number(source.customer_id) : undefined);
  if (!source) return new DatabankError('DATABANK_ERR_NOT_FOUND', `account ${cmd.from_account_id} does not exist`);
  if (!target) return new DatabankError('DATABANK_ERR_NOT_FOUND', `account ${cmd.to_account_id} does not exist`);
  if (source.currency !== target.currency) return new DatabankError('DATABANK_ERR_CURRENCY_MISMATCH');
  // Every rule held but nothing was written: cannot happen, as the statement writes when they hold.
  return new DatabankError('DATABANK_ERR_CONTENTION');
}

function isConstraintViolation(err: unknown, constraint: string): boolean {
  const e = err as { code?: unknown; constraint?: unknown; message?: unknown } | undefined;
  return e?.code === '23514' && (e.constraint === constraint || String(e.message).includes(`"${constraint}"`));
}
