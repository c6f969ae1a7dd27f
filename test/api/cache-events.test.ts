import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApp, type App } from '../../src/app.ts';
import { testConfig } from '../support/app.ts';
import { createTestDatabase, POSTGRES_UP, REQUIRE_SERVICES, type TestDatabase } from '../support/engines.ts';
import { until } from '../support/until.ts';

/**
 * Two app processes on one PostgreSQL, each with its in-process cache (TTL 300 s): a change made
 * through one reaches the other's cache through the event stream (each process has a consumer
 * group of its own that drops what the events changed), not through the TTL.
 */
const needs = 'PostgreSQL only: set DATABASE_URL, e.g. postgres://postgres@127.0.0.1:5432/test';
describe.skipIf(!POSTGRES_UP && !REQUIRE_SERVICES)(`cache invalidation across processes (${POSTGRES_UP ? 'PostgreSQL' : `skipped: ${needs}`})`, () => {
  let db: TestDatabase;
  let a: App;
  let b: App;
  let admin: { authorization: string };

  beforeAll(async () => {
    if (!POSTGRES_UP) throw new Error(`REQUIRE_SERVICES=1 but no PostgreSQL answers (${needs})`);
    db = await createTestDatabase('postgres', 'cache-events');
    const logger = pino({ level: 'silent' });
    // A runs the relay; B only serves (serve --no-worker), with its own cache and cache group.
    a = await createApp(testConfig(db), { logger, defaultMetrics: false });
    b = await createApp(testConfig(db), { logger, defaultMetrics: false, bootstrap: false, worker: false });
    admin = { authorization: `Bearer ${a.bootstrapped?.adminKey}` };
    // The first start's own events (demo data) reach B's cache group after B started: let the
    // relay publish them and every group consume them, so they cannot drop an entry mid-test.
    const unpublished = async () =>
      Number((await a.sql.db.selectFrom('outbox').select((eb) => eb.fn.countAll<number>().as('n')).where('published_at', 'is', null).executeTakeFirstOrThrow()).n);
    await until(unpublished, (n) => n === 0, { what: 'the outbox drained' });
    const groups = async () => (await a.http.inject({ method: 'GET', url: '/events/groups', headers: admin })).json() as { groups: Array<{ lag: number }> };
    await until(groups, (g) => g.groups.length >= 3 && g.groups.every((x) => x.lag === 0), { what: 'every group caught up' });
  });
  afterAll(async () => {
    await b?.close();
    await a?.close();
    await db?.drop();
  });

  const read = async (app: App, url: string) => {
    const res = await app.http.inject({ method: 'GET', url, headers: admin });
    expect(res.statusCode).toBe(200);
    return { body: res.json(), cache: res.headers['x-cache'] };
  };

  it("a customer renamed through A is read fresh from B's cache, long before its TTL", async () => {
    const first = await read(b, '/customers/2');
    expect(first.body.name).toBe('Karen Johnson');
    expect((await read(b, '/customers/2')).cache).toBe('HIT');
    const renamed = await a.http.inject({ method: 'PATCH', url: '/customers/2', headers: admin, payload: { name: 'Karen Renamed' } });
    expect(renamed.statusCode).toBe(200);
    const fresh = await until(() => read(b, '/customers/2'), (r) => r.body.name === 'Karen Renamed', { what: "B's cache dropped customer 2" });
    expect(fresh.body.name).toBe('Karen Renamed');
  });

  it("a deposit through A shows in B's cached account and customer balance", async () => {
    const before = await read(b, '/accounts/3');
    expect((await read(b, '/accounts/3')).cache).toBe('HIT');
    const customer = await read(b, '/customers/3');
    const dep = await a.http.inject({ method: 'POST', url: '/accounts/3/deposits', headers: admin, payload: { amount: 25 } });
    expect(dep.statusCode).toBe(201);
    const account = await until(() => read(b, '/accounts/3'), (r) => r.body.balance === before.body.balance + 25, { what: 'account 3 fresh in B' });
    expect(account.body.balance).toBe(before.body.balance + 25);
    const fresh = await until(() => read(b, '/customers/3'), (r) => r.body.balance === customer.body.balance + 25, { what: 'customer 3 fresh in B' });
    expect(fresh.body.balances).toEqual({ USD: customer.body.balance + 25 });
  });
});
