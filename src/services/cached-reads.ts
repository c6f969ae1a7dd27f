import type { CacheStats, CacheStore } from '../stores/cache/port.ts';
import { lease, tombstone, tombstoneTime } from '../stores/cache/tombstone.ts';
import { onPrimary } from '../stores/sql/read-routing.ts';

/** Bump when the shape of a cached value changes: old shapes are then never read. */
export const CACHE_SCHEMA_VERSION = 2;

/** `api-key` entries are keyed by the key's public prefix, the others by their numeric id. */
export type CacheFamily = 'customer' | 'account' | 'customer-accounts' | 'api-key';
export type CacheId = number | string;
export type CacheOutcome = 'HIT' | 'MISS' | 'BYPASS';

export interface CacheEvents {
  hit(family: CacheFamily): void;
  miss(family: CacheFamily): void;
  error(family: CacheFamily | 'invalidate', err: unknown): void;
}

export interface CachedReadsOptions {
  readonly prefix: string;
  readonly ttlMs: number;
  /** How long "does not exist" is remembered. */
  readonly negativeTtlMs: number;
  /** How long an invalidated key refuses to be filled (longer than any load can take). */
  readonly tombstoneMs: number;
}

/**
 * Clocks of app hosts differ a little: a load must start this long after an invalidation, by its
 * own clock, before it may replace the tombstone.
 */
const CLOCK_SKEW_MS = 50;

/** Beyond this many keys whose invalidation failed, the whole namespace is flushed instead. */
const MAX_LOST_KEYS = 10_000;

interface InFlight {
  readonly startedAt: number;
  /** The lease this load put on the empty key before it started, if it did. */
  lease: string | null;
  readonly promise: Promise<unknown>;
}

/**
 * Cache-aside reads with invalidation after commit.
 *
 * - A miss loads from PostgreSQL once per key and process (single flight), then fills the cache
 *   atomically unless a newer value or invalidation is there. "Not found" is cached briefly too.
 *   A reader that finds the key empty first puts a lease there, and a fill never writes into an
 *   empty key: a flush or an eviction between a load's read and its fill removes the tombstone
 *   that would have stopped it, but also the lease, so the old row still cannot be put back.
 * - After a commit, the service calls `invalidate`, which overwrites the keys with tombstones
 *   stamped with the time, before the response is sent. A loader that started before that time
 *   (and so may have read the old row) cannot replace the tombstone; one that started after it
 *   can. A reader that sees a tombstone never joins a load that started before it looked. So once
 *   a write's response has been sent, no reader anywhere gets the old value from the cache.
 * - Any cache error is a BYPASS: the value comes from PostgreSQL, the error is counted and logged.
 *   Should invalidation itself fail (Redis unreachable or slow), the keys are remembered: this
 *   instance reads them from PostgreSQL (BYPASS) until their tombstones have been written again,
 *   retried on reconnect and by reads of them; with too many such keys the whole namespace is
 *   flushed instead. So a value cached before the outage is never trusted over a committed write.
 */
export class CachedReads {
  private readonly inflight = new Map<string, InFlight>();
  /** Keys whose invalidation failed, each with the number of the failure that lost it last. */
  private readonly lost = new Map<string, number>();
  private failures = 0;
  /** Set (to a failure number) when too many keys were lost to remember: nothing is trusted. */
  private everythingLostAt: number | null = null;
  private recovering = false;
  private lastRecovery = 0;

  constructor(
    private readonly store: CacheStore | null,
    private readonly options: CachedReadsOptions,
    private readonly events: CacheEvents,
  ) {
    store?.onReconnect(() => void this.repair());
  }

  /** Every key this app writes starts with this. */
  get namespace(): string {
    return `${this.options.prefix}:v${CACHE_SCHEMA_VERSION}:`;
  }

  key(family: CacheFamily, id: CacheId): string {
    return `${this.namespace}${family}:${id}`;
  }

  async getOrLoad<T>(family: CacheFamily, id: CacheId, load: () => Promise<T | null>): Promise<{ value: T | null; cache: CacheOutcome }> {
    if (!this.store) return { value: await load(), cache: 'BYPASS' };
    const key = this.key(family, id);
    if (!this.trusted(key)) return { value: await load(), cache: 'BYPASS' };
    const lookedAt = Date.now();
    let raw: string | null;
    try {
      raw = await this.store.get(key);
    } catch (err) {
      this.events.error(family, err);
      return { value: await load(), cache: 'BYPASS' };
    }
    const live = liveValue<T>(raw);
    if (live) {
      this.events.hit(family);
      return { value: live.value, cache: 'HIT' };
    }
    this.events.miss(family);
    const running = this.inflight.get(key);
    // Join a load only if it started after this reader looked, or if the key still holds the lease
    // that load took before it started: then nothing was invalidated or flushed since.
    if (running && (running.startedAt >= lookedAt || (running.lease !== null && raw === running.lease))) {
      return { value: (await running.promise) as T | null, cache: 'MISS' };
    }
    // Registered before the first await, so that readers arriving meanwhile join this load.
    const entry: { startedAt: number; lease: string | null; promise: Promise<T | null> } = {
      startedAt: Date.now(),
      lease: null,
      promise: Promise.resolve(null),
    };
    entry.promise = (async () => {
      if (raw === null) {
        const candidate = lease(Date.now());
        try {
          if (await this.store?.setIfAbsent(key, candidate, this.options.tombstoneMs)) entry.lease = candidate;
        } catch (err) {
          this.events.error(family, err);
        }
      }
      return this.loadAndFill(family, key, load, entry.lease);
    })();
    const promise = entry.promise;
    this.inflight.set(key, entry);
    try {
      return { value: await promise, cache: 'MISS' };
    } finally {
      if (this.inflight.get(key) === entry) this.inflight.delete(key);
    }
  }

  /**
   * What the cache holds for a key, without loading it and without counting a hit or a miss:
   * `{ value }` for a live entry ("not found" included, as null), undefined when the cache cannot
   * answer (off, empty, invalidated, not trusted since a failed invalidation, or failing).
   */
  async peek<T>(family: CacheFamily, id: CacheId): Promise<{ value: T | null } | undefined> {
    const key = this.key(family, id);
    if (!this.store || !this.trusted(key)) return undefined;
    try {
      return liveValue<T>(await this.store.get(key));
    } catch (err) {
      this.events.error(family, err);
      return undefined;
    }
  }

  /** Call after the commit, before answering: the keys' old values are gone everywhere. */
  async invalidate(keys: ReadonlyArray<readonly [CacheFamily, CacheId]>): Promise<void> {
    if (!this.store || keys.length === 0) return;
    const names = [...new Set(keys.map(([family, id]) => this.key(family, id)))];
    for (const name of names) this.inflight.delete(name);
    try {
      await this.store.setMany(names, tombstone(Date.now()), this.options.tombstoneMs);
    } catch (err) {
      const failure = ++this.failures;
      if (this.lost.size + names.length > MAX_LOST_KEYS) {
        this.everythingLostAt = failure;
        this.lost.clear();
      } else {
        for (const name of names) this.lost.set(name, failure);
      }
      this.events.error('invalidate', err);
    }
  }

  /** Deletes every key of this deployment, or those under `family` (e.g. `account:`); returns how many. */
  async flush(within = ''): Promise<number> {
    this.inflight.clear();
    return this.store ? this.store.deletePrefix(this.namespace + within) : 0;
  }

  /** What the cache holds for this deployment; null when caching is off. */
  async stats(): Promise<(CacheStats & { kind: string; namespace: string }) | null> {
    if (!this.store) return null;
    return { kind: this.store.kind, namespace: this.namespace, ...(await this.store.stats(this.namespace)) };
  }

  /**
   * Whether the key's cached value may be used: not until a failed invalidation of it (or of
   * everything) has been made good, which this starts trying again.
   */
  private trusted(key: string): boolean {
    if (this.everythingLostAt === null && !this.lost.has(key)) return true;
    this.recover();
    return false;
  }

  /**
   * Tries the repair again, at most one at a time and once a second: a connection that stalled
   * without closing never says "ready" again, so reads drive the recovery too.
   */
  private recover(): void {
    if (this.recovering || Date.now() - this.lastRecovery < 1_000) return;
    this.lastRecovery = Date.now();
    void this.repair();
  }

  /** Writes the lost invalidations again (or flushes the namespace when too many were lost). */
  private async repair(): Promise<void> {
    const store = this.store;
    if (!store || this.recovering || (this.everythingLostAt === null && this.lost.size === 0)) return;
    this.recovering = true;
    try {
      if (this.everythingLostAt !== null) {
        const upTo = this.failures;
        await this.flush();
        if (this.everythingLostAt <= upTo) this.everythingLostAt = null;
      } else {
        const batch = [...this.lost];
        await store.setMany(
          batch.map(([key]) => key),
          tombstone(Date.now()),
          this.options.tombstoneMs,
        );
        // A key lost again meanwhile stays lost: its newer commit may postdate this tombstone.
        for (const [key, failure] of batch) if (this.lost.get(key) === failure) this.lost.delete(key);
      }
    } catch (err) {
      this.events.error('invalidate', err);
    } finally {
      this.recovering = false;
    }
  }

  private async loadAndFill<T>(
    family: CacheFamily,
    key: string,
    load: () => Promise<T | null>,
    taken: string | null,
  ): Promise<T | null> {
    const startedAt = Date.now();
    // From the primary: a value filled from a lagging replica would outlive that replica's lag, and
    // be served to callers whose own writes it does not show.
    const value = await onPrimary(load);
    // Its invalidation failed during the load: what was read may be the old row.
    if (this.everythingLostAt !== null || this.lost.has(key)) return value;
    const ttl = value === null ? this.options.negativeTtlMs : this.options.ttlMs;
    try {
      await this.store?.fill(key, JSON.stringify({ v: value }), ttl, startedAt - CLOCK_SKEW_MS, taken);
    } catch (err) {
      this.events.error(family, err);
    }
    return value;
  }
}

/** The value of a cache entry that holds one, neither empty nor a tombstone or lease. */
function liveValue<T>(raw: string | null): { value: T | null } | undefined {
  if (raw === null || tombstoneTime(raw) !== null) return undefined;
  return { value: (JSON.parse(raw) as { v?: T }).v ?? null };
}

/** The keys a change to these accounts' balances makes stale: the accounts and their customers. */
export function movedMoney(accounts: ReadonlyArray<readonly [accountId: number, customerId: number]>) {
  return accounts.flatMap(([accountId, customerId]) => [
    ['account', accountId] as const,
    ['customer', customerId] as const,
    ['customer-accounts', customerId] as const,
  ]);
}
