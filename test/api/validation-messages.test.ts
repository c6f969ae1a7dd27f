import type { FastifySchemaValidationError } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ACCOUNT_TYPES, CURRENCIES, MAX_AMOUNT } from '../../src/domain/money.ts';
import { validationMessage } from '../../src/http/validation-messages.ts';
import { startTestApp, type TestApp } from '../support/app.ts';
import { ENGINES } from '../support/engines.ts';

/**
 * Schema refusals name the property and say what is wrong in words, over bodies, queries and
 * paths: never `body/amount must be integer`, never a regular expression.
 */

const NAME_RULE = 'must be printable text with at least one non-space character, without control, bidirectional or zero-width characters';
const AMOUNT_RULE = `must be a whole number from 1 to ${MAX_AMOUNT}`;

interface Case {
  readonly method: 'GET' | 'POST' | 'PATCH';
  readonly url: string;
  readonly body?: unknown;
  readonly message: string;
}

const CASES: readonly Case[] = [
  // Bodies: unknown and missing properties, types, lengths, patterns, ranges, allowed values.
  { method: 'POST', url: '/customers', body: { name: 'A', date_of_birth: '1990-01-01', foo: 1 }, message: 'unknown property "foo"' },
  { method: 'POST', url: '/customers', body: { date_of_birth: '1990-01-01' }, message: 'missing property "name"' },
  { method: 'POST', url: '/customers', body: { name: 'A' }, message: 'missing property "date_of_birth"' },
  { method: 'POST', url: '/customers', body: { name: '', date_of_birth: '1990-01-01' }, message: 'name: must be 1 to 128 characters long' },
  { method: 'POST', url: '/customers', body: { name: 'x'.repeat(129), date_of_birth: '1990-01-01' }, message: 'name: must be 1 to 128 characters long' },
  { method: 'POST', url: '/customers', body: { name: 7, date_of_birth: '1990-01-01' }, message: 'name: must be a string' },
  { method: 'POST', url: '/customers', body: { name: '   ', date_of_birth: '1990-01-01' }, message: `name: ${NAME_RULE}` },
  { method: 'POST', url: '/customers', body: { name: 'tab\there', date_of_birth: '1990-01-01' }, message: `name: ${NAME_RULE}` },
  { method: 'POST', url: '/customers', body: { name: 'A', date_of_birth: '1990/01/01' }, message: 'date_of_birth: must be a date YYYY-MM-DD' },
  { method: 'POST', url: '/customers', body: [], message: 'body: must be an object' },
  { method: 'POST', url: '/customers', body: 'text', message: 'body: must be an object' },
  { method: 'PATCH', url: '/customers/1', body: { name: true }, message: 'name: must be a string' },
  { method: 'POST', url: '/accounts/1/deposits', body: { amount: 1.5 }, message: `amount: ${AMOUNT_RULE}` },
  { method: 'POST', url: '/accounts/1/deposits', body: { amount: 0 }, message: `amount: ${AMOUNT_RULE}` },
  { method: 'POST', url: '/accounts/1/deposits', body: { amount: MAX_AMOUNT + 1 }, message: `amount: ${AMOUNT_RULE}` },
  { method: 'POST', url: '/accounts/1/deposits', body: { amount: '100' }, message: `amount: ${AMOUNT_RULE}` },
  { method: 'POST', url: '/accounts/1/deposits', body: { amount: null }, message: `amount: ${AMOUNT_RULE}` },
  {
    method: 'POST',
    url: '/transfers',
    body: { from_account_id: 0, to_account_id: 2, amount: 1 },
    message: 'from_account_id: must be a whole number from 1 to 999999999999999',
  },
  { method: 'POST', url: '/customers/1/accounts', body: { account_type: 'loan' }, message: `account_type: must be one of ${ACCOUNT_TYPES.join(', ')}` },
  {
    method: 'POST',
    url: '/customers/1/accounts',
    body: { account_type: 'checking', currency: 'JPY' },
    message: `currency: must be one of ${CURRENCIES.join(', ')}`,
  },
  // Queries.
  { method: 'GET', url: '/customers?limit=0', message: 'limit: must be from 1 to 100' },
  { method: 'GET', url: '/customers?limit=101', message: 'limit: must be from 1 to 100' },
  { method: 'GET', url: '/customers?limit=ten', message: 'limit: must be from 1 to 100' },
  { method: 'GET', url: '/customers?foo=1', message: 'unknown query parameter "foo"' },
  { method: 'GET', url: '/customers?cursor=a%20b', message: 'cursor: must be the next_cursor of a previous page' },
  { method: 'GET', url: `/customers?cursor=${'a'.repeat(65)}`, message: 'cursor: must be 1 to 64 characters long' },
  { method: 'GET', url: '/customers?born_after=yesterday', message: 'born_after: must be a date YYYY-MM-DD' },
  { method: 'GET', url: '/customers/1/files?content_type=text%2Fhtml', message: `content_type: must be one of image/png, image/jpeg, image/webp, image/gif, application/pdf, text/plain, text/csv` },
  { method: 'POST', url: '/customers/1/files?filename=', body: 'hello', message: 'filename: must be 1 to 255 characters long' },
  // Paths.
  { method: 'GET', url: '/customers/abc', message: 'id: must be a positive integer id' },
  { method: 'GET', url: '/customers/0', message: 'id: must be a positive integer id' },
  { method: 'GET', url: '/accounts/01', message: 'id: must be a positive integer id' },
];

for (const engine of ENGINES) {
  describe(`validation messages (${engine})`, () => {
    let t: TestApp;
    beforeAll(async () => {
      t = await startTestApp(engine, 'validation-messages');
    });
    afterAll(async () => {
      await t?.close();
    });

    it('name the property and say what it must be, in bodies, queries and paths', async () => {
      for (const c of CASES) {
        const what = `${c.method} ${c.url} ${JSON.stringify(c.body) ?? ''}`;
        const res = await t.app.http.inject({
          method: c.method,
          url: c.url,
          headers: { ...t.admin, ...(c.body === undefined ? {} : { 'content-type': 'application/json' }) },
          ...(c.body === undefined ? {} : { payload: JSON.stringify(c.body) }),
        });
        expect([what, res.statusCode, res.json()]).toEqual([
          what,
          400,
          { statusCode: 400, code: 'DATABANK_ERR_VALIDATION', message: c.message },
        ]);
      }
    });

    it('never show a pattern or the part of the request as a prefix', async () => {
      for (const c of CASES) {
        expect(c.message, c.url).not.toMatch(/\^|\$|\\u|body\/|querystring|params\//);
      }
    });

    it('an invalid Idempotency-Key keeps its own code', async () => {
      const res = await t.app.http.inject({
        method: 'POST',
        url: '/accounts/1/deposits',
        headers: { ...t.admin, 'content-type': 'application/json', 'idempotency-key': 'a b' },
        payload: JSON.stringify({ amount: 1 }),
      });
      expect([res.statusCode, res.json().code]).toEqual([400, 'DATABANK_ERR_IDEMPOTENCY_KEY_INVALID']);
    });
  });
}

describe('validationMessage', () => {
  const error = (e: Partial<FastifySchemaValidationError> & Record<string, unknown>) =>
    ({ keyword: 'type', instancePath: '', schemaPath: '#', params: {}, ...e }) as FastifySchemaValidationError;

  it('uses the dotted path of a nested property, with array indices', () => {
    const nested = error({ keyword: 'type', instancePath: '/owner/tags/0/label', params: { type: 'string' }, parentSchema: { type: 'string' } });
    expect(validationMessage([nested], 'body')).toBe('owner.tags[0].label: must be a string');
    const missing = error({ keyword: 'required', instancePath: '/owner', params: { missingProperty: 'city' } });
    expect(validationMessage([missing], 'body')).toBe('missing property "owner.city"');
    const unknown = error({ keyword: 'additionalProperties', instancePath: '/owner', params: { additionalProperty: 'x"y' } });
    expect(validationMessage([unknown], 'body')).toBe('unknown property "owner.x\\"y"');
  });

  it('names booleans, objects, one-sided ranges and lengths in words', () => {
    const cases: Array<[Record<string, unknown>, string]> = [
      [{ keyword: 'type', instancePath: '/flag', params: { type: 'boolean' }, parentSchema: { type: 'boolean' } }, 'flag: must be true or false'],
      [{ keyword: 'type', instancePath: '/meta', params: { type: 'object' }, parentSchema: { type: 'object' } }, 'meta: must be an object'],
      [{ keyword: 'minimum', instancePath: '/n', params: {}, parentSchema: { type: 'integer', minimum: 5 } }, 'n: must be a whole number of at least 5'],
      [{ keyword: 'maxLength', instancePath: '/s', params: {}, parentSchema: { type: 'string', maxLength: 1 } }, 's: must be at most 1 character long'],
      [{ keyword: 'pattern', instancePath: '/code', params: {}, parentSchema: { type: 'string', pattern: '^x$' }, data: 'y' }, 'code: is not in the expected format'],
      [{ keyword: 'enum', instancePath: '/c', params: { allowedValues: ['a', 'b'] }, parentSchema: {} }, 'c: must be one of a, b'],
    ];
    for (const [e, message] of cases) expect(validationMessage([error(e)], 'body')).toBe(message);
  });

  it('reports the anyOf that decided, not the branches before it', () => {
    const branches = [{ const: 'USD' }, { const: 'EUR' }];
    const errors = [
      error({ keyword: 'const', instancePath: '/currency', params: { allowedValue: 'USD' } }),
      error({ keyword: 'const', instancePath: '/currency', params: { allowedValue: 'EUR' } }),
      error({ keyword: 'anyOf', instancePath: '/currency', params: {}, schema: branches, parentSchema: { anyOf: branches } }),
    ];
    expect(validationMessage(errors, 'body')).toBe('currency: must be one of USD, EUR');
  });
});
