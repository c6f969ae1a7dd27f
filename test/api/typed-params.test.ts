import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import Fastify from 'fastify';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { ERRORS } from '../../src/domain/errors.ts';
import { ID_KEYWORD, ID_PATTERN, idKeyword } from '../../src/http/id-keyword.ts';
import { IdParams } from '../../src/http/schemas.ts';
import { startTestApp, type TestApp } from '../support/app.ts';
import { ENGINES } from '../support/engines.ts';

/**
 * Path ids reach handlers as numbers, converted by the id keyword after the strict pattern passed,
 * with Ajv's own type coercion left off: every spelling the pattern refuses is still a 400.
 */

/** Spellings of an id that the pattern refuses; Ajv's coercion would take several of them as 1. */
const BAD_IDS = ['01', '1e3', '0x1', '%201', '1%20', '+1', '1.0', '0', '-1', '1000000000000000', 'abc', '%E2%82%AC'];
const LARGEST = 999_999_999_999_999;

describe('the id keyword', () => {
  const app = Fastify({
    ajv: { customOptions: { coerceTypes: false, removeAdditional: false, allErrors: false }, plugins: [idKeyword] },
  }).withTypeProvider<TypeBoxTypeProvider>();
  app.get('/things/:id', { schema: { params: IdParams } }, async (request) => ({
    type: typeof request.params.id,
    id: request.params.id,
  }));
  // The keyword without the pattern beside it still refuses what is not an id.
  app.get('/bare/:id', { schema: { params: { type: 'object', properties: { id: { [ID_KEYWORD]: true } } } } }, async (request) => ({
    params: request.params,
  }));
  afterAll(() => app.close());

  it('hands the handler a number', async () => {
    for (const id of [1, 42, LARGEST]) {
      const res = await app.inject({ method: 'GET', url: `/things/${id}` });
      expect([id, res.statusCode, res.json()]).toEqual([id, 200, { type: 'number', id }]);
    }
  });

  it('refuses every other spelling', async () => {
    for (const id of BAD_IDS) {
      const res = await app.inject({ method: 'GET', url: `/things/${id}` });
      expect([id, res.statusCode]).toEqual([id, 400]);
    }
    for (const id of BAD_IDS) {
      const res = await app.inject({ method: 'GET', url: `/bare/${id}` });
      expect([id, res.statusCode]).toEqual([id, 400]);
    }
    const ok = await app.inject({ method: 'GET', url: '/bare/7' });
    expect([ok.statusCode, ok.json()]).toEqual([200, { params: { id: 7 } }]);
  });
});

for (const engine of ENGINES) {
  describe(engine, () => {
    let t: TestApp;

    beforeAll(async () => {
      t = await startTestApp(engine, 'api-typed-params');
    });

    afterAll(async () => {
      await t?.close();
    });

    /** Routes with an id, and the service method each hands the id to (as its second argument). */
    const routes = () =>
      [
        { method: 'GET', path: (id: string) => `/customers/${id}`, spy: vi.spyOn(t.app.deps.customers, 'getCached') },
        { method: 'PATCH', path: (id: string) => `/customers/${id}`, body: {}, spy: vi.spyOn(t.app.deps.customers, 'update') },
        { method: 'GET', path: (id: string) => `/customers/${id}/accounts`, spy: vi.spyOn(t.app.deps.accounts, 'listForCustomer') },
        { method: 'GET', path: (id: string) => `/accounts/${id}`, spy: vi.spyOn(t.app.deps.accounts, 'getCached') },
        { method: 'GET', path: (id: string) => `/accounts/${id}/entries`, spy: vi.spyOn(t.app.deps.accounts, 'entries') },
        {
          method: 'POST',
          path: (id: string) => `/accounts/${id}/deposits`,
          body: { amount: 1 },
          spy: vi.spyOn(t.app.deps.movements, 'deposit'),
        },
        { method: 'GET', path: (id: string) => `/customers/${id}/files`, spy: vi.spyOn(t.app.deps.files, 'list') },
        { method: 'GET', path: (id: string) => `/files/${id}`, spy: vi.spyOn(t.app.deps.files, 'get') },
        { method: 'DELETE', path: (id: string) => `/files/${id}`, spy: vi.spyOn(t.app.deps.files, 'delete') },
      ] as const;

    it('route handlers pass path ids to the services as numbers', async () => {
      for (const route of routes()) {
        for (const id of [1, LARGEST]) {
          route.spy.mockClear();
          const url = route.path(String(id));
          await t.app.http.inject({ method: route.method, url, headers: t.admin, ...('body' in route ? { payload: route.body } : {}) });
          const arg: unknown = route.spy.mock.calls[0]?.[1];
          expect([route.method, url, typeof arg, arg]).toEqual([route.method, url, 'number', id]);
        }
        route.spy.mockRestore();
      }
    });

    it('every other spelling of an id is a 400 DATABANK_ERR_VALIDATION that reaches no service', async () => {
      for (const route of routes()) {
        for (const id of BAD_IDS) {
          const url = route.path(id);
          const res = await t.app.http.inject({
            method: route.method,
            url,
            headers: t.admin,
            ...('body' in route ? { payload: route.body } : {}),
          });
          expect([route.method, url, res.statusCode, res.json<{ code: string }>().code]).toEqual([
            route.method,
            url,
            ERRORS.DATABANK_ERR_VALIDATION.status,
            'DATABANK_ERR_VALIDATION',
          ]);
        }
        expect([route.method, route.spy.mock.calls.length]).toEqual([route.method, 0]);
        route.spy.mockRestore();
      }
    });

    it('the OpenAPI document shows ids as patterned text, with the keyword as an extension', async () => {
      const res = await t.app.http.inject({ method: 'GET', url: '/openapi.json', headers: t.admin });
      expect(res.statusCode).toBe(200);
      const doc = res.json<{ paths: Record<string, Record<string, { parameters?: Array<Record<string, unknown>> }>> }>();
      const idParameters = Object.entries(doc.paths).flatMap(([path, operations]) =>
        Object.entries(operations).flatMap(([method, op]) =>
          (op.parameters ?? []).filter((p) => p.in === 'path').map((p) => ({ at: `${method} ${path}`, ...p })),
        ),
      );
      // Job ids are UUIDs, variant, queue and collection names words: the rest are integer ids.
      const others = idParameters.filter((p) => (p as { name?: string }).name !== 'id' || p.at.includes(' /jobs/'));
      expect(others.map((p) => `${p.at} ${String((p as { name?: string }).name)}`).sort()).toEqual([
        'delete /collections/{name}/schema name',
        'delete /queues/{name}/dead-letters name',
        'get /collections/{name}/schema name',
        'get /files/{id}/variants/{name} name',
        'get /jobs/{id} id',
        'get /queues/{name}/dead-letters name',
        'post /queues/{name}/dead-letters/retry name',
        'put /collections/{name}/schema name',
      ]);
      expect((others.find((p) => p.at === 'get /jobs/{id}') as { schema?: unknown } | undefined)?.schema).toEqual({ type: 'string', format: 'uuid' });
      expect(idParameters.length).toBeGreaterThanOrEqual(10);
      for (const parameter of idParameters.filter((p) => !others.includes(p))) {
        expect(parameter).toEqual({
          at: parameter.at,
          in: 'path',
          name: 'id',
          required: true,
          description: 'a positive integer id',
          schema: { type: 'string', pattern: ID_PATTERN, [ID_KEYWORD]: true },
        });
      }
      // Every schema in the document uses only JSON Schema keywords, or extensions (`x-…`).
      const unknown = schemaKeywords(doc).filter((k) => !JSON_SCHEMA_KEYWORDS.has(k) && !k.startsWith('x-'));
      expect(unknown).toEqual([]);
    });
  });
}

/** The JSON Schema keywords the route schemas use. */
const JSON_SCHEMA_KEYWORDS = new Set([
  'type',
  'pattern',
  'properties',
  'required',
  'additionalProperties',
  'items',
  'anyOf',
  'oneOf',
  'allOf',
  'const',
  'enum',
  'minimum',
  'maximum',
  'minLength',
  'maxLength',
  'minItems',
  'maxItems',
  'description',
  'title',
  'format',
  'default',
  'examples',
]);

/** Every keyword of every schema object (`schema` values, recursively) in an OpenAPI document. */
function schemaKeywords(node: unknown, inSchema = false): string[] {
  if (Array.isArray(node)) return node.flatMap((n) => schemaKeywords(n, inSchema));
  if (node === null || typeof node !== 'object') return [];
  const found: string[] = [];
  for (const [key, value] of Object.entries(node)) {
    if (inSchema) {
      found.push(key);
      // Property names are not keywords; their schemas are.
      if (key === 'properties' && value && typeof value === 'object') {
        for (const sub of Object.values(value)) found.push(...schemaKeywords(sub, true));
        continue;
      }
      found.push(...schemaKeywords(value, key !== 'const' && key !== 'enum' && key !== 'examples' && key !== 'default'));
    } else {
      found.push(...schemaKeywords(value, key === 'schema'));
    }
  }
  return [...new Set(found)];
}
