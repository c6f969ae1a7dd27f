import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { customerKey, startTestApp, type TestApp } from '../support/app.ts';
import { ENGINES } from '../support/engines.ts';
import { until } from '../support/until.ts';

/** The fixed corpus: [customer, collection, body, tags]. */
const CORPUS: readonly [number, string, Record<string, unknown>, string[]][] = [
  [1, 'tickets', { subject: 'Mortgage payment missed', status: 'open', text: 'The mortgage payment for November did not go through.' }, ['mortgage', 'payments']],
  [1, 'notes', { text: 'Asked about refinancing the mortgage; mortgage rates compared with two other banks.' }, ['mortgage']],
  [1, 'tickets', { subject: 'Card blocked abroad', status: 'closed', text: 'Card blocked in Lisbon, unblocked after a call.' }, ['card']],
  [2, 'tickets', { subject: 'Savings interest question', status: 'open', text: 'Why did the savings interest change?' }, ['savings']],
  [2, 'notes', { text: 'Prefers email over phone. Mentioned a mortgage for next year.' }, []],
  [2, 'profiles', { name: 'Karen Johnson', date_of_birth: '1989-11-18', occupation: 'architect' }, ['kyc']],
  [3, 'tickets', { subject: 'Statement download: 5 < 6 & "quotes" <b>bold</b>', status: 'pending', text: 'Monthly statement download fails in the browser.' }, ['statements']],
  [3, 'notes', { text: 'Interested in a savings account for the children.' }, ['savings']],
];

type Hit = { kind: string; id: number; customer_id: number; collection: string | null; score: number; snippet: string };

for (const engine of ENGINES) {
  describe(`search on ${engine}`, () => {
    let t: TestApp;
    let one: { authorization: string };
    /** The corpus's document ids, in corpus order. */
    const ids: number[] = [];
    beforeAll(async () => {
      t = await startTestApp(engine, `search-${engine}`);
      one = await customerKey(t, 1);
      for (const [customer, collection, body, tags] of CORPUS) {
        const res = await t.app.http.inject({ method: 'POST', url: `/customers/${customer}/documents`, headers: t.admin, payload: { collection, body, tags } });
        ids.push(res.json().document_id);
      }
      // The index follows the event stream: wait until the consumer has indexed the last document.
      await until(
        () => t.app.http.inject({ method: 'GET', url: '/search?q=children', headers: t.admin }).then((r) => r.json()),
        (body: { result: Hit[] }) => body.result.some((h) => h.id === ids[7]),
        { what: 'the search consumer indexed the corpus' },
      );
    });
    afterAll(async () => t?.close());

    const search = async (query: string, headers = t.admin) => {
      const res = await t.app.http.inject({ method: 'GET', url: `/search?${query}`, headers });
      expect(res.statusCode, `${query}: ${res.body}`).toBe(200);
      return res.json() as { result: Hit[]; facets: Record<string, Record<string, number>>; total: number; next_cursor: string | null };
    };
    const order = (hits: Hit[]) => hits.map((h) => `${h.kind}:${h.kind === 'document' ? `d${ids.indexOf(h.id)}` : h.id}`);

    it('ranks full-text hits: the exact relevance order of a set of queries', async () => {
      // The ticket has the word in its subject (a title: weight A) and text; the first note twice in
      // its text (weight B); customer 2's note once.
      expect(order((await search('q=mortgage')).result)).toEqual(['document:d0', 'document:d1', 'document:d4']);
      expect(order((await search('q=savings')).result)).toEqual(['document:d3', 'document:d7']);
      expect(order((await search('q=card%20blocked')).result)).toEqual(['document:d2']);
      expect(order((await search('q=johnson')).result)).toEqual(['customer:2', 'document:d5']);
      expect(order((await search('q=statement%20download')).result)).toEqual(['document:d6']);
      expect((await search('q=nothing%20like%20this')).result).toEqual([]);
    });

    it('matches prefixes and misspellings (pg_trgm), exact words ranking first', async () => {
      expect(order((await search('q=mortg')).result)).toEqual(['document:d0', 'document:d1', 'document:d4']);
      expect(order((await search('q=morgage')).result)).toEqual(['document:d0', 'document:d1', 'document:d4']);
      expect(order((await search('q=intrest')).result)).toEqual(['document:d3', 'document:d7']);
      expect(order((await search('q=refinacing')).result)).toEqual(['document:d1']);
      expect(order((await search('q=feinstien')).result)).toEqual(['customer:3']);
      expect(order((await search('q=arch')).result)).toEqual(['document:d5']);
      // A misspelt hit ranks below an exact one.
      const exact = (await search('q=johnson')).result[0] as Hit;
      const typo = (await search('q=jonhson')).result[0] as Hit;
      expect(typo.id).toBe(exact.id);
      expect(typo.score).toBeLessThan(exact.score);
    });

    it('highlights the matched words in HTML-escaped snippets', async () => {
      const [hit] = (await search('q=statement')).result;
      // Text is escaped; markup in it is not passed on (PostgreSQL's parser drops the tags).
      expect(hit?.snippet).toBe(
        '<mark>Statement</mark> download: 5 &lt; 6 &amp; &quot;quotes&quot;  bold  Monthly <mark>statement</mark> download fails in the browser. pending',
      );
      expect((await search('q=lisbon')).result[0]?.snippet).toBe('Card blocked abroad Card blocked in <mark>Lisbon</mark>, unblocked after a call. closed');
      expect((await search('q=brian')).result[0]?.snippet).toBe('<mark>Brian</mark> Kim');
    });

    it('counts facets exactly, over every hit, and filters', async () => {
      const all = await search('q=mortgage%20OR%20savings&facets=kind,collection,tags,status');
      // "or" is a stop word: both words must match, and no document has both.
      expect(all.total).toBe(0);
      const found = await search('q=mortgage&facets=kind,collection,tags,status&limit=1');
      expect(found.total).toBe(3);
      expect(found.result.length).toBe(1);
      expect(found.facets).toEqual({
        kind: { document: 3 },
        collection: { notes: 2, tickets: 1 },
        tags: { mortgage: 2, payments: 1 },
        status: { open: 1 },
      });
      const savings = await search('q=savings&facets=collection,tags,status');
      expect(savings.facets).toEqual({ collection: { notes: 1, tickets: 1 }, tags: { savings: 2 }, status: { open: 1 } });
      expect(order((await search('q=mortgage&collection=notes')).result)).toEqual(['document:d1', 'document:d4']);
      expect(order((await search('q=mortgage&tag=payments')).result)).toEqual(['document:d0']);
      expect(order((await search('q=mortgage&status=open')).result)).toEqual(['document:d0']);
      expect(order((await search('q=johnson&kind=customer')).result)).toEqual(['customer:2']);
      expect(order((await search('q=mortgage&customer_id=2')).result)).toEqual(['document:d4']);
    });

    it('pages with a cursor through every hit, in rank order', async () => {
      const first = await search('q=mortgage&limit=2');
      expect(order(first.result)).toEqual(['document:d0', 'document:d1']);
      expect(first.next_cursor).toEqual(expect.any(String));
      const second = await search(`q=mortgage&limit=2&cursor=${first.next_cursor}`);
      expect(order(second.result)).toEqual(['document:d4']);
      expect(second.next_cursor).toBeNull();
    });

    it('a customer finds only its own customer and documents', async () => {
      const mine = await search('q=mortgage&facets=kind', one);
      expect(order(mine.result)).toEqual(['document:d0', 'document:d1']);
      expect(mine.facets).toEqual({ kind: { document: 2 } });
      expect((await search('q=johnson', one)).result).toEqual([]);
      expect(order((await search('q=brian', one)).result)).toEqual(['customer:1']);
      const other = await t.app.http.inject({ method: 'GET', url: '/search?q=mortgage&customer_id=2', headers: one });
      expect(other.statusCode).toBe(404);
      expect((await t.app.http.inject({ method: 'GET', url: '/search?q=mortgage' })).statusCode).toBe(401);
    });

    it('refuses bad queries with 400', async () => {
      for (const query of ['', 'q=', `q=${'a'.repeat(257)}`, 'q=a&facets=colour', 'q=a&limit=0', 'q=a&limit=51', 'q=a&kind=file', 'q=a&cursor=bm9wZQ', 'q=a&sort=score']) {
        const res = await t.app.http.inject({ method: 'GET', url: `/search?${query}`, headers: t.admin });
        expect(res.statusCode, query).toBe(400);
        expect(['DATABANK_ERR_VALIDATION', 'DATABANK_ERR_INVALID_CURSOR'], query).toContain(res.json().code);
      }
      // Punctuation only: no words, no hits.
      expect((await search('q=%3F%21%26%7C')).result).toEqual([]);
    });

    it('follows changes through the stream: a patched document is found by its new words, a deleted one no more', async () => {
      const id = ids[2] as number;
      const res = await t.app.http.inject({ method: 'PATCH', url: `/documents/${id}`, headers: { ...t.admin, 'if-match': '"1"' }, payload: { body: { text: 'Card replaced by courier to Porto.' } } });
      expect(res.statusCode).toBe(200);
      await until(() => search('q=porto'), (r) => r.result.length === 1, { what: 'patched document indexed' });
      expect((await search('q=lisbon')).result).toEqual([]);
      const renamed = await t.app.http.inject({ method: 'PATCH', url: '/customers/3', headers: t.admin, payload: { name: 'Wade Feinstein-Okafor' } });
      expect(renamed.statusCode).toBe(200);
      await until(() => search('q=okafor'), (r) => r.result.length === 1, { what: 'renamed customer indexed' });
      await t.app.http.inject({ method: 'DELETE', url: `/documents/${id}`, headers: t.admin });
      await until(() => search('q=porto'), (r) => r.result.length === 0, { what: 'deleted document removed' });
    });

    it('reindex rebuilds the same index from the tables', async () => {
      const queries = ['q=mortgage&facets=collection,tags', 'q=savings', 'q=johnson', 'q=morgage'];
      const before = await Promise.all(queries.map((q) => search(q)));
      await t.app.sql.db.deleteFrom('search_index').execute();
      expect((await search('q=mortgage')).result).toEqual([]);
      const counts = await t.app.background.search.reindex({ batchSize: 3 });
      expect(counts.customers).toBe(3);
      expect(counts.documents).toBe(CORPUS.length - 1);
      expect(counts.removed).toBe(0);
      expect(await Promise.all(queries.map((q) => search(q)))).toEqual(before);
    });
  });
}
