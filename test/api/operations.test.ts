import { Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../../src/logger.ts';
import { startTestApp, type TestApp } from '../support/app.ts';
import { ENGINES } from '../support/engines.ts';

for (const engine of ENGINES) {
  describe(`operations on ${engine}`, () => {
    let t: TestApp;
    const lines: string[] = [];
    beforeAll(async () => {
      const sink = new Writable({
        write(chunk: Buffer, _enc, done) {
          lines.push(...chunk.toString().split('\n').filter(Boolean));
          done();
        },
      });
      t = await startTestApp(engine, `operations-${engine}`, {}, createLogger('info', sink));
    });
    afterAll(async () => t?.close());

    it('healthz and readyz answer without a key', async () => {
      const health = await t.app.http.inject({ method: 'GET', url: '/healthz' });
      expect(health.statusCode).toBe(200);
      expect(health.body).toBe('{"status":"ok"}');
      const ready = await t.app.http.inject({ method: 'GET', url: '/readyz' });
      expect(ready.statusCode).toBe(200);
      expect(ready.json()).toEqual({ status: 'ready' });
    });

    it('logs a request id on every request line and never the key', async () => {
      const res = await t.app.http.inject({
        method: 'GET',
        url: '/customers/1',
        headers: { ...t.admin, 'x-request-id': 'trace-123' },
      });
      expect(res.headers['x-request-id']).toBe('trace-123');
      const odd = await t.app.http.inject({ method: 'GET', url: '/customers/1', headers: { ...t.admin, 'x-request-id': 'bad id\t' } });
      expect(odd.headers['x-request-id']).toMatch(/^[0-9a-f-]{36}$/);
      const secret = t.adminKey.slice('dbk_'.length + 16 + 1);
      expect(secret).toHaveLength(43);
      expect(lines.length).toBeGreaterThan(2);
      expect(lines.filter((l) => l.includes(secret)).map((l) => l.slice(0, 300))).toEqual([]);
      const requestLines = lines.map((l) => JSON.parse(l) as { req?: unknown; res?: unknown; reqId?: string }).filter((l) => l.req || l.res);
      expect(requestLines.length).toBeGreaterThanOrEqual(4);
      expect(requestLines.every((l) => typeof l.reqId === 'string' && l.reqId.length > 0)).toBe(true);
      expect(requestLines.filter((l) => l.reqId === 'trace-123').length).toBe(2);
    });

    it('exposes Prometheus metrics to admins', async () => {
      await t.app.http.inject({
        method: 'POST',
        url: '/transfers',
        headers: t.admin,
        payload: { from_account_id: 1, to_account_id: 2, amount: 1 },
      });
      await t.app.http.inject({
        method: 'POST',
        url: '/transfers',
        headers: t.admin,
        payload: { from_account_id: 1, to_account_id: 2, amount: 1e9 },
      });
      const res = await t.app.http.inject({ method: 'GET', url: '/metrics', headers: t.admin });
      expect(res.statusCode).toBe(200);
      expect(res.headers['content-type']).toMatch(/^text\/plain/);
      expect(res.body).toContain('databank_http_requests_total{route="/transfers",method="POST",status="201"} 1');
      expect(res.body).toContain('databank_http_requests_total{route="/transfers",method="POST",status="409"} 1');
      expect(res.body).toContain('databank_transfers_total{outcome="completed"} 1');
      expect(res.body).toContain('databank_transfers_total{outcome="DATABANK_ERR_INSUFFICIENT_FUNDS"} 1');
      expect(res.body).toMatch(/databank_http_request_duration_seconds_bucket\{le="0.005",route="\/transfers",method="POST"\} \d+/);
      expect(res.body).toMatch(/databank_db_pool_connections \d+/);
    });

    it('serves an OpenAPI document generated from the route schemas', async () => {
      const res = await t.app.http.inject({ method: 'GET', url: '/openapi.json', headers: t.admin });
      expect(res.statusCode).toBe(200);
      const doc = res.json();
      expect(doc.openapi).toBe('3.1.0');
      expect(Object.keys(doc.paths).sort()).toEqual([
        '/accounts/{id}',
        '/accounts/{id}/deposits',
        '/accounts/{id}/entries',
        '/accounts/{id}/statements',
        '/accounts/{id}/withdrawals',
        '/analytics/balances',
        '/analytics/books',
        '/analytics/refresh',
        '/analytics/sql',
        '/analytics/top-accounts',
        '/analytics/volume',
        '/api-keys',
        '/api-keys/{id}',
        '/api-keys/{id}/rotate',
        '/backups',
        '/cache/flush',
        '/cache/stats',
        '/collections/{name}/schema',
        '/customers',
        '/customers/{id}',
        '/customers/{id}/accounts',
        '/customers/{id}/activity',
        '/customers/{id}/documents',
        '/customers/{id}/files',
        '/documents',
        '/documents/{id}',
        '/events',
        '/events/groups',
        '/events/replay',
        '/fees',
        '/files/{id}',
        '/files/{id}/content',
        '/files/{id}/variants/{name}',
        '/jobs/{id}',
        '/queues',
        '/queues/{name}/dead-letters',
        '/queues/{name}/dead-letters/retry',
        '/replicas',
        '/search',
        '/search/reindex',
        '/transfers',
      ]);
      const body = doc.paths['/transfers'].post.requestBody.content['application/json'].schema;
      expect(body.additionalProperties).toBe(false);
      expect(body.required).toEqual(['from_account_id', 'to_account_id', 'amount']);
    });

    it('refuses bodies that are not JSON, too large, or malformed, with codes', async () => {
      const cases: Array<[Record<string, string>, string, number, string]> = [
        [{ 'content-type': 'text/plain' }, 'hello', 415, 'DATABANK_ERR_UNSUPPORTED_MEDIA_TYPE'],
        [{ 'content-type': 'application/json' }, '{"amount":', 400, 'DATABANK_ERR_MALFORMED_BODY'],
        [{ 'content-type': 'application/json' }, '', 400, 'DATABANK_ERR_MALFORMED_BODY'],
        [{ 'content-type': 'application/json' }, JSON.stringify({ amount: 1, pad: 'x'.repeat(70_000) }), 413, 'DATABANK_ERR_PAYLOAD_TOO_LARGE'],
      ];
      for (const [headers, payload, status, code] of cases) {
        const res = await t.app.http.inject({ method: 'POST', url: '/accounts/1/deposits', headers: { ...t.admin, ...headers }, payload });
        expect(res.statusCode, code).toBe(status);
        expect(res.json(), code).toMatchObject({ statusCode: status, code });
      }
    });

    it('readyz answers 503 once the database is gone', async () => {
      await t.app.sql.close();
      const res = await t.app.http.inject({ method: 'GET', url: '/readyz' });
      expect(res.statusCode).toBe(503);
      expect(res.json().code).toBe('DATABANK_ERR_UNAVAILABLE');
    });
  });
}
