import type { FastifyInstance } from 'fastify';
import { Type, type Static } from 'typebox';
import { ACCOUNT_TYPES, CURRENCIES } from '../../domain/money.ts';
import { principalOf } from '../auth.ts';
import type { HttpDeps } from '../deps.ts';
import { Account, COMMON_ERRORS, IdParams, limitOf, PageOf, PagingQuery, Timestamp } from '../schemas.ts';

const OpenBody = Type.Object(
  {
    account_type: Type.Union(ACCOUNT_TYPES.map((t) => Type.Literal(t))),
    currency: Type.Optional(Type.Union(CURRENCIES.map((c) => Type.Literal(c)))),
  },
  { additionalProperties: false },
);

const Entry = Type.Object({
  entry_id: Type.Integer(),
  transaction_id: Type.Integer(),
  kind: Type.String(),
  amount: Type.Integer({ description: 'positive: money in; negative: money out' }),
  reference: Type.Union([Type.String(), Type.Null()]),
  created_at: Timestamp,
});

export async function accountRoutes(app: FastifyInstance, deps: HttpDeps): Promise<void> {
  app.post(
    '/customers/:id/accounts',
    { schema: { tags: ['accounts'], params: IdParams, body: OpenBody, response: { 201: Account, ...COMMON_ERRORS } } },
    async (request, reply) => {
      const account = await deps.accounts.open(
        principalOf(request),
        Number((request.params as IdParams).id),
        request.body as Static<typeof OpenBody>,
      );
      return reply.code(201).send(account);
    },
  );

  app.get(
    '/customers/:id/accounts',
    { schema: { tags: ['accounts'], params: IdParams, response: { 200: PageOf(Account), ...COMMON_ERRORS } } },
    async (request, reply) => {
      const { value, cache } = await deps.accounts.listForCustomer(principalOf(request), Number((request.params as IdParams).id));
      return reply.header('x-cache', cache).send(value);
    },
  );

  app.get(
    '/accounts/:id',
    { schema: { tags: ['accounts'], params: IdParams, response: { 200: Account, ...COMMON_ERRORS } } },
    async (request, reply) => {
      const { value, cache } = await deps.accounts.getCached(principalOf(request), Number((request.params as IdParams).id));
      return reply.header('x-cache', cache).send(value);
    },
  );

  app.get(
    '/accounts/:id/entries',
    {
      schema: {
        tags: ['accounts'],
        description: 'The account ledger, newest entry first',
        params: IdParams,
        querystring: PagingQuery,
        response: { 200: PageOf(Entry), ...COMMON_ERRORS },
      },
    },
    async (request) => {
      const query = request.query as PagingQuery;
      return deps.accounts.entries(principalOf(request), Number((request.params as IdParams).id), {
        limit: limitOf(query),
        cursor: query.cursor,
      });
    },
  );
}
