import type { SqlStore } from '../sql/port.ts';
import type { NatsStreamOptions } from './nats.ts';
import type { PostgresLogOptions } from './postgres-log.ts';
import type { EventStream } from './port.ts';

export type { Delivery, EventStream, GroupInfo, StartAt, StreamEvent, Subscription } from './port.ts';

/** Which event stream to open, with the options of that implementation. */
export type EventStreamOptions =
  | ({ readonly kind: 'postgres'; readonly store: SqlStore } & Omit<PostgresLogOptions, 'store'>)
  | ({ readonly kind: 'nats'; readonly url: string; readonly prefix: string; readonly onError?: (err: Error) => void } & Omit<
      NatsStreamOptions,
      'url' | 'prefix' | 'onError'
    >);

/**
 * Opens the event stream: the log in the deployment's own database (the default, which never
 * loads the NATS client) or NATS JetStream. Each implementation is imported only when used.
 * Closing the PostgreSQL log leaves the caller's SqlStore open.
 *
 * @example
 * const stream = await openEventStream({ kind: 'postgres', store: sqlStore });
 * const sub = await stream.subscribe('notifications', 'start');
 */
export async function openEventStream(options: EventStreamOptions): Promise<EventStream> {
  switch (options.kind) {
    case 'postgres':
      return (await import('./postgres-log.ts')).openPostgresLog(options);
    case 'nats':
      return (await import('./nats.ts')).openNatsStream(options);
  }
}
