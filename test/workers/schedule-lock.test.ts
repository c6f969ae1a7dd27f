import { sql, type Kysely } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openSqlStore, type SqlStore } from '../../src/stores/sql/index.ts';
import { WorkerHost } from '../../src/workers/host.ts';
import { scheduled } from '../../src/workers/schedule.ts';
import { advisoryLock, scheduleLock, scheduleLockKey, SINGLE_PROCESS_LOCK } from '../../src/workers/schedule-lock.ts';
import { createTestDatabase, POSTGRES_UP, REQUIRE_SERVICES, type TestDatabase } from '../support/engines.ts';
import { captureLogger } from './support.ts';

function gate() {
  let open!: () => void;
  const opened = new Promise<void>((resolve) => (open = resolve));
  return { opened, open };
}

/** The advisory locks any session of the current database holds. */
async function advisoryLocks(store: SqlStore): Promise<number> {
  const r = await sql<{ n: number }>`
    select count(*)::int as n from pg_locks
    where locktype = 'advisory' and database = (select oid from pg_database where datname = current_database())`.execute(
    store.db,
  );
  return r.rows[0]?.n ?? -1;
}

describe('scheduleLockKey', () => {
  it('is a stable signed 64-bit key per name', () => {
    const key = BigInt(scheduleLockKey('idempotency-purge'));
    expect(scheduleLockKey('idempotency-purge')).toBe(key.toString());
    expect(key >= -(2n ** 63n) && key < 2n ** 63n).toBe(true);
    expect(scheduleLockKey('a')).not.toBe(scheduleLockKey('b'));
  });
});

describe('scheduleLock', () => {
  // The choice is made from the capability flag alone, so fakes of both kinds of store show it;
  // the advisory lock itself is proven on a server below.
  const db = {} as Kysely<unknown>;

  it('needs no lock on the embedded engine, whose data directory one process owns', async () => {
    const lock = scheduleLock({ db, capabilities: { multipleConnections: false } });
    expect(lock).toBe(SINGLE_PROCESS_LOCK);
    let runs = 0;
    const job = scheduled({ name: 'embedded', cron: '0 0 1 1 *', lock, run: async () => void runs++ });
    expect([await job.runNow(), await job.runNow(), runs]).toEqual(['succeeded', 'succeeded', 2]);
  });

  it('takes an advisory lock where several connections, and so several processes, may run', () => {
    expect(scheduleLock({ db, capabilities: { multipleConnections: true } })).not.toBe(SINGLE_PROCESS_LOCK);
  });
});

// Two pools on one database stand for two copies of the process: each holds its own sessions.
const needs = 'PostgreSQL only: set DATABASE_URL, e.g. postgres://postgres@127.0.0.1:5432/test';
describe.skipIf(!POSTGRES_UP && !REQUIRE_SERVICES)(`advisory schedule lock across processes (${POSTGRES_UP ? 'PostgreSQL' : `skipped: ${needs}`})`, () => {
  let db: TestDatabase;
  let one: SqlStore;
  let two: SqlStore;
  beforeAll(async () => {
    if (!POSTGRES_UP) throw new Error(`REQUIRE_SERVICES=1 but no PostgreSQL answers (${needs})`);
    db = await createTestDatabase('postgres', 'schedule-lock-processes');
    [one, two] = await Promise.all([openSqlStore(db.sql), openSqlStore(db.sql)]);
  });
  afterAll(async () => {
    await one?.close();
    await two?.close();
    await db?.drop();
  });

  it('two runners started for the same tick: exactly one runs, and the lock is released after', async () => {
    const { logger } = captureLogger();
    let runs = 0;
    const { opened, open } = gate();
    const job = (store: SqlStore) =>
      scheduled({
        name: 'purge',
        cron: '17 * * * *',
        lock: scheduleLock(store),
        run: async () => {
          runs++;
          await opened;
        },
      });
    const [a, b] = [job(one), job(two)];
    const hosts = [new WorkerHost([a], { logger }), new WorkerHost([b], { logger })];
    for (const host of hosts) host.start();
    const outcomes = [a.runNow(), b.runNow()];
    // The runner that holds the lock waits at the gate, so the first to answer is the one refused.
    expect(await Promise.race(outcomes)).toBe('skipped');
    expect(await advisoryLocks(one)).toBe(1);
    open();
    expect((await Promise.all(outcomes)).sort()).toEqual(['skipped', 'succeeded']);
    expect(runs).toBe(1);
    expect(hosts.flatMap((h) => h.states().map((s) => s.runs)).sort()).toEqual([0, 1]);
    expect(await advisoryLocks(one)).toBe(0);
    // Released, the lock lets either process run the next tick.
    expect([await b.runNow(), await a.runNow(), runs]).toEqual(['succeeded', 'succeeded', 3]);
    await Promise.all(hosts.map((h) => h.stop()));
  });

  it('releases the lock when the run fails, and does not hold other schedules back', async () => {
    const { opened, open } = gate();
    const started = gate();
    const holding = advisoryLock(one.db).tryRun('a', () => {
      started.open();
      return opened;
    });
    // The run starts only once the lock is held: from here on, 'a' is held by the other pool.
    await started.opened;
    // 'b' has a key of its own, so it runs while 'a' is held elsewhere.
    expect(await advisoryLock(two.db).tryRun('b', async () => undefined)).toBe(true);
    expect(await advisoryLock(two.db).tryRun('a', async () => undefined)).toBe(false);
    open();
    expect(await holding).toBe(true);
    await expect(advisoryLock(one.db).tryRun('a', () => Promise.reject(new Error('job failed')))).rejects.toThrow('job failed');
    expect(await advisoryLocks(one)).toBe(0);
    expect(await advisoryLock(two.db).tryRun('a', async () => undefined)).toBe(true);
  });
});
