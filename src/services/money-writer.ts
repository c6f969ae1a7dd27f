import { sql, type Kysely } from 'kysely';
import type { Database } from '../stores/sql/schema.ts';
import type { IdempotencyClaim } from './idempotency.ts';
import { withRetry, type RetryOptions } from './transaction.ts';

/** One money movement as the writer takes it; the services have checked the request's shape. */
export type MoneyCommand =
  | {
      readonly kind: 'transfer';
      readonly from: number;
      readonly to: number;
      readonly amount: number;
      /** A customer key's customer: the source must be one of its accounts. */
      readonly owner: number | null;
      readonly claim: IdempotencyClaim | null;
    }
  | {
      readonly kind: 'deposit' | 'withdrawal';
      readonly account: number;
      readonly amount: number;
      readonly claim: IdempotencyClaim | null;
    };

/** A movement's own outcome, as `databank_money_batch` (migration 0013) reports it. */
export interface MoneyOutcome {
  readonly outcome:
    | 'completed'
    | 'source_not_found'
    | 'target_not_found'
    | 'not_found'
    | 'currency_mismatch'
    | 'insufficient_funds'
    | 'balance_limit'
    | 'in_flight'
    | 'replay';
  /** The ledger transaction (a transfer's `transfer_id`). */
  readonly out_id: number | null;
  readonly out_created_at: string | null;
  readonly out_from_customer: number | null;
  readonly out_to_customer: number | null;
  /** A deposit's or withdrawal's account balance right after it. */
  readonly out_balance: number | null;
  readonly out_replay_status: number | null;
  readonly out_replay_body: unknown;
  readonly out_replay_hash: string | null;
}

interface Pending {
  readonly command: MoneyCommand;
  readonly resolve: (outcome: MoneyOutcome) => void;
  readonly reject: (err: unknown) => void;
}

/** What the writer has done, for `/metrics`. */
export interface MoneyWriterObserver {
  batch(size: number, seconds: number): void;
}

/**
 * The batching writer: the money movements of this process's concurrent requests go to PostgreSQL
 * together, up to `max` (`DATABANK_BATCH_MAX`) per call of `databank_money_batch`, which is one
 * database transaction and one round trip. One batch is in flight at a time; the requests that
 * arrive meanwhile wait for it and leave together as soon as it committed. An idle writer adds no
 * wait: a request that finds nothing in flight leaves at the end of the event-loop turn it arrived
 * in (with the others that arrived in that turn).
 *
 * Each movement gets its own outcome from the batch. A deadlock or serialization failure rolls
 * the whole batch back and runs it again (nothing of it was applied); any other failure (the
 * connection lost, the database down) rejects every movement of that batch with the same error,
 * already translated (`DATABANK_ERR_UNAVAILABLE`: nothing applied) and no other batch's.
 */
export class MoneyWriter {
  private queue: Pending[] = [];
  private running = false;

  constructor(
    private readonly db: Kysely<Database>,
    readonly max: number,
    /** `DATABANK_MAX_BALANCE`. */
    private readonly maxBalance: number,
    private readonly retry?: RetryOptions,
    private readonly observer?: MoneyWriterObserver,
  ) {}

  submit(command: MoneyCommand): Promise<MoneyOutcome> {
    return new Promise((resolve, reject) => {
      this.queue.push({ command, resolve, reject });
      if (!this.running) {
        this.running = true;
        setImmediate(() => void this.drain());
      }
    });
  }

  private async drain(): Promise<void> {
    try {
      while (this.queue.length > 0) {
        const batch = this.queue.splice(0, this.max);
        const started = process.hrtime.bigint();
        try {
          const outcomes = await withRetry(() => this.apply(batch.map((p) => p.command)), this.retry);
          batch.forEach((p, i) => {
            const outcome = outcomes[i];
            if (outcome) p.resolve(outcome);
            else p.reject(new Error(`databank_money_batch answered ${outcomes.length} of ${batch.length} movements`));
          });
        } catch (err) {
          for (const p of batch) p.reject(err);
        }
        this.observer?.batch(batch.length, Number(process.hrtime.bigint() - started) / 1e9);
      }
    } finally {
      this.running = false;
    }
  }

  private async apply(commands: readonly MoneyCommand[]): Promise<MoneyOutcome[]> {
    const n = commands.length;
    const kinds = new Array<string>(n);
    const froms = new Array<number | null>(n);
    const tos = new Array<number | null>(n);
    const amounts = new Array<number>(n);
    const owners = new Array<number | null>(n);
    const scopes = new Array<string | null>(n);
    const keys = new Array<string | null>(n);
    const hashes = new Array<string | null>(n);
    commands.forEach((c, i) => {
      kinds[i] = c.kind;
      froms[i] = c.kind === 'transfer' ? c.from : c.kind === 'withdrawal' ? c.account : null;
      tos[i] = c.kind === 'transfer' ? c.to : c.kind === 'deposit' ? c.account : null;
      amounts[i] = c.amount;
      owners[i] = c.kind === 'transfer' ? c.owner : null;
      scopes[i] = c.claim?.scope ?? null;
      keys[i] = c.claim?.key ?? null;
      hashes[i] = c.claim?.hash ?? null;
    });
    const result = await sql<MoneyOutcome & { item: number }>`
      select item, outcome, out_id, out_created_at, out_from_customer, out_to_customer, out_balance,
        out_replay_status, out_replay_body, out_replay_hash
      from databank_money_batch(${kinds}::text[], ${froms}::bigint[], ${tos}::bigint[], ${amounts}::bigint[],
        ${owners}::bigint[], ${scopes}::text[], ${keys}::text[], ${hashes}::text[], ${this.maxBalance}::bigint)`.execute(
      this.db,
    );
    const outcomes = new Array<MoneyOutcome>(n);
    for (const row of result.rows) outcomes[row.item - 1] = row;
    return outcomes;
  }
}
