import { DEFAULT_POLICY, type QueuePolicy, type SendOptions } from './port.ts';

/**
 * The checks and arithmetic both queue implementations share, so that a bad name, policy or option
 * fails the same way on PostgreSQL and on RabbitMQ, before anything reaches the broker.
 */

/** Dot-separated words of letters, digits, `_` and `-`: safe as a RabbitMQ name and a pg-boss queue name. */
const NAME = /^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$/;
const MAX_NAME = 120;
/** Segments the implementations append to a queue's name for its own helper queues. */
const RESERVED = /(^|\.)(dlq|delay)(\.|$)/;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** A caller's mistake in a name, a policy or an option; nothing was sent. */
export class QueueUsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'QueueUsageError';
  }
}

/** The broker's names for one of the caller's queues. */
export interface QueueNames {
  /** The queue as the caller named it. */
  readonly queue: string;
  readonly main: string;
  readonly dlq: string;
}

/** Checks a deployment prefix (e.g. `databank` or `test.queue.1234`). */
export function checkPrefix(prefix: string): string {
  if (!NAME.test(prefix) || prefix.length > MAX_NAME) {
    throw new QueueUsageError(`queue prefix ${JSON.stringify(prefix)} must be dot-separated words of A-Z, a-z, 0-9, _ and -`);
  }
  return prefix;
}

/** `${prefix}.${queue}` and its dead-letter queue, after checking the caller's name. */
export function queueNames(prefix: string, queue: string): QueueNames {
  if (!NAME.test(queue) || queue.length > MAX_NAME) {
    throw new QueueUsageError(`queue name ${JSON.stringify(queue)} must be dot-separated words of A-Z, a-z, 0-9, _ and -`);
  }
  if (RESERVED.test(queue)) {
    throw new QueueUsageError(`queue name ${JSON.stringify(queue)} may not contain the segments "dlq" or "delay", used by the queue itself`);
  }
  const main = `${prefix}.${queue}`;
  return { queue, main, dlq: `${main}.dlq` };
}

/** A complete policy from the caller's partial one, checked. */
export function resolvePolicy(partial: Partial<QueuePolicy> = {}): QueuePolicy {
  const policy = { ...DEFAULT_POLICY, ...partial };
  if (!Number.isInteger(policy.maxAttempts) || policy.maxAttempts < 1 || policy.maxAttempts > 1_000) {
    throw new QueueUsageError(`maxAttempts must be an integer from 1 to 1000, got ${policy.maxAttempts}`);
  }
  if (!Number.isInteger(policy.retryDelayMs) || policy.retryDelayMs < 0) {
    throw new QueueUsageError(`retryDelayMs must be an integer ≥ 0, got ${policy.retryDelayMs}`);
  }
  if (!Number.isInteger(policy.retryMaxDelayMs) || policy.retryMaxDelayMs < policy.retryDelayMs) {
    throw new QueueUsageError(`retryMaxDelayMs must be an integer ≥ retryDelayMs (${policy.retryDelayMs}), got ${policy.retryMaxDelayMs}`);
  }
  return Object.freeze(policy);
}

/** The wait before the next delivery after `attempt` (1-based) failed: doubling, capped. */
export function retryDelay(policy: QueuePolicy, attempt: number): number {
  // 2^40 ms is 35 years: past it the cap has long applied, and the power stays a safe integer.
  return Math.min(policy.retryMaxDelayMs, policy.retryDelayMs * 2 ** Math.min(40, attempt - 1));
}

/** The checked send options, with the defaults filled in (the id stays undefined when not given). */
export function checkSendOptions(options: SendOptions = {}): { id: string | undefined; priority: number; delayMs: number } {
  const { id, priority = 0, delayMs = 0 } = options;
  if (id !== undefined && !UUID.test(id)) throw new QueueUsageError(`job id must be a UUID, got ${JSON.stringify(id)}`);
  if (!Number.isInteger(priority) || priority < 0 || priority > 9) {
    throw new QueueUsageError(`priority must be an integer from 0 to 9, got ${priority}`);
  }
  if (!Number.isFinite(delayMs) || delayMs < 0) throw new QueueUsageError(`delayMs must be a number ≥ 0, got ${delayMs}`);
  return { id, priority, delayMs: Math.ceil(delayMs) };
}

/** Checks a consumer's prefetch. */
export function checkPrefetch(prefetch: number): number {
  if (!Number.isInteger(prefetch) || prefetch < 1 || prefetch > 1_000) {
    throw new QueueUsageError(`prefetch must be an integer from 1 to 1000, got ${prefetch}`);
  }
  return prefetch;
}

/** Checks how many dead letters a listing may return. */
export function checkLimit(limit: number): number {
  if (!Number.isInteger(limit) || limit < 0) throw new QueueUsageError(`limit must be an integer ≥ 0, got ${limit}`);
  return limit;
}

/** A handler's rejection as the message a dead letter keeps. */
export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

export { sleep as pause } from '../../sleep.ts';
