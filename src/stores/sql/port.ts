import type { Kysely } from 'kysely';
import type { Database } from './schema.ts';

/** What differs between the embedded engine and a server, said as data. */
export interface SqlCapabilities {
  /** Several connections at once (a pool); the embedded engine has one. */
  readonly multipleConnections: boolean;
  /** LISTEN/NOTIFY across processes; the embedded engine lives in one process. */
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
  close(): Promise<void>;
}
