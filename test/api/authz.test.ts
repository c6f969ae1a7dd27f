import { randomBytes } from 'node:crypto';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pino } from 'pino';
import { ERRORS, type ErrorCode } from '../../src/domain/errors.ts';
import { createMetrics } from '../../src/http/metrics.ts';
import { buildServer } from '../../src/http/server.ts';
import { startTestApp, type TestApp } from '../support/app.ts';
import { ENGINES } from '../support/engines.ts';

/**
 * Authentication and authorization over every route: who may call what, and what a refusal looks
 * like. A customer key must not learn whether another customer's ids exist, and no refused call
 * may move money. The routes are read from the server as it registers them (Fastify's `onRoute`),
 * so that a route added without an authorization case here fails this suite.
 */

type Method = 'GET' | 'HEAD' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';
type Headers = Record<string, string>;
type Response = Awaited<ReturnType<TestApp['app']['http']['inject']>>;

interface Request {
  readonly method: Method;
  readonly url: string;
  readonly body?: object | string;
  /** Headers the request needs besides Authorization (e.g. the type of an upload). */
  readonly headers?: Headers;
}

/** What customer 1's key gets from a request about customer 2, or from an admin-only route. */
type OtherCustomer =
  | { readonly status: 403 | 404; readonly request: Request }
  /** Routes any key may call: they answer only its own data, or nothing per customer (`why`). */
  | { readonly status: 200; readonly request: Request; readonly why: string };

interface RouteCase extends Request {
  /** The route as registered: method and URL pattern, e.g. `GET /customers/:id`. */
  readonly route: string;
  readonly otherCustomer: OtherCustomer;
}

/** Ids made in setup that the cases name. */
interface Ids {
  /** The account opened for customer 2. */
  readonly account: number;
  /** A file uploaded for customer 2. */
  readonly file: number;
  /** Customer 2's API key. */
  readonly apiKey: number;
  /** A statement job of customer 2's. */
  readonly job: string;
  /** A document of customer 2's. */
  readonly document: number;
}

const MONTH = new Date().toISOString().slice(0, 7);

const UPLOAD = { headers: { 'content-type': 'text/plain' }, body: 'authz upload\n' } as const;

/**
 * One authorization case per registered route, keyed `METHOD /pattern`: a request that an admin key
 * would be allowed to make, and what customer 1's key gets when it aims the route at customer 2.
 * A route registered without an entry here fails "every registered route has a case".
 */
function casesFor(ids: Ids): Record<string, Omit<RouteCase, 'route' | 'method'>> {
  const refused = (status: 403 | 404, method: Method, url: string, body?: object | string, headers?: Headers) => ({
    status,
    request: { method, url, body, headers },
  });
  return {
    'GET /customers': {
      url: '/customers',
      otherCustomer: { status: 200, request: { method: 'GET', url: '/customers' }, why: 'lists only its own customer' },
    },
    'POST /customers': {
      url: '/customers',
      body: { name: 'Eve', date_of_birth: '1990-01-01' },
      otherCustomer: refused(403, 'POST', '/customers', { name: 'Eve', date_of_birth: '1990-01-01' }),
    },
    'GET /customers/:id': { url: '/customers/1', otherCustomer: refused(404, 'GET', '/customers/2') },
    'PATCH /customers/:id': {
      url: '/customers/1',
      body: { name: 'Eve' },
      otherCustomer: refused(404, 'PATCH', '/customers/2', { name: 'Mallory' }),
    },
    'POST /customers/:id/accounts': {
      url: '/customers/1/accounts',
      body: { account_type: 'savings' },
      otherCustomer: refused(404, 'POST', '/customers/2/accounts', { account_type: 'savings' }),
    },
    'GET /customers/:id/accounts': { url: '/customers/1/accounts', otherCustomer: refused(404, 'GET', '/customers/2/accounts') },
    'GET /accounts/:id': { url: '/accounts/1', otherCustomer: refused(404, 'GET', `/accounts/${ids.account}`) },
    'GET /accounts/:id/entries': {
      url: '/accounts/1/entries',
      otherCustomer: refused(404, 'GET', `/accounts/${ids.account}/entries`),
    },
    'POST /accounts/:id/deposits': {
      url: '/accounts/1/deposits',
      body: { amount: 100 },
      otherCustomer: refused(403, 'POST', `/accounts/${ids.account}/deposits`, { amount: 100 }),
    },
    'POST /accounts/:id/withdrawals': {
      url: '/accounts/1/withdrawals',
      body: { amount: 100 },
      otherCustomer: refused(403, 'POST', `/accounts/${ids.account}/withdrawals`, { amount: 100 }),
    },
    'POST /transfers': {
      url: '/transfers',
      body: { from_account_id: 1, to_account_id: 2, amount: 100 },
      otherCustomer: refused(404, 'POST', '/transfers', { from_account_id: ids.account, to_account_id: 1, amount: 100 }),
    },
    'POST /fees': {
      url: '/fees',
      body: { amount: 1, reference: 'authz-fee' },
      otherCustomer: refused(403, 'POST', '/fees', { amount: 1, reference: 'authz-fee' }),
    },
    'GET /cache/stats': { url: '/cache/stats', otherCustomer: refused(403, 'GET', '/cache/stats') },
    'POST /cache/flush': { url: '/cache/flush', body: {}, otherCustomer: refused(403, 'POST', '/cache/flush', {}) },
    'POST /customers/:id/files': {
      url: '/customers/1/files?filename=authz.txt',
      ...UPLOAD,
      otherCustomer: refused(404, 'POST', '/customers/2/files?filename=authz.txt', UPLOAD.body, UPLOAD.headers),
    },
    'GET /customers/:id/files': { url: '/customers/1/files', otherCustomer: refused(404, 'GET', '/customers/2/files') },
    'GET /files/:id': { url: `/files/${ids.file}`, otherCustomer: refused(404, 'GET', `/files/${ids.file}`) },
    'GET /files/:id/content': {
      url: `/files/${ids.file}/content`,
      otherCustomer: refused(404, 'GET', `/files/${ids.file}/content`),
    },
    'HEAD /files/:id/content': {
      url: `/files/${ids.file}/content`,
      otherCustomer: refused(404, 'HEAD', `/files/${ids.file}/content`),
    },
    'DELETE /files/:id': { url: `/files/${ids.file}`, otherCustomer: refused(404, 'DELETE', `/files/${ids.file}`) },
    'GET /metrics': { url: '/metrics', otherCustomer: refused(403, 'GET', '/metrics') },
    'GET /api-keys': { url: '/api-keys', otherCustomer: refused(403, 'GET', '/api-keys') },
    'POST /api-keys': {
      url: '/api-keys',
      body: { role: 'customer', customer_id: 2 },
      otherCustomer: refused(403, 'POST', '/api-keys', { role: 'customer', customer_id: 2 }),
    },
    // Customer 1's key may not revoke or rotate customer 2's key (nor its own: see the 403 test).
    'DELETE /api-keys/:id': { url: `/api-keys/${ids.apiKey}`, otherCustomer: refused(403, 'DELETE', `/api-keys/${ids.apiKey}`) },
    'POST /api-keys/:id/rotate': {
      url: `/api-keys/${ids.apiKey}/rotate`,
      otherCustomer: refused(403, 'POST', `/api-keys/${ids.apiKey}/rotate`),
    },
    'GET /files/:id/variants/:name': {
      url: `/files/${ids.file}/variants/web`,
      otherCustomer: refused(404, 'GET', `/files/${ids.file}/variants/web`),
    },
    'HEAD /files/:id/variants/:name': {
      url: `/files/${ids.file}/variants/web`,
      otherCustomer: refused(404, 'HEAD', `/files/${ids.file}/variants/web`),
    },
    'POST /accounts/:id/statements': {
      url: '/accounts/1/statements',
      body: { month: MONTH },
      otherCustomer: refused(404, 'POST', `/accounts/${ids.account}/statements`, { month: MONTH }),
    },
    'GET /jobs/:id': { url: `/jobs/${ids.job}`, otherCustomer: refused(404, 'GET', `/jobs/${ids.job}`) },
    'GET /customers/:id/activity': { url: '/customers/1/activity', otherCustomer: refused(404, 'GET', '/customers/2/activity') },
    'GET /queues': { url: '/queues', otherCustomer: refused(403, 'GET', '/queues') },
    'POST /backups': { url: '/backups', otherCustomer: refused(403, 'POST', '/backups') },
    'GET /backups': { url: '/backups', otherCustomer: refused(403, 'GET', '/backups') },
    'GET /replicas': { url: '/replicas', otherCustomer: refused(403, 'GET', '/replicas') },
    'POST /analytics/refresh': { url: '/analytics/refresh', otherCustomer: refused(403, 'POST', '/analytics/refresh') },
    'GET /analytics/balances': { url: '/analytics/balances', otherCustomer: refused(403, 'GET', '/analytics/balances') },
    'GET /analytics/volume': { url: '/analytics/volume', otherCustomer: refused(403, 'GET', '/analytics/volume') },
    'GET /analytics/top-accounts': { url: '/analytics/top-accounts', otherCustomer: refused(403, 'GET', '/analytics/top-accounts') },
    'GET /analytics/books': { url: '/analytics/books', otherCustomer: refused(403, 'GET', '/analytics/books') },
    'POST /analytics/sql': {
      url: '/analytics/sql',
      body: { sql: 'select 1' },
      otherCustomer: refused(403, 'POST', '/analytics/sql', { sql: 'select 1' }),
    },
    'GET /queues/:name/dead-letters': {
      url: '/queues/image.variants/dead-letters',
      otherCustomer: refused(403, 'GET', '/queues/image.variants/dead-letters'),
    },
    'POST /queues/:name/dead-letters/retry': {
      url: '/queues/image.variants/dead-letters/retry',
      body: {},
      otherCustomer: refused(403, 'POST', '/queues/image.variants/dead-letters/retry', {}),
    },
    'DELETE /queues/:name/dead-letters': {
      url: '/queues/image.variants/dead-letters',
      otherCustomer: refused(403, 'DELETE', '/queues/image.variants/dead-letters'),
    },
    'GET /events': { url: '/events', otherCustomer: refused(403, 'GET', '/events') },
    'GET /events/groups': { url: '/events/groups', otherCustomer: refused(403, 'GET', '/events/groups') },
    'POST /events/replay': {
      url: '/events/replay',
      body: { group: 'audit' },
      otherCustomer: refused(403, 'POST', '/events/replay', { group: 'audit' }),
    },
    'POST /customers/:id/documents': {
      url: '/customers/1/documents',
      body: { collection: 'notes', body: { text: 'mine' } },
      otherCustomer: refused(404, 'POST', '/customers/2/documents', { collection: 'notes', body: { text: 'planted' } }),
    },
    'GET /customers/:id/documents': { url: '/customers/1/documents', otherCustomer: refused(404, 'GET', '/customers/2/documents') },
    'GET /documents': {
      url: '/documents',
      otherCustomer: { status: 200, request: { method: 'GET', url: '/documents' }, why: 'lists only its own documents' },
    },
    'GET /documents/:id': { url: `/documents/${ids.document}`, otherCustomer: refused(404, 'GET', `/documents/${ids.document}`) },
    'PATCH /documents/:id': {
      url: `/documents/${ids.document}`,
      body: { body: { text: 'changed' } },
      headers: { 'if-match': '"1"' },
      otherCustomer: refused(404, 'PATCH', `/documents/${ids.document}`, { body: { text: 'changed' } }, { 'if-match': '"1"' }),
    },
    'DELETE /documents/:id': { url: `/documents/${ids.document}`, otherCustomer: refused(404, 'DELETE', `/documents/${ids.document}`) },
    'PUT /collections/:name/schema': {
      url: '/collections/authz/schema',
      body: { type: 'object' },
      otherCustomer: refused(403, 'PUT', '/collections/authz/schema', { type: 'object' }),
    },
    'GET /collections/:name/schema': {
      url: '/collections/authz/schema',
      otherCustomer: { status: 200, request: { method: 'GET', url: '/collections/authz/schema' }, why: "a collection's schema is the same for every key" },
    },
    'DELETE /collections/:name/schema': { url: '/collections/authz/schema', otherCustomer: refused(403, 'DELETE', '/collections/authz/schema') },
    'GET /search': {
      url: '/search?q=brian',
      otherCustomer: { status: 200, request: { method: 'GET', url: '/search?q=johnson' }, why: 'finds only its own customer and documents' },
    },
    'POST /search/reindex': { url: '/search/reindex', body: {}, otherCustomer: refused(403, 'POST', '/search/reindex', {}) },
    'GET /openapi.json': {
      url: '/openapi.json',
      otherCustomer: { status: 200, request: { method: 'GET', url: '/openapi.json' }, why: 'the API description is the same for every key' },
    },
  };
}

const METHODS: readonly Method[] = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE'];

function isMethod(method: string): method is Method {
  return (METHODS as readonly string[]).includes(method);
}

/** A registered route: its method and URL pattern, and whether it is served without a key. */
interface RegisteredRoute {
  readonly method: string;
  readonly url: string;
  readonly isPublic: boolean;
}

/**
 * Every route the HTTP server registers, as Fastify's `onRoute` hook reports them, HEAD routes
 * that Fastify adds for GET routes included. A second server is built over the test app's
 * services to listen to its registration; it gets metrics of its own because metric names are
 * registered once per registry.
 */
async function registeredRoutes(t: TestApp): Promise<RegisteredRoute[]> {
  const routes: RegisteredRoute[] = [];
  const deps = { ...t.app.deps, metrics: createMetrics(() => t.app.sql.poolStats(), { defaultMetrics: false }) };
  const server = await buildServer(deps, {
    logger: pino({ level: 'silent' }),
    onRoute: (route) => {
      const methods = Array.isArray(route.method) ? route.method : [route.method];
      for (const method of methods) {
        routes.push({ method, url: route.url, isPublic: route.config?.public === true });
      }
    },
  });
  // HEAD routes for GET routes are added while the server gets ready.
  await server.ready();
  await server.close();
  return routes;
}

/**
 * The case of a registered route. A HEAD route that Fastify added for a GET route answers as the
 * GET does, without the body, so the GET's case covers it; the requests are still sent as HEAD.
 */
function caseOf(cases: ReturnType<typeof casesFor>, route: RegisteredRoute): RouteCase | null {
  if (!isMethod(route.method)) return null;
  const key = `${route.method} ${route.url}`;
  const own = cases[key];
  if (own) return { ...own, method: route.method, route: key };
  const get = route.method === 'HEAD' ? cases[`GET ${route.url}`] : undefined;
  if (!get) return null;
  return {
    ...get,
    method: 'HEAD',
    route: key,
    otherCustomer: { ...get.otherCustomer, request: { ...get.otherCustomer.request, method: 'HEAD', body: undefined } },
  };
}

const GHOST = 999_999;

function errorOf(code: ErrorCode) {
  return { statusCode: ERRORS[code].status, code, message: ERRORS[code].message };
}

/** The response is exactly the catalog error `code` with its default message. */
function expectCatalogError(res: Response, code: ErrorCode, what: string): void {
  expect({ what, status: res.statusCode, body: res.json() as unknown }).toEqual({
    what,
    status: ERRORS[code].status,
    body: errorOf(code),
  });
}

/** The refusal `code`; a HEAD answer has its status and no body. */
function expectRefused(res: Response, method: Method, code: ErrorCode, what: string): void {
  if (method !== 'HEAD') return expectCatalogError(res, code, what);
  expect({ what, status: res.statusCode, body: res.body }).toEqual({ what, status: ERRORS[code].status, body: '' });
}

function unknownWellFormedKey(): string {
  return `dbk_${randomBytes(8).toString('hex')}_${randomBytes(32).toString('base64url')}`;
}

for (const engine of ENGINES) {
  describe(engine, () => {
    let t: TestApp;
    let cust1: Headers;
    let cust2: Headers;
    /** The account opened for customer 2 in setup. */
    let extra: number;
    /** A file uploaded for customer 2 in setup. */
    let file2: number;
    /** A statement job of customer 2's. */
    let job2: string;
    /** A document of customer 2's, and a collection with a schema. */
    let document2: number;
    /** The ids of customer 1's and customer 2's keys. */
    let key1: number;
    let key2: number;
    /** Every route the server registers. */
    let registered: RegisteredRoute[];
    /** The registered routes that need a key, each with its case. */
    let PROTECTED: RouteCase[];
    /** An account customer 1 opens for itself (allowed), once that test has run. */
    let ownOpened: number | null = null;
    let transferDone = false;

    const call = (method: Method, url: string, headers: Headers, body?: object | string): Promise<Response> =>
      t.app.http.inject({ method, url, headers, ...(body === undefined ? {} : { payload: body }) });
    /** Sends `request` with `headers` added to its own. */
    const send = (request: Request, headers: Headers): Promise<Response> =>
      call(request.method, request.url, { ...request.headers, ...headers }, request.body);

    beforeAll(async () => {
      // No background workers: the statement job of the setup stays queued, so customer 2's files stay as the cases left them.
      t = await startTestApp(engine, 'api-authz', {}, undefined, { worker: false });
      const made1 = await t.app.deps.apiKeys.create('customer', 1);
      const made2 = await t.app.deps.apiKeys.create('customer', 2);
      [key1, key2] = [made1.id, made2.id];
      cust1 = { authorization: `Bearer ${made1.key}` };
      cust2 = { authorization: `Bearer ${made2.key}` };
      const opened = await call('POST', '/customers/2/accounts', t.admin, { account_type: 'savings' });
      expect(opened.statusCode).toBe(201);
      const account = opened.json<{ account_id: number; customer_id: number; balance: number }>();
      expect(account.customer_id).toBe(2);
      expect(account.balance).toBe(0);
      extra = account.account_id;
      const uploaded = await call('POST', '/customers/2/files?filename=theirs.txt', { ...t.admin, 'content-type': 'text/plain' }, 'customer 2 only\n');
      expect(uploaded.statusCode).toBe(201);
      file2 = uploaded.json<{ file_id: number }>().file_id;
      const statement = await call('POST', `/accounts/${extra}/statements`, t.admin, { month: MONTH });
      expect(statement.statusCode).toBe(202);
      job2 = statement.json<{ job_id: string }>().job_id;
      const document = await call('POST', '/customers/2/documents', t.admin, { collection: 'notes', body: { text: 'customer 2 only' } });
      expect(document.statusCode).toBe(201);
      document2 = document.json<{ document_id: number }>().document_id;
      expect((await call('PUT', '/collections/authz/schema', t.admin, { type: 'object' })).statusCode).toBe(200);
      registered = await registeredRoutes(t);
      const cases = casesFor({ account: extra, file: file2, apiKey: key2, job: job2, document: document2 });
      PROTECTED = registered
        .filter((r) => !r.isPublic)
        .map((r) => caseOf(cases, r))
        .filter((c): c is RouteCase => c !== null);
    });

    afterAll(async () => {
      await t?.close();
    });

    describe('the route list', () => {
      it('every registered route has a case, and every case a route', () => {
        const cases = casesFor({ account: extra, file: file2, apiKey: key2, job: job2, document: document2 });
        const protectedRoutes = registered.filter((r) => !r.isPublic);
        const withoutCase = protectedRoutes.filter((r) => caseOf(cases, r) === null).map((r) => `${r.method} ${r.url}`);
        expect(withoutCase, 'routes without an authorization case: add one to casesFor').toEqual([]);
        const names = new Set(protectedRoutes.map((r) => `${r.method} ${r.url}`));
        expect(Object.keys(cases).filter((name) => !names.has(name)), 'cases for routes that are not registered').toEqual([]);
        expect(PROTECTED.map((c) => c.route)).toEqual([...names]);
        // The only routes served without a key are the health checks (and their HEADs).
        expect(registered.filter((r) => r.isPublic).map((r) => `${r.method} ${r.url}`).sort()).toEqual([
          'GET /healthz',
          'GET /readyz',
          'HEAD /healthz',
          'HEAD /readyz',
        ]);
        // Sanity: the list is read from the server, not empty because a hook never ran.
        expect(PROTECTED.length).toBeGreaterThanOrEqual(30);
      });
    });

    describe('authentication', () => {
      it('health checks answer without a key, and ignore a bad one', async () => {
        const variants: Headers[] = [{}, { authorization: 'Bearer nonsense' }];
        for (const headers of variants) {
          const health = await call('GET', '/healthz', headers);
          expect([health.statusCode, health.json()]).toEqual([200, { status: 'ok' }]);
          const ready = await call('GET', '/readyz', headers);
          expect([ready.statusCode, ready.json()]).toEqual([200, { status: 'ready' }]);
        }
      });

      it('every protected route answers 401 without an Authorization header', async () => {
        for (const route of PROTECTED) {
          const res = await send(route, {});
          expectRefused(res, route.method, 'DATABANK_ERR_UNAUTHORIZED', `${route.method} ${route.url}`);
          expect(res.headers['www-authenticate'], route.route).toBe('Bearer realm="databank"');
        }
      });

      it('every protected route answers 401 to malformed keys and schemes', async () => {
        const admin = t.adminKey;
        const malformed = [
          'Bearer',
          'Bearer ',
          admin, // no scheme
          `Basic ${Buffer.from(`admin:${admin}`).toString('base64')}`,
          `Token ${admin}`,
          'Bearer not-a-key',
          `Bearer ${admin}x`,
          `Bearer ${admin.slice(0, -1)}`,
          `Bearer ${admin.toUpperCase()}`,
          `Bearer ${admin} ${admin}`,
          `Bearer ${admin.replace(/^dbk_/, 'dbx_')}`,
          `Bearer dbk_${'g'.repeat(16)}_${'A'.repeat(43)}`,
        ];
        for (const route of PROTECTED) {
          for (const authorization of malformed) {
            const res = await send(route, { authorization });
            expectRefused(res, route.method, 'DATABANK_ERR_UNAUTHORIZED', `${route.method} ${route.url} with ${JSON.stringify(authorization)}`);
          }
        }
      });

      it('every protected route answers 401 to well-formed keys it does not know', async () => {
        const secretStart = t.adminKey.length - 43;
        const flipped = t.adminKey[secretStart] === 'A' ? 'B' : 'A';
        const keys = [
          unknownWellFormedKey(),
          unknownWellFormedKey(),
          // The admin key's prefix with another secret: the row exists, the secret does not match.
          `${t.adminKey.slice(0, secretStart)}${flipped}${t.adminKey.slice(secretStart + 1)}`,
        ];
        expect(keys[2]).toMatch(/^dbk_[0-9a-f]{16}_[A-Za-z0-9_-]{43}$/);
        expect(keys[2]).not.toBe(t.adminKey);
        for (const route of PROTECTED) {
          for (const key of keys) {
            const res = await send(route, { authorization: `Bearer ${key}` });
            expectRefused(res, route.method, 'DATABANK_ERR_UNAUTHORIZED', `${route.method} ${route.url} with ${key}`);
          }
        }
      });

      it('a revoked key answers 401', async () => {
        const fresh = await t.app.deps.apiKeys.create('customer', 1);
        await t.app.sql.db.updateTable('api_keys').set({ revoked_at: new Date() }).where('id', '=', fresh.id).execute();
        const res = await call('GET', '/customers/1', { authorization: `Bearer ${fresh.key}` });
        expectCatalogError(res, 'DATABANK_ERR_UNAUTHORIZED', 'revoked key');
      });

      it('authentication comes before body parsing and validation', async () => {
        // Every method that carries a body.
        for (const route of PROTECTED.filter((r) => r.method !== 'GET' && r.method !== 'HEAD')) {
          const res = await t.app.http.inject({
            method: route.method,
            url: route.url,
            headers: { 'content-type': 'application/json' },
            payload: '{"not json',
          });
          expectCatalogError(res, 'DATABANK_ERR_UNAUTHORIZED', `${route.method} ${route.url} with a broken body`);
        }
      });
    });

    describe('a customer key', () => {
      it('works on its own customer and accounts (so refusals below are not a broken key)', async () => {
        const customer = await call('GET', '/customers/1', cust1);
        expect([customer.statusCode, customer.json()]).toEqual([
          200,
          { id: 1, name: 'Brian Kim', date_of_birth: '1948-09-23', balance: 1500, balances: { USD: 1500 } },
        ]);
        const account = await call('GET', '/accounts/1', cust1);
        expect([account.statusCode, account.json()]).toEqual([
          200,
          { account_id: 1, account_type: 'checking', balance: 1500, customer_id: 1, currency: 'USD' },
        ]);
        const entries = await call('GET', '/accounts/1/entries', cust1);
        expect(entries.statusCode).toBe(200);
        expect(entries.json<{ result: Array<{ amount: number; kind: string }> }>().result).toEqual([
          expect.objectContaining({ amount: 1500, kind: 'deposit' }),
        ]);
        const patched = await call('PATCH', '/customers/1', cust1, {});
        expect([patched.statusCode, patched.json<{ name: string }>().name]).toEqual([200, 'Brian Kim']);
        const spec = await call('GET', '/openapi.json', cust1);
        expect([spec.statusCode, spec.json<{ openapi: string }>().openapi]).toEqual([200, '3.1.0']);
        // Customer 2's key sees the account the admin opened for it.
        const theirs = await call('GET', `/accounts/${extra}`, cust2);
        expect([theirs.statusCode, theirs.json<{ customer_id: number }>().customer_id]).toEqual([200, 2]);
      });

      it('GET /customers lists only its own customer, whatever the query', async () => {
        for (const query of ['', '?limit=100', '?limit=1', '?born_after=1900-01-01']) {
          const res = await call('GET', `/customers${query}`, cust1);
          expect({ query, status: res.statusCode, body: res.json() as unknown }).toEqual({
            query,
            status: 200,
            body: { result: [{ id: 1, name: 'Brian Kim', date_of_birth: '1948-09-23', balance: 1500, balances: { USD: 1500 } }] },
          });
        }
        // Past its own id, or born after it, a customer key sees nothing, not the next customer.
        for (const query of [`?cursor=${Buffer.from('id:1').toString('base64url')}`, '?born_after=1960-01-01']) {
          const res = await call('GET', `/customers${query}`, cust1);
          expect({ query, status: res.statusCode, body: res.json() as unknown }).toEqual({
            query,
            status: 200,
            body: { result: [] },
          });
        }
      });

      it("GET /customers/1/accounts lists only customer 1's accounts", async () => {
        const res = await call('GET', '/customers/1/accounts', cust1);
        expect(res.statusCode).toBe(200);
        expect(res.json<{ result: Array<{ account_id: number; customer_id: number }> }>().result.map((a) => a.account_id)).toEqual([1]);
      });

      it("answers another customer's ids exactly as it answers ids that do not exist", async () => {
        const cases: Array<{ method: Method; url: (id: number) => string; body?: object; ids: number[] }> = [
          { method: 'GET', url: (id) => `/customers/${id}`, ids: [2, 3] },
          { method: 'PATCH', url: (id) => `/customers/${id}`, body: { name: 'Mallory' }, ids: [2, 3] },
          { method: 'PATCH', url: (id) => `/customers/${id}`, body: {}, ids: [2, 3] },
          { method: 'GET', url: (id) => `/customers/${id}/accounts`, ids: [2, 3] },
          { method: 'POST', url: (id) => `/customers/${id}/accounts`, body: { account_type: 'savings' }, ids: [2, 3] },
          { method: 'GET', url: (id) => `/accounts/${id}`, ids: [2, 3, extra] },
          { method: 'GET', url: (id) => `/accounts/${id}/entries`, ids: [2, 3, extra] },
          { method: 'GET', url: (id) => `/accounts/${id}/entries?limit=1`, ids: [2, 3, extra] },
        ];
        for (const c of cases) {
          const ghost = await call(c.method, c.url(GHOST), cust1, c.body);
          expectCatalogError(ghost, 'DATABANK_ERR_NOT_FOUND', `${c.method} ${c.url(GHOST)}`);
          for (const id of c.ids) {
            const res = await call(c.method, c.url(id), cust1, c.body);
            expectCatalogError(res, 'DATABANK_ERR_NOT_FOUND', `${c.method} ${c.url(id)}`);
            // Byte for byte the same answer: nothing tells an existing id from a missing one.
            expect(res.body, `${c.method} ${c.url(id)}`).toBe(ghost.body);
            expect(res.headers['content-length']).toBe(ghost.headers['content-length']);
          }
        }
      });

      it("may not move money out of another customer's account, which looks nonexistent", async () => {
        const ghost = await call('POST', '/transfers', cust1, { from_account_id: GHOST, to_account_id: 1, amount: 1 });
        expectCatalogError(ghost, 'DATABANK_ERR_NOT_FOUND', 'transfer from a missing account');
        for (const from of [2, 3, extra]) {
          for (const to of [1, 2, 3, GHOST]) {
            if (from === to) continue;
            for (const amount of [1, 100, 1_000_000]) {
              const body = { from_account_id: from, to_account_id: to, amount };
              const res = await call('POST', '/transfers', cust1, body);
              expectCatalogError(res, 'DATABANK_ERR_NOT_FOUND', `transfer ${JSON.stringify(body)}`);
              expect(res.body).toBe(ghost.body);
            }
          }
        }
        // The same with an Idempotency-Key: refused, and the refusal replays as it was.
        const body = { from_account_id: 2, to_account_id: 1, amount: 5 };
        const headers = { ...cust1, 'idempotency-key': 'authz-steal-1' };
        const first = await call('POST', '/transfers', headers, body);
        expectCatalogError(first, 'DATABANK_ERR_NOT_FOUND', 'idempotent transfer from account 2');
        const again = await call('POST', '/transfers', headers, body);
        expectCatalogError(again, 'DATABANK_ERR_NOT_FOUND', 'replayed transfer from account 2');
        expect(again.headers['idempotent-replayed']).toBe('true');
      });

      it('is refused admin-only operations with 403', async () => {
        const cases: Request[] = [
          { method: 'POST', url: '/customers', body: { name: 'Eve', date_of_birth: '1990-01-01' } },
          { method: 'POST', url: '/fees', body: { amount: 1, reference: 'authz-fee' } },
          { method: 'GET', url: '/metrics' },
          { method: 'GET', url: '/api-keys' },
          { method: 'GET', url: '/api-keys?limit=1' },
          { method: 'POST', url: '/api-keys', body: { role: 'admin' } },
          { method: 'POST', url: '/api-keys', body: { role: 'customer', customer_id: 1 } },
        ];
        // Its own key, another customer's and a missing one: 403 alike, before any lookup.
        for (const id of [key1, key2, GHOST]) {
          cases.push({ method: 'DELETE', url: `/api-keys/${id}` }, { method: 'POST', url: `/api-keys/${id}/rotate` });
        }
        for (const kind of ['deposits', 'withdrawals']) {
          // The same 403 for its own account, another customer's and a missing one.
          for (const id of [1, 2, extra, GHOST]) cases.push({ method: 'POST', url: `/accounts/${id}/${kind}`, body: { amount: 100 } });
        }
        for (const c of cases) {
          const res = await call(c.method, c.url, cust1, c.body);
          expectCatalogError(res, 'DATABANK_ERR_FORBIDDEN', `${c.method} ${c.url}`);
          const withKey = await call(c.method, c.url, { ...cust1, 'idempotency-key': `authz-403-${c.url}` }, c.body);
          expectCatalogError(withKey, 'DATABANK_ERR_FORBIDDEN', `${c.method} ${c.url} with an Idempotency-Key`);
        }
      });

      it('is refused every registered route aimed at another customer (404) or reserved to admins (403)', async () => {
        for (const route of PROTECTED) {
          const { status, request } = route.otherCustomer;
          const what = `${route.route}: ${request.method} ${request.url}`;
          const res = await send(request, cust1);
          if (status === 200) {
            expect([what, res.statusCode]).toEqual([what, 200]);
            continue;
          }
          expectRefused(res, request.method, status === 403 ? 'DATABANK_ERR_FORBIDDEN' : 'DATABANK_ERR_NOT_FOUND', what);
        }
      });

      it('may open an account for itself', async () => {
        const res = await call('POST', '/customers/1/accounts', cust1, { account_type: 'savings', currency: 'USD' });
        expect(res.statusCode).toBe(201);
        const account = res.json<{ account_id: number; customer_id: number; balance: number }>();
        expect([account.customer_id, account.balance]).toEqual([1, 0]);
        ownOpened = account.account_id;
      });

      it('may pay into another customer’s account', async () => {
        const res = await call('POST', '/transfers', cust1, { from_account_id: 1, to_account_id: 2, amount: 100 });
        expect(res.statusCode).toBe(201);
        expect(res.json()).toEqual({
          transfer_id: expect.any(Number),
          from_account_id: 1,
          to_account_id: 2,
          amount: 100,
          created_at: expect.any(String),
        });
        transferDone = true;
        // Paying a missing account is refused and moves nothing.
        const ghost = await call('POST', '/transfers', cust1, { from_account_id: 1, to_account_id: GHOST, amount: 100 });
        expect([ghost.statusCode, ghost.json<{ code: string }>().code]).toEqual([404, 'DATABANK_ERR_NOT_FOUND']);
      });
    });

    it('after every refusal, only the one allowed transfer moved money', async () => {
      expect(transferDone).toBe(true);
      expect(ownOpened).not.toBeNull();
      const expected: Record<number, number> = { 1: 1400, 2: 4953, 3: 2150, [extra]: 0, [ownOpened as number]: 0 };
      for (const [id, balance] of Object.entries(expected)) {
        const res = await call('GET', `/accounts/${id}`, t.admin);
        expect([id, res.statusCode, res.json<{ balance: number }>().balance]).toEqual([id, 200, balance]);
      }
      // Straight from the store: no other account exists, no other movement was recorded.
      const accounts = await t.app.sql.db.selectFrom('accounts').select(['account_id', 'customer_id', 'balance']).orderBy('account_id').execute();
      expect(Object.fromEntries(accounts.map((a) => [a.account_id, a.balance]))).toEqual(expected);
      expect(accounts.find((a) => a.account_id === extra)?.customer_id).toBe(2);
      expect(accounts.find((a) => a.account_id === ownOpened)?.customer_id).toBe(1);
      const kinds = await sql<{ kind: string; n: number }>`
        select kind, count(*)::bigint as n from ledger_transactions group by kind order by kind
      `.execute(t.app.sql.db);
      expect(kinds.rows).toEqual([
        { kind: 'deposit', n: 3 },
        { kind: 'transfer', n: 1 },
      ]);
      const customers = await t.app.sql.db.selectFrom('customers').select(['id', 'name']).orderBy('id').execute();
      expect(customers).toEqual([
        { id: 1, name: 'Brian Kim' },
        { id: 2, name: 'Karen Johnson' },
        { id: 3, name: 'Wade Feinstein' },
      ]);
      const fees = await t.app.sql.db.selectFrom('fee_charges').select('account_id').execute();
      expect(fees).toEqual([]);
      // No refused call made, revoked or rotated a key: the admin's, customer 1's and 2's, and the
      // customer 1 key revoked on purpose by the authentication test.
      const keys = await t.app.sql.db.selectFrom('api_keys').select(['id', 'role', 'customer_id', 'revoked_at']).orderBy('id').execute();
      expect(keys.map((k) => [k.role, k.customer_id, k.revoked_at !== null])).toEqual([
        ['admin', null, false],
        ['customer', 1, false],
        ['customer', 2, false],
        ['customer', 1, true],
      ]);
      const stillWorks = await call('GET', '/customers/2', cust2);
      expect(stillWorks.statusCode).toBe(200);
      // Customer 2's file outlived the refused delete, and no refused upload left a file.
      for (const [customer, files] of [
        [1, []],
        [2, [file2]],
      ] as const) {
        const listed = await call('GET', `/customers/${customer}/files`, t.admin);
        expect([customer, listed.json<{ result: Array<{ file_id: number }> }>().result.map((f) => f.file_id)]).toEqual([customer, files]);
      }
    });
  });
}
