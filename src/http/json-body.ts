import type { FastifyInstance } from 'fastify';
import { DatabankError } from '../domain/errors.ts';
import { joinPath, quoteName } from './validation-messages.ts';

/** The deepest nesting of objects and arrays a body may have; `{"a":[1]}` is 2 deep. */
export const MAX_JSON_DEPTH = 32;

/**
 * JSON request bodies, parsed strictly. `JSON.parse` alone keeps the last of two equal keys, so
 * `{"amount":1,"amount":1000}` would mean what the last key says while a log, a proxy or a
 * signature check may have read the first; it also takes any depth. This parser refuses, with 400
 * DATABANK_ERR_MALFORMED_BODY:
 *
 * - an empty body, and text that is not JSON (as Fastify's parser did);
 * - an object with the same key twice, compared after unescaping (`{"a":1,"\u0061":2}`);
 * - nesting deeper than MAX_JSON_DEPTH;
 * - a `__proto__` key anywhere, or a `prototype` key in an object under a `constructor` key: the
 *   prototype poisoning Fastify's parser (secure-json-parse) refused.
 *
 * A leading byte order mark is skipped, as before.
 */
export function parseJsonBody(text: string): unknown {
  if (text.length === 0) throw malformed("Body cannot be empty when content-type is set to 'application/json'");
  const json = text.charCodeAt(0) === 0xfeff ? text.slice(1) : text;
  let value: unknown;
  try {
    value = JSON.parse(json);
  } catch {
    throw malformed("Body is not valid JSON but content-type is set to 'application/json'");
  }
  // Only valid JSON reaches the scan, so it need not check the grammar, only the structure.
  checkStructure(json);
  return value;
}

/** Replaces Fastify's application/json parser in `app` and the scopes registered after. */
export function registerJsonBody(app: FastifyInstance): void {
  app.removeContentTypeParser('application/json');
  // A JSON Merge Patch (RFC 7396, a document's PATCH) is JSON under its own media type.
  app.addContentTypeParser(['application/json', 'application/merge-patch+json'], { parseAs: 'string' }, (_request, body, done) => {
    try {
      done(null, parseJsonBody(body as string));
    } catch (err) {
      done(err as Error, undefined);
    }
  });
}

/** An object or array being scanned. */
interface Frame {
  readonly object: boolean;
  /** Where it sits in its parent: a key, `[index]` in an array, or '' at the top. */
  readonly name: string;
  readonly indexed: boolean;
  readonly keys: Set<string>;
  /** In an object, whether the next string is a key; in an array, the index of the current item. */
  expectKey: boolean;
  index: number;
  /** In an object, the last key read: the name of the value that follows it. */
  key: string;
}

const QUOTE = 0x22;
const BACKSLASH = 0x5c;

/** Checks the keys and depth of valid JSON text, in one pass over it. */
function checkStructure(text: string): void {
  const stack: Frame[] = [];
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    const top = stack.at(-1);
    if (c === QUOTE) {
      let end = i + 1;
      let escaped = false;
      for (let d = text.charCodeAt(end); d !== QUOTE; d = text.charCodeAt(end)) {
        if (d === BACKSLASH) {
          escaped = true;
          end += 2;
        } else {
          end += 1;
        }
      }
      if (top?.object && top.expectKey) {
        const key = escaped ? (JSON.parse(text.slice(i, end + 1)) as string) : text.slice(i + 1, end);
        checkKey(stack, top, key);
        top.keys.add(key);
        top.key = key;
        top.expectKey = false;
      }
      i = end;
    } else if (c === 0x7b || c === 0x5b) {
      // `{` or `[`
      if (stack.length === MAX_JSON_DEPTH) throw malformed(`the JSON is nested deeper than ${MAX_JSON_DEPTH} levels`);
      const name = top === undefined ? '' : top.object ? top.key : `[${top.index}]`;
      const indexed = top !== undefined && !top.object;
      stack.push({ object: c === 0x7b, name, indexed, keys: new Set(), expectKey: c === 0x7b, index: 0, key: '' });
    } else if (c === 0x7d || c === 0x5d) {
      // `}` or `]`
      stack.pop();
    } else if (c === 0x2c && top) {
      // `,`
      if (top.object) top.expectKey = true;
      else top.index += 1;
    }
  }
}

function checkKey(stack: readonly Frame[], frame: Frame, key: string): void {
  if (frame.keys.has(key)) throw malformed(`duplicate property ${quoteName(pathTo(stack, key))}`);
  if (key === '__proto__' || (key === 'prototype' && frame.name === 'constructor' && stack.at(-2)?.object === true)) {
    throw malformed(`property ${quoteName(pathTo(stack, key))} is not allowed`);
  }
}

/** `meta.tags[0].name`: the frames' names below the top, then the key. */
function pathTo(stack: readonly Frame[], key: string): string {
  let path = '';
  for (const frame of stack.slice(1)) path = frame.indexed ? `${path}${frame.name}` : joinPath(path, frame.name);
  return joinPath(path, key);
}

function malformed(message: string): DatabankError {
  return new DatabankError('DATABANK_ERR_MALFORMED_BODY', message);
}
