import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  Bank,
  comparable,
  expectOk,
  json,
  rawRequest,
  startAttackServer,
  type Answer,
  type AttackServer,
  type CallOptions,
  type Client,
  type RawAnswer,
} from '../support/attack-server.ts';
import { ENGINES } from '../support/engines.ts';
import { until } from '../support/until.ts';

/**
 * Broken object-level authorization, against a real `databank serve`: customer A's key aims every
 * route that takes an id at customer B's customer, accounts, files and keys. Each answer must be
 * indistinguishable from the answer for an id that does not exist (status, every header but the
 * clock, the request id and the rate counters, and the body), must carry nothing of B's, and must
 * change nothing of B's. The routes are read from the running server's `GET /openapi.json`, so a
 * route added later is attacked without a change here (one whose id kind or body is unknown fails
 * until it is named below).
 */

/** An id no customer, account, file or key has in these small databases (within the id pattern). */
const MISSING = 987_654_321;

/** What `{id}` names, from the path segment before it. */
const KIND_OF_SEGMENT: Readonly<Record<string, Kind>> = {
  customers: 'customer',
  accounts: 'account',
  files: 'file',
  'api-keys': 'apiKey',
  jobs: 'job',
  variants: 'variant',
  queues: 'queue',
  documents: 'document',
  collections: 'collection',
};
type Kind = 'customer' | 'account' | 'file' | 'apiKey' | 'job' | 'variant' | 'queue' | 'document' | 'collection';

/** A job id no job has; names (a variant, a queue) are the same for B and for a missing id. */
const MISSING_JOB = '00000000-0000-7000-8000-000000000000';
const missingId = (kind: Kind): number | string =>
  kind === 'job' ? MISSING_JOB : kind === 'variant' ? 'web' : kind === 'queue' ? 'image.variants' : kind === 'collection' ? 'notes' : MISSING;
const MONTH = new Date().toISOString().slice(0, 7);

/** Bodies that would be valid for a caller allowed to use the route, so that only authorization refuses. */
const REQUESTS: Readonly<Record<string, { query?: string; options?: Omit<CallOptions, 'key'> }>> = {
  'PATCH /customers/{id}': { options: { body: { name: 'Mallory Renamed' } } },
  'POST /customers/{id}/accounts': { options: { body: { account_type: 'savings' } } },
  'POST /customers/{id}/files': {
    query: '?filename=planted.txt',
    options: { body: 'planted by the attacker\n', headers: { 'content-type': 'text/plain' } },
  },
  'POST /accounts/{id}/deposits': { options: { body: { amount: 1 } } },
  'POST /accounts/{id}/withdrawals': { options: { body: { amount: 1 } } },
  'POST /api-keys/{id}/rotate': {},
  'POST /accounts/{id}/statements': { options: { body: { month: MONTH } } },
  'POST /customers/{id}/documents': { options: { body: { collection: 'notes', body: { planted: 'by the attacker' } } } },
  'PATCH /documents/{id}': { options: { body: { body: { planted: 'by the attacker' } }, headers: { 'if-match': '"1"' } } },
  'PUT /collections/{name}/schema': { options: { body: { type: 'object', required: ['planted'] } } },
};

interface OpenApiOperation {
  readonly requestBody?: { content?: Record<string, { schema?: JsonSchema }> };
}
interface JsonSchema {
  readonly type?: string;
  readonly properties?: Record<string, JsonSchema>;
  readonly required?: readonly string[];
  readonly minimum?: number;
  readonly anyOf?: readonly JsonSchema[];
  readonly const?: unknown;
  readonly enum?: readonly unknown[];
}

interface Route {
  readonly method: string;
  /** As OpenAPI writes it: `/customers/{id}/accounts`. */
  readonly path: string;
  readonly op: OpenApiOperation;
}

/** A minimal value for a schema, for a route this file does not name (a route added later). */
function sample(schema: JsonSchema | undefined): unknown {
  if (!schema) return {};
  if (schema.const !== undefined) return schema.const;
  if (schema.enum) return schema.enum[0];
  if (schema.anyOf) return sample(schema.anyOf[0]);
  switch (schema.type) {
    case 'object':
      return Object.fromEntries((schema.required ?? []).map((name) => [name, sample(schema.properties?.[name])]));
    case 'integer':
    case 'number':
      return schema.minimum ?? 1;
    case 'boolean':
      return false;
    case 'array':
      return [];
    default:
      return 'x';
  }
}

function requestFor(route: Route): { query: string; options: Omit<CallOptions, 'key'> } {
  const known = REQUESTS[`${route.method} ${route.path}`];
  if (known) return { query: known.query ?? '', options: known.options ?? {} };
  const schema = route.op.requestBody?.content?.['application/json']?.schema;
  return { query: '', options: route.method === 'GET' || route.method === 'HEAD' || route.method === 'DELETE' ? {} : { body: sample(schema) as object } };
}

/** The path with every `{param}` replaced by the id of its kind that `ids` gives. */
function fill(path: string, ids: (kind: Kind) => number | string): string {
  const segments = path.split('/');
  return segments
    .map((segment, i) => {
      if (!segment.startsWith('{')) return segment;
      const kind = KIND_OF_SEGMENT[segments[i - 1] ?? ''];
      if (!kind) throw new Error(`no id kind is known for ${segment} in ${path}: name it in KIND_OF_SEGMENT`);
      return String(ids(kind));
    })
    .join('/');
}

async function routesOf(admin: Client): Promise<Route[]> {
  const doc = await admin.read<{ paths: Record<string, Record<string, OpenApiOperation>> }>('/openapi.json');
  const routes: Route[] = [];
  for (const [path, methods] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(methods)) {
      routes.push({ method: method.toUpperCase(), path, op });
      // Fastify answers HEAD for every GET; the document lists only the GETs.
      if (method === 'get') routes.push({ method: 'HEAD', path, op });
    }
  }
  return routes;
}

/** Every marker of customer B's data; none may appear in an answer to A. */
const B_NAME = 'Victoria Victim-7f3a';
const B_FILE_NAME = 'victim-statement-7f3a.txt';
const B_FILE_TEXT = 'VICTIM SECRET 7f3a: account plans\n';

interface Setup {
  bank: Bank;
  a: { id: number; key: string; keyId: number; account: number };
  b: { id: number; key: string; keyId: number; usd: number; eur: number; usd2: number; file: number; job: string; document: number };
}

describe.each(ENGINES)('BOLA on databank serve (%s)', (engine) => {
  let server: AttackServer;
  let s: Setup;
  /** B's data as B sees it, before any attack. */
  let before: Record<string, string>;

  const snapshot = async (): Promise<Record<string, string>> => {
    const asB = s.bank.as(s.b.key);
    const paths = [
      `/customers/${s.b.id}`,
      `/customers/${s.b.id}/accounts`,
      `/accounts/${s.b.usd}`,
      `/accounts/${s.b.usd}/entries`,
      `/accounts/${s.b.eur}`,
      `/customers/${s.b.id}/files`,
      `/files/${s.b.file}`,
      `/files/${s.b.file}/content`,
      `/documents/${s.b.document}`,
      `/customers/${s.b.id}/documents`,
    ];
    const out: Record<string, string> = {};
    for (const path of paths) {
      const res = await asB.get(path);
      if (res.status !== 200) throw new Error(`B reading ${path}: ${res.status} ${res.text}`);
      out[path] = res.text;
    }
    const keys = await s.bank.all<{ id: number; revoked_at: string | null }>('/api-keys');
    out['api-keys'] = JSON.stringify(keys.map((k) => [k.id, k.revoked_at]));
    return out;
  };

  beforeAll(async () => {
    server = await startAttackServer(engine, 'bola', {
      // Every 401 of the "no key" case counts against the address; that limit is abuse.test.ts's.
      DATABANK_AUTH_FAILURE_LIMIT_PER_MINUTE: '100000',
      DATABANK_RATE_LIMIT_PER_MINUTE: '100000',
    });
    const bank = new Bank(server);
    const aId = await bank.customer('Mallory Attacker');
    const bId = await bank.customer(B_NAME, '1971-04-02');
    const aKey = await bank.key(aId);
    const bKey = await bank.key(bId);
    const aAccount = await bank.account(aId);
    const bUsd = await bank.account(bId);
    const bEur = await bank.account(bId, 'EUR', 'savings');
    const bUsd2 = await bank.account(bId, 'USD', 'savings');
    await bank.deposit(aAccount, 100);
    await bank.deposit(bUsd, 7_777);
    await bank.deposit(bEur, 3_333);
    const upload = await bank.as(bKey.key).post(`/customers/${bId}/files?filename=${B_FILE_NAME}`, B_FILE_TEXT, {
      headers: { 'content-type': 'text/plain' },
    });
    const file = expectOk<{ file_id: number }>(upload, 201).file_id;
    // A job of B's, finished before the snapshot (its statement is one of B's files).
    const asked = await bank.as(bKey.key).post(`/accounts/${bUsd}/statements`, { month: MONTH });
    const job = expectOk<{ job_id: string }>(asked, 202).job_id;
    await until(async () => json<{ state: string }>(await bank.as(bKey.key).get(`/jobs/${job}`)).state, (state) => state === 'completed', {
      what: "B's statement job",
    });
    const noted = await bank.as(bKey.key).post(`/customers/${bId}/documents`, { collection: 'notes', body: { text: `${B_NAME} keeps 7777 here` } });
    const document = expectOk<{ document_id: number }>(noted, 201).document_id;
    s = {
      bank,
      a: { id: aId, key: aKey.key, keyId: aKey.id, account: aAccount },
      b: { id: bId, key: bKey.key, keyId: bKey.id, usd: bUsd, eur: bEur, usd2: bUsd2, file, job, document },
    };
    before = await snapshot();
  });

  afterAll(async () => {
    if (server) expect(await server.close()).toBe(0);
  });

  const idsOfB = (kind: Kind): number | string =>
    ({ customer: s.b.id, account: s.b.usd, file: s.b.file, apiKey: s.b.keyId, job: s.b.job, variant: 'web', queue: 'image.variants', document: s.b.document, collection: 'notes' })[kind];

  /** What differs between the two answers, or null; and whether B's data shows in the first. */
  const difference = (victim: Answer, missing: Answer): string | null => {
    const [v, m] = [comparable(victim), comparable(missing)];
    if (JSON.stringify(v) === JSON.stringify(m)) return null;
    return `${victim.method} ${victim.path} → ${JSON.stringify(v)}\n  vs ${missing.method} ${missing.path} → ${JSON.stringify(m)}`;
  };
  const leaks = (answer: Answer): boolean =>
    [B_NAME, B_FILE_NAME, B_FILE_TEXT.trim(), '7777', '3333'].some((marker) => answer.text.includes(marker)) ||
    answer.rawHeaders.some(([, value]) => value.includes(B_FILE_NAME));

  it('the routes come from /openapi.json and include every id route this release has', async () => {
    const routes = await routesOf(s.bank.admin);
    const names = routes.map((r) => `${r.method} ${r.path}`);
    for (const expected of [
      'GET /customers/{id}',
      'PATCH /customers/{id}',
      'POST /customers/{id}/accounts',
      'GET /customers/{id}/accounts',
      'GET /accounts/{id}',
      'GET /accounts/{id}/entries',
      'POST /accounts/{id}/deposits',
      'POST /accounts/{id}/withdrawals',
      'POST /customers/{id}/files',
      'GET /customers/{id}/files',
      'GET /files/{id}',
      'HEAD /files/{id}/content',
      'GET /files/{id}/content',
      'DELETE /files/{id}',
      'DELETE /api-keys/{id}',
      'POST /api-keys/{id}/rotate',
      'POST /customers/{id}/documents',
      'GET /customers/{id}/documents',
      'GET /documents/{id}',
      'PATCH /documents/{id}',
      'DELETE /documents/{id}',
    ]) {
      expect(names).toContain(expected);
    }
    // Every id route's ids are of a known kind (a new kind fails here, naming the route).
    for (const route of routes) fill(route.path, () => 1);
    // The comparison sees a difference where there is one: A's own customer against a missing one.
    const asA = s.bank.as(s.a.key);
    expect(difference(await asA.get(`/customers/${s.a.id}`), await asA.get(`/customers/${MISSING}`))).not.toBeNull();
  });

  // Twice: first with every cache cold, then after B and the admin have read (and cached) all of B's data.
  for (const round of ['cold caches', 'warm caches'] as const) {
    it(`every id route: B's ids with A's key answer exactly as ids that do not exist (${round})`, async () => {
      const asA = s.bank.as(s.a.key);
      // Cold: the setup's reads are flushed from the cache (keys, customers, accounts, "not found"s).
      if (round === 'cold caches') expect((await s.bank.admin.post('/cache/flush', {})).status).toBe(200);
      if (round === 'warm caches') {
        for (const client of [s.bank.as(s.b.key), s.bank.admin]) {
          for (const path of Object.keys(before).filter((p) => p.startsWith('/'))) expect((await client.get(path)).status).toBe(200);
        }
      }
      const routes = (await routesOf(s.bank.admin)).filter((r) => r.path.includes('{') && !r.path.startsWith('/api-keys'));
      const differences: string[] = [];
      const leaked: string[] = [];
      const statuses: string[] = [];
      for (const route of routes) {
        const { query, options } = requestFor(route);
        const victim = await asA.call(route.method, fill(route.path, idsOfB) + query, options);
        const missing = await asA.call(route.method, fill(route.path, missingId) + query, options);
        const diff = difference(victim, missing);
        if (diff) differences.push(diff);
        if (leaks(victim)) leaked.push(`${victim.method} ${victim.path}: ${victim.text.slice(0, 300)}`);
        // The refusal is authorization's: 404 for routes of the owner, 403 for the bank's own.
        statuses.push(`${route.method} ${route.path} ${victim.status}`);
        if (route.method !== 'HEAD') {
          const body = json(victim);
          expect([403, 404], `${victim.method} ${victim.path}: ${victim.text}`).toContain(victim.status);
          expect(body).toEqual(
            victim.status === 404
              ? { statusCode: 404, code: 'DATABANK_ERR_NOT_FOUND', message: 'No such resource' }
              : { statusCode: 403, code: 'DATABANK_ERR_FORBIDDEN', message: 'This API key may not do that' },
          );
        } else {
          expect([403, 404], `${victim.method} ${victim.path}`).toContain(victim.status);
        }
      }
      expect(differences).toEqual([]);
      expect(leaked).toEqual([]);
      expect(statuses.length).toBeGreaterThanOrEqual(15);
    });
  }

  it("conditional and range requests on B's file with A's key answer exactly as for a file that does not exist", async () => {
    const asA = s.bank.as(s.a.key);
    const meta = json<{ sha256: string }>(await s.bank.as(s.b.key).get(`/files/${s.b.file}`));
    const variants: Array<Record<string, string>> = [
      { 'if-none-match': `"${meta.sha256}"` },
      { 'if-none-match': '*' },
      { 'if-modified-since': new Date(Date.now() + 86_400_000).toUTCString() },
      { range: 'bytes=0-0' },
      { range: 'bytes=100000-' },
      { range: 'bytes=0-0', 'if-range': `"${meta.sha256}"` },
      { 'accept-encoding': 'br, gzip' },
    ];
    const differences: string[] = [];
    for (const headers of variants) {
      for (const method of ['GET', 'HEAD']) {
        const victim = await asA.call(method, `/files/${s.b.file}/content`, { headers });
        const missing = await asA.call(method, `/files/${MISSING}/content`, { headers });
        const diff = difference(victim, missing);
        if (diff) differences.push(`${JSON.stringify(headers)}: ${diff}`);
        expect(victim.status, `${method} ${JSON.stringify(headers)}`).toBe(404);
        expect(leaks(victim)).toBe(false);
      }
    }
    expect(differences).toEqual([]);
  });

  it("paging queries and oversized uploads aimed at B answer exactly as when aimed at a missing id", async () => {
    const asA = s.bank.as(s.a.key);
    const b64 = (text: string) => Buffer.from(text).toString('base64url');
    const differences: string[] = [];
    for (const path of ['/customers/{id}/accounts', '/customers/{id}/files', '/accounts/{id}/entries']) {
      for (const query of ['?limit=1', `?cursor=${b64('id:1')}`, '?cursor=AAAA', '?limit=0', '?content_type=text/plain']) {
        const kind = path.startsWith('/accounts') ? s.b.usd : s.b.id;
        const victim = await asA.get(path.replace('{id}', String(kind)) + query);
        const missing = await asA.get(path.replace('{id}', String(MISSING)) + query);
        const diff = difference(victim, missing);
        if (diff) differences.push(diff);
        expect(leaks(victim)).toBe(false);
      }
    }
    // An upload declaring more than the upload limit (and sending none of it), and one with a
    // multipart body: the owner check answers first, the same for both.
    for (const headers of [
      { 'content-type': 'text/plain', 'content-length': String(30 * 1024 * 1024) },
      { 'content-type': 'multipart/form-data; boundary=x' },
    ]) {
      const send = (customer: number) =>
        rawRequest(
          server.port,
          `POST /customers/${customer}/files?filename=big.txt HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${s.a.key}\r\n` +
            Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join('') +
            (headers['content-length'] ? '' : 'content-length: 5\r\n') +
            'Connection: close\r\n\r\n' +
            (headers['content-length'] ? '' : '--x--'),
        );
      const [victim, missing] = [await send(s.b.id), await send(MISSING)];
      const strip = (a: RawAnswer) => ({
        status: a.status,
        headers: a.headers.filter(([n]) => !['date', 'x-request-id', 'ratelimit-remaining', 'ratelimit-reset', 'ratelimit-limit'].includes(n)),
        body: a.body.toString(),
      });
      expect(strip(victim), JSON.stringify(headers)).toEqual(strip(missing));
      expect(victim.status).toBe(404);
    }
    expect(differences).toEqual([]);
  });

  it("lists with A's key hold only A's data", async () => {
    const asA = s.bank.as(s.a.key);
    for (const path of ['/customers', '/customers?born_after=1900-01-01', '/customers?limit=100']) {
      const res = await asA.get(path);
      expect(res.status).toBe(200);
      expect(json<{ result: Array<{ id: number }> }>(res).result.map((c) => c.id)).toEqual([s.a.id]);
      expect(leaks(res)).toBe(false);
    }
    for (const path of [`/customers/${s.a.id}/accounts`, `/customers/${s.a.id}/files`, `/accounts/${s.a.account}/entries`]) {
      const res = await asA.get(path);
      expect(res.status).toBe(200);
      expect(leaks(res)).toBe(false);
    }
  });

  it("transfers out of B's accounts with A's key answer exactly as transfers out of an account that does not exist", async () => {
    const asA = s.bank.as(s.a.key);
    // B's own replay key: A sending it must learn nothing of B's stored answer.
    for (const key of ['victim-transfer-1', 'victim-transfer-2']) {
      const own = await s.bank.as(s.b.key).post('/transfers', { from_account_id: s.b.usd, to_account_id: s.b.usd2, amount: 1 }, {
        headers: { 'idempotency-key': key },
      });
      expect(own.status).toBe(201);
    }
    before = await snapshot();

    const cases: Array<{
      what: string;
      victim: object;
      missing: object;
      headers?: [Record<string, string>, Record<string, string>];
      /** Refused from the request alone (both sides one account), before any account is read. */
      sameAccount?: true;
    }> = [
      { what: 'to A', victim: { from_account_id: s.b.usd, to_account_id: s.a.account, amount: 1 }, missing: { from_account_id: MISSING, to_account_id: s.a.account, amount: 1 } },
      {
        what: 'more than B holds',
        victim: { from_account_id: s.b.usd, to_account_id: s.a.account, amount: 100_000_000_000_000 },
        missing: { from_account_id: MISSING, to_account_id: s.a.account, amount: 100_000_000_000_000 },
      },
      {
        what: 'from B to B',
        victim: { from_account_id: s.b.usd, to_account_id: s.b.usd2, amount: 1 },
        missing: { from_account_id: MISSING, to_account_id: s.b.usd2, amount: 1 },
      },
      {
        what: 'the same account on both sides',
        victim: { from_account_id: s.b.usd, to_account_id: s.b.usd, amount: 1 },
        missing: { from_account_id: MISSING, to_account_id: MISSING, amount: 1 },
        sameAccount: true,
      },
      {
        what: "B's EUR account to A's USD one (a currency mismatch would tell the currency)",
        victim: { from_account_id: s.b.eur, to_account_id: s.a.account, amount: 1 },
        missing: { from_account_id: MISSING, to_account_id: s.a.account, amount: 1 },
      },
      {
        what: "with B's idempotency key and B's very request",
        victim: { from_account_id: s.b.usd, to_account_id: s.b.usd2, amount: 1 },
        missing: { from_account_id: s.b.usd, to_account_id: s.b.usd2, amount: 1 },
        headers: [{ 'idempotency-key': 'victim-transfer-1' }, { 'idempotency-key': 'never-used-by-anyone' }],
      },
      {
        what: "with B's idempotency key and another body",
        victim: { from_account_id: s.b.usd, to_account_id: s.a.account, amount: 5 },
        missing: { from_account_id: MISSING, to_account_id: s.a.account, amount: 5 },
        headers: [{ 'idempotency-key': 'victim-transfer-2' }, { 'idempotency-key': 'never-used-by-anyone-2' }],
      },
      {
        what: 'with an idempotency key of its own, then replayed',
        victim: { from_account_id: s.b.usd, to_account_id: s.a.account, amount: 2 },
        missing: { from_account_id: MISSING, to_account_id: s.a.account, amount: 2 },
        headers: [{ 'idempotency-key': 'attack-victim-1' }, { 'idempotency-key': 'attack-missing-1' }],
      },
    ];
    const differences: string[] = [];
    for (const c of cases) {
      // Each case twice: the second is a replay when an idempotency key is sent.
      for (let i = 0; i < 2; i++) {
        const victim = await asA.post('/transfers', c.victim, { headers: c.headers?.[0] });
        const missing = await asA.post('/transfers', c.missing, { headers: c.headers?.[1] });
        const diff = difference(victim, missing);
        if (diff) differences.push(`${c.what}: ${diff}`);
        expect(json(victim), c.what).toEqual(
          c.sameAccount
            ? { statusCode: 400, code: 'DATABANK_ERR_SAME_ACCOUNT', message: 'A transfer needs two different accounts' }
            : { statusCode: 404, code: 'DATABANK_ERR_NOT_FOUND', message: 'No such resource' },
        );
        expect(leaks(victim)).toBe(false);
      }
    }
    expect(differences).toEqual([]);
    expect(await snapshot()).toEqual(before);
    expect(await s.bank.balance(s.a.account)).toBe(100);
  });

  it('customer keys on the routes of the bank itself: 403, and nothing done', async () => {
    const asA = s.bank.as(s.a.key);
    const keys = async () =>
      (await s.bank.all<Record<string, unknown>>('/api-keys')).map(({ last_used_at: _used, ...key }) => key);
    const keysBefore = await keys();
    const refused: Array<[string, string, Omit<CallOptions, 'key'>]> = [
      ['POST', '/customers', { body: { name: 'Eve Planted', date_of_birth: '1990-01-01' } }],
      ['POST', `/accounts/${s.a.account}/deposits`, { body: { amount: 1_000_000 } }],
      ['POST', `/accounts/${s.a.account}/withdrawals`, { body: { amount: 1 } }],
      ['POST', '/fees', { body: { amount: 1, reference: 'bola-fee' } }],
      ['GET', '/metrics', {}],
      ['GET', '/cache/stats', {}],
      ['POST', '/cache/flush', { body: {} }],
    ];
    // Every route of the key admin API, as the running server lists it.
    for (const route of (await routesOf(s.bank.admin)).filter((r) => r.path.startsWith('/api-keys') && r.method !== 'HEAD')) {
      const body = route.method === 'POST' && !route.path.includes('{') ? { role: 'admin' } : undefined;
      for (const id of [s.b.keyId, s.a.keyId, MISSING]) {
        refused.push([route.method, fill(route.path, () => id), body ? { body } : {}]);
      }
      if (route.method === 'POST' && !route.path.includes('{')) {
        refused.push([route.method, route.path, { body: { role: 'customer', customer_id: s.b.id } }]);
        refused.push([route.method, route.path, { body: { role: 'customer', customer_id: s.a.id } }]);
      }
    }
    const wrong: string[] = [];
    for (const [method, path, options] of refused) {
      const res = await asA.call(method, path, options);
      const body = method === 'HEAD' ? null : res.text;
      if (res.status !== 403 || (body !== null && body !== '{"statusCode":403,"code":"DATABANK_ERR_FORBIDDEN","message":"This API key may not do that"}')) {
        wrong.push(`${method} ${path} → ${res.status} ${res.text.slice(0, 200)}`);
      }
    }
    expect(wrong).toEqual([]);
    // The refused revocations and rotations of B's key are indistinguishable from a missing key's.
    for (const route of (await routesOf(s.bank.admin)).filter((r) => r.path.startsWith('/api-keys/{'))) {
      const victim = await asA.call(route.method, fill(route.path, () => s.b.keyId));
      const missing = await asA.call(route.method, fill(route.path, () => MISSING));
      expect(difference(victim, missing)).toBeNull();
    }
    // Nothing was made, revoked or rotated; B's and A's keys still work; no money moved.
    expect(await keys()).toEqual(keysBefore);
    expect((await s.bank.as(s.b.key).get(`/customers/${s.b.id}`)).status).toBe(200);
    expect((await asA.get(`/customers/${s.a.id}`)).status).toBe(200);
    expect(await s.bank.balance(s.a.account)).toBe(100);
    expect((await s.bank.all<{ name: string }>('/customers')).map((c) => c.name)).not.toContain('Eve Planted');
  });

  it('without a key (or with a broken one) every API route answers 401; only the health checks are public', async () => {
    const routes = (await routesOf(s.bank.admin)).filter((r) => r.method !== 'HEAD');
    const anonymous = s.bank.as(null);
    const wrong: string[] = [];
    const UNAUTHORIZED = '{"statusCode":401,"code":"DATABANK_ERR_UNAUTHORIZED","message":"A valid API key is required"}';
    const [, adminPrefix] = /^dbk_([0-9a-f]{16})_/.exec(server.adminKey) ?? [];
    const authorizations = [
      undefined,
      'Bearer',
      'Basic YWRtaW46YWRtaW4=',
      `Bearer dbk_${adminPrefix}_${'A'.repeat(43)}`, // the admin key's prefix with a guessed secret
      `Bearer ${server.adminKey}x`,
      `Bearer ${server.adminKey.toUpperCase()}`,
      `Bearer ${s.a.key} ${s.b.key}`,
    ];
    for (const route of [...routes, { method: 'GET', path: '/openapi.json', op: {} }, { method: 'GET', path: '/metrics', op: {} }]) {
      const { query, options } = requestFor(route);
      const path = fill(route.path, () => 1) + query;
      for (const authorization of route === routes[0] ? authorizations : [undefined]) {
        const res = await anonymous.call(route.method, path, {
          ...options,
          headers: { ...(options.headers ?? {}), ...(authorization ? { authorization } : {}) },
        });
        if (res.status !== 401 || res.text !== UNAUTHORIZED || res.headers['www-authenticate'] !== 'Bearer realm="databank"') {
          wrong.push(`${route.method} ${path} (${authorization ?? 'no key'}) → ${res.status} ${res.text.slice(0, 200)}`);
        }
      }
    }
    expect(wrong).toEqual([]);
    expect((await anonymous.get('/healthz')).text).toBe('{"status":"ok"}');
    expect((await anonymous.get('/readyz')).text).toBe('{"status":"ready"}');
  });

  it("B's data is exactly as it was, and B's key still works", async () => {
    expect(await snapshot()).toEqual(before);
    const asB = s.bank.as(s.b.key);
    const content = await asB.get(`/files/${s.b.file}/content`);
    expect(content.text).toBe(B_FILE_TEXT);
    expect(json<{ name: string }>(await asB.get(`/customers/${s.b.id}`)).name).toBe(B_NAME);
    expect(server.running()).toBe(true);
  });
});
