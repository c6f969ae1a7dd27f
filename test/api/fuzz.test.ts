import fc from 'fast-check';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ERRORS } from '../../src/domain/errors.ts';
import { MAX_AMOUNT } from '../../src/domain/money.ts';
import { startTestApp, type TestApp } from '../support/app.ts';
import { ENGINES } from '../support/engines.ts';
import { fcParams } from '../support/property.ts';

/**
 * Property-based fuzzing of the HTTP boundary with the admin key: whatever arrives (odd ids,
 * queries, bodies, headers, content types, methods), the answer is never a 5xx, every error is
 * a catalog error whose `statusCode` is the HTTP status, and the money adds up afterwards.
 */

type Response = Awaited<ReturnType<TestApp['app']['http']['inject']>>;
type HttpMethod = 'GET' | 'POST' | 'PATCH' | 'PUT' | 'DELETE' | 'OPTIONS' | 'HEAD';

interface FuzzRequest {
  readonly method: HttpMethod;
  readonly url: string;
  readonly headers: Record<string, string>;
  readonly payload?: string;
}

/**
 * Runs per property. The seed is fixed (test/support/property.ts), so every run replays the same
 * requests: 100 on PGlite and 50 on a PostgreSQL server cover each route's arbitraries many times
 * over; FC_SEED explores other requests and FC_RUNS more of them.
 */
const RUNS: Record<string, number> = { pglite: 100, postgres: 50 };

// ---------------------------------------------------------------------------------------------
// The response contract
// ---------------------------------------------------------------------------------------------

const ERROR_KEYS = new Set(['statusCode', 'code', 'message', 'request_id']);

function describeRequest(req: FuzzRequest): string {
  const payload = req.payload === undefined ? '' : ` ${req.payload.slice(0, 300)}`;
  // Keys are per test database, but keep their secrets out of failure messages anyway.
  const headers = JSON.stringify(req.headers).replace(/(dbk_[0-9a-f]{16}_)[A-Za-z0-9_-]{43}/g, '$1<secret>');
  return `${req.method} ${req.url} ${headers}${payload}`;
}

/** Never a 5xx; every error is JSON from the catalog with `statusCode` equal to the HTTP status. */
function checkResponse(req: FuzzRequest, res: Response): void {
  const what = describeRequest(req);
  expect(res.statusCode, `${what} -> ${res.statusCode} ${res.body.slice(0, 300)}`).toBeLessThan(500);
  expect(res.statusCode, what).toBeGreaterThanOrEqual(200);
  if (req.method === 'HEAD') {
    expect(res.body, what).toBe('');
    return;
  }
  if (res.statusCode >= 400) {
    expect(res.headers['content-type'], what).toMatch(/^application\/json/);
    const body = JSON.parse(res.body) as Record<string, unknown>;
    expect(body.statusCode, `${what} -> ${res.body}`).toBe(res.statusCode);
    const code = body.code;
    expect(typeof code === 'string' && code.startsWith('DATABANK_ERR_') && Object.hasOwn(ERRORS, code), `${what} -> ${res.body}`).toBe(true);
    expect(ERRORS[code as keyof typeof ERRORS].status, what).toBe(res.statusCode);
    expect(typeof body.message === 'string' && body.message.length > 0, what).toBe(true);
    expect(Object.keys(body).filter((k) => !ERROR_KEYS.has(k)), what).toEqual([]);
    return;
  }
  const path = req.url.split('?')[0];
  if (path !== '/metrics') {
    expect(res.headers['content-type'], what).toMatch(/^application\/json/);
    expect(() => JSON.parse(res.body) as unknown, what).not.toThrow();
  }
}

/** JSON text with sorted keys, of the value as the server parses it: equal requests, equal text. */
function canonical(value: unknown): string {
  const sort = (v: unknown): unknown => {
    if (Array.isArray(v)) return v.map(sort);
    if (v && typeof v === 'object') {
      return Object.fromEntries(
        Object.entries(v as Record<string, unknown>)
          .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
          .map(([k, x]) => [k, sort(x)]),
      );
    }
    return v;
  };
  const text = JSON.stringify(value);
  return text === undefined ? 'undefined' : JSON.stringify(sort(JSON.parse(text)));
}

/**
 * True when the server's JSON parser refuses this text although it is valid JSON: Fastify parses
 * with prototype poisoning protection, which refuses an object with an own `__proto__` key, or a
 * `constructor` key holding an object with a `prototype` key, anywhere in the body. The server
 * answers those, like text that is not JSON at all, with 400 DATABANK_ERR_MALFORMED_BODY
 * (docs/errors.md) before any handler runs, so nothing is recorded under an Idempotency-Key.
 */
function refusedByParser(text: string): boolean {
  let poisoned = false;
  const visit = (v: unknown): void => {
    if (Array.isArray(v)) {
      v.forEach(visit);
      return;
    }
    if (!v || typeof v !== 'object') return;
    if (Object.hasOwn(v, '__proto__')) poisoned = true;
    const ctor = Object.hasOwn(v, 'constructor') ? (v as { constructor: unknown }).constructor : null;
    if (ctor !== null && typeof ctor === 'object' && Object.hasOwn(ctor, 'prototype')) poisoned = true;
    for (const x of Object.values(v)) visit(x);
  };
  try {
    visit(JSON.parse(text));
  } catch {
    return true;
  }
  return poisoned;
}

// ---------------------------------------------------------------------------------------------
// Arbitraries
// ---------------------------------------------------------------------------------------------

/** Characters a real HTTP header value can carry (Node reads bytes 0x80-0xff as latin1). */
const headerChar = fc
  .oneof(fc.integer({ min: 0x20, max: 0x7e }), fc.integer({ min: 0x80, max: 0xff }), fc.constant(0x09))
  .map((c) => String.fromCharCode(c));
const headerText = (maxLength: number) => fc.string({ unit: headerChar, maxLength });

/** Values of the wrong type, at the edges, or just odd. */
const junkValue: fc.Arbitrary<unknown> = fc.oneof(
  fc.constantFrom(
    0, -0, -1, 1.5, -0.5, 0.1, 1e-7, MAX_AMOUNT, MAX_AMOUNT + 1, 2 ** 31, 2 ** 53, 2 ** 53 + 2, 2 ** 62,
    Number.MAX_SAFE_INTEGER, Number.MIN_SAFE_INTEGER, 1e15, 1e308, -1e308, Number.MAX_VALUE, Number.MIN_VALUE,
    '1', '100', '-1', '1e3', '0x10', '', ' ', 'null', 'true', '\u0000', '\uD800', '💰', 'ü', 'NaN',
    true, false, null, [], {}, [1], { amount: 1 }, { $gt: 0 }, [null],
  ),
  fc.integer(),
  fc.double(),
  fc.string({ unit: 'binary', maxLength: 20 }),
  fc.jsonValue({ maxDepth: 2 }),
);

/** Mostly ids that exist (the demo accounts and customers are 1..3), sometimes ones made since. */
const smallId = fc.oneof({ weight: 4, arbitrary: fc.integer({ min: 1, max: 3 }) }, { weight: 1, arbitrary: fc.integer({ min: 1, max: 12 }) });
const idValue = fc.oneof({ weight: 6, arbitrary: smallId }, { weight: 1, arbitrary: junkValue });
const amountValue = fc.oneof(
  { weight: 6, arbitrary: fc.integer({ min: 1, max: 3000 }) },
  { weight: 1, arbitrary: fc.constantFrom(MAX_AMOUNT, MAX_AMOUNT - 1, MAX_AMOUNT + 1, 1) },
  { weight: 2, arbitrary: junkValue },
);
const nameValue = fc.oneof(
  { weight: 4, arbitrary: fc.string({ unit: 'grapheme', minLength: 1, maxLength: 40 }) },
  { weight: 1, arbitrary: fc.string({ unit: 'binary', maxLength: 140 }) },
  {
    weight: 2,
    arbitrary: fc.constantFrom(
      '', ' ', '\t', 'a\u0000b', 'a\nb', '\u007f', '\u00a0', '\u2028', 'x'.repeat(128), 'x'.repeat(129),
      '💰'.repeat(128), '💰'.repeat(129), 'e\u0301'.repeat(64), "Robert'); DROP TABLE customers;--", '\uD800', '\uDFFFz',
    ),
  },
  { weight: 1, arbitrary: junkValue },
);
const dateText = fc.oneof(
  fc
    .date({ min: new Date('1900-01-01T00:00:00Z'), max: new Date('2020-12-31T00:00:00Z'), noInvalidDate: true })
    .map((d) => d.toISOString().slice(0, 10)),
  fc
    .tuple(fc.integer({ min: 0, max: 9999 }), fc.integer({ min: 0, max: 13 }), fc.integer({ min: 0, max: 32 }))
    .map(([y, m, d]) => `${String(y).padStart(4, '0')}-${String(m).padStart(2, '0')}-${String(d).padStart(2, '0')}`),
  fc.constantFrom('1990-01-01', '1900-01-01', '1899-12-31', '2023-02-29', '2024-02-29', '9999-12-31', '0000-00-00', '0000-01-01', '0001-01-01', '1990-1-1', '19900101', '1990-01-01T00:00:00Z', ''),
  fc.string({ maxLength: 12 }),
);
const dateValue = fc.oneof({ weight: 5, arbitrary: dateText }, { weight: 1, arbitrary: junkValue });
const referenceValue = fc.oneof(
  { weight: 4, arbitrary: fc.stringMatching(/^[\x21-\x7e]{1,20}$/) },
  { weight: 1, arbitrary: fc.constantFrom('', ' ', 'a b', 'x'.repeat(128), 'x'.repeat(129), 'ü', 'fee\u0000', "'; --") },
  { weight: 1, arbitrary: junkValue },
);

/** An object made of the given fields, each maybe left out, maybe with extra properties. */
function objectOf(fields: Record<string, fc.Arbitrary<unknown>>): fc.Arbitrary<unknown> {
  return fc
    .tuple(
      fc.record(fields, { requiredKeys: [] }),
      fc.option(fc.dictionary(fc.string({ maxLength: 12 }), junkValue, { maxKeys: 2 }), { freq: 5 }),
    )
    .map(([base, extra]) => (extra === null ? base : { ...extra, ...base }));
}

/** Mostly complete, valid-looking bodies, so that many requests do get through and move money. */
function nearValid(fields: Record<string, fc.Arbitrary<unknown>>, required: string[]): fc.Arbitrary<unknown> {
  const full = fc.record(fields, { requiredKeys: required });
  return fc.oneof({ weight: 3, arbitrary: full }, { weight: 2, arbitrary: objectOf(fields) });
}

const BODIES = {
  createCustomer: nearValid({ name: nameValue, date_of_birth: dateValue }, ['name', 'date_of_birth']),
  updateCustomer: nearValid({ name: nameValue }, []),
  openAccount: nearValid(
    {
      account_type: fc.oneof(
        { weight: 4, arbitrary: fc.constantFrom('checking', 'savings') },
        { weight: 1, arbitrary: fc.constantFrom('CHECKING', 'loan', '', 'checking ') },
        { weight: 1, arbitrary: junkValue },
      ),
      currency: fc.oneof(
        { weight: 4, arbitrary: fc.constantFrom('USD', 'EUR', 'GBP') },
        { weight: 1, arbitrary: fc.constantFrom('usd', 'JPY', 'US', '', 'USDX') },
        { weight: 1, arbitrary: junkValue },
      ),
    },
    ['account_type'],
  ),
  amount: nearValid({ amount: amountValue }, ['amount']),
  transfer: nearValid(
    { from_account_id: idValue, to_account_id: idValue, amount: amountValue },
    ['from_account_id', 'to_account_id', 'amount'],
  ),
  fee: nearValid({ amount: amountValue, reference: referenceValue }, ['amount', 'reference']),
} as const;

/** Payloads that are not the JSON a route wants, or not JSON at all. */
const rawPayload = fc.oneof(
  fc.constantFrom(
    '{', '}', '[', ']', 'null', 'true', '1', '"x"', '[]', '{}', ' ', '\n', 'NaN', 'undefined',
    '{"amount":1,}', "{'amount':1}", '{"amount":1}{"amount":1}', '\uFEFF{"amount":1}', '{"amount":1} x',
    '{"__proto__":{"amount":1}}', '{"constructor":{"prototype":{"amount":1}}}', '{"amount":NaN}',
    '{"amount":1e400}', '{"amount":-0}', '{"amount":1.0}', '{"amount":1E0}', '{"amount":0x10}', '{"amount":01}',
    '{"amount":"1"}', '{"amount":1,"amount":2}', '{"amount":1e-400}', '{"\\u0000":1}', '{"a":"\\ud800"}',
    '{"amount":100000000000000000000000000000000000000001}', '[{"amount":1}]', '"{\\"amount\\":1}"',
  ),
  fc.string({ unit: 'binary', maxLength: 60 }),
  fc.jsonValue({ maxDepth: 3 }).map((v) => JSON.stringify(v)),
  fc.anything({ maxDepth: 2 }).map((v) => JSON.stringify(v) ?? 'undefined'),
  fc.nat({ max: 3 }).map((n) => [`{"amount":"${'x'.repeat(70_000)}"}`, `[${'1,'.repeat(40_000)}1]`, `${'['.repeat(5_000)}${']'.repeat(5_000)}`, `{"a":${'{"a":'.repeat(2_000)}1${'}'.repeat(2_001)}`][n] as string),
);

const contentType = fc.oneof(
  { weight: 12, arbitrary: fc.constant('application/json') },
  {
    weight: 3,
    arbitrary: fc.constantFrom(
      undefined, 'application/json; charset=utf-8', 'application/json;charset=UTF-8', 'APPLICATION/JSON',
      'Application/Json', 'application/json; charset=latin1', 'application/json; charset=utf-16', 'application/json; foo=bar',
      'application/json;', 'application/jsonx', 'application/vnd.api+json', 'application/problem+json', 'text/json',
      'text/plain', 'text/plain; charset=utf-8', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x',
      'application/octet-stream', '*/*', '', ';', 'application/json, text/plain', 'json',
    ),
  },
  { weight: 1, arbitrary: headerText(40) },
);

const idempotencyKey = fc.oneof(
  { weight: 3, arbitrary: fc.stringMatching(/^[\x21-\x7e]{1,40}$/) },
  { weight: 1, arbitrary: fc.constantFrom('', ' ', 'a b', 'k'.repeat(255), 'k'.repeat(256), 'ü', 'key\t', '\u00ff') },
  { weight: 1, arbitrary: headerText(300) },
);

const extraHeaders: fc.Arbitrary<Record<string, string>> = fc
  .record(
    {
      'idempotency-key': idempotencyKey,
      'x-request-id': fc.oneof(fc.stringMatching(/^[A-Za-z0-9._:-]{1,64}$/), headerText(80)),
      accept: fc.constantFrom('application/json', 'text/html', '*/*', 'application/xml', ''),
      'accept-encoding': fc.constantFrom('gzip', 'identity', 'br, gzip', '*'),
      'x-http-method-override': fc.constantFrom('DELETE', 'GET', 'PUT'),
    },
    { requiredKeys: [] },
  )
  .map((h) => Object.fromEntries(Object.entries(h).filter((e): e is [string, string] => e[1] !== undefined)));

/** A path segment where an id goes: valid, edge, wrong type, unicode, percent-encoded. */
const idSegment = fc.oneof(
  { weight: 8, arbitrary: smallId.map(String) },
  {
    weight: 3,
    arbitrary: fc
      .constantFrom(
        '0', '-1', '01', '+1', ' 1', '1 ', '1.0', '1.5', '1e3', '0x1', '999999', '999999999999999', '1000000000000000',
        '9007199254740993', '9223372036854775807', '9223372036854775808', '99999999999999999999', 'NaN', 'Infinity',
        'null', 'undefined', 'true', '[1]', '{}', '..', '.', 'abc', '💰', '١', '１', '1\u0000', '\u0000', '1;DROP TABLE customers',
        "1' or '1'='1", '%', '1/2', '?', '#', '~', '*',
      )
      .map(encodeURIComponent),
  },
  { weight: 1, arbitrary: fc.constantFrom('%31', '%2e%2e', '%2F', '%252F', '1%2F2', '%F0%9F%92%B0', '%E2%82%AC', '%C3%BC') },
  { weight: 2, arbitrary: fc.bigInt({ min: -(2n ** 70n), max: 2n ** 70n }).map(String) },
  { weight: 2, arbitrary: fc.string({ unit: 'grapheme', minLength: 1, maxLength: 10 }).map(encodeURIComponent) },
  { weight: 1, arbitrary: fc.string({ unit: 'binary-ascii', minLength: 1, maxLength: 16 }).map(encodeURIComponent) },
);

const queryValue = fc.oneof(
  fc.integer({ min: -5, max: 120 }).map(String),
  fc.constantFrom('', '100', '101', '0', '01', '1.5', '1e2', ' 5', 'all', 'null', '2000-01-01', '2023-02-29', '0099-01-01'),
  dateText,
  fc.oneof(fc.bigInt({ min: -(2n ** 64n), max: 2n ** 64n }), fc.string({ maxLength: 12 })).map((v) => Buffer.from(`id:${v}`).toString('base64url')),
  fc.stringMatching(/^[A-Za-z0-9_-]{1,70}$/),
  fc.string({ unit: 'binary', maxLength: 20 }),
);
const queryString = fc.oneof(
  { weight: 2, arbitrary: fc.constant('') },
  {
    weight: 6,
    arbitrary: fc
      .array(
        fc.tuple(
          fc.oneof(
            fc.constantFrom('limit', 'cursor', 'born_after', 'limit', 'cursor', 'x', '__proto__', 'constructor', 'limit[]', 'LIMIT', ''),
            fc.string({ maxLength: 8 }),
          ),
          queryValue,
        ),
        { maxLength: 4 },
      )
      .map((pairs) => `?${pairs.map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`).join('&')}`),
  },
  { weight: 1, arbitrary: fc.constantFrom('?', '?&&', '?=', '?limit', '?limit=%', '?limit=%zz', '?cursor=%FF', '?limit=1&limit=2', '?limit=1#x', '?a[b]=1', '?limit=1%00') },
);

/** How the body travels: a JSON text of a value, or a raw payload; with some content type. */
function payloadOf(structured: fc.Arbitrary<unknown>): fc.Arbitrary<{ payload?: string; contentType?: string }> {
  const payload = fc.oneof(
    { weight: 10, arbitrary: structured.map((v) => JSON.stringify(v) as string | undefined) },
    { weight: 1, arbitrary: fc.anything({ maxDepth: 2 }).map((v) => JSON.stringify(v) as string | undefined) },
    { weight: 2, arbitrary: rawPayload },
    { weight: 1, arbitrary: fc.constant(undefined) },
  );
  return fc.tuple(payload, contentType).map(([p, ct]) => ({
    ...(p === undefined ? {} : { payload: p }),
    ...(ct === undefined ? {} : { contentType: ct }),
  }));
}

interface RouteSpec {
  readonly method: HttpMethod;
  readonly path: string;
  readonly body?: fc.Arbitrary<unknown>;
}

const ROUTES: readonly RouteSpec[] = [
  { method: 'GET', path: '/customers' },
  { method: 'POST', path: '/customers', body: BODIES.createCustomer },
  { method: 'GET', path: '/customers/:id' },
  { method: 'PATCH', path: '/customers/:id', body: BODIES.updateCustomer },
  { method: 'POST', path: '/customers/:id/accounts', body: BODIES.openAccount },
  { method: 'GET', path: '/customers/:id/accounts' },
  { method: 'GET', path: '/accounts/:id' },
  { method: 'GET', path: '/accounts/:id/entries' },
  { method: 'POST', path: '/accounts/:id/deposits', body: BODIES.amount },
  { method: 'POST', path: '/accounts/:id/withdrawals', body: BODIES.amount },
  { method: 'POST', path: '/transfers', body: BODIES.transfer },
  { method: 'POST', path: '/fees', body: BODIES.fee },
  { method: 'GET', path: '/metrics' },
  { method: 'GET', path: '/openapi.json' },
  { method: 'GET', path: '/healthz' },
  { method: 'GET', path: '/readyz' },
];

/** Mostly the admin key; now and then a refused or unusually spelled one. */
const authorization = (adminKey: string) =>
  fc.oneof(
    { weight: 20, arbitrary: fc.constant(`Bearer ${adminKey}`) },
    {
      weight: 1,
      arbitrary: fc.constantFrom(undefined, '', 'Bearer', adminKey, `bearer ${adminKey}`, `Bearer  ${adminKey}  `, `Bearer ${adminKey}x`, 'Basic YTpi'),
    },
    { weight: 1, arbitrary: headerText(80) },
  );

/** A request for one route: random id, query, body, content type and headers. */
function requestFor(route: RouteSpec, admin: string): fc.Arbitrary<FuzzRequest> {
  const body = route.body ?? fc.oneof(fc.constant(undefined), fc.jsonValue({ maxDepth: 1 }));
  return fc
    .record({
      id: idSegment,
      query: queryString,
      body: payloadOf(body),
      headers: extraHeaders,
      auth: authorization(admin),
      sendBodyOnGet: fc.boolean(),
    })
    .map(({ id, query, body: b, headers, auth, sendBodyOnGet }) => {
      const all: Record<string, string> = { ...headers };
      // Properties share the seed, so they would draw the same keys: one route's valid keys must
      // not be another's (a reused key is a 422 and moves nothing, emptying the property).
      const key = all['idempotency-key'];
      if (key !== undefined && /^[\x21-\x7e]{1,40}$/.test(key)) all['idempotency-key'] = `${route.method}${route.path}:${key}`;
      if (auth !== undefined) all.authorization = auth;
      const withBody = route.method !== 'GET' || sendBodyOnGet;
      if (withBody && b.contentType !== undefined) all['content-type'] = b.contentType;
      return {
        method: route.method,
        url: `${route.path.replace(':id', id)}${query}`,
        headers: all,
        ...(withBody && b.payload !== undefined ? { payload: b.payload } : {}),
      };
    });
}

const anyMethod = fc.constantFrom<HttpMethod>('GET', 'POST', 'PATCH', 'PUT', 'DELETE', 'OPTIONS', 'HEAD');
const pathSegment = fc.oneof(
  fc.constantFrom('customers', 'accounts', 'transfers', 'fees', 'metrics', 'openapi.json', 'healthz', 'readyz', 'entries', 'deposits', 'withdrawals', 'admin', '..', '.', '', 'docs', 'api', 'v1'),
  idSegment,
  fc.string({ unit: 'grapheme', minLength: 1, maxLength: 6 }).map(encodeURIComponent),
);
const unknownRequest = (admin: string): fc.Arbitrary<FuzzRequest> =>
  fc
    .record({
      method: anyMethod,
      segments: fc.array(pathSegment, { minLength: 0, maxLength: 5 }),
      trailingSlash: fc.boolean(),
      query: queryString,
      body: payloadOf(fc.jsonValue({ maxDepth: 2 })),
      auth: authorization(admin),
    })
    .map(({ method, segments, trailingSlash, query, body, auth }) => {
      const headers: Record<string, string> = {};
      if (auth !== undefined) headers.authorization = auth;
      const hasBody = method !== 'GET' && method !== 'HEAD' && body.payload !== undefined;
      if (hasBody && body.contentType !== undefined) headers['content-type'] = body.contentType;
      return {
        method,
        url: `/${segments.join('/')}${trailingSlash && segments.length > 0 ? '/' : ''}${query}`,
        headers,
        ...(hasBody ? { payload: body.payload } : {}),
      };
    });

/** A money request that passes the schema often: for replay checks under one Idempotency-Key. */
const moneyRequest = fc.oneof(
  fc.record({ kind: fc.constantFrom('deposits', 'withdrawals'), id: smallId, body: BODIES.amount }).map(({ kind, id, body }) => ({
    url: `/accounts/${id}/${kind}`,
    body,
  })),
  BODIES.transfer.map((body) => ({ url: '/transfers', body })),
  BODIES.fee.map((body) => ({ url: '/fees', body })),
);

// ---------------------------------------------------------------------------------------------

for (const engine of ENGINES) {
  describe(engine, () => {
    const numRuns = RUNS[engine] ?? 50;
    let t: TestApp;

    const send = async (req: FuzzRequest): Promise<Response> =>
      t.app.http.inject({
        method: req.method,
        url: req.url,
        headers: req.headers,
        ...(req.payload === undefined ? {} : { payload: req.payload }),
      });

    const fuzz = (arb: fc.Arbitrary<FuzzRequest>, runs = numRuns) =>
      fc.assert(
        fc.asyncProperty(arb, async (req) => {
          checkResponse(req, await send(req));
        }),
        fcParams(runs),
      );

    beforeAll(async () => {
      t = await startTestApp(engine, 'api-fuzz');
    });

    afterAll(async () => {
      await t?.close();
    });

    /** The kind of ledger transaction a route makes, for the routes that move money. */
    const MOVES: Record<string, string> = {
      '/accounts/:id/deposits': 'deposit',
      '/accounts/:id/withdrawals': 'withdrawal',
      '/transfers': 'transfer',
    };

    // Each property stands alone: it needs only the demo data (customers and accounts 1..3) and
    // accepts whatever balances earlier tests left; the money must add up after each one.
    for (const route of ROUTES) {
      it(`${route.method} ${route.path}: random ids, queries, bodies and headers; the money adds up after`, async () => {
        const kind = MOVES[route.path];
        const before = kind ? ((await movementsByKind())[kind] ?? 0) : 0;
        await fuzz(requestFor(route, t.adminKey));
        await checkMoney();
        // The invariant is not vacuous: the fuzzing of a money route did move money that way.
        if (kind) expect((await movementsByKind())[kind] ?? 0, kind).toBeGreaterThan(before);
      });
    }

    it('unknown paths and methods', async () => {
      await fuzz(unknownRequest(t.adminKey), numRuns * 2);
    });

    it('the same request under the same Idempotency-Key answers the same; another request under it is refused', async () => {
      let n = 0;
      await fc.assert(
        fc.asyncProperty(moneyRequest, moneyRequest, async (first, other) => {
          const key = `fuzz-${engine}-${n++}-${Date.now()}`;
          const req = (r: { url: string; body: unknown }): FuzzRequest => ({
            method: 'POST',
            url: r.url,
            headers: { authorization: `Bearer ${t.adminKey}`, 'content-type': 'application/json', 'idempotency-key': key },
            payload: JSON.stringify(r.body),
          });
          const malformed = { statusCode: 400, code: 'DATABANK_ERR_MALFORMED_BODY' };
          const a = await send(req(first));
          checkResponse(req(first), a);
          const b = await send(req(first));
          checkResponse(req(first), b);
          expect([b.statusCode, b.json()]).toEqual([a.statusCode, a.json()]);
          if (refusedByParser(JSON.stringify(first.body))) {
            // Refused by the parser, before the handler: exactly the malformed-body answer, never recorded.
            expect(a.json()).toMatchObject(malformed);
            expect(b.headers['idempotent-replayed']).toBeUndefined();
            return;
          }
          if (b.headers['idempotent-replayed'] !== 'true') {
            // Not recorded: only a request refused by the schema, before its handler ran, is not.
            expect([a.statusCode, a.json<{ code: string }>().code]).toEqual([400, 'DATABANK_ERR_VALIDATION']);
            return;
          }
          const c = await send(req(other));
          checkResponse(req(other), c);
          if (refusedByParser(JSON.stringify(other.body))) {
            // The parser refuses it before the key is looked up.
            expect(c.json()).toMatchObject(malformed);
          } else if (other.url === first.url && canonical(other.body) === canonical(first.body)) {
            expect([c.statusCode, c.json()]).toEqual([a.statusCode, a.json()]);
          } else if (c.statusCode !== 400 || c.json<{ code: string }>().code !== 'DATABANK_ERR_VALIDATION') {
            expect([c.statusCode, c.json<{ code: string }>().code]).toEqual([422, 'DATABANK_ERR_IDEMPOTENCY_KEY_REUSED']);
          }
        }),
        fcParams(numRuns),
      );
      await checkMoney();
    });

    /** The money adds up, whatever the fuzzing did: read from the store and through the API. */
    async function checkMoney(): Promise<void> {
      const db = t.app.sql.db;
      const totals = await sql<{ balances: number; entries: number; all_entries: number; n: number }>`
        select
          (select coalesce(sum(balance), 0) from accounts) as balances,
          (select coalesce(sum(amount), 0) from ledger_entries where account_id is not null) as entries,
          (select coalesce(sum(amount), 0) from ledger_entries) as all_entries,
          (select count(*) from accounts)::bigint as n
      `.execute(db);
      const total = totals.rows[0];
      expect(total).toBeDefined();
      expect(total?.balances).toBe(total?.entries);
      expect(total?.all_entries).toBe(0);

      const perAccount = await sql<{ account_id: number; balance: number; entries: number }>`
        select a.account_id, a.balance, coalesce(sum(e.amount), 0) as entries
        from accounts a left join ledger_entries e on e.account_id = a.account_id
        group by a.account_id, a.balance
        order by a.account_id
      `.execute(db);
      expect(perAccount.rows.length).toBe(total?.n);
      for (const row of perAccount.rows) {
        expect(row.balance, `account ${row.account_id}`).toBe(row.entries);
        expect(row.balance, `account ${row.account_id}`).toBeGreaterThanOrEqual(0);
      }
      const unbalanced = await sql<{ transaction_id: number }>`
        select transaction_id from ledger_entries group by transaction_id having sum(amount) <> 0 or count(*) < 2
      `.execute(db);
      expect(unbalanced.rows).toEqual([]);

      // The API reports what the store holds.
      for (const row of perAccount.rows) {
        const res = await t.app.http.inject({ method: 'GET', url: `/accounts/${row.account_id}`, headers: t.admin });
        expect([res.statusCode, res.json<{ balance: number }>().balance]).toEqual([200, row.balance]);
      }
    }

    /** Ledger transactions of each kind so far (the demo data's opening balances left out). */
    async function movementsByKind(): Promise<Record<string, number>> {
      const kinds = await sql<{ kind: string; n: number }>`
        select kind, count(*)::bigint as n from ledger_transactions where reference is distinct from 'opening-balance' group by kind
      `.execute(t.app.sql.db);
      return Object.fromEntries(kinds.rows.map((r) => [r.kind, Number(r.n)]));
    }

    // Cases the fuzzing once found, kept as plain examples.

    it('a badly percent-encoded path answers a catalog error', async () => {
      for (const url of ['/customers/%E0%A4%A', '/accounts/%zz', '/customers/%']) {
        const req: FuzzRequest = { method: 'GET', url, headers: t.admin };
        checkResponse(req, await send(req));
      }
    });

    it('a path id over 100 characters answers a catalog error', async () => {
      const req: FuzzRequest = { method: 'GET', url: `/customers/${'1'.repeat(101)}`, headers: t.admin };
      checkResponse(req, await send(req));
    });

    it('an invalid Idempotency-Key answers DATABANK_ERR_IDEMPOTENCY_KEY_INVALID', async () => {
      for (const key of ['', 'a b', 'k'.repeat(256), 'ü']) {
        const res = await send({
          method: 'POST',
          url: '/accounts/1/deposits',
          headers: { ...t.admin, 'content-type': 'application/json', 'idempotency-key': key },
          payload: '{"amount":1}',
        });
        expect([key, res.statusCode, res.json<{ code: string }>().code]).toEqual([key, 400, 'DATABANK_ERR_IDEMPOTENCY_KEY_INVALID']);
      }
    });

    it('born_after=0000-01-01 is refused as a 400: PostgreSQL has no year 0', async () => {
      const res = await send({ method: 'GET', url: '/customers?born_after=0000-01-01', headers: t.admin });
      expect([res.statusCode, res.json<{ code: string }>().code]).toEqual([400, 'DATABANK_ERR_VALIDATION']);
    });

    it('born_after accepts real dates in years 0001-0099', async () => {
      for (const date of ['0099-01-01', '0001-01-01', '0050-06-15']) {
        const res = await send({ method: 'GET', url: `/customers?born_after=${date}`, headers: t.admin });
        expect([date, res.statusCode]).toEqual([date, 200]);
      }
    });

    it('a transfer naming an account id past bigint range answers 4xx', async () => {
      for (const id of [2 ** 63, 1e20, 1e300]) {
        const req: FuzzRequest = {
          method: 'POST',
          url: '/transfers',
          headers: { ...t.admin, 'content-type': 'application/json' },
          payload: JSON.stringify({ from_account_id: 1, to_account_id: id, amount: 1 }),
        };
        checkResponse(req, await send(req));
      }
    });
  });
}
