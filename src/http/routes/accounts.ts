import { Type } from 'typebox';
import { ACCOUNT_TYPES, CURRENCIES } from '../../domain/money.ts';
import { principalOf } from '../auth.ts';
import type { HttpDeps } from '../deps.ts';
import { Account, COMMON_ERRORS, ErrorBody, IdParams, limitOf, OneOf, PageOf, PagingQuery, Timestamp } from '../schemas.ts';
import type { TypedApp } from '../typed-app.ts';

const OpenBody = Type.Object(
  {
    account_type: OneOf(ACCOUNT_TYPES),
    currency: Type.Optional(OneOf(CURRENCIES)),
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

/** Opening and reading accounts, and their ledger. */
export async function accountRoutes(app: TypedApp, deps: HttpDeps): Promise<void> {
  app.post(
    '/customers/:id/accounts',
    {
      schema: {
        tags: ['accounts'],
        description: 'Opens an account; 409 DATABANK_ERR_QUOTA_EXCEEDED past DATABANK_MAX_ACCOUNTS_PER_CUSTOMER',
        params: IdParams,
        body: OpenBody,
        response: { 201: Account, ...COMMON_ERRORS, 409: ErrorBody },
      },
    },
    async (request, reply) => {
      const account = await deps.accounts.open(principalOf(request), request.params.id, request.body);
      return reply.code(201).send(account);
    },
  );

  app.get(
    '/customers/:id/accounts',
    {
      schema: {
        tags: ['accounts'],
        description: "The customer's accounts in id order, paged",
        params: IdParams,
        querystring: PagingQuery,
        response: { 200: PageOf(Account), ...COMMON_ERRORS },
      },
    },
    async (request, reply) => {
      const { query } = request;
      const { value, cache } = await deps.accounts.listForCustomer(principalOf(request), request.params.id, {
        limit: limitOf(query),
        cursor: query.cursor,
      });
      return reply.header('x-cache', cache).send(value);
    },
  );

  app.get(
    '/accounts/:id',
    { schema: { tags: ['accounts'], params: IdParams, response: { 200: Account, ...COMMON_ERRORS } } },
    async (request, reply) => {
      const { value, cache } = await deps.accounts.getCached(principalOf(request), request.params.id);
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
      const { query } = request;
      return deps.accounts.entries(principalOf(request), request.params.id, { limit: limitOf(query), cursor: query.cursor });
    },
  );
}
