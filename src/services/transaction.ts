import type { Kysely, Transaction } from 'kysely';
import { DatabankError } from '../domain/errors.ts';
import type { Database } from '../stores/sql/schema.ts';
import { isConnectionFailure, sqlState } from '../stores/sql/errors.ts';

/** SQLSTATEs after which the whole transaction may simply run again. */
const RETRYABLE = new Set(['40001', '40P01']);

export interface RetryOptions {
  /** Attempts in all, first included. */
  readonly attempts: number;
  /** Base back-off in ms; each retry waits a random time up to base × 2^attempt. */
  readonly backoffMs: number;
  /** Called before each retry, for metrics. */
  readonly onRetry?: (sqlState: string) => void;
}

export const DEFAULT_RETRY: RetryOptions = { attempts: 6, backoffMs: 2 };

export type Tx = Transaction<Database>;

/**
 * Runs `work` in one database transaction and commits it. Serialization failures and deadlocks
 * roll back and run again, a bounded number of times, then answer DATABANK_ERR_CONTENTION (503):
 * the caller knows nothing was applied and may retry.
 */
export async function inTransaction<T>(
  db: Kysely<Database>,
  work: (trx: Tx) => Promise<T>,
  retry: RetryOptions = DEFAULT_RETRY,
): Promise<T> {
  return withRetry(() => db.transaction().execute(work), retry);
}

/**
 * Runs `attempt` (a transaction, or one statement that is its own transaction) again after a
 * serialization failure or deadlock, a bounded number of times, then answers
 * DATABANK_ERR_CONTENTION. Other errors pass through `translateDbError`.
 */
export async function withRetry<T>(attempt: () => Promise<T>, retry: RetryOptions = DEFAULT_RETRY): Promise<T> {
  for (let n = 1; ; n++) {
    try {
      return await attempt();
    } catch (err) {
      const state = sqlState(err);
      if (state && RETRYABLE.has(state)) {
        if (n >= retry.attempts) {
          throw new DatabankError('DATABANK_ERR_CONTENTION', undefined, { cause: err });
        }
        retry.onRetry?.(state);
        await delay(Math.random() * retry.backoffMs * 2 ** n);
        continue;
      }
      throw translateDbError(err);
    }
  }
}

/** Turns "cannot reach the database" into DATABANK_ERR_UNAVAILABLE; leaves other errors alone. */
export function translateDbError(err: unknown): unknown {
  if (err instanceof DatabankError) return err;
  const state = sqlState(err);
  // The database's own ceiling on balances (migration 0005), should a caller skip the services'.
  if (state === '23514' && /accounts_balance_max/.test(`${(err as { constraint?: string }).constraint} ${(err as Error).message}`)) {
    return new DatabankError('DATABANK_ERR_BALANCE_LIMIT', undefined, { cause: err });
  }
  // lock_timeout: a row lock was held too long by someone else; nothing was applied.
  if (state === '55P03') return new DatabankError('DATABANK_ERR_CONTENTION', undefined, { cause: err });
  // A write reached a server in recovery: a primary demoted by a switchover, before the proxy
  // in front of it noticed. Nothing was applied; the new primary takes the retry.
  if (state === '25006') return new DatabankError('DATABANK_ERR_UNAVAILABLE', undefined, { cause: err });
  if (isConnectionFailure(err)) return new DatabankError('DATABANK_ERR_UNAVAILABLE', undefined, { cause: err });
  return err;
}

/** Runs a read outside a transaction, with the same error translation. */
export async function read<T>(work: () => Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (err) {
    throw translateDbError(err);
  }
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
