import type { Logger } from 'pino';
import { scheduled, type ScheduledWorker } from './schedule.ts';
import type { ScheduleLock } from './schedule-lock.ts';

/** What the job needs of the idempotency keys: `IdempotencyService` fits. */
export interface ExpiredKeyPurger {
  /** Deletes the keys past their expiry and returns how many. */
  purgeExpired(): Promise<number>;
}

/** Every hour at :17 (UTC): off the hour, when other hourly jobs crowd the database. */
export const IDEMPOTENCY_PURGE_CRON = '17 * * * *';

/**
 * Deletes expired idempotency keys on a schedule, one process at a time across all copies.
 * Keys live 24 hours, so an hourly purge keeps the table within about 25 hours of keys.
 *
 * @example
 * const purge = idempotencyPurge(new IdempotencyService(db), scheduleLock(sqlStore), logger);
 */
export function idempotencyPurge(
  keys: ExpiredKeyPurger,
  lock: ScheduleLock,
  logger: Pick<Logger, 'info'>,
  cron: string = IDEMPOTENCY_PURGE_CRON,
): ScheduledWorker {
  return scheduled({
    name: 'idempotency-purge',
    cron,
    lock,
    async run() {
      const purged = await keys.purgeExpired();
      if (purged > 0) logger.info({ purged }, 'expired idempotency keys purged');
    },
  });
}
