import { AsyncLocalStorage } from 'node:async_hooks';
import {
  Kysely,
  PostgresAdapter,
  PostgresIntrospector,
  PostgresQueryCompiler,
  sql,
  type CompiledQuery,
  type DatabaseConnection,
  type Dialect,
  type Driver,
  type QueryResult,
} from 'kysely';
import type { Database } from './schema.ts';
import type { SqlStore } from './port.ts';
import { isConnectionFailure, sqlState } from './errors.ts';
import { withTimeout } from './timeout.ts';

/**
 * Read routing (the [replicas] issue): the `reader` handle sends each query that only reads to a
 * streaming replica when one is fresh enough, and to the primary otherwise.
 *
 * - **Bounded staleness.** Every check (each `checkMs`) first reads the primary's WAL position,
 *   then each replica's replay position. A replica that has replayed past the primary's position
 *   sampled at time t has every commit acknowledged before t; the newest such t is its
 *   `freshAsOf`. A read without a token goes to a replica only while `now − freshAsOf` is within
 *   `maxLagMs`, so it never sees data older than the bound, even when replay stops between checks.
 * - **Read-your-writes.** A read whose context carries a WAL position (the `X-Databank-Lsn` the
 *   caller's write was answered with) goes to a replica only if that replica's replay position,
 *   as last read, is at or past it; otherwise to the primary.
 * - **Faults.** A replica whose check fails is out of rotation until a check succeeds; a query
 *   that fails on a replica because of the replica (connection lost, shutting down, a recovery
 *   conflict) runs again on another replica or on the primary, so reads do not fail because a
 *   replica did. Only single reads outside transactions take `reader`, so running one again is safe.
 */

/** Where a read was served. */
export type ReadTarget = 'primary' | 'replica';

/** Why a read went where it went: the `reason` label of `databank_db_reads_total`. */
export type ReadReason =
  /** No replica is configured. */
  | 'no_replica'
  /** The caller asked for the primary: a cache fill, an API key lookup. */
  | 'pinned'
  /** Every replica is down, starting, or no longer in recovery (promoted). */
  | 'replicas_down'
  /** The replicas that answer are further behind than the bound. */
  | 'replicas_lagging'
  /** No replica within the bound has replayed the caller's own last write yet. */
  | 'token_ahead'
  /** The replica chosen failed the query; it ran again here. */
  | 'replica_failed'
  /** A replica within the bound. */
  | 'within_lag'
  /** A replica within the bound that has replayed the caller's own last write. */
  | 'token_replayed';

/** The read consistency a request asks for; shared by the reads it makes. */
export interface ReadContext {
  /** Reads must see at least this WAL position (the caller's own last write); null: any within the bound. */
  minLsn: bigint | null;
  /** How many of this request's reads each target served. */
  readonly served: { primary: number; replica: number };
  /** Every read goes to the primary. */
  readonly pinned: boolean;
}

const contexts = new AsyncLocalStorage<ReadContext>();
/**
 * Whether a router with replicas exists in this process. Without one every read goes to the
 * primary whatever the context says, so no context is ever set: on Node.js 20 the first
 * `AsyncLocalStorage.run` installs promise hooks that slow every promise of the process (on
 * Node.js 24 it costs next to nothing), a price paid only where routing needs it.
 */
let routing = false;

/** True when reads may go to a replica, and so a request's read context matters. */
export function readRoutingActive(): boolean {
  return routing;
}

export function newReadContext(minLsn: bigint | null = null): ReadContext {
  return { minLsn, served: { primary: 0, replica: 0 }, pinned: false };
}

/** Runs `fn` (and everything it starts) with `ctx` as its read context. */
export function runWithReadContext<T>(ctx: ReadContext, fn: () => T): T {
  return contexts.run(ctx, fn);
}

export function currentReadContext(): ReadContext | undefined {
  return contexts.getStore();
}

/**
 * Runs `fn` with every read on the primary: for reads whose answer outlives the request (a cache
 * fill, which others read later without any token) or must never lag (an API key lookup).
 */
export function onPrimary<T>(fn: () => Promise<T>): Promise<T> {
  if (!routing) return fn();
  const parent = contexts.getStore();
  return contexts.run({ minLsn: null, served: parent?.served ?? { primary: 0, replica: 0 }, pinned: true }, fn);
}

const LSN = /^([0-9A-F]{1,8})\/([0-9A-F]{1,8})$/i;

/** PostgreSQL's text form of a WAL position (`16/B374D848`) as a number; null when it is not one. */
export function parseLsn(text: string | null | undefined): bigint | null {
  const m = text ? LSN.exec(text) : null;
  return m ? (BigInt(`0x${m[1]}`) << 32n) | BigInt(`0x${m[2]}`) : null;
}

export function formatLsn(lsn: bigint): string {
  return `${(lsn >> 32n).toString(16).toUpperCase()}/${(lsn & 0xffffffffn).toString(16).toUpperCase()}`;
}

/** A replica's state: only `in_rotation` replicas serve reads. */
export type ReplicaState = 'starting' | 'in_rotation' | 'lagging' | 'down' | 'not_in_recovery';

export interface ReplicaStatus {
  readonly name: string;
  readonly state: ReplicaState;
  /** 0 when it had replayed everything the primary had written at the last check; null when unknown. */
  readonly lag_ms: number | null;
  /** How far its replay was behind the primary's WAL position at the last check. */
  readonly lag_bytes: number | null;
  readonly replay_lsn: string | null;
  /** Reads it has served since this process started. */
  readonly reads: number;
  readonly last_error: string | null;
  readonly checked_at: string | null;
}

export interface ReplicaHandle {
  /** Host, port and database, never credentials: for logs, metrics and status. */
  readonly name: string;
  readonly store: SqlStore;
}

export interface ReadRouterOptions {
  readonly maxLagMs: number;
  readonly checkMs: number;
  /** Told about every read routed. */
  readonly onRead?: (target: ReadTarget, reason: ReadReason, replica: string | null) => void;
  /** Told when a replica changes state (taken out of rotation, put back). */
  readonly onStateChange?: (replica: string, from: ReplicaState, to: ReplicaState, error: string | null) => void;
}

interface Member {
  readonly name: string;
  readonly store: SqlStore;
  state: ReplicaState;
  replayLsn: bigint | null;
  /** Every commit acknowledged by the primary before this time (ms) has been replayed. */
  freshAsOf: number | null;
  lagMs: number | null;
  lagBytes: number | null;
  reads: number;
  lastError: string | null;
  checkedAt: number | null;
}

interface Choice {
  readonly db: Kysely<Database>;
  readonly member: Member | null;
  readonly reason: ReadReason;
}

/** Primary WAL positions older than this are forgotten; a replica further behind has no known freshness. */
const SAMPLE_HISTORY_MS = 60_000;

export class ReadRouter {
  /** The handle services read through. */
  readonly reader: Kysely<Database>;
  private readonly members: Member[];
  /** The primary's WAL position over time, oldest first. */
  private samples: { t: number; lsn: bigint }[] = [];
  private next = 0;
  private timer: NodeJS.Timeout | null = null;
  private checking: Promise<void> | null = null;
  private lsnInFlight: Promise<bigint> | null = null;
  private lsnQueued: Promise<bigint> | null = null;
  private readonly checkTimeoutMs: number;

  constructor(
    private readonly primary: SqlStore,
    replicas: readonly ReplicaHandle[],
    private readonly options: ReadRouterOptions,
  ) {
    this.members = replicas.map((r) => ({
      name: r.name,
      store: r.store,
      state: 'starting',
      replayLsn: null,
      freshAsOf: null,
      lagMs: null,
      lagBytes: null,
      reads: 0,
      lastError: null,
      checkedAt: null,
    }));
    this.checkTimeoutMs = Math.max(1_000, options.checkMs * 5);
    if (replicas.length > 0) routing = true;
    this.reader = new Kysely<Database>({ dialect: routingDialect(this) });
  }

  get replicaCount(): number {
    return this.members.length;
  }

  /** Checks every replica once (so reads may go to them at once), then every `checkMs`. */
  async start(): Promise<void> {
    if (this.members.length === 0) return;
    await this.check();
    this.timer = setInterval(() => void this.check(), this.options.checkMs);
    this.timer.unref();
  }

  /** One round of checks; a round already running is joined. */
  check(): Promise<void> {
    this.checking ??= this.checkAll().finally(() => {
      this.checking = null;
    });
    return this.checking;
  }

  status(): ReplicaStatus[] {
    return this.members.map((m) => ({
      name: m.name,
      state: m.state,
      lag_ms: m.lagMs,
      lag_bytes: m.lagBytes,
      replay_lsn: m.replayLsn === null ? null : formatLsn(m.replayLsn),
      reads: m.reads,
      last_error: m.lastError,
      checked_at: m.checkedAt === null ? null : new Date(m.checkedAt).toISOString(),
    }));
  }

  /**
   * The primary's WAL position now, read after the caller's commit: at or past that commit. Calls
   * that arrive while a read is running wait for the next one (the running one may have started
   * before their commit), so a burst of writes costs one query, not one each.
   */
  currentLsn(): Promise<bigint> {
    if (!this.lsnInFlight) return this.fetchLsn();
    this.lsnQueued ??= this.lsnInFlight
      .catch(() => undefined)
      .then(() => {
        this.lsnQueued = null;
        return this.fetchLsn();
      });
    return this.lsnQueued;
  }

  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    await this.checking?.catch(() => undefined);
    await Promise.all(this.members.map((m) => m.store.close().catch(() => undefined)));
  }

  /** Runs one read where it should go; a replica's fault sends it on to the next target. */
  async execute<R>(query: CompiledQuery<R>): Promise<QueryResult<R>> {
    const failed = new Set<Member>();
    for (;;) {
      const choice = this.choose(failed);
      try {
        const result = await choice.db.executeQuery(query);
        this.served(choice);
        return result;
      } catch (err) {
        if (!choice.member || !isReplicaFault(err)) throw err;
        failed.add(choice.member);
        // A recovery conflict cancels one query; a lost connection means the replica is gone.
        if (sqlState(err) !== '40001') this.setState(choice.member, 'down', err);
      }
    }
  }

  async *stream<R>(query: CompiledQuery<R>, chunkSize: number): AsyncIterableIterator<QueryResult<R>> {
    const choice = this.choose(new Set());
    this.served(choice);
    yield* choice.db.getExecutor().stream(query, chunkSize);
  }

  private fetchLsn(): Promise<bigint> {
    const p = (async () => {
      const { rows } = await sql<{ lsn: string }>`select pg_current_wal_lsn()::text as lsn`.execute(this.primary.db);
      const lsn = parseLsn(rows[0]?.lsn);
      if (lsn === null) throw new Error(`unexpected WAL position ${rows[0]?.lsn}`);
      return lsn;
    })().finally(() => {
      if (this.lsnInFlight === p) this.lsnInFlight = null;
    });
    this.lsnInFlight = p;
    return p;
  }

  private choose(failed: ReadonlySet<Member>): Choice {
    const primary = (reason: ReadReason): Choice => ({ db: this.primary.db, member: null, reason });
    if (this.members.length === 0) return primary('no_replica');
    const ctx = contexts.getStore();
    if (ctx?.pinned) return primary('pinned');
    const now = Date.now();
    let answering = false;
    const fresh: Member[] = [];
    for (const m of this.members) {
      if (failed.has(m) || (m.state !== 'in_rotation' && m.state !== 'lagging')) continue;
      answering = true;
      if (m.freshAsOf !== null && now - m.freshAsOf <= this.options.maxLagMs) fresh.push(m);
    }
    if (fresh.length === 0) return primary(failed.size > 0 ? 'replica_failed' : answering ? 'replicas_lagging' : 'replicas_down');
    const minLsn = ctx?.minLsn ?? null;
    const eligible = minLsn === null ? fresh : fresh.filter((m) => m.replayLsn !== null && m.replayLsn >= minLsn);
    if (eligible.length === 0) return primary('token_ahead');
    const member = eligible[this.next++ % eligible.length] as Member;
    return { db: member.store.db, member, reason: minLsn === null ? 'within_lag' : 'token_replayed' };
  }

  private served(choice: Choice): void {
    const ctx = contexts.getStore();
    if (ctx) ctx.served[choice.member ? 'replica' : 'primary']++;
    if (choice.member) choice.member.reads++;
    this.options.onRead?.(choice.member ? 'replica' : 'primary', choice.reason, choice.member?.name ?? null);
  }

  private async checkAll(): Promise<void> {
    // The primary first: a replica that has replayed past this position has every commit
    // acknowledged before `t`.
    const t = Date.now();
    let primaryLsn: bigint | null = null;
    try {
      const { rows } = await withTimeout(
        sql<{ lsn: string }>`select pg_current_wal_lsn()::text as lsn`.execute(this.primary.db),
        this.checkTimeoutMs,
      );
      primaryLsn = parseLsn(rows[0]?.lsn);
    } catch {
      // The primary does not answer (a failover): no new sample, so the replicas' freshness ages
      // and reads leave them once it passes the bound.
    }
    if (primaryLsn !== null) {
      this.samples.push({ t, lsn: primaryLsn });
      const horizon = t - SAMPLE_HISTORY_MS;
      while (this.samples.length > 1 && (this.samples[0] as { t: number }).t < horizon) this.samples.shift();
    }
    await Promise.all(this.members.map((m) => this.checkReplica(m, primaryLsn, t)));
  }

  private async checkReplica(m: Member, primaryLsn: bigint | null, sampledAt: number): Promise<void> {
    try {
      const { rows } = await withTimeout(
        sql<{ in_recovery: boolean; lsn: string | null }>`
          select pg_is_in_recovery() as in_recovery, pg_last_wal_replay_lsn()::text as lsn`.execute(m.store.db),
        this.checkTimeoutMs,
      );
      m.checkedAt = Date.now();
      const row = rows[0];
      if (!row?.in_recovery) {
        m.replayLsn = null;
        m.freshAsOf = null;
        this.setState(m, 'not_in_recovery', null);
        return;
      }
      const replayed = parseLsn(row.lsn);
      m.replayLsn = replayed;
      let freshAsOf: number | null = null;
      if (replayed !== null) {
        for (let i = this.samples.length - 1; i >= 0; i--) {
          const sample = this.samples[i] as { t: number; lsn: bigint };
          if (sample.lsn <= replayed) {
            freshAsOf = sample.t;
            break;
          }
        }
      }
      m.freshAsOf = freshAsOf;
      const caughtUp = replayed !== null && primaryLsn !== null && replayed >= primaryLsn;
      m.lagMs = caughtUp ? 0 : freshAsOf === null ? null : sampledAt - freshAsOf;
      m.lagBytes = replayed !== null && primaryLsn !== null ? Math.max(0, Number(primaryLsn - replayed)) : null;
      const inBound = freshAsOf !== null && Date.now() - freshAsOf <= this.options.maxLagMs;
      this.setState(m, inBound ? 'in_rotation' : 'lagging', null);
    } catch (err) {
      m.checkedAt = Date.now();
      this.setState(m, 'down', err);
    }
  }

  private setState(m: Member, state: ReplicaState, err: unknown): void {
    const error = err === null || err === undefined ? null : err instanceof Error ? err.message : String(err);
    if (state === 'down' || state === 'not_in_recovery') {
      m.lagMs = null;
      m.lagBytes = null;
    }
    m.lastError = error;
    const from = m.state;
    m.state = state;
    if (from !== state) this.options.onStateChange?.(m.name, from, state, error);
  }
}

/** An error of the replica rather than of the query: the same read may succeed elsewhere. */
function isReplicaFault(err: unknown): boolean {
  // 40001 on a standby: "canceling statement due to conflict with recovery".
  return isConnectionFailure(err) || sqlState(err) === '40001';
}

/** Host, port and database of a connection string, without user or password. */
export function replicaName(connectionString: string): string {
  try {
    const url = new URL(connectionString);
    return `${url.hostname}:${url.port || '5432'}${url.pathname}`;
  } catch {
    return 'replica';
  }
}

/** A Kysely dialect whose every query goes through the router. */
function routingDialect(router: ReadRouter): Dialect {
  const connection: DatabaseConnection = {
    executeQuery: <R>(query: CompiledQuery) => router.execute(query as CompiledQuery<R>),
    streamQuery: <R>(query: CompiledQuery, chunkSize?: number) => router.stream(query as CompiledQuery<R>, chunkSize ?? 100),
  };
  const driver: Driver = {
    init: async () => undefined,
    acquireConnection: async () => connection,
    beginTransaction: async () => {
      throw new Error('reader: transactions run on the writer');
    },
    commitTransaction: async () => undefined,
    rollbackTransaction: async () => undefined,
    releaseConnection: async () => undefined,
    destroy: async () => undefined,
  };
  return {
    createAdapter: () => new PostgresAdapter(),
    createDriver: () => driver,
    createQueryCompiler: () => new PostgresQueryCompiler(),
    createIntrospector: (db) => new PostgresIntrospector(db),
  };
}
