import type { ConnectionOptions } from 'node:tls';
import { Kysely, PostgresDialect, sql, type PostgresPool, type PostgresPoolClient } from 'kysely';
import pg from 'pg';
import type { SslConfig } from '../../config.ts';
import type { Database } from './schema.ts';
import type { SqlStore } from './port.ts';
import { PARSERS } from './type-parsers.ts';
import { withTimeout } from './timeout.ts';
import { isConnectionFailure } from './errors.ts';

export interface PostgresOptions {
  readonly connectionString: string;
  readonly ssl: SslConfig;
  readonly poolMax: number;
  /** Receives errors of idle pooled connections, which would otherwise crash the process. */
  readonly onError?: (err: Error) => void;
}

/** TLS error codes that mean "the server's certificate could not be verified". */
const CERT_ERRORS = new Set([
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID',
  'ERR_TLS_CERT_ALTNAME_INVALID',
]);

/** A PostgreSQL error made readable: certificate failures say so plainly. */
export class DatabaseConnectError extends Error {
  constructor(message: string, options: { cause: unknown }) {
    super(message, options);
    this.name = 'DatabaseConnectError';
  }
}

/** Node TLS options for a libpq-style sslmode. */
export function tlsOptions(ssl: SslConfig): false | ConnectionOptions {
  switch (ssl.mode) {
    case 'disable':
      return false;
    case 'require':
      // libpq's `require` encrypts without verifying, unless a root certificate is given, in which
      // case it behaves as verify-ca. verify-full is the one to use in production.
      return ssl.ca ? tlsOptions({ mode: 'verify-ca', ca: ssl.ca }) : { rejectUnauthorized: false };
    case 'verify-ca':
      return { rejectUnauthorized: true, ...(ssl.ca ? { ca: ssl.ca } : {}), checkServerIdentity: () => undefined };
    case 'verify-full':
      return { rejectUnauthorized: true, ...(ssl.ca ? { ca: ssl.ca } : {}) };
  }
}

/** Explains a connection failure; certificate problems name the check that failed. */
export function explainConnectError(err: unknown): Error {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  const message = err instanceof Error ? err.message : String(err);
  if (code && CERT_ERRORS.has(code)) {
    const what =
      code === 'ERR_TLS_CERT_ALTNAME_INVALID'
        ? 'its host name does not match'
        : code === 'CERT_HAS_EXPIRED' || code === 'CERT_NOT_YET_VALID'
          ? 'it is outside its validity period'
          : 'it is not signed by the trusted CA';
    return new DatabaseConnectError(
      `PostgreSQL server certificate rejected: ${what} (${code}: ${message})`,
      { cause: err },
    );
  }
  if (/does not support SSL/i.test(message)) {
    return new DatabaseConnectError('PostgreSQL server does not accept TLS, but sslmode asks for it', { cause: err });
  }
  return err instanceof Error ? err : new Error(message);
}

/** SQL text → prepared statement name, shared by all connections. */
const statementNames = new Map<string, string>();
/** Past this many distinct texts (e.g. IN lists of many lengths), queries run unnamed again. */
const MAX_STATEMENTS = 1_000;

function statementName(text: string): string | undefined {
  let name = statementNames.get(text);
  if (!name && statementNames.size < MAX_STATEMENTS) {
    name = `dbk_${statementNames.size + 1}`;
    statementNames.set(text, name);
  }
  return name;
}

/**
 * A pool whose parameterised queries run as named prepared statements. An unnamed statement is
 * parsed, analysed and planned on every run; a named one is parsed once per connection, and after
 * five runs PostgreSQL may keep a generic plan. Queries without parameters (BEGIN, COMMIT, DDL)
 * stay simple queries.
 */
function preparing(pool: pg.Pool, onError: (err: Error) => void): PostgresPool {
  const wrapped = new WeakMap<pg.PoolClient, PostgresPoolClient>();
  // Connections whose server went away. Kysely releases a connection without the error that
  // ended its statement, so the pool would hand a terminated one (its socket not yet closed) to
  // the next caller, whose statement would fail too: it is destroyed instead.
  const broken = new WeakSet<pg.PoolClient>();
  const wrap = (client: pg.PoolClient): PostgresPoolClient => ({
    query: ((text: unknown, values?: unknown[]) => {
      // A cursor (a streamed query) is returned as it is: its reader sees its errors.
      if (typeof text !== 'string') return client.query(text as pg.QueryConfig, values);
      const name = values && values.length > 0 ? statementName(text) : undefined;
      return (name ? client.query({ name, text, values }) : client.query(text, values)).catch((err: unknown) => {
        if (isConnectionFailure(err)) broken.add(client);
        throw err;
      });
    }) as unknown as PostgresPoolClient['query'],
    release: (destroy?: boolean) => client.release(destroy || broken.has(client)),
  });
  return {
    async connect() {
      const client = await pool.connect();
      let w = wrapped.get(client);
      if (!w) {
        // The pool listens for errors only while a client is idle; a server that goes away while
        // one is checked out (between two statements of a transaction, say) would otherwise
        // crash the process. The statement in flight fails on its own, and the pool drops the
        // broken client when it comes back.
        client.on('error', (err) => {
          broken.add(client);
          onError(err);
        });
        w = wrap(client);
        wrapped.set(client, w);
      }
      return w;
    },
    end: () => pool.end(),
  };
}

/** PostgreSQL server through a `pg` pool. */
export async function openPostgres(options: PostgresOptions): Promise<SqlStore> {
  const pool = new pg.Pool({
    connectionString: options.connectionString,
    ssl: tlsOptions(options.ssl),
    max: options.poolMax,
    connectionTimeoutMillis: 5_000,
    idleTimeoutMillis: 30_000,
    // A stuck transaction must not hold account locks forever.
    idle_in_transaction_session_timeout: 60_000,
    statement_timeout: 30_000,
    // A writer waits this long for a row lock, then gives up (retried, then 503) instead of
    // queueing behind a stuck holder; the fee run's batches never hold many locks for long.
    lock_timeout: 10_000,
    // Names the app's sessions in pg_stat_activity and the server's logs.
    application_name: 'databank',
    types: {
      getTypeParser: ((oid: number, format?: string) =>
        PARSERS[oid] ?? pg.types.getTypeParser(oid, format as 'text')) as typeof pg.types.getTypeParser,
    },
  });
  pool.on('error', (err) => options.onError?.(err));
  const db = new Kysely<Database>({ dialect: new PostgresDialect({ pool: preparing(pool, (err) => options.onError?.(err)) }) });
  return {
    kind: 'postgres',
    db,
    capabilities: { multipleConnections: true, listen: true },
    async ping(timeoutMs) {
      try {
        await withTimeout(sql`select 1`.execute(db), timeoutMs);
      } catch (err) {
        throw explainConnectError(err);
      }
    },
    poolStats: () => ({ total: pool.totalCount, idle: pool.idleCount, waiting: pool.waitingCount }),
    close: () => db.destroy(),
  };
}
