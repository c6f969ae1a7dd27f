import type { Kysely } from 'kysely';
import { runStatements } from '../run-statements.ts';

/**
 * API keys that end by themselves (`expires_at`, null: never) and that say when they were last
 * used (`last_used_at`, written in batches by the app, at most every ~30 s per process, never per
 * request). The admin list pages by id, the primary key, so no index is needed.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await runStatements(db, [
    `alter table api_keys add column expires_at timestamptz null`,
    `alter table api_keys add column last_used_at timestamptz null`,
  ]);
}

export async function down(db: Kysely<unknown>): Promise<void> {
  await runStatements(db, [
    `alter table api_keys drop column last_used_at`,
    `alter table api_keys drop column expires_at`,
  ]);
}
