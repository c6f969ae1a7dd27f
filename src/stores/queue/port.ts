/**
 * The job queue: background work handed from a request (or a worker) to whichever worker process
 * takes it next. Two implementations keep this contract (`test/contract/queue.test.ts`): pg-boss
 * on the deployment's own PostgreSQL (default, embedded or server) and RabbitMQ (`AMQP_URL`).
 *
 * Delivery is at least once: a job is acknowledged only after its handler resolved (the handler
 * commits its side effect first), so a crash between the two delivers it again. Handlers are
 * idempotent (a `processed_messages` row written in the side effect's transaction), which makes
 * the effect happen once.
 */

/** How a queue retries a job whose handler failed, and when it gives up. */
export interface QueuePolicy {
  /** Deliveries before the job goes to the dead-letter queue, the first included (≥ 1). */
  readonly maxAttempts: number;
  /** Wait before the first retry; each further retry waits twice as long as the one before. */
  readonly retryDelayMs: number;
  /** Longest wait between two attempts. */
  readonly retryMaxDelayMs: number;
}

export const DEFAULT_POLICY: QueuePolicy = Object.freeze({ maxAttempts: 5, retryDelayMs: 1_000, retryMaxDelayMs: 60_000 });

export interface SendOptions {
  /**
   * The job's id (a UUID). Sending an id the queue already holds (waiting, delayed, active or
   * dead-lettered) adds nothing on PostgreSQL; RabbitMQ cannot tell, and the handler's
   * idempotency makes the second delivery change nothing. Default: a new random UUID.
   */
  readonly id?: string;
  /** 0 (default) to 9; higher first. Jobs of one priority come out in the order they were sent. */
  readonly priority?: number;
  /** Deliver no sooner than this many milliseconds from now. */
  readonly delayMs?: number;
}

export interface Job<T = unknown> {
  readonly id: string;
  /** The queue's name as the caller gave it (without the broker prefix). */
  readonly queue: string;
  readonly payload: T;
  /** 1 on the first delivery, counting every delivery since (retries and redeliveries after a crash). */
  readonly attempt: number;
  readonly priority: number;
}

/** Resolve: done, acknowledged. Reject: retried after the back-off, or dead-lettered after the last attempt. */
export type JobHandler<T = unknown> = (job: Job<T>, signal: AbortSignal) => Promise<void>;

export interface ConsumeOptions {
  /** Jobs delivered to this consumer and not yet acknowledged, at most (prefetch). */
  readonly prefetch: number;
  /** Stops fetching when aborted; `consume` resolves once the jobs in hand have finished. */
  readonly signal: AbortSignal;
}

export interface QueueStats {
  readonly queue: string;
  /** Ready to be delivered now. */
  readonly waiting: number;
  /** Waiting for their time: delayed jobs and retries in back-off. */
  readonly delayed: number;
  /** Delivered and not yet acknowledged. */
  readonly active: number;
  /** In the dead-letter queue. */
  readonly deadLetters: number;
}

export interface DeadLetter<T = unknown> {
  readonly id: string;
  readonly queue: string;
  readonly payload: T;
  /** Deliveries made before it was dead-lettered. */
  readonly attempts: number;
  /** The last handler error's message. */
  readonly error: string | null;
  readonly failedAt: string;
}

export interface JobQueue {
  readonly kind: 'postgres' | 'rabbitmq';
  /** Creates the queue, its retry path and its dead-letter queue if absent (idempotent). */
  declare(queue: string, policy?: Partial<QueuePolicy>): Promise<void>;
  /** Resolves with the job's id once the job is durable (committed, or confirmed by the broker). */
  send<T>(queue: string, payload: T, options?: SendOptions): Promise<string>;
  /**
   * Delivers jobs of `queue` to `handler`, at most `prefetch` at a time, until the signal aborts;
   * resolves once the jobs in hand have been acknowledged or failed. A job is acknowledged after
   * the handler resolves, never before.
   */
  consume<T>(queue: string, handler: JobHandler<T>, options: ConsumeOptions): Promise<void>;
  stats(queue: string): Promise<QueueStats>;
  /** The dead-letter queue's jobs, oldest first. */
  deadLetters(queue: string, limit: number): Promise<DeadLetter[]>;
  /** Sends dead-lettered jobs (all, or those with the given ids) back to the queue with fresh attempts; resolves with how many. */
  retryDeadLetters(queue: string, ids?: readonly string[]): Promise<number>;
  /** Drops every dead-lettered job of the queue; resolves with how many. */
  purgeDeadLetters(queue: string): Promise<number>;
  close(): Promise<void>;
}
