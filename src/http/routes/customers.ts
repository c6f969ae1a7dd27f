import type { FastifyInstance } from 'fastify';
import { Type, type Static } from 'typebox';
import { DatabankError } from '../../domain/errors.ts';
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

const ListQuery = Type.Object(
  { born_after: Type.Optional(IsoDate), limit: Type.Optional(Limit), cursor: Type.Optional(Cursor) },
  { additionalProperties: false },
);
const CreateBody = Type.Object({ name: Name, date_of_birth: IsoDate }, { additionalProperties: false });
const UpdateBody = Type.Object({ name: Type.Optional(Name) }, { additionalProperties: false });

/** A calendar date that exists (no 2023-02-30), as YYYY-MM-DD. */
export function assertRealDate(value: string, field: string): void {
  const [y, m, d] = value.split('-').map(Number) as [number, number, number];
  // setUTCFullYear, unlike Date.UTC, takes years 0-99 literally instead of as 1900-1999.
  const date = new Date(0);
  date.setUTCFullYear(y, m - 1, d);
  // PostgreSQL has no year 0.
  if (y < 1 || date.getUTCFullYear() !== y || date.getUTCMonth() !== m - 1 || date.getUTCDate() !== d) {
    throw new DatabankError('DATABANK_ERR_VALIDATION', `${field} is not a calendar date`);
  }
}

function assertBirthDate(value: string): void {
  assertRealDate(value, 'date_of_birth');
  const today = new Date().toISOString().slice(0, 10);
  if (value < '1900-01-01' || value > today) {
    throw new DatabankError('DATABANK_ERR_VALIDATION', 'date_of_birth must be between 1900-01-01 and today');
  }
}

export async function customerRoutes(app: FastifyInstance, deps: HttpDeps): Promise<void> {
  app.get(
    '/customers',
    { schema: { tags: ['customers'], querystring: ListQuery, response: { 200: PageOf(Customer), ...COMMON_ERRORS } } },
    async (request) => {
      const query = request.query as Static<typeof ListQuery>;
      if (query.born_after !== undefined) assertRealDate(query.born_after, 'born_after');
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
      const body = request.body as Static<typeof CreateBody>;
      assertBirthDate(body.date_of_birth);
      return reply.code(201).send(await deps.customers.create(principalOf(request), body));
    },
  );

  app.get(
    '/customers/:id',
    { schema: { tags: ['customers'], params: IdParams, response: { 200: Customer, ...COMMON_ERRORS } } },
    async (request, reply) => {
      const { value, cache } = await deps.customers.getCached(principalOf(request), Number((request.params as IdParams).id));
      return reply.header('x-cache', cache).send(value);
    },
  );

  app.patch(
    '/customers/:id',
    { schema: { tags: ['customers'], params: IdParams, body: UpdateBody, response: { 200: Customer, ...COMMON_ERRORS } } },
    async (request) =>
      deps.customers.update(
        principalOf(request),
        Number((request.params as IdParams).id),
        request.body as Static<typeof UpdateBody>,
      ),
  );
}
