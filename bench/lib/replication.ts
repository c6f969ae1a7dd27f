import { execFile, execFileSync } from 'node:child_process';
import { accessSync, appendFileSync, chmodSync, chownSync, constants, mkdtempSync, readdirSync, readFileSync, readlinkSync, realpathSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { freePort } from './child.ts';
import { onCleanup } from './cleanup.ts';
import { BenchError, sleep } from './log.ts';
import { query } from './postgres.ts';

/**
 * A throwaway PostgreSQL primary with one streaming hot-standby replica, for the replicas
 * benchmark: `initdb` into a temp dir, `pg_basebackup -R -X stream -C -S <slot>` for the replica,
 * both on free ports of 127.0.0.1 (trust authentication, user postgres), started with `pg_ctl`.
 * The machine's own cluster is never touched. As root the server tools run as the `postgres` OS
 * user (PostgreSQL refuses to run as root). Both servers are stopped (immediate) and the dir is
 * removed by `stop()`, on Ctrl-C, and, should the run die without either, by an exit hook that
 * kills the postmasters.
 */

const PG_BIN = process.env.PG_BIN || '/usr/lib/postgresql/15/bin';
const RUNUSER = '/usr/sbin/runuser';
const TOOL_MS = 120_000;
const execFileAsync = promisify(execFile);

export interface PgServer {
  readonly port: number;
  readonly dataDir: string;
  readonly logFile: string;
  /** `postgres://postgres@127.0.0.1:<port>/<database>`. */
  url(database: string): string;
  /** The postmaster and every process it started (they all work in the data dir), for CPU accounting. */
  pids(): number[];
}

export interface ReplicatedCluster {
  readonly dir: string;
  readonly primary: PgServer;
  readonly replica: PgServer;
  /** The physical replication slot the replica streams from. */
  readonly slot: string;
  /** Waits until the replica has replayed everything the primary had written when this was called. */
  waitForReplay(timeoutMs?: number): Promise<void>;
  stop(): Promise<void>;
}

const asRoot = process.getuid?.() === 0;

function postgresUser(): { uid: number; gid: number } {
  try {
    const id = (flag: string) => Number(execFileSync('id', [flag, 'postgres'], { encoding: 'utf8' }).trim());
    return { uid: id('-u'), gid: id('-g') };
  } catch {
    throw new BenchError('running as root needs the "postgres" OS user to run the PostgreSQL server tools');
  }
}

/** What is missing to make the clusters, as one message; null when nothing is. */
export function missingServerTools(): string | null {
  const tools = ['initdb', 'pg_ctl', 'pg_basebackup', 'postgres'].map((t) => join(PG_BIN, t));
  if (asRoot) tools.push(RUNUSER);
  const missing = tools.filter((path) => {
    try {
      accessSync(path, constants.X_OK);
      return false;
    } catch {
      return true;
    }
  });
  return missing.length === 0 ? null : `missing ${missing.join(', ')} (Debian postgresql-15; PG_BIN names another folder)`;
}

/** Runs one server tool (as user postgres when we are root) and fails with its output. */
async function tool(name: string, args: readonly string[], cwd: string): Promise<void> {
  const path = join(PG_BIN, name);
  const [file, argv] = asRoot ? [RUNUSER, ['-u', 'postgres', '--', path, ...args]] : [path, [...args]];
  try {
    await execFileAsync(file, argv, { cwd, timeout: TOOL_MS, maxBuffer: 4 * 1024 * 1024 });
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string; message?: string };
    throw new BenchError(`${name} ${args.join(' ')} failed: ${e.message ?? String(err)}\n${e.stderr ?? ''}${e.stdout ?? ''}`);
  }
}

function logTail(file: string): string {
  try {
    return readFileSync(file, 'utf8').split('\n').slice(-30).join('\n');
  } catch {
    return '(no log)';
  }
}

/** Processes whose working directory is `dataDir` or below: a postmaster chdirs there and its children inherit it. */
function workingIn(dataDir: string): number[] {
  const found: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    let cwd = '';
    try {
      cwd = readlinkSync(`/proc/${name}/cwd`);
    } catch {
      // Gone, or not ours to look at.
    }
    if (cwd !== '' && (cwd === dataDir || cwd.startsWith(`${dataDir}/`))) found.push(Number(name));
  }
  return found;
}

function server(dir: string, name: string, port: number): PgServer {
  const dataDir = join(dir, name);
  return {
    port,
    dataDir,
    logFile: join(dir, `${name}.log`),
    url: (database) => `postgres://postgres@127.0.0.1:${port}/${encodeURIComponent(database)}`,
    pids: () => workingIn(dataDir),
  };
}

function appendSettings(s: PgServer, title: string, lines: readonly string[]): void {
  appendFileSync(join(s.dataDir, 'postgresql.conf'), `\n# databank bench: ${title}\n${lines.join('\n')}\n`);
}

/** Polls `probe` every 100 ms until it returns true; a failing probe counts as "not yet". */
async function pollUntil(what: string, probe: () => Promise<boolean>, timeoutMs: number, log: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  while (Date.now() < deadline) {
    try {
      if (await probe()) return;
    } catch (err) {
      last = err instanceof Error ? err.message : String(err);
    }
    await sleep(100);
  }
  throw new BenchError(`${what}: not within ${timeoutMs / 1000}s${last ? ` (${last})` : ''}\n--- ${log} ---\n${logTail(log)}`);
}

/**
 * Makes, starts and connects the pair. `settings` go to the primary's postgresql.conf before the
 * base backup, so the replica has them too.
 */
export async function startReplicatedCluster(settings: readonly string[]): Promise<ReplicatedCluster> {
  const missing = missingServerTools();
  if (missing) throw new BenchError(`the replicas benchmark makes its own primary and replica: ${missing}`);
  const dir = realpathSync(mkdtempSync(join(tmpdir(), 'databank-bench-repl-')));
  chmodSync(dir, 0o700);
  if (asRoot) {
    const { uid, gid } = postgresUser();
    chownSync(dir, uid, gid);
  }
  const slot = 'bench_replica';
  const primary = server(dir, 'primary', await freePort());
  const replica = server(dir, 'replica', await freePort());
  const running: PgServer[] = [];

  // Should the run end without its cleanup (an uncaught error), the postmasters still go.
  const onExit = () => {
    for (const s of running) {
      try {
        // The pid file's first line; SIGQUIT is PostgreSQL's immediate shutdown.
        process.kill(Number(readFileSync(join(s.dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]), 'SIGQUIT');
      } catch {
        // No pid file, or already gone.
      }
    }
  };
  process.on('exit', onExit);
  const stop = onCleanup(async () => {
    process.off('exit', onExit);
    // The replica first: an immediate stop of the primary would only make it retry.
    for (const s of [...running].reverse()) {
      await tool('pg_ctl', ['-D', s.dataDir, '-m', 'immediate', '-w', '-t', '30', 'stop'], dir).catch(() => {
        for (const pid of s.pids()) process.kill(pid, 'SIGKILL');
      });
    }
    running.length = 0;
    rmSync(dir, { recursive: true, force: true, maxRetries: 5 });
  });
  const start = async (s: PgServer) => {
    await tool('pg_ctl', ['-D', s.dataDir, '-l', s.logFile, '-w', '-t', '60', 'start'], dir).catch((err: unknown) => {
      throw new BenchError(`${String(err)}\n--- ${s.logFile} ---\n${logTail(s.logFile)}`);
    });
    running.push(s);
  };

  try {
    await tool('initdb', ['-D', primary.dataDir, '-U', 'postgres', '--auth=trust', '--no-sync', '--encoding=UTF8', '--locale=C'], dir);
    appendSettings(primary, 'primary', [
      "listen_addresses = '127.0.0.1'",
      `port = ${primary.port}`,
      `unix_socket_directories = '${dir}'`,
      ...settings,
    ]);
    await start(primary);
    await tool(
      'pg_basebackup',
      ['-D', replica.dataDir, '-h', '127.0.0.1', '-p', String(primary.port), '-U', 'postgres', '-R', '-X', 'stream', '-c', 'fast', '-C', '-S', slot, '--no-sync'],
      dir,
    );
    // The copied postgresql.conf names the primary's port: the last setting wins.
    appendSettings(replica, 'replica', [`port = ${replica.port}`, "cluster_name = 'replica'", 'hot_standby = on', 'hot_standby_feedback = on']);
    await start(replica);
    await pollUntil(
      'the replica streams from the primary',
      async () => {
        const rows = await query<{ n: number }>(
          primary.url('postgres'),
          "select count(*)::int as n from pg_stat_replication where state = 'streaming'",
        );
        return (rows[0]?.n ?? 0) > 0;
      },
      60_000,
      replica.logFile,
    );
  } catch (err) {
    await stop();
    throw err;
  }

  const waitForReplay = async (timeoutMs = 60_000) => {
    const [row] = await query<{ lsn: string }>(primary.url('postgres'), 'select pg_current_wal_lsn()::text as lsn');
    const target = row?.lsn ?? '0/0';
    await pollUntil(
      `the replica replays up to ${target}`,
      async () => {
        const [r] = await query<{ done: boolean }>(replica.url('postgres'), 'select pg_last_wal_replay_lsn() >= $1::pg_lsn as done', [target]);
        return r?.done === true;
      },
      timeoutMs,
      replica.logFile,
    );
  };

  return { dir, primary, replica, slot, waitForReplay, stop };
}
