import { Type, type Static } from 'typebox';
import { ACCOUNT_TYPES, CURRENCIES, MAX_AMOUNT } from '../domain/money.ts';

/**
 * Route schemas. Bodies reject unknown properties, and nothing is coerced: `"100"` is not 100.
 * Path and query values arrive as text, so they are declared as patterned strings and converted
 * after validation.
 */
export const Id = Type.String({ pattern: '^[1-9][0-9]{0,14}$', description: 'a positive integer id' });
/** An id in a body: the same range as a path id, so that it always fits a bigint column. */
export const IdValue = Type.Integer({ minimum: 1, maximum: 999_999_999_999_999, description: 'a positive integer id' });
export const IdParams = Type.Object({ id: Id }, { additionalProperties: false });
export type IdParams = Static<typeof IdParams>;

export const Amount = Type.Integer({ minimum: 1, maximum: MAX_AMOUNT, description: 'minor units of the currency' });
export const IsoDate = Type.String({ pattern: '^[0-9]{4}-[0-9]{2}-[0-9]{2}$', description: 'YYYY-MM-DD' });
export const Name = Type.String({
  minLength: 1,
  maxLength: 128,
  // Printable text with at least one non-space character.
  pattern: '^[^\\u0000-\\u001f\\u007f\\ud800-\\udfff]*[^\\s\\u0000-\\u001f\\u007f\\ud800-\\udfff][^\\u0000-\\u001f\\u007f\\ud800-\\udfff]*$',
});
export const Limit = Type.String({ pattern: '^(100|[1-9][0-9]?)$', description: '1 to 100, default 100' });
export const Cursor = Type.String({ minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9_-]+$' });
export const Timestamp = Type.String({ description: 'ISO 8601 timestamp' });

export const ErrorBody = Type.Object({
  statusCode: Type.Integer(),
  code: Type.String(),
  message: Type.String(),
  request_id: Type.Optional(Type.String()),
});

export const Customer = Type.Object({
  id: Type.Integer(),
  name: Type.String(),
  date_of_birth: Type.String(),
  balance: Type.Integer(),
});

export const Account = Type.Object({
  account_id: Type.Integer(),
  account_type: Type.Union(ACCOUNT_TYPES.map((t) => Type.Literal(t))),
  balance: Type.Integer(),
  customer_id: Type.Integer(),
  currency: Type.Union(CURRENCIES.map((c) => Type.Literal(c))),
});

export const PageOf = <T extends ReturnType<typeof Type.Object>>(item: T) =>
  Type.Object({ result: Type.Array(item), next_cursor: Type.Optional(Type.String()) });

export const PagingQuery = Type.Object({ limit: Type.Optional(Limit), cursor: Type.Optional(Cursor) }, {
  additionalProperties: false,
});
export type PagingQuery = Static<typeof PagingQuery>;

/** Error responses every authenticated route can give. */
export const COMMON_ERRORS = {
  400: ErrorBody,
  401: ErrorBody,
  404: ErrorBody,
  503: ErrorBody,
} as const;

export const IDEMPOTENCY_HEADERS = Type.Object({
  'idempotency-key': Type.Optional(Type.String({ minLength: 1, maxLength: 255, pattern: '^[\\x21-\\x7e]+$' })),
});

/** The limit query value as a number, 100 when absent. */
export function limitOf(query: { limit?: string }): number {
  return query.limit === undefined ? 100 : Number(query.limit);
}
