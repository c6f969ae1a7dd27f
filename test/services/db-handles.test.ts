import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApp, type App } from '../../src/app.ts';
import { createMetrics } from '../../src/http/metrics.ts';
import { buildServer } from '../../src/http/server.ts';
import { testConfig } from '../support/app.ts';
import { createTestDatabase, ENGINES, type TestDatabase } from '../support/engines.ts';
import { handleViolations, isWrite, QueryLog, type RecordedQuery } from '../support/recording-db.ts';

/** What the cases learn as they go: the ids of what they made. */
interface State {
  customer: number;
  account: number;
  file: number;
  apiKey: number;
  job: string;
  document: number;
}

type Method = 'GET' | 'HEAD' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';

interface RouteCase {
  readonly method: Method;
  /** The route as registered, e.g. `/customers/:id`. */
  readonly route: string;
  readonly url: (s: State) => string;
  readonly payload?: string | object;
  readonly headers?: Record<string, string>;
  readonly status: number;
  /**
   * `read`: at least one statement besides the key lookup, all on `reader`; `write`: at least one
   * write, all statements of transactions on `writer`; `primary`: no write, but every statement
   * besides the key lookup on `writer`, because it decides a write; `none`: no statement besides
   * the key lookup.
   */
  readonly uses: 'read' | 'write' | 'primary' | 'none';
  readonly learn?: (s: State, body: Record<string, unknown>) => void;
}

const key = (k: string) => ({ 'idempotency-key': k });
const octets = { 'content-type': 'application/octet-stream' };
const deposit = { method: 'POST', route: '/accounts/:id/deposits', url: (s: State) => `/accounts/${s.account}/deposits` } as const;
const withdraw = { method: 'POST', route: '/accounts/:id/withdrawals', url: (s: State) => `/accounts/${s.account}/withdrawals` } as const;
const transfer = { method: 'POST', route: '/transfers', url: () => '/transfers' } as const;
const get = (route: string, url: (s: State) => string, uses: 'read' | 'none' = 'read'): RouteCase =>
  ({ method: 'GET', route, url, status: 200, uses });

/** Writes first (they make what the reads read), then every read, then the delete. */
const WRITES: readonly RouteCase[] = [
  {
    method: 'POST', route: '/customers', url: () => '/customers', status: 201, uses: 'write',
    payload: { name: 'Ada Lovelace', date_of_birth: '1990-12-10' },
    learn: (s, b) => void (s.customer = b.id as number),
  },
  {
    method: 'PATCH', route: '/customers/:id', url: (s) => `/customers/${s.customer}`, status: 200, uses: 'write',
    payload: { name: 'Ada King' },
  },
  {
    method: 'POST', route: '/customers/:id/accounts', url: (s) => `/customers/${s.customer}/accounts`, status: 201,
    uses: 'write', payload: { account_type: 'checking' }, learn: (s, b) => void (s.account = b.account_id as number),
  },
  { ...deposit, payload: { amount: 1000 }, headers: key('dep-1'), status: 201, uses: 'write' },
  // The replay: the stored response is found before any transaction, by a select that decides
  // whether to write, so it reads the primary; nothing is written.
  { ...deposit, payload: { amount: 1000 }, headers: key('dep-1'), status: 201, uses: 'primary' },
  { ...withdraw, payload: { amount: 400 }, headers: key('wd-1'), status: 201, uses: 'write' },
  // A refusal is recorded under the key after the transaction rolled back.
  { ...withdraw, payload: { amount: 1_000_000 }, headers: key('wd-2'), status: 409, uses: 'write' },
  { ...transfer, payload: { from_account_id: 1, to_account_id: 2, amount: 100 }, headers: key('tr-1'), status: 201, uses: 'write' },
  { ...transfer, payload: { from_account_id: 1, to_account_id: 2, amount: 50 }, status: 201, uses: 'write' },
  {
    method: 'POST', route: '/fees', url: () => '/fees', status: 200, uses: 'write',
    payload: { amount: 1, reference: 'handles' }, headers: key('fee-1'),
  },
  {
    method: 'POST', route: '/customers/:id/files', url: (s) => `/customers/${s.customer}/files?filename=note.txt`,
    status: 201, uses: 'write', payload: 'hello, reader', headers: octets,
    learn: (s, b) => void (s.file = b.file_id as number),
  },
  {
    method: 'POST', route: '/api-keys', url: () => '/api-keys', status: 201, uses: 'write',
    payload: { role: 'admin', expires_at: '2999-01-01T00:00:00Z' }, learn: (s, b) => void (s.apiKey = b.id as number),
  },
  // The job row commits with the request; the queue gets it later, from the dispatcher.
  {
    method: 'POST', route: '/accounts/:id/statements', url: (s) => `/accounts/${s.account}/statements`, status: 202, uses: 'write',
    payload: { month: new Date().toISOString().slice(0, 7) }, learn: (s, b) => void (s.job = b.job_id as string),
  },
  // The projection's reset: the audit rows and their processed_messages, in one transaction.
  { method: 'POST', route: '/events/replay', url: () => '/events/replay', status: 202, uses: 'write', payload: { group: 'audit' } },
  {
    method: 'PUT', route: '/collections/:name/schema', url: () => '/collections/handles/schema', status: 200, uses: 'write',
    payload: { type: 'object', properties: { text: { type: 'string' } } },
  },
  // The collection's schema is read in the write's transaction, on writer.
  {
    method: 'POST', route: '/customers/:id/documents', url: (s) => `/customers/${s.customer}/documents`, status: 201, uses: 'write',
    payload: { collection: 'handles', body: { text: 'Ada writes' } }, learn: (s, b) => void (s.document = b.document_id as number),
  },
  {
    method: 'PATCH', route: '/documents/:id', url: (s) => `/documents/${s.document}`, status: 200, uses: 'write',
    payload: { body: { text: 'Ada rewrites' } }, headers: { 'if-match': '"1"' },
  },
  { method: 'POST', route: '/search/reindex', url: () => '/search/reindex', status: 200, uses: 'write', payload: {} },
  // Reads the old key, makes the new one and revokes the old one, all in one transaction.
  {
    method: 'POST', route: '/api-keys/:id/rotate', url: (s) => `/api-keys/${s.apiKey}/rotate`, status: 201, uses: 'write',
    learn: (s, b) => void (s.apiKey = b.id as number),
  },
];

const GETS: readonly RouteCase[] = [
  get('/customers', () => '/customers?born_after=1950-01-01'),
  get('/customers/:id', (s) => `/customers/${s.customer}`),
  get('/customers/:id/accounts', (s) => `/customers/${s.customer}/accounts`),
  get('/customers/:id/files', (s) => `/customers/${s.customer}/files`),
  get('/accounts/:id', (s) => `/accounts/${s.account}`),
  get('/accounts/:id/entries', (s) => `/accounts/${s.account}/entries`),
  get('/files/:id', (s) => `/files/${s.file}`),
  get('/files/:id/content', (s) => `/files/${s.file}/content`),
  get('/healthz', () => '/healthz', 'none'),
  get('/readyz', () => '/readyz', 'none'),
  get('/metrics', () => '/metrics', 'none'),
  get('/openapi.json', () => '/openapi.json', 'none'),
  get('/cache/stats', () => '/cache/stats', 'none'),
  get('/api-keys', () => '/api-keys'),
  get('/jobs/:id', (s) => `/jobs/${s.job}`),
  get('/customers/:id/activity', (s) => `/customers/${s.customer}/activity`),
  // No worker runs here, so the text file has no variant: the 404 still reads the file on reader.
  { ...get('/files/:id/variants/:name', (s) => `/files/${s.file}/variants/web`), status: 404 },
  // The queue and the stream keep their own connections; the database handles see nothing.
  get('/queues', () => '/queues', 'none'),
  // No backup key in these apps: refused before anything is read. (A backup reads in a snapshot
  // transaction of its own on the primary, and the manifests live in the file store.)
  get('/replicas', () => '/replicas', 'none'),
  { ...get('/backups', () => '/backups', 'none'), status: 409 },
  { method: 'POST', route: '/backups', url: () => '/backups', status: 409, uses: 'none' },
  get('/queues/:name/dead-letters', () => '/queues/image.variants/dead-letters', 'none'),
  get('/events', () => '/events', 'none'),
  get('/events/groups', () => '/events/groups', 'none'),
  get('/customers/:id/documents', (s) => `/customers/${s.customer}/documents`),
  get('/documents', () => '/documents?where[text]=Ada%20rewrites'),
  get('/documents/:id', (s) => `/documents/${s.document}`),
  get('/collections/:name/schema', () => '/collections/handles/schema'),
  get('/search', () => '/search?q=ada&facets=kind,tags'),
  // The reports read the DuckDB copy only; the database handles see nothing.
  get('/analytics/balances', () => '/analytics/balances', 'none'),
  get('/analytics/volume', () => '/analytics/volume', 'none'),
  get('/analytics/top-accounts', () => '/analytics/top-accounts', 'none'),
  get('/analytics/books', () => '/analytics/books', 'none'),
];

const CASES: readonly RouteCase[] = [
  ...WRITES,
  // Every GET route answers HEAD too, through the same handler (or, for file content, its own).
  ...GETS.flatMap((c) => [c, { ...c, method: 'HEAD' as const }]),
  { method: 'POST', route: '/cache/flush', url: () => '/cache/flush', payload: {}, status: 200, uses: 'none' },
  // The ETL reads one snapshot of the primary (a read-only transaction on writer) and writes only DuckDB.
  { method: 'POST', route: '/analytics/refresh', url: () => '/analytics/refresh', status: 200, uses: 'primary' },
  { method: 'POST', route: '/analytics/sql', url: () => '/analytics/sql', payload: { sql: 'select count(*) from books' }, status: 200, uses: 'none' },
  {
    method: 'POST', route: '/queues/:name/dead-letters/retry', url: () => '/queues/image.variants/dead-letters/retry',
    payload: {}, status: 200, uses: 'none',
  },
  { method: 'DELETE', route: '/queues/:name/dead-letters', url: () => '/queues/image.variants/dead-letters', status: 200, uses: 'none' },
  { method: 'DELETE', route: '/files/:id', url: (s) => `/files/${s.file}`, status: 204, uses: 'write' },
  { method: 'DELETE', route: '/api-keys/:id', url: (s) => `/api-keys/${s.apiKey}`, status: 204, uses: 'write' },
  { method: 'DELETE', route: '/documents/:id', url: (s) => `/documents/${s.document}`, status: 204, uses: 'write' },
  { method: 'DELETE', route: '/collections/:name/schema', url: () => '/collections/handles/schema', status: 204, uses: 'write' },
];

/**
 * `METHOD /path` of every route the server registers, as Fastify's `onRoute` hook reports them
 * (HEAD routes added for GET routes included): a second server over the same services, with
 * metrics of its own because metric names are registered once per registry.
 */
async function registeredRoutes(app: App): Promise<Set<string>> {
  const routes = new Set<string>();
  const deps = { ...app.deps, metrics: createMetrics(() => app.sql.poolStats(), { defaultMetrics: false }) };
  const server = await buildServer(deps, {
    logger: pino({ level: 'silent' }),
    onRoute: (route) => {
      for (const method of [route.method].flat()) routes.add(`${method} ${route.url}`);
    },
  });
  await server.ready();
  await server.close();
  return routes;
}

const TITLES = {
  write: 'writes on writer',
  read: 'reads on reader',
  primary: 'reads that decide a write on writer, writes nothing',
  none: 'no statement but the key lookup',
} as const;

/** Authentication's lookup of the presented key (by prefix), not the key list of `GET /api-keys`. */
const isKeyLookup = (q: RecordedQuery) => /from "api_keys" where "prefix" = /.test(q.sql) && !isWrite(q.sql);
/**
 * The background write of when keys were last used (every ~30 s, outside any request): should it
 * fall inside a case, it is not the request's statement.
 */
const isLastUsedFlush = (q: RecordedQuery) => /^update api_keys k set last_used_at\b/.test(q.sql);

/**
 * What breaks "a GET reads `reader` only, outside any transaction". The key lookup reads `writer`:
 * a replica may not have replayed a revocation yet.
 */
function readOnlyViolations(queries: readonly RecordedQuery[]): string[] {
  return queries
    .filter((q) => !(isKeyLookup(q) && q.handle === 'writer' && !q.viaTransaction))
    .filter((q) => q.handle !== 'reader' || q.viaTransaction || q.duringTransactionOf !== null || isWrite(q.sql))
    .map((q) => `${q.handle}${q.viaTransaction ? ' (transaction)' : ''}: ${q.sql}`);
}

for (const engine of ENGINES) {
  describe(`database handles on ${engine}`, () => {
    const log = new QueryLog();
    const state: State = { customer: 0, account: 0, file: 0, apiKey: 0, job: '', document: 0 };
    let db: TestDatabase;
    let app: App;
    let admin: Record<string, string>;

    beforeAll(async () => {
      db = await createTestDatabase(engine, `db-handles-${engine}`);
      // No background workers (as `serve --no-worker`): the relay, the job handlers and the audit
      // consumer write outside any request, and would land in the requests' records.
      app = await createApp(testConfig(db), {
        logger: pino({ level: 'silent' }),
        defaultMetrics: false,
        wrapDb: log.wrapDb,
        worker: false,
      });
      admin = { authorization: `Bearer ${app.bootstrapped?.adminKey}` };
    });
    afterAll(async () => {
      await app?.close();
      await db?.drop();
    });

    it('bootstrap decides and writes on writer, in one transaction', () => {
      const queries = log.take();
      expect(queries.length).toBeGreaterThan(0);
      expect(handleViolations(queries)).toEqual([]);
      expect(queries.filter((q) => q.handle !== 'writer' || !q.viaTransaction)).toEqual([]);
    });

    it('has a case for every registered route, and no case for a route that is gone', async () => {
      const registered = await registeredRoutes(app);
      expect(registered.size).toBeGreaterThan(20);
      const covered = new Set(CASES.map((c) => `${c.method} ${c.route}`));
      expect([...registered].filter((r) => !covered.has(r)).sort()).toEqual([]);
      expect([...covered].filter((r) => !registered.has(r)).sort()).toEqual([]);
    });

    for (const c of CASES) {
      it(`${c.method} ${c.route} → ${c.status}: ${TITLES[c.uses]}`, async () => {
        // A cached answer would read nothing: start each case from an empty cache.
        await app.deps.cache.flush('');
        log.take();
        const res = await app.http.inject({
          method: c.method,
          url: c.url(state),
          headers: { ...admin, ...c.headers },
          ...(c.payload === undefined ? {} : { payload: c.payload }),
        });
        expect(res.statusCode, res.body).toBe(c.status);
        if (c.method !== 'HEAD' && c.learn) c.learn(state, res.json());
        const queries = log.take().filter((q) => !isLastUsedFlush(q));
        expect(handleViolations(queries)).toEqual([]);
        if (c.uses === 'write' || c.uses === 'primary') {
          const onWriter = queries.filter((q) => q.handle === 'writer');
          if (c.uses === 'write') expect(onWriter.filter((q) => isWrite(q.sql)).length).toBeGreaterThan(0);
          else expect([queries.filter((q) => isWrite(q.sql)).map((q) => q.sql), onWriter.length > 0]).toEqual([[], true]);
          // Nothing of a write route reads `reader`.
          expect(queries.filter((q) => q.handle === 'reader').map((q) => q.sql)).toEqual([]);
        } else {
          expect(readOnlyViolations(queries)).toEqual([]);
          const work = queries.filter((q) => !isKeyLookup(q));
          if (c.uses === 'read') expect(work.length).toBeGreaterThan(0);
          else expect(work.map((q) => q.sql)).toEqual([]);
        }
      });
    }

    it('the checks fail when the handles are swapped', async () => {
      log.mislabel = true;
      try {
        log.take();
        const created = await app.http.inject({
          method: 'POST',
          url: '/customers',
          headers: admin,
          payload: { name: 'Swapped Handles', date_of_birth: '1970-01-01' },
        });
        expect(created.statusCode).toBe(201);
        expect(handleViolations(log.take())).toEqual(
          expect.arrayContaining([expect.stringMatching(/^write through reader: insert into "customers"/)]),
        );
        await app.deps.cache.flush('');
        const read = await app.http.inject({ method: 'GET', url: `/customers/${created.json().id}`, headers: admin });
        expect(read.statusCode).toBe(200);
        expect(readOnlyViolations(log.take()).length).toBeGreaterThan(0);
      } finally {
        log.mislabel = false;
      }
    });
  });
}
