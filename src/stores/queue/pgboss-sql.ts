import { CompiledQuery, type Kysely, type QueryResult } from 'kysely';
import PgBoss from 'pg-boss';

/**
 * How pg-boss reaches the deployment's database: through the app's own Kysely handle, never a pool
 * of its own. On the embedded engine this is what makes pg-boss possible at all: PGlite has one
 * connection, and the dialect's mutex queues pg-boss's statements with the app's transactions.
 */

/** The PostgreSQL schema holding pg-boss's tables (migration 0009_job_queue creates it). */
export const PGBOSS_SCHEMA = 'pgboss';

/**
 * Splits an SQL script into its statements, respecting quotes, comments and dollar-quoted bodies.
 * pg-boss sends a few parameterless scripts (its `locked()` plans: `BEGIN; ...; COMMIT;`); PGlite
 * runs every query as a prepared statement, which holds exactly one command.
 */
export function splitStatements(script: string): string[] {
  const statements: string[] = [];
  let start = 0;
  let i = 0;
  const skipTo = (end: number, length: number) => (end < 0 ? script.length : end + length);
  while (i < script.length) {
    const c = script[i];
    if (c === "'" || c === '"') i = skipTo(script.indexOf(c, i + 1), 1);
    else if (c === '-' && script[i + 1] === '-') i = skipTo(script.indexOf('\n', i), 1);
    else if (c === '/' && script[i + 1] === '*') i = skipTo(script.indexOf('*/', i + 2), 2);
    else if (c === '$' && /^\$[A-Za-z_]*\$/.test(script.slice(i, i + 64))) {
      const tag = /^\$[A-Za-z_]*\$/.exec(script.slice(i, i + 64))?.[0] ?? '$$';
      i = skipTo(script.indexOf(tag, i + tag.length), tag.length);
    } else if (c === ';') {
      statements.push(script.slice(start, i));
      start = ++i;
    } else i++;
  }
  statements.push(script.slice(start));
  return statements.map((s) => s.trim()).filter((s) => s.length > 0);
}

const TRANSACTION_CONTROL = /^(BEGIN|COMMIT)$/i;

/**
 * pg-boss's schema as separate statements, for a migration: its construction plan without the
 * plan's own BEGIN and COMMIT, since the migrator already runs each migration in a transaction.
 */
export function constructionStatements(): string[] {
  return splitStatements(PgBoss.getConstructionPlans(PGBOSS_SCHEMA)).filter((s) => !TRANSACTION_CONTROL.test(s));
}

/** The one method pg-boss asks of a database (its `db` option). */
export interface BossDb {
  executeSql(text: string, values?: unknown[]): Promise<{ rows: unknown[] }>;
}

/** A pg-boss database over a Kysely handle, which may be a transaction. */
export function kyselyBossDb(db: Kysely<unknown>): BossDb {
  return {
    async executeSql(text, values = []) {
      // Parameters mean one statement (PostgreSQL refuses them in a script); PGlite refuses a
      // script even without them ("cannot insert multiple commands into a prepared statement").
      const statements = values.length === 0 ? splitStatements(text) : [text];
      if (statements.length <= 1) return db.executeQuery(CompiledQuery.raw(text, values));
      // A script runs as one transaction, as PostgreSQL runs a multi-statement simple query; its
      // own BEGIN/COMMIT give way to Kysely's, which rolls back (and frees a pooled connection's
      // session) when a statement fails. Inside a transaction already, it joins that one.
      const run = async (trx: Kysely<unknown>) => {
        let last: QueryResult<unknown> = { rows: [] };
        for (const statement of statements) {
          if (!TRANSACTION_CONTROL.test(statement)) last = await trx.executeQuery(CompiledQuery.raw(statement, []));
        }
        return last;
      };
      return db.isTransaction ? run(db) : db.transaction().execute(run);
    },
  };
}

/**
 * A pg-boss database that remembers the statements in flight, so that stopping can wait for them:
 * the caller may close the store right after, and a maintenance query cut short would surface as
 * an error.
 */
export function trackedBossDb(db: Kysely<unknown>): BossDb & { settled(): Promise<void> } {
  const inner = kyselyBossDb(db);
  const pending = new Set<Promise<unknown>>();
  return {
    executeSql(text, values) {
      const run = inner.executeSql(text, values);
      pending.add(run);
      void run.finally(() => pending.delete(run)).catch(() => undefined);
      return run;
    },
    async settled() {
      while (pending.size > 0) await Promise.allSettled([...pending]);
    },
  };
}
