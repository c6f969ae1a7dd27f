import { appendFileSync, chmodSync, chownSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, realpathSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import pg from 'pg';
import { freePort } from './cli.ts';
import {
  initCluster,
  missingClusterTools,
  PG_BIN,
  PG_IDS,
  pgTool,
  postmasterPid,
  readLog,
  startCluster,
  stopCluster,
} from './pg-cluster.ts';
import type { ClusterTimeouts } from './pg-cluster.ts';
import { registerCleanup } from './processes.ts';
import { until } from './until.ts';

/**
 * A real PostgreSQL 15 primary with N streaming hot-standby replicas, for tests of read routing:
 * a throwaway primary made by {@link initCluster}, each replica a `pg_basebackup -R -X stream`
 * copy of it with a physical replication slot of its own, all on free ports of 127.0.0.1 in one
 * temp dir. Replay can be paused and resumed, a replica killed with SIGKILL (its postmaster only,
 * as a crash would) and started again. Every postmaster's process group is killed when the test
 * file ends (as pg-cluster does), then whatever process still works in the temp dir, and the dir
 * is removed, even without {@link ReplicatedPair.close}. Waits poll a query with a deadline; none
 * is a fixed sleep. Connections are made per call (trust auth, user postgres), so a server killed
 * under them fails only the call in flight.
 *
 * @example
 * const missing = missingReplicationTools('read routing suite');
 * describe.skipIf(missing.length > 0)('read routing', () => {
 *   let pair: ReplicatedPair;
 *   beforeAll(async () => { pair = await startReplicatedPair({ database: 'databank' }); }, 120_000);
 *   afterAll(() => pair?.close());
 *   it('…', async () => {
 *     await pair.query('primary', 'insert into t values (1)');
 *     await pair.waitForCatchUp(0);
 *   });
 * });
 */

/** The executables a replicated pair needs besides the cluster tools. */
export const PG_BASEBACKUP = join(PG_BIN, 'pg_basebackup');

/**
 * What this machine lacks to start a replicated pair (the cluster tools and pg_basebackup); with
 * REQUIRE_SERVICES=1 anything missing fails the run, otherwise a warning says `suite` is skipped.
 * Empty when nothing is missing: `describe.skipIf(missingReplicationTools('…').length > 0)`.
 */
export function missingReplicationTools(suite: string): string[] {
  return missingClusterTools(suite, [{ path: PG_BASEBACKUP, hint: 'Debian postgresql-15' }]);
}

/** One server of the pair. */
export interface PgNode {
  /** `primary`, `replica0`, `replica1`…; a replica's is also its cluster_name and application_name. */
  readonly name: string;
  readonly port: number;
  /** `postgres://postgres@127.0.0.1:PORT/DATABASE` with the pair's database. */
  readonly url: string;
  readonly dataDir: string;
  readonly logFile: string;
  /** The URL of another database on this server. */
  urlFor(database: string): string;
}

export interface Replica extends PgNode {
  /** Its index in {@link ReplicatedPair.replicas}, the `i` of the pair's methods. */
  readonly index: number;
  /** The physical replication slot on the primary that keeps the WAL this replica still needs. */
  readonly slot: string;
}

export interface ReplicatedPairOptions {
  /** How many replicas; default 1. */
  readonly replicas?: number;
  /**
   * The database of every node's `url`; default `postgres`. Any other name is created on the
   * primary before the base backups (a database created later reaches the replicas too).
   */
  readonly database?: string;
  /** More postgresql.conf lines for the primary (the replicas copy them). */
  readonly primarySettings?: readonly string[];
  /** More postgresql.conf lines for each replica, after its own. */
  readonly replicaSettings?: readonly string[];
  /** Server tool and readiness bounds (pg-cluster's); `waitMs` bounds each wait for replication. */
  readonly timeouts?: ClusterTimeouts & { readonly waitMs?: number };
}

export interface WaitOptions {
  /** The LSN to reach; default the primary's current WAL LSN when the wait starts. */
  readonly lsn?: string;
  readonly timeoutMs?: number;
}

export interface ReplicatedPair {
  /** The temp dir holding every data dir, log and socket. */
  readonly dir: string;
  /** The database of every node's `url`. */
  readonly database: string;
  readonly primary: PgNode;
  readonly replicas: readonly Replica[];
  /**
   * Runs one statement on a fresh connection to the primary or to replica `i` (in the pair's
   * database, or `database`) and resolves with its rows.
   */
  query<R extends object = Record<string, unknown>>(
    target: 'primary' | number,
    text: string,
    values?: readonly unknown[],
    database?: string,
  ): Promise<R[]>;
  /** `pg_current_wal_lsn()` on the primary, as text (`0/3000148`). */
  primaryLsn(): Promise<string>;
  /** `pg_last_wal_replay_lsn()` on replica `i`: the end of the last WAL record it replayed; null before any. */
  replayLsn(i?: number): Promise<string | null>;
  /** `pg_last_wal_receive_lsn()` on replica `i`: WAL received and flushed there, replayed or not. */
  receiveLsn(i?: number): Promise<string | null>;
  /**
   * Waits until replica `i` has replayed up to the primary's current LSN (or `lsn`): whatever
   * committed on the primary before the call is then visible there. Fails at once when replay is
   * paused short of it. Resolves with the replay LSN reached.
   */
  waitForCatchUp(i?: number, options?: WaitOptions): Promise<string>;
  /** Waits until replica `i` has received (not necessarily replayed) up to the primary's current LSN (or `lsn`). */
  waitForReceive(i?: number, options?: WaitOptions): Promise<string>;
  /**
   * `pg_wal_replay_pause()` on replica `i`, then waits until `pg_get_wal_replay_pause_state()` is
   * `paused`: from then on nothing more is replayed (WAL is still received). The replica stays as
   * far as it had replayed, which may be short of what the primary committed just before: call
   * {@link waitForCatchUp} first when it must hold that (a table just created, say).
   */
  pauseReplay(i?: number): Promise<void>;
  /** `pg_wal_replay_resume()` on replica `i`, then waits until its pause state is `not paused`. */
  resumeReplay(i?: number): Promise<void>;
  /**
   * SIGKILL to replica `i`'s postmaster alone, as a crash would; resolves when it and every
   * process of its group are gone (its children exit when they see it die), so that it can start again.
   */
  killReplica(i?: number): Promise<void>;
  /** Stops replica `i` with pg_ctl (`fast`); nothing to do when it is not running. */
  stopReplica(i?: number): Promise<void>;
  /**
   * Starts replica `i` (on its own port again) and waits until it answers and streams: its WAL
   * receiver streaming and the primary showing a walsender for it, started after it, streaming.
   * Replay is not paused after a start, whatever it was before.
   */
  startReplica(i?: number): Promise<void>;
  /** Stops every server (immediate) and removes the temp dir; a second call does nothing. */
  close(): Promise<void>;
}

const WAIT_MS = 30_000;
const POLL_MS = 50;
const CONNECT_MS = 5_000;
const STATEMENT_MS = 15_000;

/** An LSN (`X/Y`, hex) as a number, for comparisons. */
export function parseLsn(lsn: string): bigint {
  const match = /^([0-9A-Fa-f]+)\/([0-9A-Fa-f]+)$/.exec(lsn);
  if (!match) throw new Error(`not an LSN: ${lsn}`);
  return (BigInt(`0x${match[1]}`) << 32n) + BigInt(`0x${match[2]}`);
}

function nodeUrl(port: number, database: string): string {
  return `postgres://postgres@127.0.0.1:${port}/${encodeURIComponent(database)}`;
}

/** Runs one statement on a connection of its own, closed after; a server that dies meanwhile fails only this call. */
async function queryPort<R extends object>(
  port: number,
  database: string,
  text: string,
  values: readonly unknown[] = [],
): Promise<R[]> {
  const client = new pg.Client({
    host: '127.0.0.1',
    port,
    user: 'postgres',
    database,
    connectionTimeoutMillis: CONNECT_MS,
    statement_timeout: STATEMENT_MS,
    query_timeout: STATEMENT_MS + 5_000,
    application_name: 'databank-test-replication',
  });
  // A server killed under an open connection must not become an uncaught error.
  client.on('error', () => {});
  try {
    await client.connect();
    const result = await client.query<R>(text, [...values]);
    return result.rows;
  } finally {
    await client.end().catch(() => {});
  }
}

/** The state letter of process `pid` (`S`, `R`, `Z`…); null when there is no such process. */
function procState(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // "pid (comm) state …": comm may hold spaces and parentheses.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0] ?? '?';
  } catch {
    return null;
  }
}

/**
 * Live processes working in `path` or below it: a postmaster and all of its children chdir to
 * their data dir. They are found by that and not by process group because every child of a
 * postmaster calls setsid() and leads a group of its own (killing the postmaster's group kills the
 * postmaster alone). A zombie has no cwd any more and is not listed.
 */
function processesIn(path: string): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    let cwd: string;
    try {
      cwd = readlinkSync(`/proc/${entry}/cwd`);
    } catch {
      continue;
    }
    if (cwd === path || cwd.startsWith(`${path}/`)) pids.push(Number(entry));
  }
  return pids;
}

/** SIGKILL to `pid`; one already gone is not an error. */
function killPid(pid: number): void {
  try {
    process.kill(pid, 'SIGKILL');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
  }
}

/** True when the postmaster of `dataDir` (from its pid file) is a live process, not a zombie. */
function postmasterAlive(dataDir: string): boolean {
  const pid = postmasterPid(dataDir);
  if (pid === null) return false;
  const state = procState(pid);
  return state !== null && state !== 'Z' && state !== 'X';
}

function tail(text: string, lines = 40): string {
  return text.split('\n').slice(-lines).join('\n');
}

/**
 * Makes and starts a primary and `replicas` streaming replicas (see {@link ReplicatedPair}).
 * Call it in a `beforeAll` with a hook timeout of a minute or two: on a loaded 2-core machine
 * each base backup and start takes seconds.
 */
export async function startReplicatedPair(options: ReplicatedPairOptions = {}): Promise<ReplicatedPair> {
  const count = options.replicas ?? 1;
  if (!Number.isInteger(count) || count < 1) throw new Error(`replicas must be a positive integer, not ${count}`);
  const database = options.database ?? 'postgres';
  const { waitMs = WAIT_MS, ...clusterTimeouts } = options.timeouts ?? {};

  // Real path: the servers' cwd (see processesIn) is compared with it.
  const dir = realpathSync(mkdtempSync(join(tmpdir(), 'databank-pgrepl-')));
  chmodSync(dir, 0o700);
  if (PG_IDS) chownSync(dir, PG_IDS.uid, PG_IDS.gid);

  let closed = false;
  const makeNode = (name: string, port: number, dataDir: string): PgNode => ({
    name,
    port,
    url: nodeUrl(port, database),
    dataDir,
    logFile: join(dir, `${name}.log`),
    urlFor: (db: string) => nodeUrl(port, db),
  });
  // Its port is known once initdb has run.
  let primary = makeNode('primary', 0, join(dir, 'primary'));
  const replicas: Replica[] = [];
  const allNodes = (): PgNode[] => [...replicas, primary];

  const close = async (): Promise<void> => {
    if (closed) return;
    closed = true;
    const failures: unknown[] = [];
    // Replicas first: an immediate stop of the primary would only make them retry.
    for (const node of allNodes()) {
      if (!postmasterAlive(node.dataDir)) continue;
      try {
        await stopCluster(dir, node.dataDir, 'immediate', clusterTimeouts);
      } catch (err) {
        failures.push(err);
      }
    }
    // Whatever still works in the dir (a postmaster that would not stop; at file end, the children
    // of the postmasters whose groups were killed) is killed, so that the dir can go.
    try {
      await until(
        async () => {
          const left = processesIn(dir);
          left.forEach(killPid);
          return left;
        },
        (left) => left.length === 0,
        { timeoutMs: 10_000, everyMs: POLL_MS, what: `the processes working in ${dir} are gone` },
      );
    } catch (err) {
      failures.push(err);
    }
    rmSync(dir, { recursive: true, force: true, maxRetries: 5 });
    if (failures.length > 0) throw new AggregateError(failures, 'stopping the replicated pair failed');
  };
  // Registered before any server starts, so it runs after the postmasters' adopted groups are
  // killed at file end: then it kills their orphaned children and removes the dir. An explicit
  // close() stops the servers first.
  registerCleanup(close, 'file');

  const replica = (i: number): Replica => {
    const r = replicas[i];
    if (!r) throw new Error(`no replica ${i}: the pair has ${replicas.length}`);
    return r;
  };
  const portOf = (target: 'primary' | number): number => (target === 'primary' ? primary.port : replica(target).port);
  const query = <R extends object = Record<string, unknown>>(
    target: 'primary' | number,
    text: string,
    values: readonly unknown[] = [],
    db: string = database,
  ): Promise<R[]> => queryPort<R>(portOf(target), db, text, values);
  /** One value of one row of a statement that always returns one row. */
  const scalar = async <T>(target: 'primary' | number, text: string, values: readonly unknown[] = []): Promise<T> => {
    const [row] = await queryPort<{ v: T }>(portOf(target), 'postgres', text, values);
    if (!row) throw new Error(`no row from: ${text}`);
    return row.v;
  };
  const withLog = (node: PgNode, message: string): string => `${message}\n--- ${node.logFile} (end) ---\n${tail(readLog(node.logFile))}`;

  /** Polls `probe` (an error is a state, not a failure) until `done`; fails naming the node, with its log. */
  const poll = async <T>(node: PgNode, what: string, probe: () => Promise<T>, done: (v: T) => boolean, timeoutMs = waitMs): Promise<T> => {
    type Polled = { ok: true; value: T } | { ok: false; error: string };
    const safe = (): Promise<Polled> =>
      probe().then(
        (value): Polled => ({ ok: true, value }),
        (err: unknown): Polled => ({ ok: false, error: err instanceof Error ? err.message : String(err) }),
      );
    try {
      const reached = await until(safe, (p) => p.ok && done(p.value), {
        timeoutMs,
        everyMs: POLL_MS,
        what: `${what} (${node.name}, port ${node.port})`,
      });
      if (!reached.ok) throw new Error(reached.error);
      return reached.value;
    } catch (err) {
      throw new Error(withLog(node, err instanceof Error ? err.message : String(err)));
    }
  };

  const primaryLsn = (): Promise<string> => scalar<string>('primary', 'select pg_current_wal_lsn()::text as v');
  const replayLsn = (i = 0): Promise<string | null> => scalar<string | null>(i, 'select pg_last_wal_replay_lsn()::text as v');
  const receiveLsn = (i = 0): Promise<string | null> => scalar<string | null>(i, 'select pg_last_wal_receive_lsn()::text as v');

  type Progress = { lsn: string | null; reached: boolean; pause: string };
  /**
   * Polls replica `i` until its replay (or receive) LSN reaches the target. A paused replay never
   * gets there: that fails at once rather than at the deadline.
   */
  const waitForLsn = async (i: number, kind: 'replay' | 'receive', { lsn, timeoutMs = waitMs }: WaitOptions): Promise<string> => {
    const r = replica(i);
    const target = lsn ?? (await primaryLsn());
    const fn = kind === 'replay' ? 'pg_last_wal_replay_lsn()' : 'pg_last_wal_receive_lsn()';
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const row = await queryPort<Progress>(
        r.port,
        'postgres',
        `select ${fn}::text as lsn, coalesce(${fn} >= $1::pg_lsn, false) as reached, pg_get_wal_replay_pause_state()::text as pause`,
        [target],
      ).then(
        ([first]) => first ?? { lsn: null, reached: false, pause: 'no row' },
        (err: unknown) => ({ lsn: null, reached: false, pause: `query failed: ${String(err)}` }),
      );
      if (row.reached) return row.lsn ?? target;
      if (kind === 'replay' && row.pause === 'paused') {
        throw new Error(`replay is paused on ${r.name} at ${row.lsn ?? 'no LSN'}, short of ${target}`);
      }
      if (Date.now() > deadline) {
        throw new Error(withLog(r, `${r.name} did not ${kind} up to ${target} within ${timeoutMs} ms; last: ${JSON.stringify(row)}`));
      }
      await delay(POLL_MS);
    }
  };
  const waitForCatchUp = (i = 0, opts: WaitOptions = {}): Promise<string> => waitForLsn(i, 'replay', opts);
  const waitForReceive = (i = 0, opts: WaitOptions = {}): Promise<string> => waitForLsn(i, 'receive', opts);

  const setPause = async (i: number, pause: boolean): Promise<void> => {
    const r = replica(i);
    await queryPort(r.port, 'postgres', pause ? 'select pg_wal_replay_pause()' : 'select pg_wal_replay_resume()');
    const want = pause ? 'paused' : 'not paused';
    await poll(
      r,
      `replay pause state is '${want}'`,
      () => scalar<string>(i, 'select pg_get_wal_replay_pause_state() as v'),
      (state) => state === want,
    );
  };

  /** Waits until replica `i` answers and streams from the primary (see startReplica). */
  const waitStreaming = async (i: number): Promise<void> => {
    const r = replica(i);
    await poll(
      r,
      'streaming from the primary',
      async () => {
        const [local] = await queryPort<{ started: string; status: string | null }>(
          r.port,
          'postgres',
          `select pg_postmaster_start_time()::text as started, (select status from pg_stat_wal_receiver) as status`,
        );
        if (!local) throw new Error('no row');
        // A walsender of this replica's previous life may linger on the primary for a moment: only
        // one that began after this postmaster counts.
        const [remote] = await queryPort<{ n: number }>(
          primary.port,
          'postgres',
          `select count(*)::int as n from pg_stat_replication
            where application_name = $1 and state = 'streaming' and backend_start >= $2::timestamptz`,
          [r.name, local.started],
        );
        return { receiver: local.status, walsenders: remote?.n ?? 0 };
      },
      (s) => s.receiver === 'streaming' && s.walsenders > 0,
    );
  };

  const startReplica = async (i = 0): Promise<void> => {
    const r = replica(i);
    if (postmasterAlive(r.dataDir)) throw new Error(`${r.name} is already running`);
    await startCluster(dir, r.dataDir, r.logFile, r.port, clusterTimeouts);
    await waitStreaming(i);
  };

  const stopReplica = async (i = 0): Promise<void> => {
    const r = replica(i);
    if (!postmasterAlive(r.dataDir)) return;
    await stopCluster(dir, r.dataDir, 'fast', clusterTimeouts);
  };

  const killReplica = async (i = 0): Promise<void> => {
    const r = replica(i);
    const pid = postmasterPid(r.dataDir);
    if (pid === null || !postmasterAlive(r.dataDir)) throw new Error(`${r.name} is not running`);
    process.kill(pid, 'SIGKILL');
    // A new postmaster refuses to start while the old one's pid still exists, even as a zombie not
    // yet reaped (its lock file check is kill(pid, 0)), and while old children still use the shared
    // memory. The children exit on their own when they see the postmaster gone; should any linger
    // past half the wait, it is killed.
    const half = Date.now() + waitMs / 2;
    await poll(
      r,
      `the killed postmaster ${pid} and its children are gone`,
      async () => {
        const children = processesIn(r.dataDir);
        if (Date.now() > half) children.forEach(killPid);
        return { children, postmaster: procState(pid) };
      },
      (s) => s.children.length === 0 && s.postmaster === null,
    );
  };

  try {
    const primaryPort = await initCluster(
      dir,
      primary.dataDir,
      'replicated pair: primary',
      [
        'wal_level = replica',
        `max_wal_senders = ${count * 2 + 4}`,
        `max_replication_slots = ${count + 4}`,
        'hot_standby = on',
        'max_connections = 30',
        'shared_buffers = 16MB',
        'work_mem = 2MB',
        'maintenance_work_mem = 16MB',
        'max_worker_processes = 4',
        'max_parallel_workers = 0',
        'max_parallel_workers_per_gather = 0',
        'max_wal_size = 64MB',
        'min_wal_size = 32MB',
        'wal_receiver_status_interval = 1s',
        'wal_retrieve_retry_interval = 1s',
        ...(options.primarySettings ?? []),
      ],
      clusterTimeouts,
    );
    primary = makeNode('primary', primaryPort, primary.dataDir);
    // initdb's pg_hba.conf already trusts replication from 127.0.0.1 with --auth=trust; say it
    // explicitly so that the pair does not depend on that default.
    appendFileSync(join(primary.dataDir, 'pg_hba.conf'), '\n# databank replicated pair\nhost replication postgres 127.0.0.1/32 trust\n');
    await startCluster(dir, primary.dataDir, primary.logFile, primary.port, clusterTimeouts);

    if (database !== 'postgres') {
      await queryPort(primary.port, 'postgres', `create database ${pg.escapeIdentifier(database)}`);
    }

    for (let i = 0; i < count; i++) {
      const name = `replica${i}`;
      const port = await freePort();
      const r: Replica = { ...makeNode(name, port, join(dir, name)), index: i, slot: `databank_${name}` };
      replicas.push(r);
      // -C -S: a slot of its own, so that the primary keeps the WAL a stopped replica still needs.
      // pg_basebackup makes the (missing) target dir itself, owned by whoever runs it.
      await pgTool(
        'pg_basebackup',
        ['-D', r.dataDir, '-h', '127.0.0.1', '-p', String(primary.port), '-U', 'postgres', '-R', '-X', 'stream', '-c', 'fast', '-C', '-S', r.slot, '--no-sync'],
        dir,
        clusterTimeouts.toolMs,
      );
      // The copied postgresql.conf carries the primary's port and socket dir: the last line wins.
      appendFileSync(
        join(r.dataDir, 'postgresql.conf'),
        `\n# databank replicated pair: ${name}\n${[
          `port = ${port}`,
          `unix_socket_directories = '${dir}'`,
          `cluster_name = '${name}'`,
          'hot_standby = on',
          'hot_standby_feedback = on',
          ...(options.replicaSettings ?? []),
        ].join('\n')}\n`,
      );
      await startReplica(i);
    }
  } catch (err) {
    await close().catch(() => {});
    throw err;
  }

  return {
    dir,
    database,
    primary,
    replicas,
    query,
    primaryLsn,
    replayLsn,
    receiveLsn,
    waitForCatchUp,
    waitForReceive,
    pauseReplay: (i = 0) => setPause(i, true),
    resumeReplay: (i = 0) => setPause(i, false),
    killReplica,
    stopReplica,
    startReplica,
    close,
  };
}
