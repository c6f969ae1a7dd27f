import { rmSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApp, type App } from '../../src/app.ts';
import type { Config } from '../../src/config.ts';
import { testConfig } from '../support/app.ts';
import { createTestDatabase, ENGINES, type TestDatabase } from '../support/engines.ts';
import { checkLedger } from '../support/invariants.ts';
import { REDIS_UP, REDIS_URL } from '../support/redis.ts';

/**
 * The cache's promise (src/services/cached-reads.ts): once a write's response has been sent, no
 * reader on any app instance sharing the Redis gets the old value. Two instances in this process,
 * one PostgreSQL database, one Redis namespace; writers and readers go through both, and every
 * read is checked against the ledger.
 *
 * Needs PostgreSQL (DATABASE_URL) and Redis (REDIS_URL). Same rule as test/support/engines.ts and
 * test/support/redis.ts: with REQUIRE_SERVICES=1 an unreachable server fails the run instead of
 * skipping.
 */
const POSTGRES = ENGINES.includes('postgres');
if (!REDIS_UP || !POSTGRES) {
  console.warn(
    `cache-staleness skipped: it needs ${[!POSTGRES && 'DATABASE_URL (PostgreSQL)', !REDIS_UP && 'REDIS_URL (Redis)'].filter(Boolean).join(' and ')} set and answering`,
  );
}

const ADMIN = { role: 'admin', keyId: 0 } as const;
const RUN_MS = 5_000;
const ACCOUNTS = 6;
const WRITERS = 4;
const READERS = 6;
const OPENING = 1_000_000;

/** Polls `condition` every `everyMs` up to `attempts` times; throws with `what` when it never holds. */
async function until(what: string, condition: () => Promise<boolean> | boolean, attempts = 200, everyMs = 10): Promise<void> {
  for (let i = 0; i < attempts; i++) {
    if (await condition()) return;
    await sleep(everyMs);
  }
  throw new Error(`timed out waiting until ${what}`);
}

/** A small deterministic generator, so that a failing run can be repeated. */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

interface AccountBody {
  account_id: number;
  balance: number;
}

interface Write {
  readonly transferId: number;
  readonly from: number;
  readonly to: number;
  /** performance.now() when the 201 had been received. */
  readonly answeredAt: number;
}

interface Read {
  readonly account: number;
  readonly startedAt: number;
  readonly endedAt: number;
  readonly balance: number;
  readonly cache: string;
  readonly instance: number;
}

/** Every balance each account ever had, in commit order, from the ledger. */
interface History {
  /** transaction id → position (1-based: position 0 is the empty account). */
  readonly positionOf: Map<number, number>;
  /** balance → the latest position at which the account held it. */
  readonly latestPositionWith: Map<number, number>;
  readonly length: number;
}

/**
 * Entries of one account, ordered by transaction id. Ids are drawn inside the transaction while
 * it holds the account's row lock (databank_transfer, recordMovement), so for one account id
 * order is commit order.
 */
async function ledgerHistories(app: App, accounts: readonly number[]): Promise<Map<number, History>> {
  const { rows } = await sql<{ transaction_id: number; account_id: number; amount: number }>`
    select e.transaction_id, e.account_id, e.amount
    from ledger_entries e join ledger_transactions t on t.id = e.transaction_id
    where e.account_id = any(${sql.val(accounts)}::bigint[])
    order by t.id, e.id`.execute(app.sql.db);
  const histories = new Map<number, History>();
  const state = new Map<number, { balance: number; length: number }>();
  for (const id of accounts) {
    histories.set(id, { positionOf: new Map(), latestPositionWith: new Map([[0, 0]]), length: 0 });
    state.set(id, { balance: 0, length: 0 });
  }
  for (const row of rows) {
    const h = histories.get(Number(row.account_id)) as History;
    const s = state.get(Number(row.account_id)) as { balance: number; length: number };
    s.balance += Number(row.amount);
    s.length += 1;
    h.positionOf.set(Number(row.transaction_id), s.length);
    h.latestPositionWith.set(s.balance, s.length);
  }
  for (const [id, h] of histories) histories.set(id, { ...h, length: state.get(id)?.length ?? 0 });
  return histories;
}

interface Violation {
  readonly read: Read;
  readonly required: number;
  readonly got: number | null;
}

/**
 * For each read, the newest ledger position of its account that some write had already
 * answered for before the read started; the read's balance must be at that position or later.
 */
function findStaleReads(histories: Map<number, History>, writes: readonly Write[], reads: readonly Read[]) {
  // Per account: writes by answer time, with the running maximum of their positions.
  const known = new Map<number, { at: number[]; maxPosition: number[] }>();
  for (const w of [...writes].sort((a, b) => a.answeredAt - b.answeredAt)) {
    for (const account of [w.from, w.to]) {
      const position = histories.get(account)?.positionOf.get(w.transferId);
      if (position === undefined) throw new Error(`transfer ${w.transferId} answered 201 but is not in the ledger of ${account}`);
      let k = known.get(account);
      if (!k) known.set(account, (k = { at: [], maxPosition: [] }));
      k.at.push(w.answeredAt);
      k.maxPosition.push(Math.max(position, k.maxPosition.at(-1) ?? 0));
    }
  }
  const violations: Violation[] = [];
  let checked = 0;
  for (const r of reads) {
    const k = known.get(r.account);
    if (!k) continue;
    // The last write answered strictly before the read started.
    let lo = 0;
    let hi = k.at.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if ((k.at[mid] as number) < r.startedAt) lo = mid + 1;
      else hi = mid;
    }
    if (lo === 0) continue;
    const required = k.maxPosition[lo - 1] as number;
    checked++;
    const got = histories.get(r.account)?.latestPositionWith.get(r.balance) ?? null;
    if (got === null || got < required) violations.push({ read: r, required, got });
  }
  return { violations, checked };
}

describe.skipIf(!POSTGRES || !REDIS_UP)('cache staleness: two app instances sharing one Redis', () => {
  const prefix = `stale-${randomBytes(6).toString('hex')}`;
  let db: TestDatabase | undefined;
  const apps: App[] = [];
  const bases: string[] = [];
  let auth: { authorization: string };
  let customerId: number;
  let opened = 0;

  const get = async (instance: number, account: number) => {
    const res = await fetch(`${bases[instance]}/accounts/${account}`, { headers: auth });
    const body = (await res.json()) as AccountBody;
    return { status: res.status, balance: body.balance, cache: res.headers.get('x-cache') ?? '' };
  };
  const transfer = async (instance: number, from: number, to: number, amount: number) => {
    const res = await fetch(`${bases[instance]}/transfers`, {
      method: 'POST',
      headers: { ...auth, 'content-type': 'application/json' },
      body: JSON.stringify({ from_account_id: from, to_account_id: to, amount }),
    });
    return { status: res.status, body: (await res.json()) as { transfer_id?: number; code?: string } };
  };
  const openAccounts = async (n: number) => {
    const ids: number[] = [];
    for (let i = 0; i < n; i++) {
      const account = await (apps[0] as App).deps.accounts.open(ADMIN, customerId, { account_type: 'checking' });
      await (apps[0] as App).deps.movements.deposit(ADMIN, account.account_id, OPENING, null);
      ids.push(account.account_id);
      opened++;
    }
    // Opening and depositing left tombstones: start from a cold cache.
    await (apps[0] as App).deps.cache.flush();
    return ids;
  };

  beforeAll(async () => {
    db = await createTestDatabase('postgres', `cache-staleness-${prefix}`);
    const overrides: Partial<Config> = {
      demoData: false,
      instances: 2,
      // A generous timeout: a BYPASS here would only mean a slow machine (and is checked all the same).
      cache: { store: { kind: 'redis', url: REDIS_URL as string, commandTimeoutMs: 1_000 }, prefix, ttlSeconds: 300 },
    };
    const logger = pino({ level: 'silent' });
    // The first instance migrates and bootstraps; the second finds both done, as a second copy would.
    apps.push(await createApp(testConfig(db, overrides), { logger, defaultMetrics: false }));
    apps.push(await createApp(testConfig(db, overrides), { logger, defaultMetrics: false, bootstrap: false }));
    for (const app of apps) bases.push(await app.http.listen({ host: '127.0.0.1', port: 0 }));
    const adminKey = apps[0]?.bootstrapped?.adminKey;
    if (!adminKey) throw new Error('bootstrap made no admin key');
    auth = { authorization: `Bearer ${adminKey}` };
    customerId = (await (apps[0] as App).deps.customers.create(ADMIN, { name: 'Stale', date_of_birth: '1980-01-01' })).id;
  });

  afterAll(async () => {
    await apps[0]?.deps.cache.flush().catch(() => undefined);
    for (const app of apps.reverse()) await app.close().catch(() => undefined);
    await db?.drop();
    for (const app of apps) {
      const store = app.config.files.store;
      if (store.kind === 'local') rmSync(store.dir, { recursive: true, force: true });
    }
  });

  it('a write through instance A is seen by the next read through instance B', async () => {
    const [x, y] = (await openAccounts(2)) as [number, number];
    expect(await get(1, x)).toEqual({ status: 200, balance: OPENING, cache: 'MISS' });
    expect(await get(1, x)).toEqual({ status: 200, balance: OPENING, cache: 'HIT' });
    // Shared: instance A finds what B cached.
    expect(await get(0, x)).toEqual({ status: 200, balance: OPENING, cache: 'HIT' });
    expect(await get(1, y)).toEqual({ status: 200, balance: OPENING, cache: 'MISS' });

    const moved = await transfer(0, x, y, 123);
    expect(moved.status).toBe(201);
    expect(await get(1, x)).toEqual({ status: 200, balance: OPENING - 123, cache: 'MISS' });
    expect(await get(1, y)).toEqual({ status: 200, balance: OPENING + 123, cache: 'MISS' });
    expect(await get(0, x)).toMatchObject({ status: 200, balance: OPENING - 123 });
  });

  /**
   * The exact interleaving the tombstones exist for, forced: instance B starts loading the account
   * and reads its row, instance A commits a transfer and answers, and only then B's load goes on to
   * fill the cache. B's load is the app's own CachedReads, given a loader held at a gate.
   */
  const slowLoadOnB = async (account: number) => {
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    let rowRead!: () => void;
    const read = new Promise<void>((resolve) => (rowRead = resolve));
    const load = (apps[1] as App).deps.cache.getOrLoad('account', account, async () => {
      const row = await (apps[1] as App).sql.db
        .selectFrom('accounts')
        .select(['account_id', 'account_type', 'balance', 'customer_id', 'currency'])
        .where('account_id', '=', account)
        .executeTakeFirst();
      rowRead();
      await gate;
      return row ?? null;
    });
    await read;
    return { open: release, load };
  };
  const accountMisses = async (app: App) =>
    (await app.deps.metrics.cacheRequests.get()).values.find((v) => v.labels.family === 'account' && v.labels.result === 'miss')
      ?.value ?? 0;

  it('a load that read the row before a transfer cannot put the old balance back: the tombstone stops it', async () => {
    const [x, y] = (await openAccounts(2)) as [number, number];
    const slow = await slowLoadOnB(x);
    expect((await transfer(0, x, y, 10)).status).toBe(201);
    slow.open();
    expect((await slow.load).value?.balance).toBe(OPENING);
    for (const instance of [1, 0, 1]) expect(await get(instance, x)).toMatchObject({ status: 200, balance: OPENING - 10 });
  });

  // When the tombstone is removed from outside (FLUSHALL, eviction, an operator's flush) while
  // another instance's load that read the row before the write still runs, the load's lease is
  // gone too, so it cannot fill.
  it('nor once the tombstone is gone (FLUSHALL, eviction, `databank cache flush`) before the load fills', async () => {
    const [x, y] = (await openAccounts(2)) as [number, number];
    const slow = await slowLoadOnB(x);
    expect((await transfer(0, x, y, 10)).status).toBe(201);
    // What FLUSHALL or an eviction does to the tombstone, from outside the app.
    const outside = new Redis(REDIS_URL as string, { maxRetriesPerRequest: 1 });
    try {
      expect(await outside.del((apps[0] as App).deps.cache.key('account', x))).toBe(1);
    } finally {
      outside.disconnect();
    }
    // A read through B that starts now, after the transfer was answered, finds no key while B's
    // old load is still running.
    const missesBefore = await accountMisses(apps[1] as App);
    const joined = get(1, x);
    await until('the read through B has looked at the cache', async () => (await accountMisses(apps[1] as App)) > missesBefore);
    slow.open();
    await slow.load;
    const wrong: string[] = [];
    const first = await joined;
    if (first.balance !== OPENING - 10) wrong.push(`read started after the transfer, during the old load: ${first.cache} ${first.balance}`);
    for (const instance of [0, 1]) {
      const later = await get(instance, x);
      if (later.balance !== OPENING - 10) wrong.push(`read through ${'AB'[instance]} after the old load ended: ${later.cache} ${later.balance}`);
    }
    expect(wrong).toEqual([]);
  });

  /**
   * Writers and readers through both instances for RUN_MS, then every read checked against the
   * ledger. `disturb`, when given, runs alongside until the end.
   */
  const runLoad = async (label: string, disturb?: (running: () => boolean) => Promise<number>) => {
    const ids = await openAccounts(ACCOUNTS);
    // Every account read through both instances: the cache starts warm and shared.
    for (const id of ids) {
      expect((await get(0, id)).cache).toBe('MISS');
      expect((await get(1, id)).cache).toBe('HIT');
    }
    const writes: Write[] = [];
    const reads: Read[] = [];
    const statuses = new Map<number, number>();
    const started = performance.now();
    const deadline = started + RUN_MS;
    const running = () => performance.now() < deadline;
    // Two accounts are written from the start; each other joins later, so that every account
    // goes from being served from the cache to being written while readers hammer it.
    const writableSince = (k: number) => (k < 2 ? 0 : ((k - 1) * RUN_MS) / ACCOUNTS);
    const writer = async (w: number) => {
      const random = rng(1_000 + w);
      for (let i = 0; running(); i++) {
        const elapsed = performance.now() - started;
        const writable = ids.filter((_, k) => writableSince(k) <= elapsed);
        const from = writable[Math.floor(random() * writable.length)] as number;
        let to = writable[Math.floor(random() * writable.length)] as number;
        if (to === from) to = writable[(writable.indexOf(from) + 1) % writable.length] as number;
        const instance = (w + i) % 2;
        const { status, body } = await transfer(instance, from, to, 1 + Math.floor(random() * 997));
        const answeredAt = performance.now();
        statuses.set(status, (statuses.get(status) ?? 0) + 1);
        if (status === 201) writes.push({ transferId: body.transfer_id as number, from, to, answeredAt });
      }
    };
    const reader = async (r: number) => {
      const random = rng(2_000 + r);
      for (let i = 0; running(); i++) {
        const account = ids[Math.floor(random() * ids.length)] as number;
        const instance = (r + i) % 2;
        const startedAt = performance.now();
        const res = await get(instance, account);
        const endedAt = performance.now();
        expect(res.status).toBe(200);
        reads.push({ account, startedAt, endedAt, balance: res.balance, cache: res.cache, instance });
      }
    };
    const [disturbances] = await Promise.all([
      disturb ? disturb(running) : Promise.resolve(0),
      ...Array.from({ length: WRITERS }, (_, w) => writer(w)),
      ...Array.from({ length: READERS }, (_, r) => reader(r)),
    ]);

    expect([...statuses.keys()].filter((s) => s !== 201)).toEqual([]);
    const histories = await ledgerHistories(apps[0] as App, ids);
    const { violations, checked } = findStaleReads(histories, writes, reads);
    const outcomes = (instance: number) => {
      const counts: Record<string, number> = {};
      for (const r of reads.filter((x) => x.instance === instance)) counts[r.cache] = (counts[r.cache] ?? 0) + 1;
      return counts;
    };
    const hits = reads.filter((r) => r.cache === 'HIT').length;
    console.log(
      `cache-staleness (${label}): ${writes.length} transfers, ${reads.length} reads (${checked} after a known write checked), ` +
        `HIT ${hits} / MISS ${reads.filter((r) => r.cache === 'MISS').length} / BYPASS ${reads.filter((r) => r.cache === 'BYPASS').length} ` +
        `(hit ratio ${(hits / reads.length).toFixed(3)}); instance A ${JSON.stringify(outcomes(0))}, ` +
        `instance B ${JSON.stringify(outcomes(1))}; ${disturb ? `${disturbances} flushes; ` : ''}${violations.length} stale reads`,
    );
    expect(violations.slice(0, 5)).toEqual([]);
    // Not vacuous, even on a slow machine.
    expect(writes.length).toBeGreaterThan(20);
    expect(checked).toBeGreaterThan(20);
    // Both instances served hits: the shared cache was really used.
    for (const instance of [0, 1]) expect(outcomes(instance).HIT ?? 0).toBeGreaterThan(0);

    // After the run the cache agrees with the database, through both instances.
    for (const id of ids) {
      const row = await (apps[0] as App).sql.db.selectFrom('accounts').select('balance').where('account_id', '=', id).executeTakeFirstOrThrow();
      for (const instance of [0, 1]) expect((await get(instance, id)).balance).toBe(row.balance);
    }
    const check = await checkLedger((apps[0] as App).sql.db);
    expect(check.mismatched).toEqual([]);
    expect(check.unbalanced).toEqual([]);
    expect(check.negative).toEqual([]);
    expect(check.total).toBe(opened * OPENING);
  };

  it(`${WRITERS} writers and ${READERS} readers through both instances for ${RUN_MS} ms: no read older than an answered write`, async () => {
    await runLoad('steady');
  });

});
