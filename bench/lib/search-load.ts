// The search half of `npm run bench -- analytics`: GET /search on a 100k-document corpus through
// databank, beside pgbench running the same SQL statements (with the same words) on the same
// database, so the ratio says what the HTTP service adds to what PostgreSQL's full-text search costs.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Timing } from './benchmark.ts';
import { prng, zipfSampler } from './random.ts';
import { postgresPids, settle } from './cpu.ts';
import { databankModule, startDatabank } from './databank.ts';
import { runLoad } from './load.ts';
import { progress } from './log.ts';
import { pgbenchRun } from './pgbench.ts';
import { adminUrl, createDatabase, query } from './postgres.ts';
import { loadSeries, pgbenchSeries, ratio, type Ratio, type Series } from './report.ts';
import { DummyDriver, Kysely, PostgresAdapter, PostgresIntrospector, PostgresQueryCompiler, type CompiledQuery } from 'kysely';
import type * as SearchModule from '../../src/services/search.ts';

export const SEARCH_DOCUMENTS = 100_000;
const CUSTOMERS = 1_000;
const CLIENTS = 16;
const BATCH = 5_000;

const DOMAIN_WORDS = (
  'account balance transfer payment mortgage loan savings checking card blocked statement fee interest rate deposit withdrawal ' +
  'refund dispute fraud chargeback overdraft limit branch online mobile login password address phone email verification identity ' +
  'passport license income employer salary pension insurance investment portfolio bond stock fund currency exchange euro pound ' +
  'dollar wire swift iban routing cheque cash atm receipt invoice merchant subscription renewal cancellation complaint compliment ' +
  'delay urgent review approved rejected pending escalated callback meeting appointment advisor manager business personal joint ' +
  'student retirement child family travel abroad holiday wedding house apartment car repair medical tuition charity donation tax'
).split(' ');
const COLLECTIONS = ['notes', 'tickets', 'profiles', 'preferences', 'kyc'] as const;
const TAGS = ['vip', 'new', 'fraud', 'mortgage', 'savings', 'card', 'complaint', 'business', 'student', 'travel', 'tax', 'kyc'];
const STATUSES = ['open', 'pending', 'closed'];

/** 5,000 made-up words: the long tail of names, places and rare terms. */
function longTail(random: () => number): string[] {
  const syllables = ['ka', 'lo', 'mi', 'ren', 'tu', 'sa', 'vel', 'dor', 'ni', 'pe', 'qua', 'ris', 'zan', 'bo', 'fe', 'gli', 'mar', 'ost'];
  const domain = new Set(DOMAIN_WORDS);
  const words = new Set<string>();
  while (words.size < 5_000) {
    const n = 2 + Math.floor(random() * 3);
    const word = Array.from({ length: n }, () => syllables[Math.floor(random() * syllables.length)]).join('');
    if (!domain.has(word)) words.add(word);
  }
  return [...words];
}

/** Zipf s=1 over the domain words: a few are common, most rare. */
const domainRank = zipfSampler(DOMAIN_WORDS.length, 1);

function makeDocuments(random: () => number, tail: readonly string[], from: number, count: number) {
  // A word is one of the bank's (Zipf over them) one time in six, else from the long tail: the
  // most common bank word is then in about half the documents, the 20th in about 6%.
  const pick = () =>
    random() < 0.16 ? (DOMAIN_WORDS[domainRank(random)] as string) : (tail[Math.floor(random() * tail.length)] as string);
  const text = (n: number) => Array.from({ length: n }, pick).join(' ');
  return Array.from({ length: count }, (_, i) => {
    const collection = COLLECTIONS[Math.floor(random() * COLLECTIONS.length)] as string;
    const body: Record<string, unknown> = { subject: text(3 + Math.floor(random() * 4)), text: `${text(15 + Math.floor(random() * 30))}.` };
    if (collection === 'tickets') body.status = STATUSES[Math.floor(random() * STATUSES.length)];
    const tags = TAGS.filter(() => random() < 0.12);
    return { customer: 1 + ((from + i) % CUSTOMERS), collection, body: JSON.stringify(body), tags: `{${tags.join(',')}}` };
  });
}

/** The queries: common words, pairs, prefixes and misspellings, as users type them. */
function makeQueries(random: () => number): string[] {
  const common = DOMAIN_WORDS.slice(0, 60);
  const w = () => common[Math.floor(random() * common.length)] as string;
  const queries: string[] = [];
  for (let i = 0; i < 10; i++) queries.push(w());
  for (let i = 0; i < 10; i++) queries.push(`${w()} ${w()}`);
  for (let i = 0; i < 10; i++) queries.push(w().slice(0, 4));
  for (let i = 0; i < 10; i++) {
    const word = common.filter((x) => x.length >= 6)[i] as string;
    queries.push(`${word.slice(0, 2)}${word[3]}${word[2]}${word.slice(4)}`);
  }
  return queries;
}

export interface SearchBench {
  readonly series: Series[];
  readonly ratios: Ratio[];
  readonly checks: Record<string, unknown>;
  readonly notes: string[];
}

/**
 * Builds the corpus in a new database (rows written with SQL, then `POST /search/reindex`, timed),
 * then `GET /search?q=…&facets=collection,tags,status&limit=10` from CLIENTS clients over the query
 * set, and pgbench with one script per query holding the statements the service sends for it.
 */
export async function searchSeries(timing: Timing): Promise<SearchBench> {
  // The statements of the checkout being measured, so that pgbench runs exactly what it sends.
  const { searchStatement, similarWordsStatement, termsOf, tsQueries } = await databankModule<typeof SearchModule>('src/services/search.ts');
  const random = prng(20261202);
  const words = longTail(random);
  const queries = makeQueries(random);
  const db = await createDatabase(adminUrl(), 'bench_search');
  const bank = await startDatabank({ databaseUrl: db.url, poolMax: CLIENTS });
  const scripts = mkdtempSync(join(tmpdir(), 'databank-bench-search-'));
  try {
    progress(`search: writing ${CUSTOMERS} customers and ${SEARCH_DOCUMENTS} documents`);
    await query(db.url, `insert into customers (name, date_of_birth) select 'Customer ' || g, date '1980-01-01' + g from generate_series(1, ${CUSTOMERS}) g`);
    for (let from = 0; from < SEARCH_DOCUMENTS; from += BATCH) {
      const docs = makeDocuments(random, words, from, Math.min(BATCH, SEARCH_DOCUMENTS - from));
      await query(
        db.url,
        `insert into documents (customer_id, collection, body, tags)
         select c, col, b::jsonb, t::text[] from unnest($1::bigint[], $2::text[], $3::text[], $4::text[]) as u(c, col, b, t)`,
        [docs.map((d) => d.customer), docs.map((d) => d.collection), docs.map((d) => d.body), docs.map((d) => d.tags)],
      );
    }
    progress('search: POST /search/reindex');
    const started = Date.now();
    const reindexed = await bank.api<{ customers: number; documents: number }>('POST', '/search/reindex', { batch_size: 2_000 });
    const reindexS = (Date.now() - started) / 1000;
    await query(db.url, 'vacuum analyze search_index');
    await query(db.url, 'vacuum analyze search_words');
    const [{ n: wordCount } = { n: 0 }] = await query<{ n: number }>(db.url, 'select count(*)::int as n from search_words');
    progress(`  ${reindexed.documents} documents + ${reindexed.customers} customers in ${reindexS.toFixed(1)} s; ${wordCount} distinct words`);

    // The statements SearchService.search sends, one pgbench script per query, compiled from the
    // service's own builders with its values inlined as constants.
    const hitCounts: number[] = [];
    const files: string[] = [];
    for (const [i, q] of queries.entries()) {
      const terms = termsOf(q);
      const long = terms.filter((t) => t.length >= 4);
      const similarSql = inlined(similarWordsStatement(long));
      const similar = long.length === 0 ? [] : await query<{ term: string; word: string }>(db.url, similarSql);
      const { widened, exact } = tsQueries(terms, similar);
      const searchSql = inlined(searchStatement({ widened, exact, filters: {}, limit: 10, offset: 0, facets: ['collection', 'tags', 'status'] }));
      const [{ total } = { total: 0 }] = await query<{ total: number }>(db.url, searchSql);
      hitCounts.push(total);
      const file = join(scripts, `q${i}.sql`);
      writeFileSync(file, [...(long.length === 0 ? [] : [similarSql]), searchSql].map((x) => `${x.replace(/\s+/g, ' ').trim()};`).join('\n') + '\n');
      files.push(file);
    }
    const hits = [...hitCounts].sort((a, b) => a - b);
    progress(`  ${queries.length} queries; hits per query: median ${hits[Math.floor(hits.length / 2)]}, max ${hits[hits.length - 1]}`);

    let next = 0;
    const busyBefore = await settle();
    progress(`search: databank GET /search, ${CLIENTS} clients: ${timing.warmupS}s warm-up, then ${timing.durationS}s measured`);
    const r = await runLoad({
      port: bank.port,
      clients: CLIENTS,
      warmupMs: timing.warmupS * 1000,
      durationMs: timing.durationS * 1000,
      expect: 200,
      headers: { authorization: `Bearer ${bank.adminKey}` },
      next: () => ({ method: 'GET', path: `/search?q=${encodeURIComponent(queries[next++ % queries.length] as string)}&facets=collection,tags,status&limit=10` }),
      cpu: { 'load generator': () => [process.pid], databank: () => [bank.child.pid], postgres: postgresPids },
    });
    progress(`  ${r.ops_per_s} searches/s, p50 ${r.latency_ms.p50} ms, p99 ${r.latency_ms.p99} ms`);
    const databank = loadSeries(`databank GET /search (${SEARCH_DOCUMENTS / 1000}k documents)`, 'searches/s', r, busyBefore);

    const pgBusy = await settle();
    progress(`search: pgbench, the same statements, ${CLIENTS} clients, ${timing.durationS}s`);
    const pg = await pgbenchRun(db.url, {
      clients: CLIENTS,
      threads: 2,
      seconds: timing.warmupS + timing.durationS,
      cpu: (pid) => ({ pgbench: () => [pid], postgres: postgresPids }),
      script: [...files.flatMap((f) => ['-f', f]), '-M', 'prepared'],
    });
    progress(`  ${pg.tps} searches/s (2 statements each), latency ${pg.latency_avg_ms} ms`);
    const pgSeries = pgbenchSeries('pgbench: the same statements', 'searches/s', pg, pgBusy);
    return {
      series: [databank, pgSeries],
      ratios: [ratio('search: databank GET /search ÷ pgbench, the same SQL', CLIENTS, r.ops_per_s, pg.tps, null)],
      checks: {
        search_documents: reindexed.documents,
        search_reindex_s: Math.round(reindexS * 10) / 10,
        search_reindex_rows_per_s: Math.round((reindexed.documents + reindexed.customers) / reindexS),
        search_words: wordCount,
        search_hits_per_query: { median: hits[Math.floor(hits.length / 2)], max: hits[hits.length - 1] },
        search_queries: queries,
      },
      notes: [
        `search: ${SEARCH_DOCUMENTS} documents of 20 to 50 words (one word in six one of ${DOMAIN_WORDS.length} bank words, Zipf s = 1, the rest from ${words.length} rarer ones), ${CUSTOMERS} customers; ` +
          `${queries.length} queries (10 words, 10 pairs, 10 four-letter prefixes, 10 misspellings) in turn, each with facets collection, tags and status; ` +
          "the pgbench reference runs the statements the service sends per search (the similar words; the hits ranked once, with the page and its snippets, the total and the facet counts), compiled from the service's own builders, one script per query with its values as constants, prepared.",
      ],
    };
  } finally {
    rmSync(scripts, { recursive: true, force: true });
    await bank.stop();
    await db.drop();
  }
}

/** Compiles statements without a database, to write them into pgbench scripts. */
const compiler = new Kysely<unknown>({
  dialect: {
    createAdapter: () => new PostgresAdapter(),
    createDriver: () => new DummyDriver(),
    createIntrospector: (db) => new PostgresIntrospector(db),
    createQueryCompiler: () => new PostgresQueryCompiler(),
  },
});

/** The statement's SQL with its parameters written in as constants. */
function inlined(statement: { compile(db: Kysely<unknown>): CompiledQuery }): string {
  const { sql: text, parameters } = statement.compile(compiler);
  return text.replace(/\$(\d+)/g, (_, n: string) => literal(parameters[Number(n) - 1]));
}

function literal(value: unknown): string {
  if (typeof value === 'number') return String(value);
  if (typeof value === 'string') return `'${value.replace(/'/g, "''")}'`;
  if (Array.isArray(value)) return `array[${value.map(literal).join(',')}]`;
  throw new Error(`no literal for ${typeof value}`);
}
