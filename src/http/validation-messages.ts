import type { FastifySchemaValidationError, FastifyServerOptions } from 'fastify';
import { invisibleRule } from '../domain/invisible-characters.ts';

/**
 * Schema refusals in words a client can act on: the property's name, then what it must be.
 *
 *     amount: must be a whole number from 1 to 100000000000000
 *     unknown property "foo"
 *     limit: must be from 1 to 100
 *
 * Fastify hands its `schemaErrorFormatter` Ajv's errors; with Ajv's `verbose` option each carries
 * the schema that failed (`parentSchema`) and the value (`data`), which say the range, the allowed
 * values or, through the schema's `description`, what a patterned value must be. A pattern itself
 * is never shown.
 */

/** The parts of an Ajv error this reads; `parentSchema`, `schema` and `data` are there with `verbose`. */
interface AjvError {
  readonly keyword: string;
  readonly instancePath: string;
  readonly params: Readonly<Record<string, unknown>>;
  readonly message?: string;
  readonly schema?: unknown;
  readonly parentSchema?: Readonly<Record<string, unknown>>;
  readonly data?: unknown;
}

/** What each part of a request is called in a message: its values, and the part as a whole. */
const PARTS: Readonly<Record<string, { readonly noun: string; readonly whole: string }>> = {
  body: { noun: 'property', whole: 'body' },
  querystring: { noun: 'query parameter', whole: 'query' },
  params: { noun: 'path parameter', whole: 'path' },
  headers: { noun: 'header', whole: 'headers' },
};

/** Longest name a message repeats. */
const NAME_MAX = 64;

/** The message for a request part that failed its schema. */
export function validationMessage(errors: readonly FastifySchemaValidationError[], dataVar: string): string {
  // With `allErrors` off Ajv stops at the first failure, except that a failed `anyOf` first lists
  // what each of its branches said: the last error is always the one that decided.
  const err = errors.at(-1) as AjvError | undefined;
  const part = PARTS[dataVar] ?? { noun: 'value', whole: dataVar };
  if (!err) return `the ${part.whole} does not match the schema`;
  const path = pathOf(err.instancePath);
  switch (err.keyword) {
    case 'required':
      return `missing ${part.noun} ${quoteName(joinPath(path, String(err.params.missingProperty)))}`;
    case 'additionalProperties':
      return `unknown ${part.noun} ${quoteName(joinPath(path, String(err.params.additionalProperty)))}`;
    default:
      return `${path || part.whole}: ${mustBe(err)}`;
  }
}

/** A Fastify `schemaErrorFormatter`: the error whose message is `validationMessage`. */
export const schemaErrorFormatter: NonNullable<FastifyServerOptions['schemaErrorFormatter']> = (errors, dataVar) => new Error(validationMessage(errors, dataVar));

/** What the value must be, from the keyword that refused it and the schema that holds it. */
function mustBe(err: AjvError): string {
  const schema = err.parentSchema ?? {};
  switch (err.keyword) {
    case 'type':
    case 'minimum':
    case 'maximum':
    case 'exclusiveMinimum':
    case 'exclusiveMaximum':
    case 'multipleOf':
      return numberOrType(schema, err);
    case 'minLength':
    case 'maxLength':
      return `must be ${countOf(schema.minLength, schema.maxLength, 'character')} long`;
    case 'minItems':
    case 'maxItems':
      return `must have ${countOf(schema.minItems, schema.maxItems, 'item')}`;
    case 'pattern': {
      const invisible = typeof err.data === 'string' ? invisibleRule(err.data) : null;
      if (invisible) return invisible;
      return typeof schema.description === 'string' ? `must be ${schema.description}` : 'is not in the expected format';
    }
    case 'enum':
      return oneOf(err.params.allowedValues);
    case 'const':
      return `must be ${String(err.params.allowedValue)}`;
    case 'anyOf':
    case 'oneOf': {
      const branches = Array.isArray(err.schema) ? (err.schema as Array<Record<string, unknown>>) : [];
      if (branches.length > 0 && branches.every((b) => b !== null && typeof b === 'object' && 'const' in b)) {
        return oneOf(branches.map((b) => b.const));
      }
      return typeof schema.description === 'string' ? `must be ${schema.description}` : 'does not match any of the allowed forms';
    }
    default:
      return err.message ?? 'is not valid';
  }
}

const TYPES: Readonly<Record<string, string>> = {
  integer: 'a whole number',
  number: 'a number',
  string: 'a string',
  boolean: 'true or false',
  object: 'an object',
  array: 'an array',
  null: 'null',
};

/** A number's type and range in one sentence, whichever of them refused it; any other type by name. */
function numberOrType(schema: Readonly<Record<string, unknown>>, err: AjvError): string {
  const declared = schema.type ?? err.params.type;
  const types = (Array.isArray(declared) ? declared : [declared]).map((t) => TYPES[String(t)] ?? String(t));
  const numeric = declared === 'integer' || declared === 'number';
  if (!numeric) return `must be ${types.join(' or ')}`;
  const min = typeof schema.minimum === 'number' ? schema.minimum : undefined;
  const max = typeof schema.maximum === 'number' ? schema.maximum : undefined;
  const range =
    min !== undefined && max !== undefined
      ? ` from ${min} to ${max}`
      : min !== undefined
        ? ` of at least ${min}`
        : max !== undefined
          ? ` of at most ${max}`
          : '';
  if (err.keyword === 'type' || err.keyword === 'minimum' || err.keyword === 'maximum') return `must be ${types[0]}${range}`;
  return `must be ${types[0]}${range} (${err.message ?? 'out of range'})`;
}

/** `1 to 128 characters`, `at least 1 character`, `at most 64 characters`. */
function countOf(min: unknown, max: unknown, unit: string): string {
  const plural = (n: number) => `${n} ${unit}${n === 1 ? '' : 's'}`;
  if (typeof min === 'number' && typeof max === 'number') return `${min} to ${plural(max)}`;
  if (typeof min === 'number') return `at least ${plural(min)}`;
  return `at most ${plural(Number(max))}`;
}

function oneOf(values: unknown): string {
  return `must be one of ${(Array.isArray(values) ? values : []).map(String).join(', ')}`;
}

/** Ajv's JSON Pointer as a dotted path: `/meta/tags/0/name` → `meta.tags[0].name`. */
function pathOf(pointer: string): string {
  if (pointer === '') return '';
  return pointer
    .slice(1)
    .split('/')
    .map((s) => s.replaceAll('~1', '/').replaceAll('~0', '~'))
    .reduce((path, segment) => (/^(0|[1-9][0-9]*)$/.test(segment) ? `${path}[${segment}]` : joinPath(path, segment)), '');
}

/** `meta` and `tags` → `meta.tags`. */
export function joinPath(path: string, name: string): string {
  return path === '' ? name : `${path}.${name}`;
}

/** A name as a JSON string, cut short: names in messages may come from the client. */
export function quoteName(name: string): string {
  return JSON.stringify(name.length > NAME_MAX ? `${name.slice(0, NAME_MAX)}…` : name);
}
