import { Type } from 'typebox';
import { DatabankError } from '../../domain/errors.ts';
import { FACETS, type Facet } from '../../services/search.ts';
import { assertAdmin } from '../../services/access.ts';
import { principalOf } from '../auth.ts';
import type { HttpDeps } from '../deps.ts';
import { COMMON_ERRORS, Cursor, ErrorBody, Id } from '../schemas.ts';
import type { TypedApp } from '../typed-app.ts';
import { CollectionName, Tag } from './documents.ts';

const SearchQuery = Type.Object(
  {
    q: Type.String({ minLength: 1, maxLength: 256, description: 'the words to find: 1 to 256 characters' }),
    kind: Type.Optional(Type.Union([Type.Literal('customer'), Type.Literal('document')])),
    collection: Type.Optional(CollectionName),
    tag: Type.Optional(Tag),
    status: Type.Optional(Type.String({ minLength: 1, maxLength: 64 })),
    customer_id: Type.Optional(Id),
    facets: Type.Optional(
      Type.String({
        pattern: `^(${FACETS.join('|')})(,(${FACETS.join('|')})){0,${FACETS.length - 1}}$`,
        description: `a comma-separated list of ${FACETS.join(', ')}`,
      }),
    ),
    limit: Type.Optional(Type.String({ pattern: '^(50|[1-4]?[0-9])$', description: 'from 1 to 50', default: '20' })),
    cursor: Type.Optional(Cursor),
  },
  { additionalProperties: false },
);
const Hit = Type.Object({
  kind: Type.Union([Type.Literal('customer'), Type.Literal('document')]),
  id: Type.Integer(),
  customer_id: Type.Integer(),
  collection: Type.Union([Type.String(), Type.Null()]),
  score: Type.Number(),
  snippet: Type.String(),
});
const SearchAnswer = Type.Object({
  result: Type.Immutable(Type.Array(Hit)),
  facets: Type.Record(Type.String(), Type.Record(Type.String(), Type.Integer())),
  total: Type.Integer(),
  next_cursor: Type.Union([Type.String(), Type.Null()]),
});

/** `GET /search?q=…`: customers and documents, ranked, with snippets and facet counts. */
export async function searchRoutes(app: TypedApp, deps: HttpDeps): Promise<void> {
  app.get(
    '/search',
    { schema: { tags: ['documents'], querystring: SearchQuery, response: { 200: SearchAnswer, ...COMMON_ERRORS } } },
    async (request) => {
      const { query } = request;
      const facets = query.facets ? ([...new Set(query.facets.split(','))] as Facet[]) : [];
      const limit = query.limit === undefined ? 20 : Number(query.limit);
      if (limit < 1) throw new DatabankError('DATABANK_ERR_VALIDATION', 'limit: must be from 1 to 50');
      const found = await deps.search.search(principalOf(request), {
        q: query.q,
        kind: query.kind,
        collection: query.collection,
        tag: query.tag,
        status: query.status,
        customerId: query.customer_id,
        facets,
        limit,
        cursor: query.cursor,
      });
      return { ...found, next_cursor: found.next_cursor ?? null };
    },
  );

  app.post(
    '/search/reindex',
    {
      schema: {
        tags: ['operations'],
        body: Type.Optional(Type.Object({ batch_size: Type.Optional(Type.Integer({ minimum: 1, maximum: 100_000 })) }, { additionalProperties: false })),
        response: { 200: Type.Object({ customers: Type.Integer(), documents: Type.Integer(), removed: Type.Integer() }), 403: ErrorBody, ...COMMON_ERRORS },
      },
    },
    async (request) => {
      assertAdmin(principalOf(request));
      return deps.search.reindex({ batchSize: request.body?.batch_size });
    },
  );
}
