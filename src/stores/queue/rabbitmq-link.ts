import { randomUUID } from 'node:crypto';
import { connect, type Channel, type ChannelModel, type ConfirmChannel, type Options } from 'amqplib';
import { errorMessage } from './queue-options.ts';

/**
 * One RabbitMQ connection, opened on first use and again after it was lost, and the confirmed
 * publishing the queue is built on. Every connection and channel has an 'error' listener: amqplib
 * emits one when the broker closes them (a restart, a missing queue), and an EventEmitter's 'error'
 * without a listener would end the process.
 */

/** The broker did not route a message to any queue (the queue is gone): it was not stored. */
export class UnroutableError extends Error {
  constructor(queue: string) {
    super(`RabbitMQ queue ${queue} does not exist: the message was not stored`);
    this.name = 'UnroutableError';
  }
}

/** Publishes to a queue and resolves once the broker has stored the message (a publisher confirm). */
export type ConfirmedPublish = (queue: string, content: Buffer, options: Options.Publish) => Promise<void>;

/**
 * Confirmed, mandatory publishing on a confirm channel. A message no queue takes is returned
 * before it is confirmed (AMQP orders the two), so the confirm callback knows whether it was.
 */
export function confirmedPublisher(channel: ConfirmChannel): ConfirmedPublish {
  const returned = new Set<string>();
  channel.on('return', (message: { properties: { correlationId?: unknown } }) => {
    if (typeof message.properties.correlationId === 'string') returned.add(message.properties.correlationId);
  });
  return (queue, content, options) =>
    new Promise<void>((resolve, reject) => {
      const token = randomUUID();
      try {
        channel.sendToQueue(queue, content, { ...options, mandatory: true, correlationId: token }, (err: unknown) => {
          const wasReturned = returned.delete(token);
          if (err) reject(err instanceof Error ? err : new Error(`RabbitMQ refused the message: ${errorMessage(err)}`));
          else if (wasReturned) reject(new UnroutableError(queue));
          else resolve();
        });
      } catch (err) {
        // A channel already closed throws at once.
        reject(err);
      }
    });
}

export class RabbitLink {
  readonly #url: string;
  readonly #onError: (err: Error) => void;
  #connection: Promise<ChannelModel> | null = null;
  #publisher: Promise<ConfirmedPublish> | null = null;
  #closed = false;

  constructor(url: string, onError: (err: Error) => void) {
    // Heartbeats every 10 s (unless the URL says otherwise) notice a connection that died without
    // a word within half a minute, instead of the broker's default of several minutes.
    const withHeartbeat = new URL(url);
    if (!withHeartbeat.searchParams.has('heartbeat')) withHeartbeat.searchParams.set('heartbeat', '10');
    this.#url = withHeartbeat.toString();
    this.#onError = onError;
  }

  /** The live connection, opening one if there is none; rejects while the broker does not answer. */
  connection(): Promise<ChannelModel> {
    if (this.#closed) return Promise.reject(new Error('the job queue is closed'));
    if (!this.#connection) {
      const opening = connect(this.#url, { timeout: 5_000 }).then((model) => {
        model.on('error', (err: Error) => this.#onError(err));
        model.on('close', () => {
          if (this.#connection === opening) this.#connection = null;
          this.#publisher = null;
        });
        return model;
      });
      this.#connection = opening;
      opening.catch(() => {
        if (this.#connection === opening) this.#connection = null;
      });
    }
    return this.#connection;
  }

  /** A confirm channel with an error listener, on the live connection. */
  async confirmChannel(): Promise<ConfirmChannel> {
    const channel = await (await this.connection()).createConfirmChannel();
    channel.on('error', (err: Error) => this.#onError(err));
    return channel;
  }

  /** The shared publishing channel of `send`, made again after it closed. */
  publisher(): Promise<ConfirmedPublish> {
    if (!this.#publisher) {
      const opening = this.confirmChannel().then((channel) => {
        channel.on('close', () => {
          if (this.#publisher === opening) this.#publisher = null;
        });
        return confirmedPublisher(channel);
      });
      this.#publisher = opening;
      opening.catch(() => {
        if (this.#publisher === opening) this.#publisher = null;
      });
    }
    return this.#publisher;
  }

  /**
   * Runs `fn` on a channel of its own, closed afterwards. The broker closes a channel on some
   * errors (a queue that does not exist): one per operation keeps that from touching others.
   */
  async withChannel<T>(fn: (channel: Channel) => Promise<T>): Promise<T> {
    const channel = await (await this.connection()).createChannel();
    let open = true;
    channel.on('error', () => undefined);
    channel.on('close', () => {
      open = false;
    });
    try {
      return await fn(channel);
    } finally {
      if (open) await channel.close().catch(() => undefined);
    }
  }

  async close(): Promise<void> {
    this.#closed = true;
    const connection = this.#connection;
    this.#connection = null;
    this.#publisher = null;
    if (connection) await (await connection.catch(() => null))?.close().catch(() => undefined);
  }
}
