import { sql } from 'kysely';
import { DatabankError } from '../domain/errors.ts';
import type { Principal } from '../domain/types.ts';
import type { Db } from '../stores/sql/port.ts';
import type { StreamEvent } from '../stores/stream/port.ts';
import type { EventApplier } from '../workers/stream-consumer.ts';
import { read } from './transaction.ts';

export const SEARCH_GROUP = 'search';

/** The fields `?facets=` may count. */
export const FACETS = ['kind', 'collection', 'tags', 'status'] as const;
export type Facet = (typeof FACETS)[number];

export interface SearchQuery {
  readonly q: string;
  readonly kind?: 'customer' | 'document';
  readonly collection?: string;
  readonly tag?: string;
  readonly status?: string;
  /** Admins only narrow to one customer; a customer key always searches its own. */
  readonly customerId?: number;
  readonly facets: readonly Facet[];
  readonly limit: number;
  readonly cursor?: string;
}

export interface SearchHit {
  readonly kind: 'customer' | 'document';
  readonly id: number;
  readonly customer_id: number;
  readonly collection: string | null;
  readonly score: number;
  /** The best passages, HTML-escaped, the matched words in `<mark>…</mark>`. */
  readonly snippet: string;
}

export interface SearchResult {
  readonly result: readonly SearchHit[];
  /** Per requested facet, value → hits, over every hit of the query (not only this page). */
  readonly facets: Readonly<Record<string, Readonly<Record<string, number>>>>;
  /** Every hit of the query. */
  readonly total: number;
  readonly next_cursor?: string;
}

/** How many query words count; the rest are ignored. */
const MAX_TERMS = 8;
/** Indexed words a query word is widened to when it may be misspelt. */
const FUZZY_WORDS = 3;
/** Values per facet. */
const FACET_VALUES = 20;
/** The deepest a cursor may page (offset paging: ranks change as documents do). */
const MAX_OFFSET = 10_000;
// Markers ts_headline puts around matches; stripped from the text first, so only it places them.
const START = '\u0002';
const STOP = '\u0003';

/**
 * Search over customers and documents, on PostgreSQL's full-text search: ranked (`ts_rank_cd`
 * over weighted `tsvector`s, exact words counting more than widened ones), with highlighted
 * snippets (`ts_headline`), prefix matching (`word:*`) and typo tolerance (a query word is widened
 * to the indexed words that are trigram-similar to it, `pg_trgm`), filters and facet counts. The
 * index (`search_index`) is a projection kept by the `search` consumer of the event stream;
 * `reindex` rebuilds it from the tables.
 */
export class SearchService implements EventApplier {
  constructor(private readonly db: Db) {}

  async search(principal: Principal, query: SearchQuery): Promise<SearchResult> {
    const offset = decodeOffset(query.cursor);
    const terms = termsOf(query.q);
    if (terms.length === 0) return { result: [], facets: Object.fromEntries(query.facets.map((f) => [f, {}])), total: 0 };
    const own = principal.role === 'customer' ? principal.customerId : query.customerId;
    if (principal.role === 'customer' && query.customerId !== undefined && query.customerId !== own) {
      throw new DatabankError('DATABANK_ERR_NOT_FOUND');
    }
    return read(async () => {
      const candidates = terms.filter((t) => t.length >= 4);
      const similar = candidates.length === 0 ? [] : (await similarWordsStatement(candidates).execute(this.db.reader)).rows;
      const { widened, exact } = tsQueries(terms, similar);
      const { rows } = await searchStatement({
        widened,
        exact,
        filters: {
          customerId: own,
          kind: query.kind,
          collection: query.collection,
          tag: query.tag,
          status: query.status,
        },
        limit: query.limit,
        offset,
        facets: query.facets,
      }).execute(this.db.reader);
      const row = rows[0];
      const page = row?.page ?? [];
      const facets: Record<string, Record<string, number>> = Object.fromEntries(query.facets.map((f) => [f, row?.facets?.[f] ?? {}]));
      const result = page.slice(0, query.limit).map((hit) => ({ ...hit, id: Number(hit.id), customer_id: Number(hit.customer_id), score: Number(hit.score), snippet: highlight(hit.snippet) }));
      const next = page.length > query.limit && offset + query.limit <= MAX_OFFSET ? encodeOffset(offset + query.limit) : undefined;
      const total = row?.total ?? 0;
      return next ? { result, facets, total, next_cursor: next } : { result, facets, total };
    });
  }

  /** Makes the index rows of these customers or documents what their sources are now. */
  async sync(kind: 'customer' | 'document', ids: readonly number[]): Promise<void> {
    if (ids.length === 0) return;
    await sql`select databank_search_sync(${kind}, ${sql.val([...ids])}::bigint[])`.execute(this.db.writer);
  }

  /** The stream consumer's step: events name what changed; `sync` reads its state now, so order and redelivery do not matter. */
  async apply(events: readonly StreamEvent[]): Promise<void> {
    const customers = new Set<number>();
    const documents = new Set<number>();
    for (const e of events) {
      if (e.type.startsWith('customer.')) customers.add(Number(e.aggregate_id));
      else if (e.type.startsWith('document.')) documents.add(Number(e.aggregate_id));
    }
    await this.sync('customer', [...customers]);
    await this.sync('document', [...documents]);
  }

  /**
   * Rebuilds the whole index from the tables, in batches of `batchSize` ids, and removes rows whose
   * source is gone. Safe beside the consumer: both write what the source holds at the time.
   */
  async reindex(options: { batchSize?: number; onProgress?: (done: number, total: number) => void } = {}): Promise<{ customers: number; documents: number; removed: number }> {
    const batchSize = options.batchSize ?? 1_000;
    const w = this.db.writer;
    const totals = await w
      .selectNoFrom([
        (eb) => eb.selectFrom('customers').select(eb.fn.countAll<string>().as('n')).as('customers'),
        (eb) => eb.selectFrom('documents').select(eb.fn.countAll<string>().as('n')).as('documents'),
      ])
      .executeTakeFirstOrThrow();
    const total = Number(totals.customers) + Number(totals.documents);
    let done = 0;
    options.onProgress?.(0, total);
    const counts = { customers: 0, documents: 0 };
    for (const [kind, table, column] of [
      ['customer', 'customers', 'id'],
      ['document', 'documents', 'id'],
    ] as const) {
      let after = 0;
      for (;;) {
        const ids = (await w.selectFrom(table).select(`${column} as id`).where(column, '>', after).orderBy(column).limit(batchSize).execute()).map((r) => Number(r.id));
        if (ids.length === 0) break;
        await this.sync(kind, ids);
        after = ids[ids.length - 1] as number;
        counts[kind === 'customer' ? 'customers' : 'documents'] += ids.length;
        done += ids.length;
        options.onProgress?.(done, Math.max(total, done));
      }
    }
    const removed = await sql<{ n: number }>`
      with gone as (
        delete from search_index s where
          (s.kind = 'customer' and not exists (select 1 from customers c where c.id = s.id))
          or (s.kind = 'document' and not exists (select 1 from documents d where d.id = s.id))
        returning 1
      ) select count(*)::int as n from gone`.execute(w);
    return { ...counts, removed: removed.rows[0]?.n ?? 0 };
  }
}

/** For each term, the indexed words most like it (not itself, nor a word it is a prefix of), by trigram similarity. */
export function similarWordsStatement(terms: readonly string[]) {
  return sql<{ term: string; word: string }>`
    select t.term, w.word
    from unnest(${sql.val([...terms])}::text[]) t(term)
    cross join lateral (
      select word from search_words
      where word % t.term and word <> t.term and not starts_with(word, t.term)
      order by similarity(word, t.term) desc, word limit ${FUZZY_WORDS}
    ) w`;
}

/**
 * The two text queries of a search: `widened`, each term as a prefix or one of its similar words,
 * all terms required; and `exact`, the terms as they are (they rank higher).
 */
export function tsQueries(terms: readonly string[], similar: readonly { term: string; word: string }[]): { widened: string; exact: string } {
  const widen = (t: string) => [`${t}:*`, ...similar.filter((s) => s.term === t).flatMap((s) => termsOf(s.word))];
  return { widened: terms.map((t) => `(${widen(t).join(' | ')})`).join(' & '), exact: terms.join(' & ') };
}

export interface SearchStatementInput {
  readonly widened: string;
  readonly exact: string;
  readonly filters: {
    readonly customerId?: number;
    readonly kind?: 'customer' | 'document';
    readonly collection?: string;
    readonly tag?: string;
    readonly status?: string;
  };
  readonly limit: number;
  readonly offset: number;
  readonly facets: readonly Facet[];
}

/**
 * The search as one statement: the hits are matched and ranked once, then the page (one more row
 * than asked, to tell whether a next page exists, with snippets made from those rows' text only),
 * the total and the facet counts are read from them.
 */
export function searchStatement(input: SearchStatementInput) {
  const { widened, exact, filters: f } = input;
  const filters = [
    sql`s.tsv @@ to_tsquery('english', ${widened})`,
    f.customerId !== undefined ? sql`s.customer_id = ${f.customerId}` : null,
    f.kind !== undefined ? sql`s.kind = ${f.kind}` : null,
    f.collection !== undefined ? sql`s.collection = ${f.collection}` : null,
    f.tag !== undefined ? sql`s.tags @> array[${f.tag}]::text[]` : null,
    f.status !== undefined ? sql`s.status = ${f.status}` : null,
  ].filter((x) => x !== null);
  const facetSql =
    input.facets.length === 0
      ? sql`'{}'::json`
      : sql`(select coalesce(json_object_agg(facet, counts), '{}'::json) from (
          select facet, json_object_agg(value, n order by n desc, value) as counts from (
            select facet, value, n, row_number() over (partition by facet order by n desc, value) as r from (
              select 'kind' as facet, kind as value, count(*)::int as n from hits group by kind
              union all select 'collection', collection, count(*)::int from hits where collection is not null group by collection
              union all select 'status', status, count(*)::int from hits where status is not null group by status
              union all select 'tags', tag, count(*)::int from hits cross join lateral unnest(hits.tags) tag group by tag
            ) counted where facet = any(${sql.val([...input.facets])}::text[])
          ) ranked where r <= ${FACET_VALUES} group by facet
        ) f)`;
  return sql<{ page: SearchHit[] | null; total: number; facets: Record<string, Record<string, number>> | null }>`
    with q as (select to_tsquery('english', ${widened}) as wide, to_tsquery('english', ${exact}) as exact),
    hits as materialized (
      select s.kind, s.id, s.customer_id, s.collection, s.status, s.tags,
        (ts_rank_cd(s.tsv, q.wide, 1 | 32) + 2 * ts_rank_cd(s.tsv, q.exact, 1 | 32)) / 3 as score
      from search_index s, q where ${sql.join(filters, sql` and `)}
    ),
    page as (select * from hits order by score desc, kind, id limit ${input.limit + 1} offset ${input.offset})
    select
      (select json_agg(json_build_object(
          'kind', p.kind, 'id', p.id, 'customer_id', p.customer_id, 'collection', p.collection,
          'score', round(p.score::numeric, 6),
          'snippet', ts_headline('english', si.content, q.wide, ${HEADLINE_OPTIONS})
        ) order by p.score desc, p.kind, p.id)
        from page p join search_index si on si.kind = p.kind and si.id = p.id, q) as page,
      (select count(*)::int from hits) as total,
      ${facetSql} as facets`;
}

const HEADLINE_OPTIONS = `StartSel=${START}, StopSel=${STOP}, MaxWords=24, MinWords=8, ShortWord=1, MaxFragments=2, FragmentDelimiter=" … "`;

/** The words of a query: letters and digits, lower case, at most MAX_TERMS, each at most 64 characters. */
export function termsOf(q: string): string[] {
  const words = q.toLowerCase().normalize('NFKC').match(/[\p{L}\p{N}]+/gu) ?? [];
  return [...new Set(words.map((w) => w.slice(0, 64)))].slice(0, MAX_TERMS);
}

/** ts_headline's text with its markers turned into `<mark>`, everything else HTML-escaped. */
function highlight(snippet: string): string {
  const escape = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
  return escape(snippet).replaceAll(START, '<mark>').replaceAll(STOP, '</mark>');
}

function encodeOffset(offset: number): string {
  return Buffer.from(`offset:${offset}`).toString('base64url');
}

function decodeOffset(cursor: string | undefined): number {
  if (cursor === undefined) return 0;
  const match = /^offset:([1-9][0-9]{0,5})$/.exec(Buffer.from(cursor, 'base64url').toString());
  const offset = match ? Number(match[1]) : NaN;
  if (!(offset > 0 && offset <= MAX_OFFSET)) throw new DatabankError('DATABANK_ERR_INVALID_CURSOR');
  return offset;
}
