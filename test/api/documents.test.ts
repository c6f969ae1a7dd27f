import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { customerKey, startTestApp, type TestApp } from '../support/app.ts';
import { ENGINES } from '../support/engines.ts';

for (const engine of ENGINES) {
  describe(`documents API on ${engine}`, () => {
    let t: TestApp;
    let one: { authorization: string };
    let two: { authorization: string };
    beforeAll(async () => {
      t = await startTestApp(engine, `documents-api-${engine}`, { documents: { maxBytes: 2_048 } });
      one = await customerKey(t, 1);
      two = await customerKey(t, 2);
    });
    afterAll(async () => t?.close());

    const call = (method: 'GET' | 'POST' | 'PATCH' | 'DELETE' | 'PUT', url: string, headers: Record<string, string>, payload?: unknown) =>
      t.app.http.inject({ method, url, headers, ...(payload === undefined ? {} : { payload: payload as object }) });

    it("stores differently shaped documents and reads them back with version, ETag and tags", async () => {
      const note = await call('POST', '/customers/1/documents', one, { collection: 'notes', body: { text: 'Called about the card', pinned: true }, tags: ['card', 'card', 'call'] });
      expect(note.statusCode).toBe(201);
      const created = note.json();
      expect(created).toMatchObject({ customer_id: 1, collection: 'notes', version: 1, body: { text: 'Called about the card', pinned: true }, tags: ['card', 'call'], problems: [] });
      expect(note.headers.etag).toBe('"1"');
      expect(note.headers.location).toBe(`/documents/${created.document_id}`);
      const prefs = await call('POST', '/customers/1/documents', one, { collection: 'preferences', body: { language: 'en', channels: { email: true, sms: false } } });
      expect(prefs.statusCode).toBe(201);
      const read = await call('GET', `/documents/${created.document_id}`, one);
      expect(read.statusCode).toBe(200);
      expect(read.headers.etag).toBe('"1"');
      expect(read.json()).toEqual(created);
      expect(Object.keys(read.json())).toEqual(['document_id', 'customer_id', 'collection', 'version', 'body', 'tags', 'problems', 'created_at', 'updated_at']);
    });

    it("catches the chapter's schema-on-read pitfall: a profile written with birth_date is read with a problem, not a crash", async () => {
      const good = await call('POST', '/customers/2/documents', t.admin, { collection: 'profiles', body: { name: 'Karen Johnson', date_of_birth: '1989-11-18', balance: 4853 } });
      expect(good.statusCode).toBe(201);
      expect(good.json().problems).toEqual([]);
      const pitfall = await call('POST', '/customers/2/documents', t.admin, { collection: 'profiles', body: { name: 'Karen Johnson', birth_date: '1989-11-18', balance: 4853 } });
      expect(pitfall.statusCode).toBe(201);
      const read = await call('GET', `/documents/${pitfall.json().document_id}`, two);
      expect(read.statusCode).toBe(200);
      expect(read.json().body).toEqual({ name: 'Karen Johnson', birth_date: '1989-11-18', balance: 4853 });
      expect(read.json().problems).toEqual([
        { path: '/date_of_birth', message: 'is missing; the document has "birth_date": a different name for it?' },
      ]);
      const bad = await call('POST', '/customers/2/documents', t.admin, { collection: 'profiles', body: { name: '', date_of_birth: '1989-02-30', balance: 1.5 } });
      expect(bad.json().problems).toEqual([
        { path: '/name', message: 'must be a non-empty string' },
        { path: '/date_of_birth', message: 'must be a date YYYY-MM-DD' },
        { path: '/balance', message: 'must be an integer (minor units)' },
      ]);
    });

    it('patches with a JSON merge patch under If-Match; a stale version is 412, none is 428', async () => {
      const doc = (await call('POST', '/customers/1/documents', one, { collection: 'tickets', body: { subject: 'Card blocked', status: 'open', meta: { channel: 'phone', agent: 'x' } }, tags: ['card'] })).json();
      const patched = await t.app.http.inject({
        method: 'PATCH',
        url: `/documents/${doc.document_id}`,
        headers: { ...one, 'if-match': '"1"', 'content-type': 'application/merge-patch+json' },
        payload: JSON.stringify({ body: { status: 'closed', meta: { agent: null }, resolution: 'unblocked' }, tags: ['card', 'resolved'] }),
      });
      expect(patched.statusCode).toBe(200);
      expect(patched.headers.etag).toBe('"2"');
      expect(patched.json()).toMatchObject({ version: 2, body: { subject: 'Card blocked', status: 'closed', meta: { channel: 'phone' }, resolution: 'unblocked' }, tags: ['card', 'resolved'], problems: [] });
      const stale = await call('PATCH', `/documents/${doc.document_id}`, { ...one, 'if-match': '"1"' }, { body: { status: 'open' } });
      expect(stale.statusCode).toBe(412);
      expect(stale.json().code).toBe('DATABANK_ERR_VERSION_MISMATCH');
      const none = await call('PATCH', `/documents/${doc.document_id}`, one, { body: { status: 'open' } });
      expect(none.statusCode).toBe(428);
      expect(none.json().code).toBe('DATABANK_ERR_PRECONDITION_REQUIRED');
      const garbled = await call('PATCH', `/documents/${doc.document_id}`, { ...one, 'if-match': 'yesterday' }, { body: {} });
      expect(garbled.statusCode).toBe(400);
      expect(garbled.json().code).toBe('DATABANK_ERR_VALIDATION');
      const after = (await call('GET', `/documents/${doc.document_id}`, one)).json();
      expect(after.version).toBe(2);
      expect(after.body.status).toBe('closed');
      // A ticket reader checks the status it reads.
      const odd = await call('PATCH', `/documents/${doc.document_id}`, { ...one, 'if-match': '"2"' }, { body: { status: 'lost' } });
      expect(odd.json().problems).toEqual([{ path: '/status', message: 'must be one of open, pending, closed' }]);
    });

    it('two writers racing on one version: exactly one wins, the other gets 412', async () => {
      const doc = (await call('POST', '/customers/1/documents', one, { collection: 'notes', body: { n: 0 } })).json();
      const answers = await Promise.all(
        [1, 2, 3, 4].map((n) => call('PATCH', `/documents/${doc.document_id}`, { ...one, 'if-match': '"1"' }, { body: { n } })),
      );
      expect(answers.map((a) => a.statusCode).sort()).toEqual([200, 412, 412, 412]);
      const after = (await call('GET', `/documents/${doc.document_id}`, one)).json();
      expect(after.version).toBe(2);
      expect(after.body.n).toBe(answers.find((a) => a.statusCode === 200)?.json().body.n);
    });

    it('deletes, with If-Match checked when given', async () => {
      const doc = (await call('POST', '/customers/1/documents', one, { collection: 'notes', body: { n: 1 } })).json();
      const stale = await call('DELETE', `/documents/${doc.document_id}`, { ...one, 'if-match': '"7"' });
      expect(stale.statusCode).toBe(412);
      const gone = await call('DELETE', `/documents/${doc.document_id}`, { ...one, 'if-match': '"1"' });
      expect(gone.statusCode).toBe(204);
      expect((await call('GET', `/documents/${doc.document_id}`, one)).statusCode).toBe(404);
      expect((await call('DELETE', `/documents/${doc.document_id}`, one)).statusCode).toBe(404);
    });

    it('lists with filters on JSON fields, collection and tag, paged', async () => {
      const made: number[] = [];
      for (const [status, city] of [['open', 'Oslo'], ['closed', 'Oslo'], ['open', 'Bergen'], ['open', 'Oslo']] as const) {
        made.push((await call('POST', '/customers/3/documents', t.admin, { collection: 'cases', body: { status, address: { city } }, tags: [city.toLowerCase()] })).json().document_id);
      }
      const ids = (res: { json(): { result: { document_id: number }[] } }) => res.json().result.map((d) => d.document_id);
      expect(ids(await call('GET', '/customers/3/documents?collection=cases&where[status]=open', t.admin))).toEqual([made[0], made[2], made[3]]);
      expect(ids(await call('GET', '/customers/3/documents?where[status]=open&where[address.city]=Oslo', t.admin))).toEqual([made[0], made[3]]);
      expect(ids(await call('GET', '/documents?collection=cases&tag=bergen', t.admin))).toEqual([made[2]]);
      const first = await call('GET', '/customers/3/documents?collection=cases&limit=3', t.admin);
      expect(ids(first)).toEqual(made.slice(0, 3));
      const second = await call('GET', `/customers/3/documents?collection=cases&limit=3&cursor=${first.json().next_cursor}`, t.admin);
      expect(ids(second)).toEqual([made[3]]);
      expect(second.json().next_cursor).toBeUndefined();
      for (const url of ['/documents?where[a..b]=x', '/documents?where=x', '/documents?collection=Bad Name', '/documents?sort=id']) {
        const res = await call('GET', url, t.admin);
        expect(res.statusCode, url).toBe(400);
        expect(res.json().code, url).toBe('DATABANK_ERR_VALIDATION');
      }
    });

    it("customers see and change only their own documents; another's is a 404", async () => {
      const mine = (await call('POST', '/customers/1/documents', one, { collection: 'notes', body: { secret: 'one' } })).json();
      expect((await call('POST', '/customers/2/documents', one, { collection: 'notes', body: {} })).statusCode).toBe(404);
      expect((await call('GET', `/documents/${mine.document_id}`, two)).statusCode).toBe(404);
      expect((await call('PATCH', `/documents/${mine.document_id}`, { ...two, 'if-match': '"1"' }, { body: { secret: 'two' } })).statusCode).toBe(404);
      expect((await call('DELETE', `/documents/${mine.document_id}`, two)).statusCode).toBe(404);
      expect((await call('GET', '/customers/1/documents', two)).statusCode).toBe(404);
      // A customer's unscoped list is its own; asking for another customer's is a 404.
      const listed = (await call('GET', '/documents?limit=100', two)).json().result as { customer_id: number }[];
      expect(listed.length).toBeGreaterThan(0);
      expect(new Set(listed.map((d) => d.customer_id))).toEqual(new Set([2]));
      expect((await call('GET', '/documents?customer_id=1', two)).statusCode).toBe(404);
      expect((await call('GET', `/documents/${mine.document_id}`, one)).json().body).toEqual({ secret: 'one' });
      expect((await call('GET', `/documents/${mine.document_id}`, {})).statusCode).toBe(401);
    });

    it('refuses bodies that are not objects, too large documents (413) and bad collection names', async () => {
      for (const body of [[1, 2], 'text', null, 5]) {
        const res = await call('POST', '/customers/1/documents', one, { collection: 'notes', body });
        expect(res.statusCode, JSON.stringify(body)).toBe(400);
        expect(res.json().code).toBe('DATABANK_ERR_VALIDATION');
      }
      const big = await call('POST', '/customers/1/documents', one, { collection: 'notes', body: { text: 'x'.repeat(2_100) } });
      expect(big.statusCode).toBe(413);
      expect(big.json().code).toBe('DATABANK_ERR_PAYLOAD_TOO_LARGE');
      expect(big.json().message).toBe('the document body is 2111 bytes as JSON; the limit is 2048 (DATABANK_MAX_DOCUMENT_BYTES)');
      const doc = (await call('POST', '/customers/1/documents', one, { collection: 'notes', body: { text: 'small' } })).json();
      const grown = await call('PATCH', `/documents/${doc.document_id}`, { ...one, 'if-match': '"1"' }, { body: { text: 'y'.repeat(2_100) } });
      expect(grown.statusCode).toBe(413);
      expect((await call('GET', `/documents/${doc.document_id}`, one)).json().version).toBe(1);
      for (const collection of ['Profiles', '1x', '', 'a'.repeat(64), 'a b']) {
        const res = await call('POST', '/customers/1/documents', one, { collection, body: {} });
        expect(res.statusCode, collection).toBe(400);
      }
      expect((await call('POST', '/customers/999999/documents', t.admin, { collection: 'notes', body: {} })).statusCode).toBe(404);
    });

    it('a collection with a JSON Schema refuses writes that break it (422 with the failing paths); older documents are reported when read', async () => {
      const before = (await call('POST', '/customers/1/documents', one, { collection: 'kyc', body: { level: 'high' } })).json();
      const schema = {
        type: 'object',
        required: ['level', 'checked_on'],
        properties: { level: { type: 'integer', minimum: 1, maximum: 3 }, checked_on: { type: 'string', format: 'date' } },
        additionalProperties: false,
      };
      expect((await call('PUT', '/collections/kyc/schema', one, schema)).statusCode).toBe(403);
      const put = await call('PUT', '/collections/kyc/schema', t.admin, schema);
      expect(put.statusCode).toBe(200);
      expect(put.json()).toMatchObject({ collection: 'kyc', version: 1, schema });
      expect((await call('GET', '/collections/kyc/schema', one)).json().schema).toEqual(schema);
      const refused = await call('POST', '/customers/1/documents', one, { collection: 'kyc', body: { level: 7, extra: true } });
      expect(refused.statusCode).toBe(422);
      expect(refused.json().code).toBe('DATABANK_ERR_SCHEMA_VIOLATION');
      expect(refused.json().problems).toEqual([
        { path: '/checked_on', message: 'is required' },
        { path: '/extra', message: 'is not allowed by the schema' },
        { path: '/level', message: 'must be <= 3' },
      ]);
      const ok = await call('POST', '/customers/1/documents', one, { collection: 'kyc', body: { level: 2, checked_on: '2026-11-30' } });
      expect(ok.statusCode).toBe(201);
      expect(ok.json().problems).toEqual([]);
      const badPatch = await call('PATCH', `/documents/${ok.json().document_id}`, { ...one, 'if-match': '"1"' }, { body: { checked_on: 'soon' } });
      expect(badPatch.statusCode).toBe(422);
      expect(badPatch.json().problems).toEqual([{ path: '/checked_on', message: 'must match format "date"' }]);
      // Written before the schema: read with what it breaks.
      expect((await call('GET', `/documents/${before.document_id}`, one)).json().problems).toEqual([
        { path: '/checked_on', message: 'is required' },
        { path: '/level', message: 'must be integer' },
      ]);
      for (const invalid of [{ type: 'object', colour: 'red' }, { type: 'nonsense' }, { $ref: 'https://example.com/schema.json' }]) {
        const res = await call('PUT', '/collections/kyc/schema', t.admin, invalid);
        expect(res.statusCode, JSON.stringify(invalid)).toBe(400);
        expect(res.json().code).toBe('DATABANK_ERR_INVALID_JSON_SCHEMA');
      }
      const second = await call('PUT', '/collections/kyc/schema', t.admin, { ...schema, additionalProperties: true });
      expect(second.json().version).toBe(2);
      expect((await call('POST', '/customers/1/documents', one, { collection: 'kyc', body: { level: 1, checked_on: '2026-01-01', extra: 1 } })).statusCode).toBe(201);
      expect((await call('DELETE', '/collections/kyc/schema', t.admin)).statusCode).toBe(204);
      expect((await call('GET', '/collections/kyc/schema', t.admin)).statusCode).toBe(404);
      expect((await call('POST', '/customers/1/documents', one, { collection: 'kyc', body: { anything: 'goes' } })).statusCode).toBe(201);
    });

    it('every change writes its event in the same transaction', async () => {
      const doc = (await call('POST', '/customers/3/documents', t.admin, { collection: 'notes', body: { text: 'evented' } })).json();
      await call('PATCH', `/documents/${doc.document_id}`, { ...t.admin, 'if-match': '"1"' }, { body: { text: 'changed' } });
      await call('DELETE', `/documents/${doc.document_id}`, t.admin);
      const rows = await t.app.sql.db
        .selectFrom('outbox')
        .select(['type', 'aggregate_id', 'customer_ids', 'payload'])
        .where('aggregate_id', '=', String(doc.document_id))
        .where('type', 'like', 'document.%')
        .orderBy('id')
        .execute();
      expect(rows.map((r) => [r.type, r.payload])).toEqual([
        ['document.created', { document_id: doc.document_id, customer_id: 3, collection: 'notes', version: 1 }],
        ['document.updated', { document_id: doc.document_id, customer_id: 3, collection: 'notes', version: 2 }],
        ['document.deleted', { document_id: doc.document_id, customer_id: 3, collection: 'notes', version: 2 }],
      ]);
    });
  });
}
