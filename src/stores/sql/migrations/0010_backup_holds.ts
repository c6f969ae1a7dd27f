import type { Kysely } from 'kysely';
import { runStatements } from '../run-statements.ts';

/**
 * A backup copies the file store's objects after it took its snapshot of the rows that name
 * them. While a backup holds (a row here, written before its snapshot), deleting a file removes
 * the row but leaves the object to the sweeper, so every object the snapshot names can still be
 * copied. A hold of a backup that died expires by itself.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await runStatements(db, [
    `create table backup_holds (
      backup_id text primary key,
      started_at timestamptz not null default now(),
      expires_at timestamptz not null
    )`,
  ]);
}

export async function down(db: Kysely<unknown>): Promise<void> {
  await runStatements(db, [`drop table backup_holds`]);
}
