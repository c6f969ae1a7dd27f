/**
 * The event stream: an append-only, ordered log of the bank's events that any number of consumer
 * groups read, each at its own position. Two implementations keep this contract
 * (`test/contract/stream.test.ts`): a log table in the deployment's own PostgreSQL (default,
 * embedded or server) and NATS JetStream (`NATS_URL`).
 *
 * The outbox relay is the only publisher; it publishes in commit order and marks events sent only
 * after `publish` resolved. Delivery to a group is at least once, in stream order; consumers
 * deduplicate by event id.
 */

/** An event as the outbox holds it and the stream carries it (see docs/events.md). */
export interface StreamEvent {
  /** A UUIDv7, unique across deployments and databases; the broker's de-duplication id. */
  readonly id: string;
  /** e.g. `transfer.completed`. */
  readonly type: string;
  /** The payload's schema version for this type. */
  readonly version: number;
  /** ISO 8601 time of the change (its transaction's time). */
  readonly occurred_at: string;
  readonly aggregate_id: string;
  /** The customers whose activity this event is part of (a transfer has two). */
  readonly customer_ids: readonly number[];
  readonly payload: Readonly<Record<string, unknown>>;
}

export interface Delivery {
  /** The event's position in the stream: 1, 2, 3… in publication order. */
  readonly seq: number;
  readonly event: StreamEvent;
  /** Acknowledges this event and every earlier one of the same fetch for the group. */
  ack(): Promise<void>;
}

export interface Subscription {
  /**
   * Up to `max` events after the group's position, in stream order: resolves as soon as at least
   * one is there, or with none after `waitMs` (or when `signal` aborts). Unacknowledged events
   * are delivered again on a later fetch after a while, or to the next subscription after a crash.
   */
  fetch(max: number, waitMs: number, signal?: AbortSignal): Promise<Delivery[]>;
  close(): Promise<void>;
}

export interface GroupInfo {
  readonly group: string;
  /** Sequence number of the last event the group acknowledged (0: none). */
  readonly position: number;
  /** Events in the stream after the group's position. */
  readonly lag: number;
}

export type StartAt = 'start' | 'end';

export interface EventStream {
  readonly kind: 'postgres' | 'nats';
  /**
   * Appends the events in the given order; resolves once the store has them durably (committed,
   * or acknowledged by JetStream). An event whose id the stream already holds is not appended
   * again (JetStream: within its duplicate window; the PostgreSQL log: always).
   */
  publish(events: readonly StreamEvent[]): Promise<void>;
  /** Subscribes as `group`; a group seen for the first time starts at `startAt`, a known one resumes. */
  subscribe(group: string, startAt: StartAt): Promise<Subscription>;
  /** Moves a group back to the start (position 0: "going back in time") or to the end. */
  resetGroup(group: string, startAt: StartAt): Promise<void>;
  /** Forgets a group (its position); resolves false when it did not exist. */
  deleteGroup(group: string): Promise<boolean>;
  groups(): Promise<GroupInfo[]>;
  /** Sequence number of the last event in the stream (0 when empty). */
  head(): Promise<number>;
  /** Up to `limit` events from sequence `fromSeq` on, with no group (for `databank events tail`). */
  read(fromSeq: number, limit: number): Promise<Array<{ seq: number; event: StreamEvent }>>;
  close(): Promise<void>;
}
