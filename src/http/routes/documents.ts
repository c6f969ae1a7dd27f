import { Type } from 'typebox';
import { COLLECTION_NAME } from '../../domain/documents.ts';
import { DatabankError } from '../../domain/errors.ts';
import { principalOf } from '../auth.ts';
import type { HttpDeps } from '../deps.ts';
import { COMMON_ERRORS, Cursor, ErrorBody, Id, IdParams, Limit, limitOf, PageOf } from '../schemas.ts';
import type { TypedApp } from '../typed-app.ts';

export const CollectionName = Type.String({
  pattern: COLLECTION_NAME,
  description: 'a collection name: a lower-case letter, then up to 62 lower-case letters, digits, _ or -',
});
export const Tag = Type.String({
  pattern: '^[\\p{L}\\p{N}_.:-]{1,64}$',
  description: 'a tag: 1 to 64 letters, digits, _ . : or -',
});
const JsonBody = Type.Unsafe<Record<string, unknown>>({ type: 'object', additionalProperties: true, description: 'any JSON object' });
const Problem = Type.Object({ path: Type.String(), message: Type.String() });
const DocumentAnswer = Type.Object({
  document_id: Type.Integer(),
  customer_id: Type.Integer(),
  collection: Type.String(),
  version: Type.Integer(),
  body: JsonBody,
  tags: Type.Immutable(Type.Array(Type.String())),
  problems: Type.Immutable(Type.Array(Problem)),
  created_at: Type.String(),
  updated_at: Type.String(),
});
const CreateBody = Type.Object(
  { collection: CollectionName, body: JsonBody, tags: Type.Optional(Type.Array(Tag, { maxItems: 32 })) },
  { additionalProperties: false },
);
const PatchBody = Type.Object(
  {
    body: Type.Optional(Type.Union([JsonBody, Type.Null()], { description: 'a JSON Merge Patch of the body' })),
    tags: Type.Optional(Type.Union([Type.Array(Tag, { maxItems: 32 }), Type.Null()])),
  },
  { additionalProperties: false },
);
/** `where[field]=value`, `where[address.city]=Oslo`: body fields compared as text. */
const WHERE_KEY = '^where\\[[A-Za-z0-9_-]{1,64}(\\.[A-Za-z0-9_-]{1,64}){0,7}\\]$';
const ListQuery = Type.Object(
  {
    collection: Type.Optional(CollectionName),
    tag: Type.Optional(Tag),
    limit: Type.Optional(Limit),
    cursor: Type.Optional(Cursor),
  },
  { additionalProperties: false, patternProperties: { [WHERE_KEY]: Type.String({ maxLength: 256 }) }, maxProperties: 12 },
);
const AllListQuery = Type.Object(
  { ...ListQuery.properties, customer_id: Type.Optional(Id) },
  { additionalProperties: false, patternProperties: { [WHERE_KEY]: Type.String({ maxLength: 256 }) }, maxProperties: 13 },
);
const IfMatch = Type.Object({ 'if-match': Type.Optional(Type.String({ maxLength: 64 })) });
const CollectionParams = Type.Object({ name: CollectionName }, { additionalProperties: false });
const SchemaAnswer = Type.Object({ collection: Type.String(), version: Type.Integer(), schema: JsonBody, updated_at: Type.String() });
const DocumentsPage = PageOf(DocumentAnswer);

/**
 * Customers' documents (`POST /customers/:id/documents`, `GET|PATCH|DELETE /documents/:id`,
 * lists) and collections' JSON Schemas (`PUT|GET|DELETE /collections/:name/schema`). A read
 * answers `ETag: "<version>"`; a PATCH must send it back in `If-Match`.
 */
export async function documentRoutes(app: TypedApp, deps: HttpDeps): Promise<void> {
  // A body up to the document limit, plus room for the request's other members.
  const bodyLimit = deps.documents.maxBytes + 16 * 1024;

  app.post(
    '/customers/:id/documents',
    {
      bodyLimit,
      schema: { tags: ['documents'], params: IdParams, body: CreateBody, response: { 201: DocumentAnswer, 413: ErrorBody, 422: ErrorBody, ...COMMON_ERRORS } },
    },
    async (request, reply) => {
      const doc = await deps.documents.create(principalOf(request), request.params.id, request.body);
      return reply.code(201).header('etag', etag(doc.version)).header('location', `/documents/${doc.document_id}`).send(doc);
    },
  );

  app.get(
    '/customers/:id/documents',
    { schema: { tags: ['documents'], params: IdParams, querystring: ListQuery, response: { 200: DocumentsPage, ...COMMON_ERRORS } } },
    async (request) => {
      const { query } = request;
      return deps.documents.list(principalOf(request), { ...listOptions(query), customerId: request.params.id });
    },
  );

  app.get(
    '/documents',
    { schema: { tags: ['documents'], querystring: AllListQuery, response: { 200: DocumentsPage, ...COMMON_ERRORS } } },
    async (request) => {
      const { query } = request;
      return deps.documents.list(principalOf(request), { ...listOptions(query), customerId: query.customer_id });
    },
  );

  app.get(
    '/documents/:id',
    { schema: { tags: ['documents'], params: IdParams, response: { 200: DocumentAnswer, ...COMMON_ERRORS } } },
    async (request, reply) => {
      const doc = await deps.documents.get(principalOf(request), request.params.id);
      return reply.header('etag', etag(doc.version)).send(doc);
    },
  );

  app.patch(
    '/documents/:id',
    {
      bodyLimit,
      schema: {
        tags: ['documents'],
        params: IdParams,
        headers: IfMatch,
        body: PatchBody,
        response: { 200: DocumentAnswer, 412: ErrorBody, 413: ErrorBody, 422: ErrorBody, 428: ErrorBody, ...COMMON_ERRORS },
      },
    },
    async (request, reply) => {
      const version = parseIfMatch(request.headers['if-match']);
      if (version === undefined) throw new DatabankError('DATABANK_ERR_PRECONDITION_REQUIRED');
      const doc = await deps.documents.update(principalOf(request), request.params.id, version, request.body);
      return reply.header('etag', etag(doc.version)).send(doc);
    },
  );

  app.delete(
    '/documents/:id',
    { schema: { tags: ['documents'], params: IdParams, headers: IfMatch, response: { 204: Type.Null(), 412: ErrorBody, ...COMMON_ERRORS } } },
    async (request, reply) => {
      await deps.documents.delete(principalOf(request), request.params.id, parseIfMatch(request.headers['if-match']));
      return reply.code(204).send(null);
    },
  );

  app.put(
    '/collections/:name/schema',
    {
      schema: {
        tags: ['documents'],
        params: CollectionParams,
        body: JsonBody,
        response: { 200: SchemaAnswer, 403: ErrorBody, 413: ErrorBody, ...COMMON_ERRORS },
      },
    },
    async (request) => deps.documents.putSchema(principalOf(request), request.params.name, request.body),
  );

  app.get(
    '/collections/:name/schema',
    { schema: { tags: ['documents'], params: CollectionParams, response: { 200: SchemaAnswer, ...COMMON_ERRORS } } },
    async (request) => deps.documents.getSchema(request.params.name),
  );

  app.delete(
    '/collections/:name/schema',
    { schema: { tags: ['documents'], params: CollectionParams, response: { 204: Type.Null(), 403: ErrorBody, ...COMMON_ERRORS } } },
    async (request, reply) => {
      await deps.documents.deleteSchema(principalOf(request), request.params.name);
      return reply.code(204).send(null);
    },
  );
}

function etag(version: number): string {
  return `"${version}"`;
}

/** `"3"` (or `3`, or a weak `W/"3"`) → 3; absent → undefined; anything else is a 400. */
function parseIfMatch(value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const match = /^(?:W\/)?"?([1-9][0-9]{0,8})"?$/.exec(value.trim());
  if (!match) throw new DatabankError('DATABANK_ERR_VALIDATION', 'If-Match: must be a version as the ETag of a read gave it, like "3"');
  return Number(match[1]);
}

function listOptions(query: Record<string, unknown>) {
  const where: Record<string, string> = {};
  for (const [key, value] of Object.entries(query)) {
    const field = /^where\[(.+)\]$/.exec(key)?.[1];
    if (field !== undefined) where[field] = value as string;
  }
  return {
    collection: query.collection as string | undefined,
    tag: query.tag as string | undefined,
    where,
    limit: limitOf(query as { limit?: string }),
    cursor: query.cursor as string | undefined,
  };
}
