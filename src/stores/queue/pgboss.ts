import { createHash } from 'node:crypto';
import { sql, type Kysely } from 'kysely';
import PgBoss from 'pg-boss';
import type { SqlStore } from '../sql/port.ts';
import { kyselyBossDb, PGBOSS_SCHEMA, trackedBossDb, type BossDb } from './pgboss-sql.ts';
import type { DeadLetter, Job, JobHandler, JobQueue, QueuePolicy, QueueStats, SendOptions } from './port.ts';
import {
  checkLimit,
  checkPrefetch,
  checkPrefix,
  checkSendOptions,
  errorMessage,
  pause,
  QueueUsageError,
  queueNames,
  resolvePolicy,
  retryDelay,
  type QueueNames,
} from './queue-options.ts';

export interface PgBossQueueOptions {
  /** The deployment's database (PGlite or a server); the queue never closes it. */
  readonly store: SqlStore;
  /** Put before every queue name: `${prefix}.${queue}`. */
  readonly prefix: string;
  /** Background failures (maintenance, heartbeats, acknowledgements that could not be written). */
  readonly onError?: (err: Error) => void;
  /**
   * An active job whose `started_on` is older than this is failed by the maintenance and
   * delivered again: how long a dead worker keeps its jobs. Set on the queue by `declare`.
   * Default 15.
   */
  readonly expireInSeconds?: number;
  /** How often a consumer renews its active jobs' `started_on`; 0 turns it off. Default 5000. */
  readonly heartbeatMs?: number;
  /** How often pg-boss's maintenance fails expired jobs (and archives old ones). Default 3. */
  readonly maintenanceIntervalSeconds?: number;
  /** A consumer whose queue was empty asks again after this long. Default 250. */
  readonly pollIntervalMs?: number;
}

/**
 * A dead worker's job comes back within expiry + up to two maintenance intervals (pg-boss skips a
 * run that comes a little early after another process's) + one poll: 15 + 6 + 0.25 s by default.
 */
const DEFAULTS = { expireInSeconds: 15, heartbeatMs: 5_000, maintenanceIntervalSeconds: 3, pollIntervalMs: 250 } as const;

/**
 * Jobs and dead letters are kept, not archived by age: pg-boss would move a job still waiting
 * after its retention (14 days by default) to the archive, where no one runs it. Ten years, in
 * minutes (the column is an int of minutes, multiplied by 60 into an int of seconds).
 */
const RETENTION_MINUTES = 10 * 365 * 24 * 60;

/** The advisory lock key that serialises queue creation across processes. */
const QUEUE_CREATION_LOCK = createHash('sha256').update('databank:pgboss:create_queue').digest().readBigInt64BE(0).toString();

/** The part of pg-boss this queue uses, typed for what it passes (pg-boss's own types want objects as payloads). */
interface Boss {
  start(): Promise<unknown>;
  stop(options: { close: boolean; graceful: boolean }): Promise<void>;
  on(event: 'error', listener: (err: Error) => void): unknown;
  updateQueue(name: string, options: Record<string, unknown>): Promise<void>;
  getQueue(name: string): Promise<unknown>;
  send(name: string, data: unknown, options: Record<string, unknown>): Promise<string | null>;
  fetch(name: string, options: { batchSize: number; includeMetadata: true }): Promise<BossJob[]>;
  complete(name: string, ids: string[]): Promise<unknown>;
  fail(name: string, ids: string[], data: object, options: { db: BossDb }): Promise<unknown>;
  deleteJob(name: string, ids: string[], options: { db: BossDb }): Promise<unknown>;
}

interface BossJob {
  readonly id: string;
  readonly data: unknown;
  readonly priority: number;
  readonly retryCount: number;
}

/** What a consumer writes into a failed job's output; pg-boss copies it to the dead letter. */
interface FailureOutput {
  readonly message: string;
  readonly jobId: string;
  readonly attempts: number;
  readonly priority: number;
}

/**
 * The job queue on pg-boss 10, in the deployment's own database (schema `pgboss`, created by
 * migration 0009). Delivery order is pg-boss's: priority first, then the order of sending.
 *
 * pg-boss keeps the durable state and its transitions (fetch with `SKIP LOCKED`, retry or fail,
 * copy to the dead-letter queue, expiry of the jobs of dead workers); this module adds what
 * databank needs on top: a fetch loop instead of `work()` (which sleeps its polling interval after
 * every batch), back-off in milliseconds with a cap (pg-boss counts whole seconds and has no cap),
 * and a heartbeat so that a short expiry does not cut off a slow but living handler.
 */
export async function openPgBossQueue(options: PgBossQueueOptions): Promise<JobQueue> {
  const queue = new PgBossQueue(options);
  await queue.start();
  return queue;
}

class PgBossQueue implements JobQueue {
  readonly kind = 'postgres' as const;
  readonly #db: Kysely<unknown>;
  readonly #bossDb: ReturnType<typeof trackedBossDb>;
  readonly #boss: Boss;
  readonly #prefix: string;
  readonly #settings: Required<Omit<PgBossQueueOptions, 'store' | 'prefix' | 'onError'>>;
  readonly #onError: (err: Error) => void;
  /** Queues known to exist (declared or checked by this instance). */
  readonly #known = new Set<string>();
  /** Queue creations under way, so that concurrent sends to a new queue create it once. */
  readonly #creating = new Map<string, Promise<void>>();
  /** Policies given to `declare` here; other queues retry with the default policy. */
  readonly #policies = new Map<string, QueuePolicy>();
  /** Idle consumers of a queue, woken when this instance sends to it. */
  readonly #idle = new Map<string, Set<AbortController>>();
  readonly #consumers = new Set<Promise<void>>();
  readonly #closing = new AbortController();

  constructor(options: PgBossQueueOptions) {
    this.#prefix = checkPrefix(options.prefix);
    this.#settings = {
      expireInSeconds: options.expireInSeconds ?? DEFAULTS.expireInSeconds,
      heartbeatMs: options.heartbeatMs ?? DEFAULTS.heartbeatMs,
      maintenanceIntervalSeconds: options.maintenanceIntervalSeconds ?? DEFAULTS.maintenanceIntervalSeconds,
      pollIntervalMs: options.pollIntervalMs ?? DEFAULTS.pollIntervalMs,
    };
    const { expireInSeconds, heartbeatMs, maintenanceIntervalSeconds, pollIntervalMs } = this.#settings;
    if (!Number.isInteger(expireInSeconds) || expireInSeconds < 1) throw new Error(`expireInSeconds must be an integer ≥ 1, got ${expireInSeconds}`);
    if (!Number.isInteger(maintenanceIntervalSeconds) || maintenanceIntervalSeconds < 1) {
      throw new Error(`maintenanceIntervalSeconds must be an integer ≥ 1, got ${maintenanceIntervalSeconds}`);
    }
    if (!(heartbeatMs >= 0) || !(pollIntervalMs > 0)) throw new Error('heartbeatMs must be ≥ 0 and pollIntervalMs > 0');
    this.#onError = options.onError ?? (() => undefined);
    this.#db = options.store.db as unknown as Kysely<unknown>;
    this.#bossDb = trackedBossDb(this.#db);
    this.#boss = new PgBoss({
      db: this.#bossDb,
      schema: PGBOSS_SCHEMA,
      // Migration 0009 made the schema; starting only checks its version.
      migrate: false,
      // Cron schedules are the worker host's (src/workers/schedule.ts); pg-boss's would add a queue
      // and a polling worker of its own.
      schedule: false,
      // The maintenance is what fails the jobs of dead workers: it must run, and often.
      supervise: true,
      maintenanceIntervalSeconds,
    }) as unknown as Boss;
    // An 'error' event without a listener would throw from pg-boss's timers and end the process.
    this.#boss.on('error', (err) => this.#onError(err));
  }

  async start(): Promise<void> {
    try {
      await this.#boss.start();
    } catch (err) {
      const message = errorMessage(err);
      if (/not installed|requires migrations/.test(message)) {
        throw new Error(`the job queue's tables are missing or outdated (${message}): run the migrations (0009_job_queue)`, { cause: err });
      }
      throw err;
    }
  }

  async declare(queue: string, policy?: Partial<QueuePolicy>): Promise<void> {
    const names = this.#names(queue);
    const resolved = resolvePolicy(policy);
    await this.#create(names, resolved);
    // A queue made before (by another process, or with another policy) takes this policy now.
    await this.#boss.updateQueue(names.main, this.#queueOptions(names, resolved));
    this.#policies.set(queue, resolved);
  }

  async send<T>(queue: string, payload: T, options?: SendOptions): Promise<string> {
    const names = this.#names(queue);
    const { id, priority, delayMs } = checkSendOptions(options);
    await this.#ensure(names);
    const sent = await this.#boss.send(names.main, JSON.stringify(payload ?? null), {
      ...(id ? { id } : {}),
      priority,
      // An interval the database adds to its own now(): no clock of this process is involved.
      ...(delayMs > 0 ? { startAfter: `${delayMs} milliseconds` } : {}),
    });
    if (sent) {
      this.#wake(names.main);
      return sent;
    }
    // Nothing inserted: the id is taken (which the port promises to ignore), or the queue is gone.
    if (id && (await this.#boss.getQueue(names.main))) return id;
    this.#known.delete(names.main);
    throw new Error(`job queue ${queue} does not exist (${names.main}): declare it first`);
  }

  async consume<T>(queue: string, handler: JobHandler<T>, options: { prefetch: number; signal: AbortSignal }): Promise<void> {
    const names = this.#names(queue);
    const prefetch = checkPrefetch(options.prefetch);
    await this.#ensure(names);
    const run = this.#consume(names, handler, prefetch, AbortSignal.any([options.signal, this.#closing.signal]));
    this.#consumers.add(run);
    try {
      await run;
    } finally {
      this.#consumers.delete(run);
    }
  }

  async #consume<T>(names: QueueNames, handler: JobHandler<T>, prefetch: number, signal: AbortSignal): Promise<void> {
    const inHand = new Map<string, Promise<void>>();
    const complete = batched((ids) => this.#boss.complete(names.main, ids));
    const heartbeat =
      this.#settings.heartbeatMs > 0 ? setInterval(() => void this.#touch(names.main, [...inHand.keys()]), this.#settings.heartbeatMs) : undefined;
    const aborted = new Promise<void>((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
    try {
      while (!signal.aborted) {
        const free = prefetch - inHand.size;
        // Refilled once half the slots are free: each fetch sorts the queue's waiting jobs, so a
        // fetch per finished job would cost more than the jobs themselves.
        if (free < Math.ceil(prefetch / 2)) {
          await Promise.race([aborted, ...inHand.values()]);
          continue;
        }
        // pg-boss's fetch answers [] on a database error too: the loop then polls until it answers.
        const jobs = await this.#boss.fetch(names.main, { batchSize: free, includeMetadata: true });
        for (const job of jobs) {
          const done = this.#handle(names, job, handler as JobHandler, signal, complete).finally(() => inHand.delete(job.id));
          inHand.set(job.id, done);
        }
        // Fewer than asked for: the queue is empty for now.
        if (jobs.length < free) await this.#waitForWork(names.main, signal);
      }
    } finally {
      await Promise.allSettled(inHand.values());
      clearInterval(heartbeat);
    }
  }

  /** Runs one job, then completes it or fails it (retry after the back-off, or dead letter). */
  async #handle(
    names: QueueNames,
    bossJob: BossJob,
    handler: JobHandler,
    signal: AbortSignal,
    complete: (id: string) => Promise<void>,
  ): Promise<void> {
    const job: Job = { id: bossJob.id, queue: names.queue, payload: bossJob.data, attempt: bossJob.retryCount + 1, priority: bossJob.priority };
    let failure: { error: unknown } | null = null;
    try {
      await handler(job, signal);
    } catch (error) {
      failure = { error };
    }
    try {
      if (!failure) await complete(job.id);
      else await this.#fail(names, job, errorMessage(failure.error));
    } catch (err) {
      // Left active: the maintenance fails it at its expiry and it is delivered again.
      this.#onError(new Error(`job ${job.id} of ${names.main} could not be acknowledged: ${errorMessage(err)}`, { cause: err }));
    }
  }

  /**
   * pg-boss's fail (retry state, or failed plus a copy in the dead-letter queue), then this
   * queue's back-off, in one transaction: no consumer can take the retry before its time.
   */
  async #fail(names: QueueNames, job: Job, message: string): Promise<void> {
    const policy = this.#policies.get(names.queue) ?? resolvePolicy();
    const output: FailureOutput = { message, jobId: job.id, attempts: job.attempt, priority: job.priority };
    await this.#db.transaction().execute(async (trx) => {
      await this.#boss.fail(names.main, [job.id], output, { db: kyselyBossDb(trx) });
      await sql`
        update pgboss.job set start_after = now() + ${retryDelay(policy, job.attempt)} * interval '1 millisecond'
        where name = ${names.main} and id = ${job.id} and state = 'retry'`.execute(trx);
    });
  }

  /** Renews the active jobs' start, so that the maintenance does not take a living worker's jobs. */
  async #touch(main: string, ids: string[]): Promise<void> {
    if (ids.length === 0) return;
    try {
      await sql`update pgboss.job set started_on = now() where name = ${main} and id = any(${ids}::uuid[]) and state = 'active'`.execute(
        this.#db,
      );
    } catch (err) {
      this.#onError(new Error(`heartbeat of ${main} failed: ${errorMessage(err)}`, { cause: err }));
    }
  }

  async stats(queue: string): Promise<QueueStats> {
    const names = this.#names(queue);
    const { rows } = await sql<{ waiting: number; delayed: number; active: number; dead: number }>`
      select
        count(*) filter (where name = ${names.main} and state < 'active' and start_after <= now())::int as waiting,
        count(*) filter (where name = ${names.main} and state < 'active' and start_after > now())::int as delayed,
        count(*) filter (where name = ${names.main} and state = 'active')::int as active,
        count(*) filter (where name = ${names.dlq} and state < 'completed')::int as dead
      from pgboss.job where name in (${names.main}, ${names.dlq})`.execute(this.#db);
    const row = rows[0] ?? { waiting: 0, delayed: 0, active: 0, dead: 0 };
    return { queue, waiting: row.waiting, delayed: row.delayed, active: row.active, deadLetters: row.dead };
  }

  async deadLetters(queue: string, limit: number): Promise<DeadLetter[]> {
    const names = this.#names(queue);
    const rows = await this.#deadRows(this.#db, names, undefined, checkLimit(limit));
    return rows.map((r) => ({
      id: r.job_id,
      queue,
      payload: r.data,
      attempts: r.attempts,
      error: r.error,
      failedAt: r.created_on.toISOString(),
    }));
  }

  /**
   * The dead letters with their original id, taken from the failure output a consumer wrote. A job
   * whose worker died on its last attempt was failed by the maintenance, which writes no id: such
   * a dead letter keeps the id pg-boss gave its copy, and its attempts are the queue's limit.
   */
  async #deadRows(db: Kysely<unknown>, names: QueueNames, ids: readonly string[] | undefined, limit: number | null, lock = false) {
    const { rows } = await sql<{
      id: string;
      job_id: string;
      data: unknown;
      attempts: number;
      priority: number;
      error: string | null;
      created_on: Date;
    }>`
      select id, coalesce(output->>'jobId', id::text) as job_id, data,
        coalesce((output->>'attempts')::int, retry_limit + 1) as attempts,
        coalesce((output->>'priority')::int, 0) as priority,
        coalesce(output->>'message', output->'value'->>'message') as error, created_on
      from pgboss.job
      where name = ${names.dlq} and state < 'completed'
        ${ids ? sql`and coalesce(output->>'jobId', id::text) = any(${[...ids]}::text[])` : sql``}
      order by created_on, id
      ${limit === null ? sql`` : sql`limit ${limit}`}
      ${lock ? sql`for update skip locked` : sql``}`.execute(db);
    return rows;
  }

  async retryDeadLetters(queue: string, ids?: readonly string[]): Promise<number> {
    const names = this.#names(queue);
    await this.#ensure(names);
    const retried = await this.#db.transaction().execute(async (trx) => {
      const rows = await this.#deadRows(trx, names, ids, null, true);
      const db = kyselyBossDb(trx);
      for (const row of rows) {
        // The job's failed row in the queue holds its id until the archive takes it; it gives way
        // to the new job, which keeps the id and starts again from attempt 1.
        await sql`delete from pgboss.job where name = ${names.main} and id = ${row.job_id}::uuid and state >= 'completed'`.execute(trx);
        await this.#boss.send(names.main, JSON.stringify(row.data), { id: row.job_id, priority: row.priority, db });
        await this.#boss.deleteJob(names.dlq, [row.id], { db });
      }
      return rows.length;
    });
    if (retried > 0) this.#wake(names.main);
    return retried;
  }

  async purgeDeadLetters(queue: string): Promise<number> {
    const names = this.#names(queue);
    const result = await sql`delete from pgboss.job where name = ${names.dlq} and state < 'completed'`.execute(this.#db);
    return Number(result.numAffectedRows ?? 0);
  }

  /** The broker's names for a queue; refuses once the queue was closed (nothing runs after close). */
  #names(queue: string): QueueNames {
    if (this.#closing.signal.aborted) throw new QueueUsageError('the job queue is closed');
    return queueNames(this.#prefix, queue);
  }

  async close(): Promise<void> {
    this.#closing.abort();
    await Promise.allSettled([...this.#consumers]);
    await this.#boss.stop({ close: false, graceful: false });
    await this.#bossDb.settled();
  }

  #queueOptions(names: QueueNames, policy: QueuePolicy): Record<string, unknown> {
    return {
      policy: 'standard',
      // pg-boss counts retries; the policy counts deliveries, the first included.
      retryLimit: policy.maxAttempts - 1,
      // Retried at once by pg-boss; #fail then sets the back-off in milliseconds. A job failed by
      // expiry (its worker died) is therefore offered again at once.
      retryDelay: 0,
      retryBackoff: false,
      expireInSeconds: this.#settings.expireInSeconds,
      retentionMinutes: RETENTION_MINUTES,
      deadLetter: names.dlq,
    };
  }

  /**
   * Creates the queue and its dead-letter queue unless they exist. pg-boss's create_queue adds a
   * partition and foreign keys to the queue table: two sessions creating queues at once deadlock
   * (40P01), so creation takes a transaction-scoped advisory lock, and this instance asks once.
   */
  #create(names: QueueNames, policy: QueuePolicy): Promise<void> {
    const running = this.#creating.get(names.main);
    if (running) return running;
    const creating = this.#db
      .transaction()
      .execute(async (trx) => {
        await sql`select pg_advisory_xact_lock(${QUEUE_CREATION_LOCK}::bigint)`.execute(trx);
        // The dead-letter queue first: the queue's row refers to it.
        const queues: Array<[string, Record<string, unknown>]> = [
          [names.dlq, { policy: 'standard', retentionMinutes: RETENTION_MINUTES }],
          [names.main, this.#queueOptions(names, policy)],
        ];
        for (const [name, options] of queues) await sql`select pgboss.create_queue(${name}, ${JSON.stringify(options)}::json)`.execute(trx);
      })
      .then(() => void this.#known.add(names.main))
      .finally(() => this.#creating.delete(names.main));
    this.#creating.set(names.main, creating);
    return creating;
  }

  /** Makes the queue with the default policy unless it exists: sending to or consuming from a queue never declared here. */
  async #ensure(names: QueueNames): Promise<void> {
    if (!this.#known.has(names.main)) await this.#create(names, resolvePolicy());
  }

  #wake(main: string): void {
    for (const waiter of this.#idle.get(main) ?? []) waiter.abort();
  }

  async #waitForWork(main: string, signal: AbortSignal): Promise<void> {
    const waiter = new AbortController();
    const waiters = this.#idle.get(main) ?? new Set<AbortController>();
    this.#idle.set(main, waiters.add(waiter));
    try {
      await pause(this.#settings.pollIntervalMs, AbortSignal.any([signal, waiter.signal]));
    } finally {
      waiters.delete(waiter);
    }
  }
}

/**
 * Group commit for acknowledgements: the ids that finish while one `complete` statement runs go
 * together in the next, so a busy consumer writes one statement per batch instead of one per job,
 * and an idle one still acknowledges each job at once.
 */
function batched(run: (ids: string[]) => Promise<unknown>): (id: string) => Promise<void> {
  let waiting: Array<{ id: string; resolve: () => void; reject: (err: unknown) => void }> = [];
  let running = false;
  const drain = async () => {
    running = true;
    while (waiting.length > 0) {
      const batch = waiting;
      waiting = [];
      try {
        await run(batch.map((w) => w.id));
        for (const w of batch) w.resolve();
      } catch (err) {
        for (const w of batch) w.reject(err);
      }
    }
    running = false;
  };
  return (id) =>
    new Promise<void>((resolve, reject) => {
      waiting.push({ id, resolve, reject });
      // Started on the next turn of the event loop, so that the jobs finishing in this one go
      // in the same statement.
      if (!running) {
        running = true;
        setImmediate(() => void drain());
      }
    });
}
