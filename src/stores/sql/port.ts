import type { Kysely } from 'kysely';
import type { Database } from './schema.ts';

/** What differs between the embedded engine and a server, said as data. */
export interface SqlCapabilities {
  /**
   * Several connections at once (a pool); the embedded engine has one. The worker host's
   * schedules take an advisory lock per run only when this is true (several processes may run).
   */
  readonly multipleConnections: boolean;
  /**
   * LISTEN/NOTIFY across processes; the embedded engine lives in one process. Read by the outbox
   * relay of the [async] issue, which wakes on a notification where this is true and polls
   * where it is false.
   */
  readonly listen: boolean;
}

export interface PoolStats {
  readonly total: number;
  readonly idle: number;
  readonly waiting: number;
}

/** The relational store: a Kysely handle over PostgreSQL, embedded or server. */
export interface SqlStore {
  readonly kind: 'pglite' | 'postgres';
  readonly db: Kysely<Database>;
  readonly capabilities: SqlCapabilities;
  /** Resolves when the database answers a trivial query; rejects otherwise. */
  ping(timeoutMs: number): Promise<void>;
  poolStats(): PoolStats;
  /**
   * The embedded engine's own dump: a tar of its data directory as it is between two statements
   * (a backup calls it while its transaction holds the one connection, so nothing writes meanwhile;
   * a restore replays the WAL in it). Absent on a server, which `pg_dump` backs up.
   */
  readonly copyDataDir?: () => Promise<Uint8Array>;
  close(): Promise<void>;
}

/**
 * The two database handles a service is given. `reader` answers reads made outside a transaction
 * and may lag behind the primary (a replica, once one is configured); `writer` is the primary and
 * takes every statement of a write transaction, every write, and every read whose answer decides a
 * write or must see a row just written.
 */
export interface Db {
  readonly reader: Kysely<Database>;
  readonly writer: Kysely<Database>;
}

/**
 * Both handles on one database: a process without replicas, and the CLI, which always talks to the
 * primary.
 *
 * @example new ApiKeysService(primaryOnly(store.db))
 */
export function primaryOnly(db: Kysely<Database>): Db {
  return Object.freeze({ reader: db, writer: db });
}
