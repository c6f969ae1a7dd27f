import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DatabankError } from '../../src/domain/errors.ts';
import { MAX_JSON_DEPTH, parseJsonBody } from '../../src/http/json-body.ts';
import { startTestApp, type TestApp } from '../support/app.ts';
import { ENGINES } from '../support/engines.ts';
import { fcParams } from '../support/property.ts';

/**
 * JSON bodies: a key twice in one object (after unescaping), nesting deeper than 32, and prototype
 * poisoning are refused with 400 DATABANK_ERR_MALFORMED_BODY before any handler runs; empty and
 * invalid bodies keep their answers; everything else parses exactly as JSON.parse does.
 */

const nested = (depth: number, inner = '1') => `${'['.repeat(depth)}${inner}${']'.repeat(depth)}`;
const nestedObject = (depth: number) => `${'{"a":'.repeat(depth)}1${'}'.repeat(depth)}`;

const malformed = (message: string) => ({ statusCode: 400, code: 'DATABANK_ERR_MALFORMED_BODY', message });

for (const engine of ENGINES) {
  describe(`JSON bodies (${engine})`, () => {
    let t: TestApp;
    beforeAll(async () => {
      t = await startTestApp(engine, 'json-body');
    });
    afterAll(async () => {
      await t?.close();
    });

    const post = (url: string, payload: string, contentType = 'application/json') =>
      t.app.http.inject({ method: 'POST', url, headers: { ...t.admin, 'content-type': contentType }, payload });
    const balance = async () => (await t.app.http.inject({ method: 'GET', url: '/accounts/1', headers: t.admin })).json<{ balance: number }>().balance;

    it('refuses a key given twice, naming it, and moves no money', async () => {
      const before = await balance();
      const cases: Array<[string, string, string]> = [
        ['/accounts/1/deposits', '{"amount":1,"amount":1000}', 'duplicate property "amount"'],
        ['/accounts/1/deposits', '{"amount":1,"\\u0061mount":1000}', 'duplicate property "amount"'],
        ['/accounts/1/deposits', '{"\\u0061mount":1, "amount" :1000}', 'duplicate property "amount"'],
        ['/customers', '{"name":"A","date_of_birth":"1990-01-01","x":{"y":1,"y":2}}', 'duplicate property "x.y"'],
        ['/customers', '{"name":"A","x":[{"k":1},{"k":1,"k":2}]}', 'duplicate property "x[1].k"'],
        ['/customers', '{"":1,"":2}', 'duplicate property ""'],
      ];
      for (const [url, payload, message] of cases) {
        const res = await post(url, payload);
        expect([payload, res.statusCode, res.json()]).toEqual([payload, 400, malformed(message)]);
      }
      expect(await balance()).toBe(before);
    });

    it('takes equal keys in different objects, and key-like text inside strings', async () => {
      // Past the parser, the schema decides.
      const nestedSame = await post('/accounts/1/deposits', '{"amount":1,"x":{"amount":2}}');
      expect([nestedSame.statusCode, nestedSame.json().message]).toEqual([400, 'unknown property "x"']);
      const name = 'a{"[\\,"name":1}';
      const created = await post('/customers', `{"name":${JSON.stringify(name)},"date_of_birth":"1990-01-01"}`);
      expect(created.statusCode, created.body).toBe(201);
      expect(created.json().name).toBe(name);
    });

    it(`refuses nesting deeper than ${MAX_JSON_DEPTH}`, async () => {
      const deepest = await post('/customers', nested(MAX_JSON_DEPTH));
      expect([deepest.statusCode, deepest.json().code, deepest.json().message]).toEqual([400, 'DATABANK_ERR_VALIDATION', 'body: must be an object']);
      for (const payload of [nested(MAX_JSON_DEPTH + 1), nestedObject(MAX_JSON_DEPTH + 1), nested(5_000)]) {
        const res = await post('/customers', payload);
        expect([res.statusCode, res.json()]).toEqual([400, malformed(`the JSON is nested deeper than ${MAX_JSON_DEPTH} levels`)]);
      }
    });

    it('refuses prototype poisoning, escaped or not', async () => {
      const cases: Array<[string, string]> = [
        ['{"__proto__":{"amount":1}}', 'property "__proto__" is not allowed'],
        ['{"amount":1,"x":[{"\\u005f_proto__":1}]}', 'property "x[0].__proto__" is not allowed'],
        ['{"constructor":{"prototype":{"amount":1}}}', 'property "constructor.prototype" is not allowed'],
      ];
      for (const [payload, message] of cases) {
        const res = await post('/accounts/1/deposits', payload);
        expect([payload, res.statusCode, res.json()]).toEqual([payload, 400, malformed(message)]);
      }
      // A `prototype` key elsewhere, or a `constructor` that is not an object, is the schema's business.
      for (const payload of ['{"constructor":1}', '{"x":{"prototype":1}}', '{"constructor":[{"prototype":1}]}']) {
        const res = await post('/accounts/1/deposits', payload);
        expect([payload, res.statusCode, res.json().code]).toEqual([payload, 400, 'DATABANK_ERR_VALIDATION']);
      }
    });

    it('keeps the answers to empty, invalid and too large bodies, and skips a byte order mark', async () => {
      const empty = await post('/accounts/1/deposits', '');
      expect([empty.statusCode, empty.json()]).toEqual([400, malformed("Body cannot be empty when content-type is set to 'application/json'")]);
      for (const payload of ['{"amount":', "{'amount':1}", '{"amount":1}{"amount":1}', 'NaN', '\u0000']) {
        const res = await post('/accounts/1/deposits', payload);
        expect([payload, res.statusCode, res.json()]).toEqual([payload, 400, malformed("Body is not valid JSON but content-type is set to 'application/json'")]);
      }
      const large = await post('/accounts/1/deposits', JSON.stringify({ amount: 1, pad: 'x'.repeat(70_000) }));
      expect([large.statusCode, large.json().code]).toEqual([413, 'DATABANK_ERR_PAYLOAD_TOO_LARGE']);
      const before = await balance();
      const bom = await post('/accounts/1/deposits', '\uFEFF{"amount":3}', 'application/json; charset=utf-8');
      expect(bom.statusCode, bom.body).toBe(201);
      expect(await balance()).toBe(before + 3);
    });
  });
}

describe('parseJsonBody', () => {
  const refusal = (text: string) => {
    try {
      parseJsonBody(text);
      return null;
    } catch (err) {
      expect(err).toBeInstanceOf(DatabankError);
      return (err as DatabankError).message;
    }
  };

  it('parses any JSON without a repeated key, deep nesting or a prototype key exactly as JSON.parse', () => {
    fc.assert(
      fc.property(fc.jsonValue({ maxDepth: 6 }), (value) => {
        const text = JSON.stringify(value);
        fc.pre(!text.includes('"__proto__"') && !text.includes('"prototype"'));
        expect(parseJsonBody(text)).toEqual(JSON.parse(text));
        expect(parseJsonBody(JSON.stringify(value, null, 2))).toEqual(JSON.parse(text));
      }),
      fcParams(200),
    );
  });

  it('finds a repeated key however it is spelled', () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 8 }), fc.jsonValue({ maxDepth: 1 }), (key, value) => {
        fc.pre(key !== '__proto__');
        // The second spelling escapes every character: equal after unescaping only.
        const units = Array.from({ length: key.length }, (_, i) => key.charCodeAt(i));
        const escaped = `"${units.map((u) => `\\u${u.toString(16).padStart(4, '0')}`).join('')}"`;
        const text = `{${JSON.stringify(key)}:${JSON.stringify(value)},${escaped}:0}`;
        expect(refusal(text)).toBe(`duplicate property ${JSON.stringify(key)}`);
      }),
      fcParams(200),
    );
  });
});
