import { randomUUID } from 'node:crypto';
import type { Channel, ConfirmChannel, ConsumeMessage, Message, Options } from 'amqplib';
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
import { confirmedPublisher, RabbitLink, UnroutableError, type ConfirmedPublish } from './rabbitmq-link.ts';

export interface RabbitMqQueueOptions {
  /** `amqp://user:password@host:5672/vhost` */
  readonly url: string;
  /** Put before every queue name: `${prefix}.${queue}`. */
  readonly prefix: string;
  /** Connection and channel failures; the queue reconnects by itself. */
  readonly onError?: (err: Error) => void;
  /**
   * How long `send` keeps trying while the broker does not answer, then rejects. Default 15000.
   * A send that timed out may still have been stored (its confirm was lost): at least once.
   */
  readonly sendTimeoutMs?: number;
  /** Longest wait between a consumer's attempts to reconnect. Default 3000. */
  readonly reconnectMaxDelayMs?: number;
}

/** The delivery a message is on, counting every one before it (retries and redeliveries). */
const ATTEMPT = 'x-databank-attempt';
const ERROR = 'x-databank-error';
const FAILED_AT = 'x-databank-failed-at';

/** Classic queues: quorum queues in RabbitMQ 3.10 have no priorities. */
const MAIN_ARGUMENTS = { 'x-queue-type': 'classic', 'x-max-priority': 9 } as const;
const DLQ_ARGUMENTS = { 'x-queue-type': 'classic' } as const;
/**
 * A delay queue disappears this long after it was last declared. Messages do not count as use,
 * so the queue is declared again before a message goes in whenever the last declaration is older
 * than half of this: it outlives its messages by at least the other half.
 */
const DELAY_QUEUE_LEASE_MS = 60_000;

/**
 * The job queue on RabbitMQ 3.10: durable classic queues with priorities, persistent messages,
 * publisher confirms, manual acknowledgements. A failed job is published (confirmed) to a delay
 * queue `${queue}.delay.${ms}`, whose messages expire back into the queue, or, after its last
 * attempt, to `${queue}.dlq`; only then is the delivery acknowledged, so nothing is lost between
 * the two. The attempt travels in a header; a delivery the broker makes again because its
 * consumer vanished is republished with the next attempt first, so that a job that kills its
 * worker every time still reaches the dead-letter queue.
 */
export async function openRabbitMqQueue(options: RabbitMqQueueOptions): Promise<JobQueue> {
  const queue = new RabbitMqQueue(options);
  // Fails fast on a bad URL or credentials; an outage later is waited out.
  await queue.connect();
  return queue;
}

class RabbitMqQueue implements JobQueue {
  readonly kind = 'rabbitmq' as const;
  readonly #prefix: string;
  readonly #link: RabbitLink;
  readonly #onError: (err: Error) => void;
  readonly #sendTimeoutMs: number;
  readonly #reconnectMaxDelayMs: number;
  /** Queues (with their dead-letter queue) declared on the broker by this instance. */
  readonly #declared = new Set<string>();
  readonly #policies = new Map<string, QueuePolicy>();
  /** Delay queues this instance used, by queue: name → when last declared. */
  readonly #delayQueues = new Map<string, Map<string, number>>();
  /** Deliveries of this process not acknowledged yet, by queue (the broker does not say over AMQP). */
  readonly #active = new Map<string, number>();
  readonly #consumers = new Set<Promise<void>>();
  readonly #closing = new AbortController();

  constructor(options: RabbitMqQueueOptions) {
    this.#prefix = checkPrefix(options.prefix);
    this.#onError = options.onError ?? (() => undefined);
    this.#link = new RabbitLink(options.url, this.#onError);
    this.#sendTimeoutMs = options.sendTimeoutMs ?? 15_000;
    this.#reconnectMaxDelayMs = options.reconnectMaxDelayMs ?? 3_000;
  }

  async connect(): Promise<void> {
    await this.#link.connection();
  }

  async declare(queue: string, policy?: Partial<QueuePolicy>): Promise<void> {
    const names = this.#names(queue);
    const resolved = resolvePolicy(policy);
    await this.#assert(names);
    this.#policies.set(queue, resolved);
  }

  async send<T>(queue: string, payload: T, options?: SendOptions): Promise<string> {
    const names = this.#names(queue);
    const { id = randomUUID(), priority, delayMs } = checkSendOptions(options);
    const content = Buffer.from(JSON.stringify(payload ?? null));
    const properties = this.#properties(id, priority, { [ATTEMPT]: 1 });
    const deadline = Date.now() + this.#sendTimeoutMs;
    const attempt = async () => {
      const publish = await this.#link.publisher();
      await this.#ensure(names);
      const target = delayMs > 0 ? await this.#delayQueue(names, delayMs) : names.main;
      await publish(target, content, properties);
    };
    for (let wait = 50; ; wait = Math.min(wait * 2, 1_000)) {
      try {
        // A broker that stops answering without closing the connection must not hold the caller
        // past the deadline (the heartbeat notices a dead connection only after 20 s).
        await withDeadline(attempt(), deadline - Date.now());
        return id;
      } catch (err) {
        if (err instanceof QueueUsageError) throw err;
        // Deleted behind this instance's back: declared again on the next try.
        if (err instanceof UnroutableError) this.#forget(names.main);
        if (Date.now() + wait > deadline || this.#closing.signal.aborted) {
          throw new Error(`RabbitMQ did not store the job for queue ${queue} within ${this.#sendTimeoutMs} ms: ${errorMessage(err)}`, {
            cause: err,
          });
        }
        await pause(wait, this.#closing.signal);
      }
    }
  }

  async consume<T>(queue: string, handler: JobHandler<T>, options: { prefetch: number; signal: AbortSignal }): Promise<void> {
    const names = this.#names(queue);
    const prefetch = checkPrefetch(options.prefetch);
    const signal = AbortSignal.any([options.signal, this.#closing.signal]);
    const run = (async () => {
      let wait = 100;
      while (!signal.aborted) {
        try {
          await this.#consumeOnChannel(names, handler as JobHandler, prefetch, signal, () => (wait = 100));
        } catch (err) {
          if (signal.aborted) break;
          this.#onError(new Error(`consumer of ${names.main} lost its channel, reconnecting in ${wait} ms: ${errorMessage(err)}`, { cause: err }));
          await pause(wait, signal);
          wait = Math.min(wait * 2, this.#reconnectMaxDelayMs);
        }
      }
    })();
    this.#consumers.add(run);
    try {
      await run;
    } finally {
      this.#consumers.delete(run);
    }
  }

  /**
   * One channel's consumer, until the signal aborts (resolves) or the channel closes (rejects).
   * `onConsuming` is told once the broker has accepted the consumer.
   */
  async #consumeOnChannel(
    names: QueueNames,
    handler: JobHandler,
    prefetch: number,
    signal: AbortSignal,
    onConsuming: () => void,
  ): Promise<void> {
    const channel = await this.#link.confirmChannel();
    const publish = confirmedPublisher(channel);
    const lost = new Promise<string>((resolve) => channel.on('close', () => resolve('the channel closed')));
    let onAbort: () => void = () => undefined;
    const stopped = new Promise<null>((resolve) => {
      onAbort = () => resolve(null);
      // Aborted while the channel opened: an 'abort' listener added now would never be called.
      if (signal.aborted) resolve(null);
      else signal.addEventListener('abort', onAbort, { once: true });
    });
    const inHand = new Set<Promise<void>>();
    try {
      await channel.prefetch(prefetch);
      await this.#ensure(names);
      const { consumerTag } = await channel.consume(
        names.main,
        (message) => {
          // null: the broker cancelled the consumer (its queue was deleted); a new channel declares it again.
          if (!message) {
            this.#forget(names.main);
            return void channel.close().catch(() => undefined);
          }
          const done = this.#deliver(channel, publish, names, message, handler, signal).finally(() => inHand.delete(done));
          inHand.add(done);
        },
        { noAck: false },
      );
      onConsuming();
      const reason = await Promise.race([stopped, lost]);
      if (reason !== null) throw new Error(reason);
      // Cancel first, and close (below) once the jobs in hand are acknowledged: closing a channel
      // with a consumer still on it can bring back messages already acknowledged.
      await channel.cancel(consumerTag).catch(() => undefined);
    } finally {
      signal.removeEventListener('abort', onAbort);
      // Jobs in hand finish before a new channel takes more: never more than prefetch at once.
      await Promise.allSettled(inHand);
      await channel.close().catch(() => undefined);
    }
  }

  /** Runs one delivery and acknowledges it once its outcome (done, retry, dead letter) is stored. */
  async #deliver(
    channel: ConfirmChannel,
    publish: ConfirmedPublish,
    names: QueueNames,
    message: ConsumeMessage,
    handler: JobHandler,
    signal: AbortSignal,
  ): Promise<void> {
    this.#countActive(names.queue, +1);
    try {
      const policy = this.#policies.get(names.queue) ?? resolvePolicy();
      const previous = attemptOf(message);
      if (message.fields.redelivered) {
        // Its consumer went away without an answer: that delivery counts as an attempt.
        if (previous >= policy.maxAttempts) {
          await this.#deadLetter(publish, names, message, previous, 'its worker stopped during the last attempt (delivered again without an acknowledgement)');
        } else {
          await publish(names.main, message.content, { ...this.#republished(message), headers: { [ATTEMPT]: previous + 1 } });
        }
        return channel.ack(message);
      }
      let payload: unknown;
      try {
        payload = JSON.parse(message.content.toString('utf8'));
      } catch (err) {
        await this.#deadLetter(publish, names, message, previous, `the payload is not JSON: ${errorMessage(err)}`);
        return channel.ack(message);
      }
      const job: Job = { id: messageIdOf(message), queue: names.queue, payload, attempt: previous, priority: priorityOf(message) };
      try {
        await handler(job, signal);
      } catch (err) {
        if (job.attempt >= policy.maxAttempts) {
          await this.#deadLetter(publish, names, message, job.attempt, errorMessage(err));
        } else {
          const delay = retryDelay(policy, job.attempt);
          const target = delay > 0 ? await this.#delayQueue(names, delay) : names.main;
          await publish(target, message.content, { ...this.#republished(message), headers: { [ATTEMPT]: job.attempt + 1 } });
        }
      }
      channel.ack(message);
    } catch (err) {
      if (err instanceof UnroutableError) this.#forget(names.main);
      this.#onError(new Error(`job ${messageIdOf(message)} of ${names.main} could not be acknowledged: ${errorMessage(err)}`, { cause: err }));
      // Back to the queue, as a redelivery (which counts as an attempt). On a closed channel this
      // throws, and the broker redelivers it anyway.
      try {
        channel.nack(message, false, true);
      } catch {
        // The channel is gone: so is this delivery.
      }
    } finally {
      this.#countActive(names.queue, -1);
    }
  }

  async #deadLetter(publish: ConfirmedPublish, names: QueueNames, message: Message, attempts: number, error: string): Promise<void> {
    const headers = { [ATTEMPT]: attempts, [ERROR]: error, [FAILED_AT]: new Date().toISOString() };
    await publish(names.dlq, message.content, { ...this.#republished(message), headers });
  }

  async stats(queue: string): Promise<QueueStats> {
    const names = this.#names(queue);
    const delayQueues = [...(this.#delayQueues.get(names.main)?.keys() ?? [])];
    const [waiting = 0, deadLetters = 0, ...delays] = await this.#messageCounts([names.main, names.dlq, ...delayQueues]);
    return { queue, waiting, delayed: delays.reduce((a, b) => a + b, 0), active: this.#active.get(queue) ?? 0, deadLetters };
  }

  /** Ready messages of each queue; 0 for a queue that does not exist (a delay queue that expired). */
  async #messageCounts(queues: readonly string[]): Promise<number[]> {
    const counts: number[] = [];
    for (const queue of queues) {
      // A missing queue closes the channel it was asked on: one channel per question.
      counts.push(
        await this.#link
          .withChannel(async (channel) => (await channel.checkQueue(queue)).messageCount)
          .catch((err: unknown) => {
            if ((err as { code?: unknown }).code === 404) return 0;
            throw err;
          }),
      );
    }
    return counts;
  }

  async deadLetters(queue: string, limit: number): Promise<DeadLetter[]> {
    const names = this.#names(queue);
    const max = checkLimit(limit);
    await this.#ensure(names);
    return this.#link.withChannel(async (channel) => {
      const messages = await takeAll(channel, names.dlq, max);
      // Back where they were: RabbitMQ requeues a classic queue's messages in their place.
      channel.nackAll(true);
      return messages.map((m) => toDeadLetter(queue, m));
    });
  }

  async retryDeadLetters(queue: string, ids?: readonly string[]): Promise<number> {
    const names = this.#names(queue);
    await this.#ensure(names);
    const wanted = ids ? new Set(ids) : null;
    const channel = await this.#link.confirmChannel();
    const publish = confirmedPublisher(channel);
    try {
      let retried = 0;
      for (const message of await takeAll(channel, names.dlq, Infinity)) {
        if (wanted && !wanted.has(messageIdOf(message))) continue;
        await publish(names.main, message.content, { ...this.#republished(message), headers: { [ATTEMPT]: 1 } });
        channel.ack(message);
        retried++;
      }
      return retried;
    } finally {
      // The ones not retried go back to their places.
      await channel.close().catch(() => undefined);
    }
  }

  async purgeDeadLetters(queue: string): Promise<number> {
    const names = this.#names(queue);
    await this.#ensure(names);
    return this.#link.withChannel(async (channel) => (await channel.purgeQueue(names.dlq)).messageCount);
  }

  /** The broker's names for a queue; refuses once the queue was closed (nothing runs after close). */
  #names(queue: string): QueueNames {
    if (this.#closing.signal.aborted) throw new QueueUsageError('the job queue is closed');
    return queueNames(this.#prefix, queue);
  }

  async close(): Promise<void> {
    this.#closing.abort();
    await Promise.allSettled([...this.#consumers]);
    await this.#link.close();
  }

  #properties(id: string, priority: number, headers: Record<string, unknown>): Options.Publish {
    return { persistent: true, messageId: id, priority, contentType: 'application/json', headers };
  }

  #republished(message: Message): Options.Publish {
    return this.#properties(messageIdOf(message), priorityOf(message), {});
  }

  async #assert(names: QueueNames): Promise<void> {
    await this.#link.withChannel(async (channel) => {
      await channel.assertQueue(names.main, { durable: true, arguments: MAIN_ARGUMENTS });
      await channel.assertQueue(names.dlq, { durable: true, arguments: DLQ_ARGUMENTS });
    });
    this.#declared.add(names.main);
  }

  async #ensure(names: QueueNames): Promise<void> {
    if (!this.#declared.has(names.main)) await this.#assert(names);
  }

  /**
   * The queue that holds messages for `ms` and then hands them to the queue, declared if its lease
   * may be running out. Delays are rounded up to two significant digits, which bounds the number
   * of such queues and never delivers early.
   */
  async #delayQueue(names: QueueNames, ms: number): Promise<string> {
    const magnitude = 10 ** Math.max(0, Math.floor(Math.log10(Math.max(ms, 1))) - 1);
    const rounded = Math.ceil(ms / magnitude) * magnitude;
    const name = `${names.main}.delay.${rounded}`;
    const known = this.#delayQueues.get(names.main) ?? new Map<string, number>();
    this.#delayQueues.set(names.main, known);
    if ((known.get(name) ?? 0) < Date.now() - DELAY_QUEUE_LEASE_MS / 2) {
      await this.#link.withChannel((channel) =>
        channel.assertQueue(name, {
          durable: true,
          arguments: {
            ...DLQ_ARGUMENTS,
            'x-message-ttl': rounded,
            'x-dead-letter-exchange': '',
            'x-dead-letter-routing-key': names.main,
            'x-expires': rounded + DELAY_QUEUE_LEASE_MS,
          },
        }),
      );
      known.set(name, Date.now());
    }
    return name;
  }

  /** Forgets what this instance declared for a queue, after the broker said a queue of it is gone. */
  #forget(main: string): void {
    this.#declared.delete(main);
    this.#delayQueues.delete(main);
  }

  #countActive(queue: string, delta: number): void {
    this.#active.set(queue, (this.#active.get(queue) ?? 0) + delta);
  }
}

/** `promise`, or a rejection once `ms` have passed (the promise itself runs on). */
async function withDeadline<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error('no answer from RabbitMQ')), Math.max(0, ms));
  });
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}

/** Takes up to `limit` messages of a queue without acknowledging them (they stay the channel's). */
async function takeAll(channel: Channel, queue: string, limit: number): Promise<Message[]> {
  const messages: Message[] = [];
  while (messages.length < limit) {
    const message = await channel.get(queue, { noAck: false });
    if (!message) break;
    messages.push(message);
  }
  return messages;
}

function attemptOf(message: Message): number {
  const attempt: unknown = message.properties.headers?.[ATTEMPT];
  return typeof attempt === 'number' && Number.isInteger(attempt) && attempt >= 1 ? attempt : 1;
}

function messageIdOf(message: Message): string {
  return typeof message.properties.messageId === 'string' ? message.properties.messageId : '';
}

function priorityOf(message: Message): number {
  return typeof message.properties.priority === 'number' ? message.properties.priority : 0;
}

function toDeadLetter(queue: string, message: Message): DeadLetter {
  const text = message.content.toString('utf8');
  let payload: unknown = text;
  try {
    payload = JSON.parse(text);
  } catch {
    // Kept as text: a dead letter may be one because its payload was not JSON.
  }
  const headers = message.properties.headers ?? {};
  return {
    id: messageIdOf(message),
    queue,
    payload,
    attempts: attemptOf(message),
    error: typeof headers[ERROR] === 'string' ? headers[ERROR] : null,
    failedAt: typeof headers[FAILED_AT] === 'string' ? headers[FAILED_AT] : '',
  };
}
