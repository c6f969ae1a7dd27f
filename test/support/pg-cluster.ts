import { accessSync, constants, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { freePort } from './cli.ts';
import { adoptGroup, killGroup, runProcess, waitFor } from './processes.ts';

/**
 * Throwaway PostgreSQL 15 clusters for end to end suites: made with initdb in a temp dir, listening
 * on a free port of 127.0.0.1, started and stopped with pg_ctl, and their postmaster's process
 * group killed when the file ends even if afterAll cannot stop them. The machine's own cluster is
 * never touched. PostgreSQL refuses to run as root; as root the server tools run as the `postgres`
 * OS user, who must own the cluster's directories (chown them to {@link PG_IDS}).
 */

/** Where the PostgreSQL 15 server tools are (Debian's postgresql-15). */
export const PG_BIN = '/usr/lib/postgresql/15/bin';
const RUNUSER = '/usr/sbin/runuser';
// Read here, not from engines.ts: importing that one probes DATABASE_URL.
const REQUIRE_SERVICES = process.env.REQUIRE_SERVICES === '1';
/** True when the tests run as root, and the server tools therefore as the `postgres` OS user. */
export const AS_ROOT = process.getuid?.() === 0;

function isExecutable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

function postgresIds(): { uid: number; gid: number } | null {
  try {
    const passwd = readFileSync('/etc/passwd', 'utf8');
    const line = passwd.split('\n').find((l) => l.startsWith('postgres:'));
    const fields = line?.split(':');
    if (!fields || fields[2] === undefined || fields[3] === undefined) return null;
    return { uid: Number(fields[2]), gid: Number(fields[3]) };
  } catch {
    return null;
  }
}

/** The `postgres` OS user's uid and gid when we are root (null otherwise, or without that user). */
export const PG_IDS = AS_ROOT ? postgresIds() : null;

/** An executable a suite needs besides the PostgreSQL tools; `hint` says where to get it. */
export interface ExtraTool {
  readonly path: string;
  readonly hint?: string;
}

/**
 * What this machine lacks to run the suite named `suite` on a throwaway cluster: the PostgreSQL
 * tools, the `extra` executables, and as root runuser and the `postgres` OS user. With
 * REQUIRE_SERVICES=1 anything missing fails the run; otherwise a warning says the suite is skipped.
 * Returns the list, empty when nothing is missing (for `describe.skipIf(missing.length > 0)`).
 */
export function missingClusterTools(suite: string, extra: readonly ExtraTool[] = []): string[] {
  const missing: string[] = [];
  for (const tool of ['initdb', 'pg_ctl', 'pg_isready', 'postgres']) {
    if (!isExecutable(join(PG_BIN, tool))) missing.push(join(PG_BIN, tool));
  }
  for (const { path, hint } of extra) {
    if (!isExecutable(path)) missing.push(hint ? `${path} (${hint})` : path);
  }
  if (AS_ROOT && !isExecutable(RUNUSER)) missing.push(RUNUSER);
  if (AS_ROOT && !PG_IDS) missing.push('the "postgres" OS user');

  if (missing.length > 0) {
    if (REQUIRE_SERVICES) {
      throw new Error(`REQUIRE_SERVICES=1 but the ${suite} lacks: ${missing.join(', ')}`);
    }
    console.warn(`${suite} skipped: missing ${missing.join(', ')}`);
  }
  return missing;
}

/** How long a cluster's tools may take; the defaults leave room for a cluster restored from a backup. */
export interface ClusterTimeouts {
  /** Each server tool run (initdb, pg_ctl), and how long pg_ctl start waits for the server. Default 60 s. */
  readonly toolMs?: number;
  /** How long the started server has to answer on its port. Default 30 s. */
  readonly readyMs?: number;
}

const TOOL_MS = 60_000;
const READY_MS = 30_000;

/** Runs a PostgreSQL server tool, as the postgres OS user when we are root; resolves with its stdout. */
export async function pgTool(tool: string, args: readonly string[], cwd: string, timeoutMs = TOOL_MS): Promise<string> {
  const path = join(PG_BIN, tool);
  const [file, argv] = AS_ROOT ? [RUNUSER, ['-u', 'postgres', '--', path, ...args]] : [path, [...args]];
  const { stdout } = await runProcess(file, argv, { cwd, timeoutMs, check: true, what: tool });
  return stdout;
}

/**
 * Makes a cluster in `dataDir` (superuser `postgres`, trust authentication, UTF8, locale C) and
 * adds to its postgresql.conf, under a `# databank <title>` line, a listener on a free port of
 * 127.0.0.1, its unix socket in `dir`, then `settings`. Resolves with the port.
 */
export async function initCluster(
  dir: string,
  dataDir: string,
  title: string,
  settings: readonly string[],
  { toolMs = TOOL_MS }: ClusterTimeouts = {},
): Promise<number> {
  await pgTool(
    'initdb',
    ['-D', dataDir, '-U', 'postgres', '--auth=trust', '--no-sync', '--encoding=UTF8', '--locale=C', '--no-instructions'],
    dir,
    toolMs,
  );
  const port = await freePort();
  const conf = join(dataDir, 'postgresql.conf');
  writeFileSync(
    conf,
    `${readFileSync(conf, 'utf8')}\n# databank ${title}\n${[
      `listen_addresses = '127.0.0.1'`,
      `port = ${port}`,
      `unix_socket_directories = '${dir}'`,
      ...settings,
    ].join('\n')}\n`,
  );
  return port;
}

/** The postmaster's pid, from the pid file it writes first thing and removes last; null without one. */
export function postmasterPid(dataDir: string): number | null {
  try {
    const pid = Number(readFileSync(join(dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
    return Number.isInteger(pid) && pid > 0 ? pid : null;
  } catch {
    return null;
  }
}

/** The server log at `path`, for failure messages. */
export function readLog(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return '(no server log)';
  }
}

/**
 * Starts a cluster and waits until it answers on `port`; its postmaster's group is killed when the
 * file ends even if afterAll cannot stop it. `-p` overrides the port a restored copy inherits.
 */
export async function startCluster(
  cwd: string,
  dataDir: string,
  logFile: string,
  port: number,
  { toolMs = TOOL_MS, readyMs = READY_MS }: ClusterTimeouts = {},
): Promise<void> {
  const waitS = String(Math.floor(toolMs / 1000));
  try {
    await pgTool('pg_ctl', ['-D', dataDir, '-l', logFile, '-o', `-p ${port}`, '-w', '-t', waitS, 'start'], cwd, toolMs);
  } catch (err) {
    throw new Error(`pg_ctl start failed (${String(err)}):\n${readLog(logFile)}`);
  }
  const pid = postmasterPid(dataDir);
  if (pid !== null) adoptGroup(pid, 'file');
  await waitFor(
    `PostgreSQL in ${dataDir} answers on port ${port}`,
    async () => {
      const { code } = await runProcess(join(PG_BIN, 'pg_isready'), ['-h', '127.0.0.1', '-p', String(port), '-t', '2'], {
        timeoutMs: 5_000,
      });
      if (code !== 0 && !existsSync(join(dataDir, 'postmaster.pid'))) {
        throw new Error(`PostgreSQL in ${dataDir} stopped while starting:\n${readLog(logFile)}`);
      }
      return code === 0;
    },
    { timeoutMs: readyMs, everyMs: 100 },
  );
}

/**
 * Stops a cluster; if pg_ctl cannot, kills its postmaster's process group (pg_ctl makes the
 * postmaster the leader of a group of its own, which its backends share). No pid file, no server:
 * nothing to do.
 */
export async function stopCluster(
  cwd: string,
  dataDir: string,
  mode: 'fast' | 'immediate' = 'immediate',
  { toolMs = TOOL_MS }: ClusterTimeouts = {},
): Promise<void> {
  if (!existsSync(join(dataDir, 'postmaster.pid'))) return;
  try {
    await pgTool('pg_ctl', ['-D', dataDir, '-m', mode, '-w', '-t', '20', 'stop'], cwd, toolMs);
    return;
  } catch (err) {
    console.warn(`pg_ctl stop failed: ${String(err)}`);
  }
  const pid = postmasterPid(dataDir);
  if (pid !== null) killGroup(pid);
}
