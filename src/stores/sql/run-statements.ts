import { sql, type Kysely } from 'kysely';

/**
 * Runs SQL statements one at a time. The embedded engine prepares every query, and a prepared
 * statement holds exactly one command, so migrations list their statements instead of sending a
 * script.
 */
export async function runStatements(db: Kysely<unknown>, statements: readonly string[]): Promise<void> {
  for (const statement of statements) await sql.raw(statement).execute(db);
}
