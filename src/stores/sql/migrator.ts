import { promises as fs } from 'node:fs';
import path from 'node:path';
import { Migrator, sql, type Kysely, type MigrationResultSet } from 'kysely';
import { packagePath } from '../../paths.ts';
import { MIGRATIONS } from './migrations/index.ts';
import type { Database } from './schema.ts';

/** The folder of versioned migrations: the same files for the embedded engine and the server. */
/** The migration sources (TypeScript), where `migrate make` writes a new one. */
export const MIGRATIONS_DIR = packagePath('src', 'stores', 'sql', 'migrations');

/**
 * A Kysely Migrator over databank's migrations. On PostgreSQL it takes a transaction-scoped
 * advisory lock, so two processes migrating at once apply each migration exactly once.
 */
export function createMigrator(db: Kysely<Database>): Migrator {
  return new Migrator({
    db,
    provider: { getMigrations: async () => MIGRATIONS },
    migrationTableName: 'databank_migrations',
    migrationLockTableName: 'databank_migrations_lock',
  });
}

/** Throws the migration error of a result set, if any, with the failed migration's name. */
export function unwrap(result: MigrationResultSet): MigrationResultSet {
  if (result.error) {
    const failed = result.results?.find((r) => r.status === 'Error');
    const name = failed ? ` in ${failed.migrationName}` : '';
    const cause = result.error instanceof Error ? result.error.message : String(result.error);
    throw new Error(`migration failed${name}: ${cause}`, { cause: result.error });
  }
  return result;
}

export interface MigrationStatus {
  readonly name: string;
  readonly executedAt: Date | null;
}

/** Each known migration and when it ran (null: pending). */
export async function migrationStatus(db: Kysely<Database>): Promise<MigrationStatus[]> {
  const migrations = await createMigrator(db).getMigrations();
  return migrations.map((m) => ({ name: m.name, executedAt: m.executedAt ?? null }));
}

/**
 * The names of the migrations not applied yet, in order, from one query: what a start checks
 * before it asks the Migrator (whose locking and bookkeeping cost a noticeable part of a start)
 * to do anything.
 */
export async function pendingMigrations(db: Kysely<Database>): Promise<string[]> {
  const applied = new Set(
    (
      await sql<{ name: string }>`select name from databank_migrations`
        .execute(db)
        .catch((err: unknown) => {
          // No bookkeeping table yet (undefined_table): nothing was ever applied.
          if ((err as { code?: unknown }).code === '42P01') return { rows: [] };
          throw err;
        })
    ).rows.map((r) => r.name),
  );
  return Object.keys(MIGRATIONS).filter((name) => !applied.has(name));
}

/** Writes a new migration file named after the next number and `name`; returns its path. */
export async function makeMigration(name: string): Promise<string> {
  if (!/^[a-z0-9_]{1,64}$/.test(name)) {
    throw new Error('a migration name is 1 to 64 of a-z, 0-9 and _');
  }
  const files = await fs.readdir(MIGRATIONS_DIR);
  const numbers = files.map((f) => Number(/^(\d{4})_/.exec(f)?.[1] ?? 0));
  const next = String(Math.max(0, ...numbers) + 1).padStart(4, '0');
  const id = `${next}_${name}`;
  const file = path.join(MIGRATIONS_DIR, `${id}.ts`);
  await fs.writeFile(file, TEMPLATE, { flag: 'wx' });
  const indexFile = path.join(MIGRATIONS_DIR, 'index.ts');
  const index = await fs.readFile(indexFile, 'utf8');
  const marker = '  // databank:migrations';
  await fs.writeFile(
    indexFile,
    index
      .replace(/(import \* as m\d+ from .*\n)(?!import)/, `$1import * as m${next} from './${id}.ts';\n`)
      .replace(marker, `  '${id}': m${next},\n${marker}`),
  );
  return file;
}

const TEMPLATE = `import type { Kysely } from 'kysely';
import { runStatements } from '../run-statements.ts';

export async function up(db: Kysely<unknown>): Promise<void> {
  await runStatements(db, []);
}

export async function down(db: Kysely<unknown>): Promise<void> {
  await runStatements(db, []);
}
`;
