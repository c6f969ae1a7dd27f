import type { Config } from '../../config.ts';
import type { FileStore } from '../../stores/files/port.ts';
import type { SqlStore } from '../../stores/sql/port.ts';
import { readBackupKey, type BackupKey } from './crypto.ts';
import { BackupService } from './service.ts';

export { BackupService, KEY_MISSING, type BackupSummary, type DrillReport, type RestoreTarget } from './service.ts';

/**
 * The backup service of a process, from the config: the key (read now; a key file that cannot be
 * read is an error at once), the second copy's store, the retention policy. `close` closes the
 * copy's store.
 */
export async function openBackups(config: Config, sql: SqlStore | null, files: FileStore): Promise<{ service: BackupService; close: () => Promise<void> }> {
  const key: BackupKey | null = config.backup.keyFile ? await readBackupKey(config.backup.keyFile) : null;
  let copy: { store: FileStore; name: string } | null = null;
  if (config.backup.copyTo) {
    const { openFileStore } = await import('../../stores/files/index.ts');
    const target = config.backup.copyTo;
    copy = { store: await openFileStore(target), name: target.kind === 'local' ? target.dir : `s3://${target.bucket}` };
  }
  const server = config.sql.kind === 'postgres' ? { connectionString: config.sql.connectionString, ssl: config.sql.ssl } : null;
  const service = new BackupService({ sql, server, files, copy, key, keep: config.backup.keep });
  return { service, close: async () => copy?.store.close() };
}
