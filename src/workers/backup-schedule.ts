import type { Logger } from 'pino';
import type { BackupSettings } from '../config.ts';
import type { BackupOps } from '../services/backup/ops.ts';
import { scheduled, type ScheduledWorker } from './schedule.ts';
import type { ScheduleLock } from './schedule-lock.ts';

/**
 * The worker's backups: one on `DATABANK_BACKUP_SCHEDULE` followed by pruning, and a restore
 * drill on `DATABANK_BACKUP_DRILL_SCHEDULE`, each in one process of the deployment at a time.
 * Nothing is scheduled without a key (backups are refused then, and `/readyz` says nothing).
 */
export function backupSchedules(ops: BackupOps, settings: BackupSettings, lock: ScheduleLock, logger: Pick<Logger, 'info' | 'error'>): ScheduledWorker[] {
  if (!ops.service.configured) return [];
  const workers: ScheduledWorker[] = [];
  if (settings.schedule) {
    workers.push(
      scheduled({
        name: 'backup-schedule',
        cron: settings.schedule,
        lock,
        async run() {
          if (await ops.scheduledBackup()) logger.info('scheduled backup taken and old backups pruned');
        },
      }),
    );
  }
  if (settings.drillSchedule) {
    workers.push(
      scheduled({
        name: 'backup-drill',
        cron: settings.drillSchedule,
        lock,
        async run() {
          const report = await ops.scheduledDrill();
          const failed = report.checks.filter((c) => !c.ok);
          if (report.ok) logger.info({ backup_id: report.backup_id, rto_ms: report.rto_ms, rpo_s: report.rpo_s }, 'restore drill passed');
          else logger.error({ backup_id: report.backup_id, failed }, 'restore drill FAILED');
          // A failed drill is a failed run: the worker metrics count it.
          if (!report.ok) throw new Error(`restore drill failed: ${failed.map((c) => `${c.name}: ${c.detail}`).join('; ')}`);
        },
      }),
    );
  }
  return workers;
}
