import { Ajv2020, type ErrorObject, type ValidateFunction } from 'ajv/dist/2020.js';
import formatsModule from 'ajv-formats';
import { LRUCache } from 'lru-cache';
import { DatabankError } from '../domain/errors.ts';
import type { JsonObject, Problem } from '../domain/documents.ts';

// ajv-formats is CommonJS: its function is the module's default, or the module itself.
const addFormats = ((formatsModule as unknown as { default?: unknown }).default ?? formatsModule) as (ajv: Ajv2020) => void;

/** The largest collection schema accepted, as compact JSON. */
export const MAX_SCHEMA_BYTES = 64 * 1024;

/**
 * JSON Schemas (draft 2020-12) of the collections that opted into schema-on-write, compiled once
 * per version and kept (a compiled validator is code: compiling costs milliseconds, running
 * microseconds). Strict: a schema with an unknown keyword or format is refused rather than
 * silently checking less than its author meant; `$ref` may point only inside the schema.
 */
export class SchemaCompiler {
  private readonly compiled = new LRUCache<string, ValidateFunction>({ max: 256 });

  /** Compiles `schema` or throws DATABANK_ERR_INVALID_JSON_SCHEMA saying why. */
  check(schema: JsonObject): void {
    if (Buffer.byteLength(JSON.stringify(schema)) > MAX_SCHEMA_BYTES) {
      throw new DatabankError('DATABANK_ERR_PAYLOAD_TOO_LARGE', `a collection schema may be at most ${MAX_SCHEMA_BYTES} bytes`);
    }
    this.compile(schema);
  }

  /** Where `body` breaks `schema` (of `collection` at `version`); empty when it matches. */
  problems(collection: string, version: number, schema: JsonObject, body: unknown): Problem[] {
    const key = `${collection}\0${version}`;
    let validate = this.compiled.get(key);
    if (!validate) {
      validate = this.compile(schema);
      this.compiled.set(key, validate);
    }
    if (validate(body)) return [];
    return (validate.errors ?? []).map(toProblem);
  }

  private compile(schema: JsonObject): ValidateFunction {
    // A new instance per schema: schemas with the same `$id` must not collide, and one schema's
    // definitions must not be visible to another's `$ref`.
    const ajv = new Ajv2020({ allErrors: true, strict: true, validateFormats: true, loadSchema: undefined });
    addFormats(ajv);
    try {
      return ajv.compile(schema);
    } catch (err) {
      throw new DatabankError('DATABANK_ERR_INVALID_JSON_SCHEMA', `not a usable JSON Schema: ${(err as Error).message}`);
    }
  }
}

/** An Ajv error as a problem: the path points at the member concerned, also for a missing one. */
function toProblem(error: ErrorObject): Problem {
  const params = error.params as { missingProperty?: string; additionalProperty?: string };
  const member = params.missingProperty ?? params.additionalProperty;
  const path = member === undefined ? error.instancePath : `${error.instancePath}/${escapePointer(member)}`;
  const message =
    params.missingProperty !== undefined
      ? 'is required'
      : params.additionalProperty !== undefined
        ? 'is not allowed by the schema'
        : (error.message ?? 'does not match the schema');
  return { path, message };
}

function escapePointer(member: string): string {
  return member.replace(/~/g, '~0').replace(/\//g, '~1');
}
