import { Gauge, type Registry } from 'prom-client';
import { DatabankError } from '../../domain/errors.ts';
import type { Principal } from '../../domain/types.ts';
import type { ScheduleLock } from '../../workers/schedule-lock.ts';
import { assertAdmin } from '../access.ts';
import type { BackupService, BackupSummary, DrillReport } from './service.ts';

/** The schedule lock's name: one backup at a time in the deployment, by schedule or by request. */
export const BACKUP_LOCK = 'backup';

/**
 * Backups as the server offers them: admin only, one at a time (an advisory lock across
 * processes, a flag within one), and what `/metrics` and `/readyz` say of them.
 */
export class BackupOps {
  private running = false;
  private facts: { at: number; value: Promise<{ newest: string | null; drill: DrillReport | null }> } | null = null;

  constructor(
    readonly service: BackupService,
    private readonly lock: ScheduleLock,
    private readonly maxAgeSeconds: number,
  ) {}

  /** Takes a backup now; 409 when none is configured or one is running. */
  async create(principal: Principal): Promise<BackupSummary> {
    assertAdmin(principal);
    if (!this.service.configured) throw new DatabankError('DATABANK_ERR_BACKUP_NOT_CONFIGURED');
    let summary: BackupSummary | null = null;
    const ran = await this.exclusive(async () => {
      summary = await this.service.create();
    });
    if (!ran || !summary) throw new DatabankError('DATABANK_ERR_BACKUP_RUNNING');
    this.facts = null;
    return summary;
  }

  async list(principal: Principal) {
    assertAdmin(principal);
    if (!this.service.configured) throw new DatabankError('DATABANK_ERR_BACKUP_NOT_CONFIGURED');
    return { backups: await this.service.list(), last_drill: await this.service.lastDrill() };
  }

  /** The worker's backup: take one, then prune by the policy. False when another runs. */
  async scheduledBackup(): Promise<boolean> {
    const ran = await this.exclusive(async () => {
      await this.service.create();
      await this.service.prune({ dryRun: false });
    });
    this.facts = null;
    return ran;
  }

  async scheduledDrill(): Promise<DrillReport> {
    const report = await this.service.drill();
    this.facts = null;
    return report;
  }

  private async exclusive(work: () => Promise<void>): Promise<boolean> {
    if (this.running) return false;
    this.running = true;
    try {
      return await this.lock.tryRun(BACKUP_LOCK, work);
    } finally {
      this.running = false;
    }
  }

  /** The newest backup's time and the last drill, read from the store at most every 15 s. */
  private async current(): Promise<{ newest: string | null; drill: DrillReport | null }> {
    if (!this.facts || Date.now() - this.facts.at > 15_000) {
      const value = (async () => ({
        newest: (await this.service.newestManifest())?.created_at ?? null,
        drill: await this.service.lastDrill(),
      }))();
      value.catch(() => undefined);
      this.facts = { at: Date.now(), value };
    }
    return this.facts.value;
  }

  /** What `/readyz` reports: never a failure, only whether the newest backup is older than allowed. */
  async readiness(): Promise<{ configured: boolean; age_s: number | null; max_age_s: number; stale: boolean } | null> {
    if (!this.service.configured) return null;
    try {
      const { newest } = await this.current();
      const age = newest === null ? null : Math.round((Date.now() - Date.parse(newest)) / 1000);
      return { configured: true, age_s: age, max_age_s: this.maxAgeSeconds, stale: age === null || age > this.maxAgeSeconds };
    } catch {
      return { configured: true, age_s: null, max_age_s: this.maxAgeSeconds, stale: true };
    }
  }

  /** `databank_backup_age_seconds`, `databank_backup_last_drill_success`, `databank_backup_last_drill_timestamp_seconds`. */
  registerMetrics(registry: Registry): void {
    if (!this.service.configured) return;
    const current = () => this.current();
    new Gauge({
      name: 'databank_backup_age_seconds',
      help: 'Seconds since the newest backup was taken (absent until there is one)',
      registers: [registry],
      async collect() {
        this.reset();
        const { newest } = await current().catch(() => ({ newest: null }));
        if (newest) this.set((Date.now() - Date.parse(newest)) / 1000);
      },
    });
    new Gauge({
      name: 'databank_backup_last_drill_success',
      help: '1 if the last restore drill passed every check, 0 if it failed (absent before the first drill)',
      registers: [registry],
      async collect() {
        this.reset();
        const { drill } = await current().catch(() => ({ drill: null }));
        if (drill) this.set(drill.ok ? 1 : 0);
      },
    });
    new Gauge({
      name: 'databank_backup_last_drill_timestamp_seconds',
      help: 'When the last restore drill finished, in seconds since the epoch',
      registers: [registry],
      async collect() {
        this.reset();
        const { drill } = await current().catch(() => ({ drill: null }));
        if (drill) this.set(Date.parse(drill.finished_at) / 1000);
      },
    });
  }
}
