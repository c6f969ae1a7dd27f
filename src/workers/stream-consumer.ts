import type { EventStream, StartAt, StreamEvent, Subscription } from '../stores/stream/port.ts';
import { sleep, type Worker } from './worker.ts';

/** What a consumer group does with the events it reads: idempotent, since delivery is at least once. */
export interface EventApplier {
  /** Applies a batch, in stream order; resolves once its effect is durable. */
  apply(events: readonly StreamEvent[]): Promise<void>;
}

/**
 * One consumer group: subscribes (a new group starts at `startAt`), fetches batches in stream
 * order, applies each and acknowledges it after. A failed batch is not acknowledged: the worker
 * subscribes again after a pause and the batch comes back.
 */
export function streamConsumer(options: {
  readonly group: string;
  readonly stream: EventStream;
  readonly startAt: StartAt;
  readonly applier: EventApplier;
  readonly batchSize?: number;
  /** Forget the group when the worker stops (a group per process, like the cache's). */
  readonly deleteOnStop?: boolean;
}): Worker {
  const batchSize = options.batchSize ?? 200;
  let loop: Promise<void> | null = null;
  return {
    name: `events:${options.group}`,
    start(signal, runs) {
      loop = (async () => {
        while (!signal.aborted) {
          let sub: Subscription | null = null;
          try {
            // Inside the try: a database that is away (a failover) fails this run, tried again after
            // a second, instead of crashing the worker into the host's growing back-off.
            sub = await options.stream.subscribe(options.group, options.startAt);
            while (!signal.aborted) {
              const batch = await sub.fetch(batchSize, 1_000, signal);
              if (batch.length === 0) continue;
              await options.applier.apply(batch.map((d) => d.event));
              await (batch[batch.length - 1] as (typeof batch)[number]).ack();
              runs.succeeded();
            }
          } catch (err) {
            if (signal.aborted) break;
            runs.failed(err);
            await sleep(1_000, signal);
          } finally {
            await sub?.close().catch(() => undefined);
          }
        }
      })();
      return loop;
    },
    async stop() {
      // A start that crashed was reported, and restarted, by the host: its error is not a failure
      // to stop, and must not turn an orderly shutdown into exit code 1.
      await loop?.catch(() => undefined);
      if (options.deleteOnStop) await options.stream.deleteGroup(options.group).catch(() => undefined);
    },
  };
}
