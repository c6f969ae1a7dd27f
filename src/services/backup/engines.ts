import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { childEnv, type SslConfig } from '../../config.ts';

/**
 * The PostgreSQL client tools a backup runs against a server: `pg_dump` in custom format (its own
 * compression) and `pg_restore`. Each gets the connection through libpq's environment, never on
 * its command line, where `ps` would show the password.
 */

export interface ServerTarget {
  readonly connectionString: string;
  readonly ssl: SslConfig;
}

/** A missing tool or a failed run, with what the tool printed. */
export class ToolError extends Error {}

/** libpq's environment for a target: the URL's parts, TLS as configured (the CA through a temporary file). */
export function libpqEnv(target: ServerTarget): { env: NodeJS.ProcessEnv; cleanup: () => void } {
  const url = new URL(target.connectionString);
  const extra: Record<string, string | undefined> = {
    PGHOST: url.hostname.replace(/^\[(.*)\]$/, '$1'),
    PGPORT: url.port || '5432',
    PGDATABASE: decodeURIComponent(url.pathname.slice(1)) || 'postgres',
    PGSSLMODE: target.ssl.mode,
    PGCONNECT_TIMEOUT: '10',
    PGPASSWORD: url.password ? decodeURIComponent(url.password) : undefined,
  };
  if (url.username) extra.PGUSER = decodeURIComponent(url.username);
  const env = childEnv(extra);
  const host = url.searchParams.get('host');
  if (host) env.PGHOST = host;
  let dir: string | null = null;
  if (target.ssl.mode !== 'disable' && target.ssl.ca) {
    dir = mkdtempSync(join(tmpdir(), 'databank-ca-'));
    const file = join(dir, 'ca.pem');
    writeFileSync(file, target.ssl.ca, { mode: 0o600 });
    env.PGSSLROOTCERT = file;
  } else if (target.ssl.mode === 'require') {
    // libpq's `require` checks the certificate when a root file exists; databank's does not.
    env.PGSSLROOTCERT = '/dev/null';
  }
  return { env, cleanup: () => dir && rmSync(dir, { recursive: true, force: true }) };
}

/** The same server, another database on it (the drill's scratch database). */
export function withDatabase(target: ServerTarget, database: string): ServerTarget {
  const url = new URL(target.connectionString);
  url.pathname = `/${encodeURIComponent(database)}`;
  return { ...target, connectionString: url.toString() };
}

export function databaseName(target: ServerTarget): string {
  return decodeURIComponent(new URL(target.connectionString).pathname.slice(1)) || 'postgres';
}

interface Run {
  readonly child: ChildProcess;
  /** Resolves when the tool exits 0; rejects with its stderr otherwise. */
  readonly done: Promise<void>;
}

function run(tool: string, args: readonly string[], target: ServerTarget, stdio: { stdin?: boolean; stdout?: boolean }): Run {
  const { env, cleanup } = libpqEnv(target);
  const child = spawn(tool, args, {
    env,
    stdio: [stdio.stdin ? 'pipe' : 'ignore', stdio.stdout ? 'pipe' : 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr?.setEncoding('utf8').on('data', (d: string) => {
    if (stderr.length < 8_000) stderr += d;
  });
  const done = new Promise<void>((resolve, reject) => {
    child.once('error', (err: NodeJS.ErrnoException) => {
      cleanup();
      reject(
        new ToolError(
          err.code === 'ENOENT'
            ? `${tool} is not installed: install the PostgreSQL client tools (Debian: apt-get install postgresql-client)`
            : `${tool} failed to start: ${err.message}`,
        ),
      );
    });
    child.once('close', (code, signal) => {
      cleanup();
      if (code === 0) resolve();
      else reject(new ToolError(`${tool} failed (${signal ?? `exit ${code}`}): ${stderr.trim().split('\n').slice(-5).join(' / ') || 'no message'}`));
    });
  });
  // An early failure must not become an unhandled rejection before the caller awaits it.
  done.catch(() => undefined);
  return { child, done };
}

/**
 * `pg_dump -Fc` of the snapshot another session exported: the dump shows exactly what that
 * session's transaction sees. The backup's own hold row is left out.
 */
export function pgDump(target: ServerTarget, snapshot: string): { stdout: Readable; done: Promise<void> } {
  const r = run(
    'pg_dump',
    ['--format=custom', '--no-password', `--snapshot=${snapshot}`, '--exclude-table-data=public.backup_holds', '--compress=6'],
    target,
    { stdout: true },
  );
  return { stdout: r.child.stdout as Readable, done: r.done };
}

/** `pg_restore` from standard input, all or nothing (one transaction), owners and grants left to the target. */
export function pgRestore(target: ServerTarget): { stdin: Writable; done: Promise<void> } {
  const r = run(
    'pg_restore',
    ['--no-password', '--no-owner', '--no-privileges', '--exit-on-error', '--single-transaction', `--dbname=${databaseName(target)}`],
    target,
    { stdin: true },
  );
  return { stdin: r.child.stdin as Writable, done: r.done };
}
