import { createHash } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  AckPolicy,
  connect,
  createInbox,
  DeliverPolicy,
  Events,
  NatsError,
  nanos,
  StorageType,
  type ConsumerConfig,
  type JetStreamClient,
  type JetStreamManager,
  type Msg,
  type NatsConnection,
} from 'nats';
import { withTimeout } from '../sql/timeout.ts';
import type { Delivery, EventStream, GroupInfo, StartAt, StreamEvent, Subscription } from './port.ts';

/** Options of the event stream on NATS JetStream. */
export interface NatsStreamOptions {
  readonly url: string;
  /**
   * Names everything this stream makes: the JetStream stream `${prefix}_events`, its subjects
   * `${prefix}.events.<type>` and the consumers `${prefix}_<group>`. 1 to 64 of A–Z a–z 0–9 _ -.
   */
  readonly prefix: string;
  /** Told when the connection drops and of failures a fetch retried past; the stream keeps going. */
  readonly onError?: (err: Error) => void;
  /** How long a delivery may stay unacknowledged before JetStream delivers it again (default 30 s). */
  readonly ackWaitMs?: number;
  /** How long JetStream remembers an event id to drop a second publication (default 2 min). */
  readonly duplicateWindowMs?: number;
  /** How long a publish, an ack or a management request waits for the server (default 5 s). */
  readonly requestTimeoutMs?: number;
}

const PREFIX = /^[A-Za-z0-9_-]{1,64}$/;
const DEFAULT_ACK_WAIT_MS = 30_000;
const DEFAULT_DUPLICATE_WINDOW_MS = 120_000;
const DEFAULT_REQUEST_TIMEOUT_MS = 5_000;
/** A fetch that failed (server restarting, JetStream not ready yet) tries again this often. */
const RETRY_MS = 250;
/** Below this, a pull does not wait on the server at all (`no_wait` alone). */
const MIN_EXPIRES_MS = 10;
/** The server ends every pull itself; this ends one whose server went away without a word. */
const PULL_GRACE_MS = 2_000;
/**
 * A long fetch is a series of pulls of at most this long: a pull left behind by an abort or a
 * crash stays open on the server until it expires.
 */
const MAX_PULL_MS = 10_000;

/** JetStream API error codes (`err_code`) this module tells apart. */
const CONSUMER_NOT_FOUND = 10014;
const MESSAGE_NOT_FOUND = 10037;
const STREAM_NOT_FOUND = 10059;
/**
 * "error creating store for stream": NATS 2.9 can fail a stream's creation when another client
 * deletes the account's last stream at that moment (it removes the folder the new one goes in).
 */
const STREAM_STORE_FAILED = 10049;

const ACK = '+ACK';
const NAK = '-NAK';

/**
 * The event stream on NATS JetStream: a file-stored stream whose `Nats-Msg-Id` is the event id,
 * and one durable pull consumer with explicit acks per consumer group. The connection reconnects
 * for ever; while the server is away, publish and ack reject after `requestTimeoutMs` (the relay
 * retries) and fetch waits and resolves empty.
 */
export async function openNatsStream(options: NatsStreamOptions): Promise<EventStream> {
  if (!PREFIX.test(options.prefix)) {
    throw new RangeError(`NATS stream prefix must be 1 to 64 of A-Z a-z 0-9 _ -, got "${options.prefix}"`);
  }
  const timeout = options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
  let nc: NatsConnection;
  try {
    nc = await connect({
      servers: options.url,
      name: 'databank-events',
      timeout,
      reconnect: true,
      maxReconnectAttempts: -1,
      reconnectTimeWait: 250,
      // A server that stops answering without closing the socket is noticed within ~30 s.
      pingInterval: 10_000,
    });
  } catch (err) {
    throw new Error(`cannot connect to NATS at ${withoutPassword(options.url)}: ${messageOf(err)}`, { cause: err });
  }
  try {
    const stream = new NatsStream(nc, await nc.jetstreamManager({ timeout }), options, timeout);
    await stream.ensureStream();
    return stream;
  } catch (err) {
    await nc.close();
    throw err;
  }
}

class NatsStream implements EventStream {
  readonly kind = 'nats';
  readonly js: JetStreamClient;
  readonly streamName: string;
  readonly ackWaitMs: number;
  /** False from a disconnect until the client has reconnected: pulls sent meanwhile would be lost. */
  connected = true;
  private readonly subscriptions = new Set<NatsSubscription>();
  private closed = false;

  constructor(
    readonly nc: NatsConnection,
    private readonly jsm: JetStreamManager,
    private readonly options: NatsStreamOptions,
    readonly requestTimeoutMs: number,
  ) {
    this.js = nc.jetstream({ timeout: requestTimeoutMs });
    this.streamName = `${options.prefix}_events`;
    this.ackWaitMs = options.ackWaitMs ?? DEFAULT_ACK_WAIT_MS;
    this.watchConnection().catch((err: unknown) => this.report(err));
  }

  /** Creates the stream unless it exists (an existing stream keeps its configuration). */
  async ensureStream(): Promise<void> {
    try {
      await this.jsm.streams.info(this.streamName);
    } catch (err) {
      if (apiErrorCode(err) !== STREAM_NOT_FOUND) throw err;
      const config = {
        name: this.streamName,
        subjects: [`${this.options.prefix}.events.>`],
        storage: StorageType.File,
        duplicate_window: nanos(this.options.duplicateWindowMs ?? DEFAULT_DUPLICATE_WINDOW_MS),
      };
      for (let attempt = 1; ; attempt++) {
        try {
          await this.jsm.streams.add(config);
          return;
        } catch (addErr) {
          // The server's race is over a moment later; anything else, or a third failure, is real.
          if (apiErrorCode(addErr) !== STREAM_STORE_FAILED || attempt === 3) throw addErr;
          await sleep(200 * attempt);
        }
      }
    }
  }

  async publish(events: readonly StreamEvent[]): Promise<void> {
    this.assertOpen();
    // One at a time: a pipelined batch whose middle message is lost in a reconnect would store
    // the later ones first, and the retry would then append the lost one out of order.
    for (const [i, event] of events.entries()) {
      const subject = this.subjectOf(event.type);
      try {
        await this.js.publish(subject, JSON.stringify(event), { msgID: event.id, timeout: this.requestTimeoutMs });
      } catch (err) {
        throw new Error(`NATS did not store event ${event.id} (${i + 1} of ${events.length}) on ${subject}: ${messageOf(err)}`, { cause: err });
      }
    }
  }

  async subscribe(group: string, startAt: StartAt): Promise<Subscription> {
    this.assertOpen();
    const consumer = this.consumerOf(group);
    if (!(await this.consumerExists(consumer))) {
      try {
        await this.jsm.consumers.add(this.streamName, await this.consumerConfig(group, startAt));
      } catch (err) {
        // Another subscriber may have made it meanwhile.
        if (!(await this.consumerExists(consumer))) throw err;
      }
    }
    const subscription = new NatsSubscription(this, group, consumer, () => this.subscriptions.delete(subscription));
    this.subscriptions.add(subscription);
    return subscription;
  }

  async resetGroup(group: string, startAt: StartAt): Promise<void> {
    this.assertOpen();
    await this.deleteGroup(group);
    await this.jsm.consumers.add(this.streamName, await this.consumerConfig(group, startAt));
  }

  async deleteGroup(group: string): Promise<boolean> {
    this.assertOpen();
    try {
      return await this.jsm.consumers.delete(this.streamName, this.consumerOf(group));
    } catch (err) {
      if (apiErrorCode(err) === CONSUMER_NOT_FOUND) return false;
      throw err;
    }
  }

  async groups(): Promise<GroupInfo[]> {
    this.assertOpen();
    const head = await this.head();
    const groups: GroupInfo[] = [];
    for await (const info of this.jsm.consumers.list(this.streamName)) {
      if (!info.name.startsWith(`${this.options.prefix}_`)) continue;
      // The ack floor of a consumer that starts at a sequence stays 0 until its first ack.
      const position = Math.max(info.ack_floor.stream_seq, (info.config.opt_start_seq ?? 1) - 1);
      groups.push({ group: info.config.description ?? info.name, position, lag: Math.max(0, head - position) });
    }
    return groups.sort((a, b) => (a.group < b.group ? -1 : a.group > b.group ? 1 : 0));
  }

  async head(): Promise<number> {
    this.assertOpen();
    return (await this.jsm.streams.info(this.streamName)).state.last_seq;
  }

  async read(fromSeq: number, limit: number): Promise<Array<{ seq: number; event: StreamEvent }>> {
    this.assertOpen();
    checkCount(fromSeq, 'fromSeq', 0);
    checkCount(limit, 'limit', 0);
    const { state } = await this.jsm.streams.info(this.streamName);
    const events: Array<{ seq: number; event: StreamEvent }> = [];
    let seq = Math.max(fromSeq, state.first_seq);
    while (events.length < limit && seq <= state.last_seq) {
      const count = Math.min(limit - events.length, state.last_seq - seq + 1, 256);
      const found = await Promise.all(Array.from({ length: count }, (_, i) => this.storedEvent(seq + i)));
      for (const item of found) if (item) events.push(item);
      seq += count;
    }
    return events;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all([...this.subscriptions].map((s) => s.close()));
    await this.nc.close();
  }

  /**
   * One pull request for up to `max` messages. With `no_wait` and `expires` together, the server
   * answers as soon as it has sent what there is, or waits up to `expires` for the first message;
   * it ends every request with a status (404 nothing there, 408 expired, 409 consumer deleted…),
   * and that status, not a client-side timer racing the server's, ends the pull.
   *
   * A pull cannot be withdrawn: after an abort the request stays open on the server until it
   * expires, so the inbox keeps listening until then and hands back (nak) whatever still comes,
   * instead of letting it wait out the ack wait.
   */
  pull(consumer: string, max: number, waitMs: number, signal: AbortSignal): Promise<Pulled> {
    return new Promise((resolve, reject) => {
      const messages: Msg[] = [];
      let answered = false;
      const answer = (ended: Pulled['ended']) => {
        if (answered) return;
        answered = true;
        signal.removeEventListener('abort', abandon);
        resolve({ messages, ended });
      };
      const abandon = () => {
        for (const m of messages) m.respond(NAK);
        messages.length = 0;
        answer('aborted');
      };
      const end = (ended: Pulled['ended']) => {
        clearTimeout(guard);
        sub.unsubscribe();
        answer(ended);
      };
      const sub = this.nc.subscribe(createInbox(), {
        callback: (err, msg) => {
          if (err) return end('cut short');
          if (!msg.reply) return end(msg.headers?.code === 404 || msg.headers?.code === 408 ? 'nothing there' : 'cut short');
          if (answered) return void msg.respond(NAK);
          messages.push(msg);
          // A full batch ends the request on the server too, without a status.
          if (messages.length >= max) end('nothing there');
        },
      });
      const expires = Math.floor(waitMs);
      const guard = setTimeout(() => end('cut short'), Math.max(0, expires) + PULL_GRACE_MS);
      // Closing the connection ends an abandoned pull's inbox; its guard must not hold the process.
      void sub.closed.then(() => clearTimeout(guard));
      signal.addEventListener('abort', abandon, { once: true });
      const request = { batch: max, no_wait: true, ...(expires >= MIN_EXPIRES_MS ? { expires: nanos(expires) } : {}) };
      try {
        this.nc.publish(`$JS.API.CONSUMER.MSG.NEXT.${this.streamName}.${consumer}`, JSON.stringify(request), { reply: sub.getSubject() });
      } catch (err) {
        end('cut short');
        reject(err);
      }
    });
  }

  /** Sends `+ACK` and waits for the server's confirmation; may be sent again after a failure. */
  async confirmAck(msg: Msg): Promise<void> {
    await this.nc.request(msg.reply ?? '', ACK, { timeout: this.requestTimeoutMs });
  }

  /** False only when the server says that the consumer (or the whole stream) is gone. */
  async consumerExists(consumer: string): Promise<boolean> {
    try {
      await this.jsm.consumers.info(this.streamName, consumer);
      return true;
    } catch (err) {
      const code = apiErrorCode(err);
      if (code === CONSUMER_NOT_FOUND || code === STREAM_NOT_FOUND) return false;
      throw err;
    }
  }

  /** Makes sure naks and acks sent without confirmation have left, unless the server is away. */
  async flush(): Promise<void> {
    if (!this.connected) return;
    await withTimeout(this.nc.flush(), this.requestTimeoutMs).catch((err: unknown) => this.report(err));
  }

  report(err: unknown): void {
    this.options.onError?.(err instanceof Error ? err : new Error(String(err)));
  }

  private async watchConnection(): Promise<void> {
    for await (const status of this.nc.status()) {
      if (status.type === Events.Disconnect) {
        this.connected = false;
        this.report(new Error(`NATS connection to ${String(status.data)} lost; reconnecting`));
      } else if (status.type === Events.Reconnect) {
        this.connected = true;
      } else if (status.type === Events.Error) {
        this.report(new Error(`NATS: ${String(status.data)}`));
      }
    }
  }

  private async consumerConfig(group: string, startAt: StartAt): Promise<Partial<ConsumerConfig>> {
    const start =
      startAt === 'start'
        ? { deliver_policy: DeliverPolicy.All }
        : startAt === 'end'
          ? // "After the current head" exactly, where DeliverPolicy.New would race with publishers.
            { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: (await this.head()) + 1 }
          : badStart(startAt);
    return {
      durable_name: this.consumerOf(group),
      description: group,
      ack_policy: AckPolicy.Explicit,
      ack_wait: nanos(this.ackWaitMs),
      ...start,
    };
  }

  private async storedEvent(seq: number): Promise<{ seq: number; event: StreamEvent } | null> {
    try {
      const stored = await this.jsm.streams.getMessage(this.streamName, { seq });
      return { seq: stored.seq, event: stored.json<StreamEvent>() };
    } catch (err) {
      if (apiErrorCode(err) === MESSAGE_NOT_FOUND) return null;
      throw err;
    }
  }

  /** The event's subject: its type's dot-separated words, each made a valid subject token. */
  private subjectOf(type: string): string {
    const tokens = String(type)
      .split('.')
      .map((t) => t.replace(/[^A-Za-z0-9_-]/g, '_') || '_');
    return `${this.options.prefix}.events.${tokens.join('.')}`;
  }

  /**
   * The durable consumer of a group. Names that are not valid consumer names (or are long) get a
   * hash, so that two groups never share one; the group's own name is kept as the description.
   */
  private consumerOf(group: string): string {
    if (typeof group !== 'string' || group.length === 0) throw new RangeError('a consumer group name must be a non-empty string');
    if (PREFIX.test(group)) return `${this.options.prefix}_${group}`;
    const hash = createHash('sha256').update(group).digest('hex').slice(0, 12);
    return `${this.options.prefix}_${group.replace(/[^A-Za-z0-9_-]/g, '_').slice(0, 40)}_${hash}`;
  }

  private assertOpen(): void {
    if (this.closed) throw new Error('the event stream is closed');
  }
}

/**
 * One consumer of a group. JetStream keeps what is in flight: a second fetch before an ack gets
 * the next events, and unacknowledged ones come again after `ackWaitMs`, each when its own wait
 * ends, so not necessarily in stream order (consumers deduplicate by id). Closing hands the
 * unacknowledged ones back at once (nak), so the next subscription gets them without that wait.
 */
class NatsSubscription implements Subscription {
  private readonly unacked = new Set<Msg>();
  private readonly closing = new AbortController();

  constructor(
    private readonly stream: NatsStream,
    private readonly group: string,
    private readonly consumer: string,
    private readonly onClose: () => void,
  ) {}

  async fetch(max: number, waitMs: number, signal?: AbortSignal): Promise<Delivery[]> {
    if (this.closing.signal.aborted) throw new Error(`the subscription of group "${this.group}" is closed`);
    checkCount(max, 'max', 1);
    if (!Number.isFinite(waitMs) || waitMs < 0) throw new RangeError(`waitMs must be a finite number of at least 0, got ${waitMs}`);
    const stop = signal ? AbortSignal.any([signal, this.closing.signal]) : this.closing.signal;
    const deadline = Date.now() + waitMs;
    for (;;) {
      if (stop.aborted) return [];
      if (this.stream.connected) {
        let ended: Pulled['ended'] = 'cut short';
        try {
          const pulled = await this.stream.pull(this.consumer, max, Math.min(deadline - Date.now(), MAX_PULL_MS), stop);
          if (pulled.messages.length > 0) return this.deliveries(pulled.messages);
          ended = pulled.ended;
        } catch (err) {
          this.stream.report(err);
        }
        if (ended === 'aborted' || (ended === 'nothing there' && deadline - Date.now() < MIN_EXPIRES_MS)) return [];
        if (ended === 'nothing there') continue;
        // Cut short (a restart, JetStream not ready, or the group is gone). An unanswered question
        // (the server is away) counts as "exists": only the server's word counts as gone.
        if (!(await this.stream.consumerExists(this.consumer).catch(() => true))) {
          throw new Error(`consumer group "${this.group}" does not exist: it was deleted while subscribed`);
        }
      }
      const left = deadline - Date.now();
      if (left <= 0 || stop.aborted) return [];
      await sleep(Math.min(RETRY_MS, left), undefined, { signal: stop }).catch(() => undefined);
    }
  }

  async close(): Promise<void> {
    if (this.closing.signal.aborted) return;
    this.closing.abort();
    this.onClose();
    for (const m of this.unacked) m.respond(NAK);
    this.unacked.clear();
    await this.stream.flush();
  }

  private deliveries(messages: Msg[]): Delivery[] {
    for (const m of messages) this.unacked.add(m);
    return messages.map((msg, i) => ({
      seq: streamSeqOf(msg),
      event: msg.json<StreamEvent>(),
      // Acknowledges this one and the earlier ones of the same fetch, as the port says.
      ack: () => this.ack(messages.slice(0, i + 1)),
    }));
  }

  private async ack(messages: Msg[]): Promise<void> {
    const pending = messages.filter((m) => this.unacked.has(m));
    await Promise.all(pending.map((m) => this.stream.confirmAck(m)));
    for (const m of pending) this.unacked.delete(m);
  }
}

/**
 * The stream sequence from a JetStream ack subject: `$JS.ACK.<stream>.<consumer>.<delivered>.
 * <stream seq>.<consumer seq>.<time>.<pending>`, or the longer form with domain and account hash
 * after `$JS.ACK` (and a random token at the end).
 */
/** What a pull brought, and how it ended. */
interface Pulled {
  readonly messages: Msg[];
  readonly ended: 'nothing there' | 'cut short' | 'aborted';
}

function streamSeqOf(msg: Msg): number {
  const tokens = (msg.reply ?? '').split('.');
  const seq = Number(tokens.length === 9 ? tokens[5] : tokens[7]);
  if (tokens[0] !== '$JS' || tokens[1] !== 'ACK' || !Number.isSafeInteger(seq)) {
    throw new Error(`not a JetStream delivery: reply subject "${msg.reply ?? ''}"`);
  }
  return seq;
}

function apiErrorCode(err: unknown): number | undefined {
  return err instanceof NatsError ? err.api_error?.err_code : undefined;
}

function checkCount(value: number, name: string, min: number): void {
  if (!Number.isSafeInteger(value) || value < min) throw new RangeError(`${name} must be an integer of at least ${min}, got ${value}`);
}

function badStart(startAt: never): never {
  throw new RangeError(`startAt must be 'start' or 'end', got ${String(startAt)}`);
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function withoutPassword(url: string): string {
  return url.replace(/\/\/[^@/]*@/, '//');
}
