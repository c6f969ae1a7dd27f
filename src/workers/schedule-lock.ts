import { createHash } from 'node:crypto';
import { sql, type Kysely } from 'kysely';
import type { SqlCapabilities } from '../stores/sql/port.ts';

/** Makes sure that one process at most runs a schedule at a time. */
export interface ScheduleLock {
  /**
   * Runs `fn` while holding the lock of the schedule `name` and resolves true; resolves false
   * without running it when another process holds the lock. Rejects with `fn`'s error.
   */
  tryRun(name: string, fn: () => Promise<void>): Promise<boolean>;
}

/** The part of the SQL store a schedule lock needs (`SqlStore` fits). */
export interface LockableDatabase<DB> {
  readonly db: Kysely<DB>;
  readonly capabilities: Pick<SqlCapabilities, 'multipleConnections'>;
}

/**
 * The lock that fits the database: a PostgreSQL advisory lock on a server, which any number of
 * copies of the process share; nothing on the embedded engine, whose data directory one process
 * owns (see `data-dir-lock.ts`), so no other process can run the schedule there.
 *
 * @example
 * const lock = scheduleLock(sqlStore);
 * const purge = scheduled({ name: 'idempotency-purge', cron: '17 * * * *', lock, run });
 */
export function scheduleLock<DB>(database: LockableDatabase<DB>): ScheduleLock {
  return database.capabilities.multipleConnections ? advisoryLock(database.db) : SINGLE_PROCESS_LOCK;
}

/** For a database only this process uses: there is nobody to exclude. */
export const SINGLE_PROCESS_LOCK: ScheduleLock = Object.freeze({
  async tryRun(_name: string, fn: () => Promise<void>) {
    await fn();
    return true;
  },
});

/**
 * A session-level `pg_try_advisory_lock` taken on one pooled connection, held for the whole run
 * and released after it. The run itself uses other connections: the held one only carries the lock.
 * When the process dies, PostgreSQL ends the session and the lock goes with it.
 */
export function advisoryLock<DB>(db: Kysely<DB>): ScheduleLock {
  return {
    tryRun: (name, fn) =>
      db.connection().execute(async (conn) => {
        const key = scheduleLockKey(name);
        const got = await sql<{ locked: boolean }>`select pg_try_advisory_lock(${key}::bigint) as locked`.execute(conn);
        if (got.rows[0]?.locked !== true) return false;
        try {
          await fn();
        } finally {
          // Should this fail on a live connection, the pool would hand out a connection still
          // holding the lock, and no process would run the schedule until that connection closes.
          // A failure here means the connection broke, though, and a broken one ends its session.
          await sql`select pg_advisory_unlock(${key}::bigint)`.execute(conn);
        }
        return true;
      }),
  };
}

/**
 * The advisory lock key of a schedule: the first 64 bits of SHA-256 of its name, as a signed
 * bigint in decimal. Computed here rather than with `hashtext()` so that it does not depend on
 * the server's version, and can be found in `pg_locks` (`(classid::bigint << 32) | objid`).
 */
export function scheduleLockKey(name: string): string {
  return createHash('sha256').update(`databank:schedule:${name}`).digest().readBigInt64BE(0).toString();
}
