import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ERRORS } from '../../src/domain/errors.ts';
import { customerKey, startTestApp, testDataDir, type TestApp } from '../support/app.ts';
import { ENGINES } from '../support/engines.ts';
import { fcParams } from '../support/property.ts';
import { until } from '../support/until.ts';

/**
 * The analytics routes (admins only): exact reports over the demo data and a few movements, the
 * refresh and its counts, the read-only SQL, 403 for a customer key, 400 with a catalog code for
 * bad parameters (never a 5xx), and the worker keeping the reports fresh from the event stream.
 */

type Headers = Record<string, string>;
const SLOW = { timeout: 120_000 } as const;
/** The first day of this month (UTC): the demo data and the test's movements are all in it. */
const MONTH = `${new Date().toISOString().slice(0, 7)}-01`;

describe.each(ENGINES)('analytics routes on %s', (engine) => {
  let t: TestApp;
  let customer: Headers;
  const call = (method: 'GET' | 'POST', url: string, headers: Headers, payload?: object) =>
    t.app.http.inject({ method, url, headers, ...(payload === undefined ? {} : { payload }) });

  beforeAll(async () => {
    // The timer is set an hour out: only the event stream can make the worker refresh in time.
    const dataDir = testDataDir();
    t = await startTestApp(engine, `analytics-api-${engine}`, {
      dataDir,
      analytics: { path: join(dataDir, 'analytics.duckdb'), refreshMs: 3_600_000 },
    });
    customer = await customerKey(t, 1);
  }, SLOW.timeout);
  afterAll(async () => t?.close());

  const balancesOf = async (by: string) => {
    const res = await call('GET', `/analytics/balances?by=${by}`, t.admin);
    expect(res.statusCode, res.body).toBe(200);
    return res.json<{ as_of: string | null; result: Array<Record<string, unknown>> }>();
  };

  it('the worker refreshes after money moves (the `analytics` group), without waiting for its timer', SLOW, async () => {
    // The timer's first run, at start, loads the demo data.
    await until(() => balancesOf('currency'), (b) => b.as_of !== null, { what: 'the refresh at start', timeoutMs: 30_000 });
    const deposit = await call('POST', '/accounts/1/deposits', t.admin, { amount: 1_000 });
    expect(deposit.statusCode).toBe(201);
    const fresh = await until(
      () => balancesOf('currency'),
      (b) => b.result[0]?.balance === 8_503 + 1_000,
      { what: 'the deposit in the balances report', timeoutMs: 30_000 },
    );
    expect(fresh.result).toEqual([{ currency: 'USD', accounts: 3, balance: 9_503 }]);
    expect(Date.parse(fresh.as_of as string)).toBeGreaterThanOrEqual(Date.parse(deposit.json<{ created_at: string }>().created_at));
  });

  it('POST /analytics/refresh answers the counts; at once again, zeros', SLOW, async () => {
    const opened = await call('POST', '/customers/2/accounts', t.admin, { account_type: 'savings', currency: 'EUR' });
    expect(opened.statusCode).toBe(201);
    const eur = opened.json<{ account_id: number }>().account_id;
    expect((await call('POST', `/accounts/${eur}/deposits`, t.admin, { amount: 250 })).statusCode).toBe(201);
    expect((await call('POST', '/transfers', t.admin, { from_account_id: 2, to_account_id: 3, amount: 100 })).statusCode).toBe(201);
    // Whatever the worker loaded already, after this refresh the copy holds everything.
    expect((await call('POST', '/analytics/refresh', t.admin)).statusCode).toBe(200);
    const again = await call('POST', '/analytics/refresh', t.admin);
    expect(again.statusCode).toBe(200);
    const body = again.json<Record<string, unknown>>();
    expect(body).toMatchObject({ customers: 0, accounts: 0, transactions: 0, entries: 0, pending_gaps: { transactions: 0, entries: 0 } });
    expect(Object.keys(body).sort()).toEqual(['accounts', 'as_of', 'customers', 'duration_ms', 'entries', 'pending_gaps', 'transactions', 'watermark']);
    const { count } = (await t.app.sql.db.selectFrom('ledger_transactions').select((eb) => eb.fn.countAll<number>().as('count')).executeTakeFirstOrThrow());
    expect(body.watermark).toMatchObject({ transactions: Number(count) });
  });

  it('GET /analytics/balances by account type and by currency: exact', async () => {
    // USD: 1500 + 4853 + 2150 opening deposits, the 1000 deposit; EUR: 250; the transfer nets out.
    const byType = await balancesOf('account_type');
    expect(byType.result).toEqual([
      { account_type: 'checking', currency: 'USD', accounts: 3, balance: 9_503 },
      { account_type: 'savings', currency: 'EUR', accounts: 1, balance: 250 },
    ]);
    expect((await balancesOf('currency')).result).toEqual([
      { currency: 'EUR', accounts: 1, balance: 250 },
      { currency: 'USD', accounts: 3, balance: 9_503 },
    ]);
    // The default grouping is by account type.
    const res = await call('GET', '/analytics/balances', t.admin);
    expect(res.json<{ result: unknown }>().result).toEqual(byType.result);
  });

  it('GET /analytics/volume per month and currency: exact; the range is checked', async () => {
    const res = await call('GET', '/analytics/volume?interval=month&from=2000-01-01&to=2100-12-31', t.admin);
    expect(res.statusCode, res.body).toBe(200);
    expect(res.json()).toMatchObject({
      interval: 'month',
      from: '2000-01-01',
      to: '2100-12-31',
      result: [
        { period: MONTH, currency: 'EUR', transactions: 1, entries: 2, volume: 250 },
        // 3 opening deposits, a deposit and a transfer: money moved 8503 + 1000 + 100.
        { period: MONTH, currency: 'USD', transactions: 5, entries: 10, volume: 9_603 },
      ],
    });
    const day = await call('GET', '/analytics/volume', t.admin);
    expect(day.statusCode).toBe(200);
    const today = new Date().toISOString().slice(0, 10);
    expect(day.json()).toMatchObject({ interval: 'day', to: today });
    const none = await call('GET', '/analytics/volume?interval=week&from=2001-01-01&to=2001-12-31', t.admin);
    expect(none.json()).toMatchObject({ interval: 'week', result: [] });
  });

  it('GET /analytics/top-accounts by balance and by volume', async () => {
    const res = await call('GET', '/analytics/top-accounts?limit=2', t.admin);
    expect(res.statusCode, res.body).toBe(200);
    expect(res.json()).toMatchObject({
      by: 'balance',
      limit: 2,
      result: [
        { account_id: 2, customer_id: 2, customer_name: 'Karen Johnson', account_type: 'checking', currency: 'USD', balance: 4_753, volume: 4_953, entries: 2 },
        { account_id: 1, customer_id: 1, customer_name: 'Brian Kim', account_type: 'checking', currency: 'USD', balance: 2_500, volume: 2_500, entries: 2 },
      ],
    });
    const byVolume = await call('GET', '/analytics/top-accounts?by=volume', t.admin);
    const rows = byVolume.json<{ limit: number; result: Array<{ account_id: number; volume: number }> }>();
    expect(rows.limit).toBe(10);
    expect(rows.result.map((r) => [r.account_id, r.volume])).toEqual([
      [2, 4_953],
      [1, 2_500],
      [3, 2_250],
      [4, 250],
    ]);
  });

  it('GET /analytics/books: Table 19 and the chapter\'s two queries', async () => {
    const res = await call('GET', '/analytics/books', t.admin);
    expect(res.statusCode).toBe(200);
    const body = res.json<{ books: unknown[]; queries: Array<{ sql: string; rows: unknown[] }> }>();
    expect(body.books).toHaveLength(4);
    expect(body.queries).toEqual([
      {
        sql: 'SELECT * FROM books WHERE year_published = 1993',
        rows: [
          { id: 2, title: 'Code Complete', genre: 'tech', year_published: 1993 },
          { id: 3, title: 'The Giver', genre: 'sci-fi', year_published: 1993 },
        ],
      },
      { sql: 'SELECT COUNT(*) FROM books WHERE year_published = 1993', rows: [{ 'count_star()': 2 }] },
    ]);
  });

  it('POST /analytics/sql runs one SELECT; anything else is 400 DATABANK_ERR_ANALYTICS_QUERY', async () => {
    const ok = await call('POST', '/analytics/sql', t.admin, { sql: 'select currency, sum(amount) as total from ledger_entries group by all order by 1' });
    expect(ok.statusCode, ok.body).toBe(200);
    expect(ok.json()).toMatchObject({
      columns: [
        { name: 'currency', type: 'VARCHAR' },
        { name: 'total', type: 'HUGEINT' },
      ],
      rows: [
        ['EUR', 0],
        ['USD', 0],
      ],
      row_count: 2,
      truncated: false,
    });
    for (const sql of ['insert into books values (9, \'a\', \'b\', 1)', 'select 1; select 2', "copy books to '/tmp/x.csv'", 'vacuum']) {
      const res = await call('POST', '/analytics/sql', t.admin, { sql });
      expect([sql, res.statusCode, res.json<{ code: string }>().code]).toEqual([sql, 400, 'DATABANK_ERR_ANALYTICS_QUERY']);
    }
  });

  it('a customer key gets 403 on every analytics route', async () => {
    for (const [method, url, body] of [
      ['POST', '/analytics/refresh', undefined],
      ['GET', '/analytics/balances', undefined],
      ['GET', '/analytics/volume', undefined],
      ['GET', '/analytics/top-accounts', undefined],
      ['GET', '/analytics/books', undefined],
      ['POST', '/analytics/sql', { sql: 'select 1' }],
    ] as const) {
      const res = await call(method, url, customer, body);
      expect([url, res.statusCode, res.json()]).toEqual([url, 403, { statusCode: 403, code: 'DATABANK_ERR_FORBIDDEN', message: ERRORS.DATABANK_ERR_FORBIDDEN.message }]);
    }
  });

  it('bad parameters are 400 with a catalog code', async () => {
    const cases: Array<[string, string, object | undefined, string, string?]> = [
      ['GET', '/analytics/balances?by=customer_name', undefined, 'DATABANK_ERR_VALIDATION'],
      ['GET', '/analytics/balances?group=currency', undefined, 'DATABANK_ERR_VALIDATION'],
      ['GET', '/analytics/volume?interval=year', undefined, 'DATABANK_ERR_VALIDATION'],
      ['GET', '/analytics/volume?from=2025-02-30', undefined, 'DATABANK_ERR_VALIDATION', 'from: must be a date YYYY-MM-DD that exists'],
      ['GET', '/analytics/volume?from=2025-1-01', undefined, 'DATABANK_ERR_VALIDATION'],
      ['GET', '/analytics/volume?from=2025-03-01&to=2025-02-01', undefined, 'DATABANK_ERR_VALIDATION', 'from: must not be after to'],
      ['GET', '/analytics/volume?interval=day&from=2000-01-01&to=2100-01-01', undefined, 'DATABANK_ERR_VALIDATION', 'from, to: at most 3660 periods of a day in one report'],
      ['GET', '/analytics/top-accounts?limit=0', undefined, 'DATABANK_ERR_VALIDATION'],
      ['GET', '/analytics/top-accounts?limit=101', undefined, 'DATABANK_ERR_VALIDATION'],
      ['GET', '/analytics/top-accounts?by=name', undefined, 'DATABANK_ERR_VALIDATION'],
      ['POST', '/analytics/sql', {}, 'DATABANK_ERR_VALIDATION'],
      ['POST', '/analytics/sql', { sql: '' }, 'DATABANK_ERR_VALIDATION'],
      ['POST', '/analytics/sql', { sql: 'select 1', max_rows: 0 }, 'DATABANK_ERR_VALIDATION'],
      ['POST', '/analytics/sql', { sql: 'select 1', extra: true }, 'DATABANK_ERR_VALIDATION'],
      ['POST', '/analytics/sql', { sql: `select ${'1+'.repeat(5_000)}1` }, 'DATABANK_ERR_VALIDATION'],
    ];
    for (const [method, url, body, code, message] of cases) {
      const res = await call(method as 'GET' | 'POST', url, t.admin, body);
      const answer = res.json<{ code: string; message: string }>();
      expect([url, res.statusCode, answer.code]).toEqual([url, 400, code]);
      if (message) expect(answer.message).toBe(message);
    }
  });

  it('whatever the query string or SQL text, never a 5xx', SLOW, async () => {
    const value = fc.oneof(fc.string({ maxLength: 12 }), fc.constantFrom('day', 'week', 'month', 'balance', 'volume', '2025-01-01', '1', '100'));
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom('/analytics/balances', '/analytics/volume', '/analytics/top-accounts', '/analytics/books'),
        fc.dictionary(fc.constantFrom('by', 'interval', 'from', 'to', 'limit', 'x'), value, { maxKeys: 3 }),
        fc.string({ maxLength: 60 }),
        async (path, query, text) => {
          const url = `${path}?${new URLSearchParams(query).toString()}`;
          const get = await call('GET', url, t.admin);
          expect(get.statusCode, `${url} ${get.body}`).toBeLessThan(500);
          const post = await call('POST', '/analytics/sql', t.admin, { sql: text || 'select 1' });
          expect(post.statusCode, `${text} ${post.body}`).toBeLessThan(500);
          if (post.statusCode >= 400) expect(post.json<{ code: string }>().code).toMatch(/^DATABANK_ERR_(ANALYTICS_QUERY|VALIDATION)$/);
        },
      ),
      fcParams(engine === 'pglite' ? 40 : 20),
    );
  });
});
