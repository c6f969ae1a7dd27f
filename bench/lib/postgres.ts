import pg from 'pg';
import { onCleanup } from './cleanup.ts';
import { BenchError } from './log.ts';

export const DEFAULT_DATABASE_URL = 'postgres://postgres@127.0.0.1:5432/test';

/** The server the benchmarks use: DATABASE_URL, or the local default the tests use too. */
export function adminUrl(): string {
  return process.env.DATABASE_URL || DEFAULT_DATABASE_URL;
}

/** The URL without its password, for messages. */
export function redact(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return '<unparsable DATABASE_URL>';
  }
}

export function withDatabase(url: string, database: string): string {
  const u = new URL(url);
  u.pathname = `/${database}`;
  return u.toString();
}

/** Runs one query on a fresh connection; the benchmarks need only a handful. */
export async function query<R extends pg.QueryResultRow>(url: string, text: string, values: unknown[] = []): Promise<R[]> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 3_000 });
  await client.connect();
  try {
    return (await client.query<R>(text, values)).rows;
  } finally {
    await client.end().catch(() => undefined);
  }
}

/** The server's version, or why it does not answer (the reads benchmark then skips PostgreSQL). */
export async function serverVersion(url: string): Promise<{ version: string } | { error: string }> {
  try {
    const rows = await query<{ v: string }>(url, "select current_setting('server_version') as v");
    return { version: rows[0]?.v ?? 'unknown' };
  } catch (err) {
    return { error: err instanceof Error ? err.message : String(err) };
  }
}

/** Like serverVersion, but an unreachable server stops the benchmark with a message saying what to do. */
export async function requireServer(url: string): Promise<string> {
  const answer = await serverVersion(url);
  if ('version' in answer) return answer.version;
  throw new BenchError(
    `PostgreSQL does not answer at ${redact(url)} (${answer.error}).\n` +
      'Start it, or point DATABASE_URL at a server where this user may create databases.',
  );
}

export interface TempDatabase {
  readonly name: string;
  readonly url: string;
  drop(): Promise<void>;
}

/** A new empty database on the server of `url`, dropped by `drop()` or when the run is interrupted. */
export async function createDatabase(url: string, name: string): Promise<TempDatabase> {
  if (!/^[a-z_][a-z0-9_]*$/.test(name)) throw new Error(`unsafe database name ${name}`);
  await query(url, `drop database if exists ${name} with (force)`);
  await query(url, `create database ${name}`);
  const drop = onCleanup(async () => {
    await query(url, `drop database if exists ${name} with (force)`);
  });
  return { name, url: withDatabase(url, name), drop };
}
