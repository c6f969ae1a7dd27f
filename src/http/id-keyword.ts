/**
 * Path ids arrive as text and the handlers want numbers, but the validator must not coerce types:
 * Ajv's coercion would also accept `01`, `1e3`, `0x1` or ` 1`. So ids keep their strict pattern,
 * and one keyword of our own turns the text that passed it into a number.
 *
 * The keyword is named with an `x-` prefix so that the OpenAPI document, which copies parameter
 * schemas as they are, stays valid: OpenAPI 3.1 allows `x-` extensions in a Schema Object.
 */

/** The keyword that marks a schema whose valid text is replaced by its number. */
export const ID_KEYWORD = 'x-databank-id';

/** The one spelling of an id: a positive decimal integer without leading zeros, at most 15 digits. */
export const ID_PATTERN = '^[1-9][0-9]{0,14}$';
const ID_TEXT = new RegExp(ID_PATTERN);

/** Where Ajv says the value being validated sits, so that a modifying keyword can replace it. */
interface DataContext {
  readonly parentData: Record<string | number, unknown>;
  readonly parentDataProperty: string | number;
}

/** The part of an Ajv keyword definition this keyword uses (Ajv 8's `FuncKeywordDefinition`). */
interface IdKeywordDefinition {
  readonly keyword: string;
  readonly schemaType: 'boolean';
  readonly post: true;
  readonly modifying: true;
  readonly errors: false;
  readonly validate: (schema: boolean, data: unknown, parentSchema?: object, cxt?: DataContext) => boolean;
}

/** The keyword: runs after every other keyword of its schema (`post`), so only on text that passed them. */
const definition: IdKeywordDefinition = {
  keyword: ID_KEYWORD,
  schemaType: 'boolean',
  post: true,
  modifying: true,
  errors: false,
  validate(schema, data, _parentSchema, cxt) {
    if (!schema) return true;
    // Checked again here so that the keyword is safe even in a schema without the pattern; an id
    // at the root of a schema has no parent to be replaced in, and is refused rather than left text.
    if (typeof data !== 'string' || !ID_TEXT.test(data) || cxt === undefined) return false;
    cxt.parentData[cxt.parentDataProperty] = Number(data);
    return true;
  },
};

/**
 * An Ajv plugin adding the id keyword, for Fastify's `ajv: { plugins: [idKeyword] }`.
 *
 * @example
 * Fastify({ ajv: { customOptions: { coerceTypes: false }, plugins: [idKeyword] } })
 */
export function idKeyword<A extends { addKeyword(definition: IdKeywordDefinition): A }>(ajv: A): A {
  return ajv.addKeyword(definition);
}
