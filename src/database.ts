import type { Logger } from 'pino';
import type { Config } from './config.ts';
import { claimDataDir, type DeploymentRecord } from './data-dir.ts';
import { openSqlStore, type SqlStore } from './stores/sql/index.ts';
import { createMigrator, pendingMigrations, unwrap } from './stores/sql/migrator.ts';

export interface OpenedDatabase {
  readonly sql: SqlStore;
  readonly deployment: DeploymentRecord;
}

export interface OpenDatabaseOptions {
  /** Apply pending migrations (MIGRATE_ON_BOOT); otherwise a schema behind refuses the start. */
  readonly migrate: boolean;
  /** What the refusal tells the operator to do. */
  readonly behindAdvice: string;
}

/**
 * What every long-running process (`serve`, `worker`) does first with its database: open it
 * (a new embedded one from the migrated template), check that it answers, claim the data dir for
 * it before anything is migrated, keyed or served, then bring the schema up to date or refuse a
 * schema that is behind (code written for a newer schema must not run on an older one). The
 * store is closed again when any step fails.
 */
export async function openDeploymentDatabase(config: Config, logger: Logger, options: OpenDatabaseOptions): Promise<OpenedDatabase> {
  const sql = await openSqlStore(config.sql, (err) => logger.warn({ err }, 'idle database connection failed'), {
    migratedTemplate: true,
  });
  try {
    await sql.ping(10_000);
    const deployment = await claimDataDir(config.dataDir, sql);
    const pending = await pendingMigrations(sql.db);
    if (pending.length > 0 && options.migrate) {
      const results = unwrap(await createMigrator(sql.db).migrateToLatest()).results ?? [];
      for (const r of results) logger.info({ migration: r.migrationName }, 'migration applied');
    } else if (pending.length > 0) {
      throw new Error(
        `the database schema is behind by ${pending.length} migration(s) (${pending.join(', ')}): ${options.behindAdvice}`,
      );
    }
    return { sql, deployment };
  } catch (err) {
    await sql.close().catch(() => undefined);
    throw err;
  }
}
