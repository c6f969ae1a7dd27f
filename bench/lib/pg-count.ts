import pg from 'pg';

/**
 * Counts the SQL statements this process sends through `pg` (every pg.Client query: Kysely's,
 * pg-boss's and the benchmark's own clients all end there). Unlike a rate, the number of
 * statements (round trips) per message does not depend on what else runs on the machine, so it
 * says why one way of moving messages through PostgreSQL is slower than another.
 */
let installed = false;
let statements = 0;

/** Starts counting (once per process); returns the running total. */
export function statementCount(): number {
  if (!installed) {
    installed = true;
    const proto = pg.Client.prototype as unknown as { query: (...args: unknown[]) => unknown };
    const original = proto.query;
    proto.query = function (this: unknown, ...args: unknown[]) {
      const first = args[0];
      const text = typeof first === 'string' ? first : ((first as { text?: unknown } | null)?.text ?? '');
      // The benchmark's own sampling of pg_stat_activity (bench/lib/waits.ts) is not the system's work.
      if (typeof text !== 'string' || !text.includes('pg_stat_activity')) statements++;
      return original.apply(this, args);
    };
  }
  return statements;
}
