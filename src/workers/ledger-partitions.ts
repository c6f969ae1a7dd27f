import type { Logger } from 'pino';
import { LEDGER_PARTITIONS_AHEAD, type CreatedPartition } from '../services/ledger-partitions.ts';
import { scheduled, type ScheduledWorker } from './schedule.ts';
import type { ScheduleLock } from './schedule-lock.ts';

/** What the job needs of the ledger: `LedgerPartitions` fits. */
export interface LedgerPartitioner {
  /** Makes the missing monthly partitions from this month to `monthsAhead` ahead; returns them. */
  ensure(monthsAhead: number): Promise<readonly CreatedPartition[]>;
}

/** Every day at 03:47 (UTC), off the hour; the process's start runs it too. */
export const LEDGER_PARTITIONS_CRON = '47 3 * * *';

export interface LedgerPartitionsOptions {
  readonly cron?: string;
  /** Default 3: a quarter of daily runs can fail before an entry lands in the default partition. */
  readonly monthsAhead?: number;
}

/**
 * Keeps the ledger's monthly partitions made ahead of time: at start (a deployment that was down
 * for months catches up before it writes), then daily, one process at a time across all copies.
 * A partition whose month already had rows in the default partition takes them over; that is
 * logged as a warning, since it means the upkeep fell behind.
 *
 * @example
 * const upkeep = ledgerPartitions(new LedgerPartitions(sqlStore.db), scheduleLock(sqlStore), logger);
 */
export function ledgerPartitions(
  partitions: LedgerPartitioner,
  lock: ScheduleLock,
  logger: Pick<Logger, 'info' | 'warn'>,
  options: LedgerPartitionsOptions = {},
): ScheduledWorker {
  const monthsAhead = options.monthsAhead ?? LEDGER_PARTITIONS_AHEAD;
  return scheduled({
    name: 'ledger-partitions',
    cron: options.cron ?? LEDGER_PARTITIONS_CRON,
    lock,
    runAtStart: true,
    async run() {
      const made = await partitions.ensure(monthsAhead);
      if (made.length > 0) logger.info({ partitions: made.map((p) => p.partition) }, 'ledger partitions created');
      const late = made.filter((p) => p.moved > 0);
      if (late.length > 0) logger.warn({ partitions: late }, 'ledger entries moved out of the default partition');
    },
  });
}
