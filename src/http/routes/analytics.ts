import { Type } from 'typebox';
import { BALANCE_GROUPINGS, INTERVALS, MAX_QUERY_ROWS, TOP_ORDERS } from '../../services/analytics/index.ts';
import { assertAdmin } from '../../services/access.ts';
import { principalOf } from '../auth.ts';
import type { HttpDeps } from '../deps.ts';
import { COMMON_ERRORS, ErrorBody, IsoDate, OneOf, Timestamp } from '../schemas.ts';
import type { TypedApp } from '../typed-app.ts';

const AsOf = Type.Union([Timestamp, Type.Null()], { description: 'the time of the PostgreSQL snapshot the last refresh read; null before the first' });
const ERRORS = { ...COMMON_ERRORS, 403: ErrorBody } as const;
const TAGS = ['analytics'];

const Refreshed = Type.Object({
  customers: Type.Integer({ description: 'customers new or changed' }),
  accounts: Type.Integer({ description: 'accounts new or changed' }),
  transactions: Type.Integer({ description: 'ledger transactions loaded' }),
  entries: Type.Integer({ description: 'ledger entries loaded' }),
  duration_ms: Type.Integer(),
  as_of: Timestamp,
  watermark: Type.Object({ transactions: Type.Integer(), entries: Type.Integer() }),
  pending_gaps: Type.Object({ transactions: Type.Integer(), entries: Type.Integer() }),
});

const BalancesQuery = Type.Object({ by: Type.Optional(OneOf(BALANCE_GROUPINGS)) }, { additionalProperties: false });
const Balances = Type.Object({
  as_of: AsOf,
  by: Type.String(),
  result: Type.Immutable(Type.Array(
    Type.Object({
      account_type: Type.Optional(Type.String()),
      currency: Type.String(),
      accounts: Type.Integer(),
      balance: Type.Integer({ description: 'the sum of the balances, in minor units of the currency' }),
    }),
  )),
});

const VolumeQuery = Type.Object(
  { interval: Type.Optional(OneOf(INTERVALS)), from: Type.Optional(IsoDate), to: Type.Optional(IsoDate) },
  { additionalProperties: false },
);
const Volume = Type.Object({
  as_of: AsOf,
  interval: Type.String(),
  from: Type.String(),
  to: Type.String(),
  result: Type.Immutable(Type.Array(
    Type.Object({
      period: Type.String({ description: 'the first day of the period, YYYY-MM-DD (UTC; weeks start on Monday)' }),
      currency: Type.String(),
      transactions: Type.Integer(),
      entries: Type.Integer(),
      volume: Type.Integer({ description: 'money moved: the sum of the positive ledger entries' }),
    }),
  )),
});

const TopQuery = Type.Object(
  {
    limit: Type.Optional(Type.String({ pattern: '^(100|[1-9][0-9]?)$', description: 'from 1 to 100' })),
    by: Type.Optional(OneOf(TOP_ORDERS)),
  },
  { additionalProperties: false },
);
const Top = Type.Object({
  as_of: AsOf,
  by: Type.String(),
  limit: Type.Integer(),
  result: Type.Immutable(Type.Array(
    Type.Object({
      account_id: Type.Integer(),
      customer_id: Type.Integer(),
      customer_name: Type.Union([Type.String(), Type.Null()]),
      account_type: Type.String(),
      currency: Type.String(),
      balance: Type.Integer(),
      volume: Type.Integer({ description: 'money in plus money out: the sum of the absolute amounts of its entries' }),
      entries: Type.Integer(),
    }),
  )),
});

const Books = Type.Object({
  as_of: AsOf,
  books: Type.Immutable(Type.Array(Type.Object({ id: Type.Integer(), title: Type.String(), genre: Type.String(), year_published: Type.Integer() }))),
  queries: Type.Immutable(
    Type.Array(Type.Object({ sql: Type.String(), rows: Type.Immutable(Type.Array(Type.Record(Type.String(), Type.Unknown()))) })),
  ),
});

const SqlBody = Type.Object(
  {
    sql: Type.String({ minLength: 1, maxLength: 10_000, description: 'one read-only SELECT on the analytics tables' }),
    max_rows: Type.Optional(Type.Integer({ minimum: 1, maximum: MAX_QUERY_ROWS, description: `rows returned at most (default 1000)` })),
  },
  { additionalProperties: false },
);
const SqlAnswer = Type.Object({
  as_of: AsOf,
  columns: Type.Immutable(Type.Array(Type.Object({ name: Type.String(), type: Type.String() }))),
  rows: Type.Immutable(Type.Array(Type.Immutable(Type.Array(Type.Unknown())))),
  row_count: Type.Integer(),
  truncated: Type.Boolean(),
  max_rows: Type.Integer(),
});

/**
 * The columnar reports (admins): `POST /analytics/refresh` loads what changed now, the `GET`s read
 * the DuckDB copy, `POST /analytics/sql` runs one read-only SELECT on it. A report while the file
 * is held too long by a refresh (here or in another process) is 503 DATABANK_ERR_UNAVAILABLE.
 */
export async function analyticsRoutes(app: TypedApp, deps: HttpDeps): Promise<void> {
  const analytics = deps.analytics;
  app.post('/analytics/refresh', { schema: { tags: TAGS, response: { 200: Refreshed, ...ERRORS } } }, async (request) => {
    assertAdmin(principalOf(request));
    return analytics.refresh();
  });
  app.get('/analytics/balances', { schema: { tags: TAGS, querystring: BalancesQuery, response: { 200: Balances, ...ERRORS } } }, async (request) => {
    assertAdmin(principalOf(request));
    return analytics.balances(request.query.by ?? 'account_type');
  });
  app.get('/analytics/volume', { schema: { tags: TAGS, querystring: VolumeQuery, response: { 200: Volume, ...ERRORS } } }, async (request) => {
    assertAdmin(principalOf(request));
    return analytics.volume(request.query);
  });
  app.get('/analytics/top-accounts', { schema: { tags: TAGS, querystring: TopQuery, response: { 200: Top, ...ERRORS } } }, async (request) => {
    assertAdmin(principalOf(request));
    const { limit, by } = request.query;
    return analytics.topAccounts({ limit: limit === undefined ? 10 : Number(limit), by });
  });
  app.get('/analytics/books', { schema: { tags: TAGS, response: { 200: Books, ...ERRORS } } }, async (request) => {
    assertAdmin(principalOf(request));
    return analytics.books();
  });
  app.post('/analytics/sql', { schema: { tags: TAGS, body: SqlBody, response: { 200: SqlAnswer, ...ERRORS } } }, async (request) => {
    assertAdmin(principalOf(request));
    return analytics.query(request.body.sql, { maxRows: request.body.max_rows });
  });
}
