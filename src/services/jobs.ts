import { sql, type Kysely } from 'kysely';
import { DatabankError } from '../domain/errors.ts';
import type { Principal } from '../domain/types.ts';
import type { Db } from '../stores/sql/port.ts';
import type { Database, JobKind, JobState } from '../stores/sql/schema.ts';
import { assertOwns } from './access.ts';
import { read } from './transaction.ts';

/** A background job as the API shows it (`GET /jobs/:id`). */
export interface JobView {
  readonly job_id: string;
  readonly kind: JobKind;
  readonly state: JobState;
  /** Deliveries so far (retries and redeliveries after a crash included). */
  readonly attempts: number;
  /** What the job made, once completed (`statement.monthly`: `{file_id, …}`); null before. */
  readonly result: unknown;
  /** The last failure's message, while retrying or once failed; null otherwise. */
  readonly error: string | null;
  readonly created_at: string;
  readonly updated_at: string;
}

/** What the queue carries: the job's id; everything else is in its row. */
export interface JobMessage {
  readonly job_id: string;
}

/** Higher first: a customer waits for image variants, nobody waits for a statement. */
export const JOB_PRIORITY: Readonly<Record<JobKind, number>> = { 'image.variants': 5, 'statement.monthly': 1 };

/**
 * The jobs table: a job is written in the transaction of the request that asks for it, so it exists
 * exactly when the request's change does; the dispatcher hands it to the queue after the commit
 * and the queue's at-least-once delivery brings it to a handler. Its row keeps the state the API
 * shows, since a broker cannot be asked where one message is.
 */
export class JobsService {
  constructor(private readonly db: Db) {}

  /** Adds a job in the caller's transaction; resolves with its id. */
  async create(trx: Kysely<Database>, kind: JobKind, customerId: number, payload: Readonly<Record<string, unknown>>): Promise<string> {
    const row = await trx
      .insertInto('jobs')
      .values({ kind, customer_id: customerId, payload: JSON.stringify(payload) })
      .returning('id')
      .executeTakeFirstOrThrow();
    return row.id;
  }

  async get(principal: Principal, jobId: string): Promise<JobView> {
    const row = await read(() => this.db.reader.selectFrom('jobs').selectAll().where('id', '=', jobId).executeTakeFirst());
    if (!row) throw new DatabankError('DATABANK_ERR_NOT_FOUND');
    assertOwns(principal, row.customer_id);
    return toView(row);
  }

  /** The job's row for its handler; null when it is gone (its customer's data was removed). */
  async forHandler(jobId: string) {
    return (await this.db.writer.selectFrom('jobs').selectAll().where('id', '=', jobId).executeTakeFirst()) ?? null;
  }

  /** A delivery started: `running`, and how many deliveries there have been. */
  async started(jobId: string, attempt: number): Promise<void> {
    await this.db.writer
      .updateTable('jobs')
      .set({ state: 'running', attempts: sql<number>`greatest(attempts, ${attempt})`, updated_at: sql<Date>`now()` })
      .where('id', '=', jobId)
      .where('state', 'in', ['queued', 'running'])
      .execute();
  }

  /** Marks the job completed in the transaction of its side effect. */
  async completed(trx: Kysely<Database>, jobId: string, result: unknown): Promise<void> {
    await trx
      .updateTable('jobs')
      .set({ state: 'completed', result: JSON.stringify(result), error: null, updated_at: sql<Date>`now()` })
      .where('id', '=', jobId)
      .execute();
  }

  /** A delivery failed: back to `queued` for the retry, or `failed` after the last attempt. */
  async failedAttempt(jobId: string, error: string, final: boolean): Promise<void> {
    await this.db.writer
      .updateTable('jobs')
      .set({ state: final ? 'failed' : 'queued', error: error.slice(0, 1000), updated_at: sql<Date>`now()` })
      .where('id', '=', jobId)
      .where('state', '<>', 'completed')
      .execute();
  }

  /** Jobs not yet handed to the queue, oldest first. */
  async undispatched(limit: number) {
    return this.db.writer
      .selectFrom('jobs')
      .select(['id', 'kind'])
      .where('dispatched_at', 'is', null)
      .orderBy('created_at')
      .orderBy('id')
      .limit(limit)
      .execute();
  }

  async markDispatched(ids: readonly string[]): Promise<void> {
    if (ids.length === 0) return;
    await this.db.writer.updateTable('jobs').set({ dispatched_at: sql<Date>`now()` }).where('id', 'in', ids).execute();
  }

  /** A dead-lettered job sent back to the queue by an operator starts over as `queued`. */
  async requeued(ids: readonly string[]): Promise<void> {
    if (ids.length === 0) return;
    await this.db.writer
      .updateTable('jobs')
      .set({ state: 'queued', updated_at: sql<Date>`now()` })
      .where('id', 'in', ids)
      .where('state', '=', 'failed')
      .execute();
  }
}

function toView(row: {
  id: string;
  kind: JobKind;
  state: JobState;
  attempts: number;
  result: unknown;
  error: string | null;
  created_at: Date;
  updated_at: Date;
}): JobView {
  return {
    job_id: row.id,
    kind: row.kind,
    state: row.state,
    attempts: row.attempts,
    result: row.result ?? null,
    error: row.error,
    created_at: row.created_at.toISOString(),
    updated_at: row.updated_at.toISOString(),
  };
}
