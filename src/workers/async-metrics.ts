import { sql, type Kysely } from 'kysely';
import { Counter, Gauge, type Registry } from 'prom-client';
import type { JobQueue } from '../stores/queue/port.ts';
import type { Database } from '../stores/sql/schema.ts';
import type { EventStream } from '../stores/stream/port.ts';

export interface AsyncMetrics {
  /** Counts a finished delivery of `queue`. */
  jobOutcome(queue: string, outcome: 'completed' | 'retried' | 'failed'): void;
  /** Counts events the relay published. */
  published(count: number): void;
}

/**
 * The queue, stream and outbox figures of `/metrics`, read from the stores when scraped (a
 * store that does not answer leaves its figures out of that scrape):
 *
 * - `databank_queue_depth{queue}` (ready), `databank_queue_delayed{queue}` (delayed and in
 *   back-off), `databank_queue_in_flight{queue}`, `databank_queue_dead_letters{queue}`;
 * - `databank_queue_retries_total{queue}`, `databank_jobs_total{queue,outcome}`;
 * - `databank_stream_consumer_lag{group}` and `databank_stream_consumer_position{group}`;
 * - `databank_outbox_backlog` (committed events not yet published) and
 *   `databank_outbox_published_total`.
 */
export function asyncMetrics(
  registry: Registry,
  sources: { readonly queue: JobQueue; readonly queues: readonly string[]; readonly stream: EventStream; readonly db: Kysely<Database> },
): AsyncMetrics {
  const stats = async () => {
    const all = await Promise.allSettled(sources.queues.map((q) => sources.queue.stats(q)));
    return all.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
  };
  for (const [name, help, pick] of [
    ['databank_queue_depth', 'Jobs ready to be delivered', 'waiting'],
    ['databank_queue_delayed', 'Jobs waiting for their time: delayed, or retries in back-off', 'delayed'],
    ['databank_queue_in_flight', 'Jobs delivered and not yet acknowledged', 'active'],
    ['databank_queue_dead_letters', 'Jobs in the dead-letter queue', 'deadLetters'],
  ] as const) {
    new Gauge({
      name,
      help,
      labelNames: ['queue'],
      registers: [registry],
      async collect() {
        this.reset();
        for (const s of await stats()) this.set({ queue: s.queue }, s[pick]);
      },
    });
  }
  const retries = new Counter({ name: 'databank_queue_retries_total', help: 'Job deliveries that failed and will be retried', labelNames: ['queue'], registers: [registry] });
  const jobs = new Counter({ name: 'databank_jobs_total', help: 'Finished job deliveries by outcome', labelNames: ['queue', 'outcome'], registers: [registry] });
  for (const q of sources.queues) {
    retries.inc({ queue: q }, 0);
    for (const outcome of ['completed', 'retried', 'failed']) jobs.inc({ queue: q, outcome }, 0);
  }
  const groups = async () => sources.stream.groups().catch(() => []);
  new Gauge({
    name: 'databank_stream_consumer_lag',
    help: 'Events in the stream after the consumer group position',
    labelNames: ['group'],
    registers: [registry],
    async collect() {
      this.reset();
      for (const g of await groups()) this.set({ group: g.group }, g.lag);
    },
  });
  new Gauge({
    name: 'databank_stream_consumer_position',
    help: 'Sequence number of the last event the consumer group acknowledged',
    labelNames: ['group'],
    registers: [registry],
    async collect() {
      this.reset();
      for (const g of await groups()) this.set({ group: g.group }, g.position);
    },
  });
  new Gauge({
    name: 'databank_outbox_backlog',
    help: 'Committed outbox events not yet published to the stream',
    registers: [registry],
    async collect() {
      const row = await sql<{ n: number }>`select count(*)::int as n from outbox where published_at is null`
        .execute(sources.db)
        .catch(() => null);
      if (row) this.set(Number(row.rows[0]?.n ?? 0));
    },
  });
  const published = new Counter({ name: 'databank_outbox_published_total', help: 'Outbox events published to the stream', registers: [registry] });
  return {
    jobOutcome(queue, outcome) {
      jobs.inc({ queue, outcome });
      if (outcome === 'retried') retries.inc({ queue });
    },
    published: (count) => published.inc(count),
  };
}
