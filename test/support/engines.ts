import { createHash } from 'node:crypto';
import pg from 'pg';
import type { SqlConfig } from '../../src/config.ts';

/**
 * The SQL engines a suite runs over: PGlite always, PostgreSQL when DATABASE_URL is set. With
 * REQUIRE_SERVICES=1 an unreachable server fails the run instead of skipping. DATABANK_ENGINES
 * (comma-separated) narrows the list.
 */
export const DATABASE_URL = process.env.DATABASE_URL || null;
export const REQUIRE_SERVICES = process.env.REQUIRE_SERVICES === '1';

async function reachable(url: string): Promise<boolean> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 3_000 });
  try {
    await client.connect();
    await client.query('select 1');
    return true;
  } catch {
    return false;
  } finally {
    await client.end().catch(() => undefined);
  }
}

export const POSTGRES_UP: boolean = DATABASE_URL ? await reachable(DATABASE_URL) : false;

if (DATABASE_URL && !POSTGRES_UP && REQUIRE_SERVICES) {
  throw new Error(`REQUIRE_SERVICES=1 but PostgreSQL at DATABASE_URL does not answer`);
}
if (!POSTGRES_UP) {
  console.warn(
    DATABASE_URL
      ? 'PostgreSQL suites skipped: DATABASE_URL does not answer'
      : 'PostgreSQL suites skipped: set DATABASE_URL (e.g. postgres://postgres@127.0.0.1:5432/test) to run them',
  );
}

export type EngineName = 'pglite' | 'postgres';
const wanted = process.env.DATABANK_ENGINES?.split(',').map((s) => s.trim());
export const ENGINES: readonly EngineName[] = (['pglite', 'postgres'] as const).filter(
  (e) => (e === 'pglite' || POSTGRES_UP) && (!wanted || wanted.includes(e)),
);

/** A database name unique to a test file and label, so files can run in parallel. */
export function namespace(label: string): string {
  return `dbk_${createHash('sha256').update(label).digest('hex').slice(0, 12)}_${process.pid}`;
}

function withDatabase(url: string, database: string): string {
  const u = new URL(url);
  u.pathname = `/${database}`;
  return u.toString();
}

export interface TestDatabase {
  readonly sql: SqlConfig;
  /** Connection string of the database (postgres only). */
  readonly url: string | null;
  drop(): Promise<void>;
}

/** A fresh, empty database for `label` on `engine`: in-memory PGlite, or a new PostgreSQL database. */
export async function createTestDatabase(engine: EngineName, label: string): Promise<TestDatabase> {
  if (engine === 'pglite') {
    return { sql: { kind: 'pglite', dataDir: null }, url: null, drop: async () => undefined };
  }
  if (!DATABASE_URL) throw new Error('DATABASE_URL is not set');
  const name = namespace(label);
  const admin = new pg.Client({ connectionString: DATABASE_URL });
  await admin.connect();
  try {
    await admin.query(`drop database if exists ${name} with (force)`);
    await admin.query(`create database ${name}`);
  } finally {
    await admin.end();
  }
  const url = withDatabase(DATABASE_URL, name);
  return {
    sql: { kind: 'postgres', connectionString: url, ssl: { mode: 'disable' }, poolMax: 20 },
    url,
    async drop() {
      const c = new pg.Client({ connectionString: DATABASE_URL as string });
      await c.connect();
      try {
        await c.query(`drop database if exists ${name} with (force)`);
      } finally {
        await c.end();
      }
    },
  };
}
