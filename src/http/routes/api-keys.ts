import { Type } from 'typebox';
import { principalOf } from '../auth.ts';
import type { HttpDeps } from '../deps.ts';
import { COMMON_ERRORS, ErrorBody, IdParams, IdValue, limitOf, OneOf, PageOf, PagingQuery, Timestamp } from '../schemas.ts';
import type { TypedApp } from '../typed-app.ts';

const Role = OneOf(['admin', 'customer'] as const);
const Nullable = <T extends Parameters<typeof Type.Union>[0][number]>(schema: T) => Type.Union([schema, Type.Null()]);

const CreateBody = Type.Object(
  {
    role: Role,
    customer_id: Type.Optional(Nullable(IdValue)),
    expires_at: Type.Optional(Nullable(Timestamp)),
  },
  { additionalProperties: false },
);

const CreatedKey = Type.Object({
  key: Type.String({ description: 'the whole key: shown this once, never again' }),
  id: Type.Integer(),
  role: Role,
  customer_id: Nullable(Type.Integer()),
  expires_at: Nullable(Type.String()),
});

const KeyInfo = Type.Object({
  id: Type.Integer(),
  prefix: Type.String({ description: 'the part after dbk_ that names the key; it opens nothing' }),
  role: Role,
  customer_id: Nullable(Type.Integer()),
  created_at: Type.String(),
  expires_at: Nullable(Type.String()),
  last_used_at: Nullable(Type.String({ description: 'to within about 30 s' })),
  revoked_at: Nullable(Type.String()),
});

const ADMIN_ERRORS = { 403: ErrorBody, ...COMMON_ERRORS } as const;

/**
 * The admin API for API keys: make one (shown once), list them without secrets, revoke one, or
 * rotate one (a new key like it, the old one revoked in the same transaction). Customer keys get
 * 403 on all of them.
 */
export async function apiKeyRoutes(app: TypedApp, deps: HttpDeps): Promise<void> {
  app.post(
    '/api-keys',
    { schema: { tags: ['api-keys'], body: CreateBody, response: { 201: CreatedKey, ...ADMIN_ERRORS } } },
    async (request, reply) => reply.code(201).send(await deps.apiKeys.issue(principalOf(request), request.body)),
  );

  app.get(
    '/api-keys',
    { schema: { tags: ['api-keys'], querystring: PagingQuery, response: { 200: PageOf(KeyInfo), ...ADMIN_ERRORS } } },
    async (request) =>
      deps.apiKeys.list(principalOf(request), { limit: limitOf(request.query), cursor: request.query.cursor }),
  );

  app.delete(
    '/api-keys/:id',
    { schema: { tags: ['api-keys'], params: IdParams, response: { 204: Type.Null(), ...ADMIN_ERRORS } } },
    async (request, reply) => {
      await deps.apiKeys.revoke(principalOf(request), request.params.id);
      return reply.code(204).send(null);
    },
  );

  app.post(
    '/api-keys/:id/rotate',
    { schema: { tags: ['api-keys'], params: IdParams, response: { 201: CreatedKey, ...ADMIN_ERRORS } } },
    async (request, reply) => reply.code(201).send(await deps.apiKeys.rotate(principalOf(request), request.params.id)),
  );
}
