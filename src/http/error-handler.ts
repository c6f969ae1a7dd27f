import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { DatabankError, ERRORS, type ErrorCode } from '../domain/errors.ts';
import { translateDbError } from '../services/transaction.ts';

export interface ErrorBody {
  readonly statusCode: number;
  readonly code: ErrorCode;
  readonly message: string;
  readonly request_id?: string;
  readonly problems?: readonly { readonly path: string; readonly message: string }[];
}

/** Fastify's own client errors, mapped onto the catalog. */
const FASTIFY_CODES: Readonly<Record<string, ErrorCode>> = {
  FST_ERR_CTP_INVALID_MEDIA_TYPE: 'DATABANK_ERR_UNSUPPORTED_MEDIA_TYPE',
  FST_ERR_CTP_BODY_TOO_LARGE: 'DATABANK_ERR_PAYLOAD_TOO_LARGE',
  FST_ERR_CTP_EMPTY_JSON_BODY: 'DATABANK_ERR_MALFORMED_BODY',
  FST_ERR_CTP_INVALID_JSON_BODY: 'DATABANK_ERR_MALFORMED_BODY',
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: 'DATABANK_ERR_MALFORMED_BODY',
  FST_ERR_CTP_INVALID_CHARSET: 'DATABANK_ERR_UNSUPPORTED_MEDIA_TYPE',
  FST_ERR_VALIDATION: 'DATABANK_ERR_VALIDATION',
};

/** The response body for a catalog error. */
export function errorBody(err: DatabankError): ErrorBody {
  const body = { statusCode: err.statusCode, code: err.code, message: err.message };
  return err.problems ? { ...body, problems: err.problems } : body;
}

/**
 * Turns any error into the catalog's response shape. Known client errors keep their status and
 * code; anything else is a 500 that shows only the request id, and is logged in full.
 */
export function toDatabankError(err: unknown): DatabankError | null {
  const translated = translateDbError(err);
  if (translated instanceof DatabankError) return translated;
  const fe = err as Partial<FastifyError> & { validation?: unknown; validationContext?: string };
  if (fe.validation) {
    // The only header any route validates is Idempotency-Key: its refusal has a code of its own.
    if (fe.validationContext === 'headers') return new DatabankError('DATABANK_ERR_IDEMPOTENCY_KEY_INVALID');
    // The message is already in words (`validation-messages.ts`, Fastify's schemaErrorFormatter).
    return new DatabankError('DATABANK_ERR_VALIDATION', fe.message);
  }
  if (err instanceof SyntaxError && (err as FastifyError).statusCode === 400) {
    return new DatabankError('DATABANK_ERR_MALFORMED_BODY');
  }
  const code = fe.code ? FASTIFY_CODES[fe.code] : undefined;
  if (code) return new DatabankError(code, ERRORS[code].status === 400 ? fe.message : undefined);
  if (typeof fe.statusCode === 'number' && fe.statusCode >= 400 && fe.statusCode < 500) {
    return new DatabankError(fe.statusCode === 413 ? 'DATABANK_ERR_PAYLOAD_TOO_LARGE' : 'DATABANK_ERR_VALIDATION', fe.message);
  }
  return null;
}

/** Headers a route may have set for the answer it meant to give; an error answer must not keep them. */
const REPRESENTATION_HEADERS = [
  'etag',
  'last-modified',
  'cache-control',
  'vary',
  'content-range',
  'content-disposition',
  'content-encoding',
  'content-length',
  'accept-ranges',
];

export function registerErrorHandlers(app: FastifyInstance): void {
  app.setErrorHandler((err: unknown, request: FastifyRequest, reply: FastifyReply) => {
    for (const name of REPRESENTATION_HEADERS) reply.removeHeader(name);
    const known = toDatabankError(err);
    if (known) {
      if (known.statusCode >= 500) request.log.warn({ err, code: known.code }, known.message);
      // Nothing was applied and the cause passes (a failover, a busy row, a store restarting):
      // a client may retry at once, and a second later it usually succeeds.
      if (known.statusCode === 503) reply.header('retry-after', '1');
      return reply.code(known.statusCode).send(errorBody(known));
    }
    request.log.error({ err }, 'unhandled error');
    const body: ErrorBody = {
      statusCode: 500,
      code: 'DATABANK_ERR_INTERNAL',
      message: ERRORS.DATABANK_ERR_INTERNAL.message,
      request_id: String(request.id),
    };
    return reply.code(500).send(body);
  });

}
