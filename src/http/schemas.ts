import { Type, type Static } from 'typebox';
import { ACCOUNT_TYPES, CURRENCIES, MAX_AMOUNT } from '../domain/money.ts';
import { INVISIBLE_CLASS } from '../domain/invisible-characters.ts';
import { ID_KEYWORD, ID_PATTERN } from './id-keyword.ts';

/**
 * Route schemas. Bodies reject unknown properties, and nothing is coerced: `"100"` is not 100.
 * Path and query values arrive as text, so they are declared as patterned strings; path ids are
 * then turned into numbers by the id keyword (`id-keyword.ts`), other values by the route.
 */

/**
 * A path id: text matching the id pattern on the wire, a number in the handler. The static type
 * is `number` because the id keyword has replaced the text by the time a handler runs.
 */
export const Id = Type.Unsafe<number>({
  type: 'string',
  pattern: ID_PATTERN,
  [ID_KEYWORD]: true,
  description: 'a positive integer id',
});
/**
 * One of a list of strings, as `anyOf` of `const`s. Built from a list with `map`, TypeBox cannot
 * tell the members' types; this keeps them, so that handlers see the union and not `never`.
 */
export function OneOf<const T extends readonly string[]>(values: T) {
  return Type.Unsafe<T[number]>(Type.Union(values.map((v) => Type.Literal(v))));
}

/** An id in a body: the same range as a path id, so that it always fits a bigint column. */
export const IdValue = Type.Integer({ minimum: 1, maximum: 999_999_999_999_999, description: 'a positive integer id' });
/** The path parameters of every `/…/:id` route: the id, already a number in the handler. */
export const IdParams = Type.Object({ id: Id }, { additionalProperties: false });
export type IdParams = Static<typeof IdParams>;

export const Amount = Type.Integer({ minimum: 1, maximum: MAX_AMOUNT, description: 'minor units of the currency' });
/**
 * A value with a pattern carries a `description` that says, in words, what it must be: a refusal
 * reads `<name>: must be <description>` (`validation-messages.ts`), and never shows the pattern.
 */
export const IsoDate = Type.String({ pattern: '^[0-9]{4}-[0-9]{2}-[0-9]{2}$', description: 'a date YYYY-MM-DD' });
/** Characters no name may hold: controls, lone surrogates, bidirectional and zero-width characters. */
const NOT_IN_NAMES = `\\u0000-\\u001f\\u007f\\ud800-\\udfff${INVISIBLE_CLASS}`;
export const Name = Type.String({
  minLength: 1,
  maxLength: 128,
  // Printable text with at least one non-space character.
  pattern: `^[^${NOT_IN_NAMES}]*[^\\s${NOT_IN_NAMES}][^${NOT_IN_NAMES}]*$`,
  description: 'printable text with at least one non-space character, without control, bidirectional or zero-width characters',
});
export const Limit = Type.String({ pattern: '^(100|[1-9][0-9]?)$', description: 'from 1 to 100', default: '100' });
export const Cursor = Type.String({
  minLength: 1,
  maxLength: 64,
  pattern: '^[A-Za-z0-9_-]+$',
  description: 'the next_cursor of a previous page',
});
export const Timestamp = Type.String({ description: 'ISO 8601 timestamp' });

export const ErrorBody = Type.Object({
  statusCode: Type.Integer(),
  code: Type.String(),
  message: Type.String(),
  request_id: Type.Optional(Type.String()),
  problems: Type.Optional(Type.Array(Type.Object({ path: Type.String(), message: Type.String() }))),
});

export const Customer = Type.Object({
  id: Type.Integer(),
  name: Type.String(),
  date_of_birth: Type.String(),
  balance: Type.Integer({ description: 'the sum of the customer\'s USD accounts (the base currency)' }),
  balances: Type.Record(Type.String({ pattern: '^[A-Z]{3}$' }), Type.Integer(), {
    description: 'the sum of the customer\'s accounts per currency held',
  }),
});

export const Account = Type.Object({
  account_id: Type.Integer(),
  account_type: OneOf(ACCOUNT_TYPES),
  balance: Type.Integer(),
  customer_id: Type.Integer(),
  currency: OneOf(CURRENCIES),
});

/** A page of a list; the array is readonly in TypeScript only, as the services' pages are. */
export const PageOf = <T extends ReturnType<typeof Type.Object>>(item: T) =>
  Type.Object({ result: Type.Immutable(Type.Array(item)), next_cursor: Type.Optional(Type.String()) });

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
