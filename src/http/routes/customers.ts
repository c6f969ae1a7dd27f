import { Type } from 'typebox';
import { principalOf } from '../auth.ts';
import type { HttpDeps } from '../deps.ts';
import {
  COMMON_ERRORS,
  Cursor,
  Customer,
  ErrorBody,
  IdParams,
  IsoDate,
  Limit,
  limitOf,
  Name,
  PageOf,
} from '../schemas.ts';
import type { TypedApp } from '../typed-app.ts';

const ListQuery = Type.Object(
  { born_after: Type.Optional(IsoDate), limit: Type.Optional(Limit), cursor: Type.Optional(Cursor) },
  { additionalProperties: false },
);
const CreateBody = Type.Object({ name: Name, date_of_birth: IsoDate }, { additionalProperties: false });
const UpdateBody = Type.Object({ name: Type.Optional(Name) }, { additionalProperties: false });

/**
 * Customers. The schemas check only the shape of dates (YYYY-MM-DD); whether a date exists, and
 * which dates of birth the bank accepts, are domain rules (`domain/dates.ts`) that the customers
 * service enforces for every caller, so they are not repeated here.
 */
export async function customerRoutes(app: TypedApp, deps: HttpDeps): Promise<void> {
  app.get(
    '/customers',
    { schema: { tags: ['customers'], querystring: ListQuery, response: { 200: PageOf(Customer), ...COMMON_ERRORS } } },
    async (request) => {
      const { query } = request;
      return deps.customers.list(principalOf(request), {
        bornAfter: query.born_after,
        limit: limitOf(query),
        cursor: query.cursor,
      });
    },
  );

  app.post(
    '/customers',
    { schema: { tags: ['customers'], body: CreateBody, response: { 201: Customer, 403: ErrorBody, ...COMMON_ERRORS } } },
    async (request, reply) => {
      return reply.code(201).send(await deps.customers.create(principalOf(request), request.body));
    },
  );

  app.get(
    '/customers/:id',
    { schema: { tags: ['customers'], params: IdParams, response: { 200: Customer, ...COMMON_ERRORS } } },
    async (request, reply) => {
      const { value, cache } = await deps.customers.getCached(principalOf(request), request.params.id);
      return reply.header('x-cache', cache).send(value);
    },
  );

  app.patch(
    '/customers/:id',
    { schema: { tags: ['customers'], params: IdParams, body: UpdateBody, response: { 200: Customer, ...COMMON_ERRORS } } },
    async (request) => deps.customers.update(principalOf(request), request.params.id, request.body),
  );
}
