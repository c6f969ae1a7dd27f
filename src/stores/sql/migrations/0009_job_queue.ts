import { sql, type Kysely } from 'kysely';
import { runStatements } from '../run-statements.ts';

/**
 * The job queue's tables: pg-boss's own schema, made from the construction plan of the installed
 * pg-boss (schema version 24 for pg-boss 10), so that pg-boss itself starts with `migrate: false`
 * and creates nothing. pg-boss loads only here and in the queue: other migrations never need it.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  const { constructionStatements } = await import('../../queue/pgboss-sql.ts');
  await runStatements(db, constructionStatements());
}

export async function down(db: Kysely<unknown>): Promise<void> {
  const { PGBOSS_SCHEMA } = await import('../../queue/pgboss-sql.ts');
  await sql`drop schema if exists ${sql.id(PGBOSS_SCHEMA)} cascade`.execute(db);
}
