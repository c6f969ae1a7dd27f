import type { SqlStore } from '../sql/port.ts';
import type { JobQueue } from './port.ts';
import type { PgBossQueueOptions } from './pgboss.ts';
import type { RabbitMqQueueOptions } from './rabbitmq.ts';

export type { ConsumeOptions, DeadLetter, Job, JobHandler, JobQueue, QueuePolicy, QueueStats, SendOptions } from './port.ts';
export { DEFAULT_POLICY } from './port.ts';
export { QueueUsageError } from './queue-options.ts';

/** The job queue on the deployment's own database (pg-boss), embedded or server. */
export type PostgresQueueConfig = { readonly kind: 'postgres'; readonly store: SqlStore; readonly prefix: string } & Omit<
  PgBossQueueOptions,
  'store' | 'prefix'
>;

/** The job queue on RabbitMQ. */
export type RabbitMqQueueConfig = { readonly kind: 'rabbitmq'; readonly url: string; readonly prefix: string } & Omit<
  RabbitMqQueueOptions,
  'url' | 'prefix'
>;

/**
 * Opens the job queue the options name. Each implementation is imported only when it is the one
 * used: the default (PostgreSQL) never loads amqplib, and RabbitMQ never loads pg-boss.
 *
 * @example const queue = await openJobQueue({ kind: 'postgres', store, prefix: 'databank' });
 */
export async function openJobQueue(options: PostgresQueueConfig | RabbitMqQueueConfig): Promise<JobQueue> {
  switch (options.kind) {
    case 'postgres':
      return (await import('./pgboss.ts')).openPgBossQueue(options);
    case 'rabbitmq':
      return (await import('./rabbitmq.ts')).openRabbitMqQueue(options);
  }
}
