import type { FastifyReply, FastifyRequest } from 'fastify';
import { DatabankError } from '../domain/errors.ts';
import type { IdempotencyClaim, IdempotencyService } from '../services/idempotency.ts';
import { IdempotentReplay, requestHash } from '../services/idempotency.ts';
import { principalOf } from './auth.ts';
import { errorBody, toDatabankError } from './error-handler.ts';

const KEY_PATTERN = /^[\x21-\x7e]{1,255}$/;

/** Refusals about the key itself: never stored as the key's answer. */
const NOT_RECORDED = new Set(['DATABANK_ERR_IDEMPOTENCY_IN_FLIGHT', 'DATABANK_ERR_IDEMPOTENCY_KEY_REUSED']);

/**
 * Runs a money-moving handler under the request's `Idempotency-Key`, when it has one. The service
 * claims the key in the movement's transaction and records a success there; a refusal (4xx) is
 * recorded after, so that a retry gets the same answer; anything else records nothing, and the
 * claim ended with the transaction, so a retry runs again.
 */
export async function idempotent<T>(
  idempotency: IdempotencyService,
  request: FastifyRequest,
  reply: FastifyReply,
  status: number,
  run: (claim: IdempotencyClaim | null) => Promise<T>,
): Promise<FastifyReply> {
  const key = request.headers['idempotency-key'];
  if (key === undefined) return reply.code(status).send(await run(null));
  if (typeof key !== 'string' || !KEY_PATTERN.test(key)) throw new DatabankError('DATABANK_ERR_IDEMPOTENCY_KEY_INVALID');
  const principal = principalOf(request);
  const hash = requestHash(request.method, request.routeOptions.url ?? request.url, {
    params: asWritten(request.params),
    body: request.body,
  });
  const outcome = await idempotency.begin(`key:${principal.keyId}`, key, hash);
  if (outcome.kind === 'replay') return replay(reply, outcome.status, outcome.body);
  try {
    return reply.code(status).send(await run(outcome.claim));
  } catch (err) {
    if (err instanceof IdempotentReplay) return replay(reply, err.status, err.body);
    const known = toDatabankError(err);
    if (known && known.statusCode < 500 && !NOT_RECORDED.has(known.code)) {
      await idempotency.fail(outcome.claim, known.statusCode, errorBody(known));
    }
    throw err;
  }
}

function replay(reply: FastifyReply, status: number, body: unknown): FastifyReply {
  return reply.code(status).header('idempotent-replayed', 'true').send(body);
}

/**
 * Path parameters as the client wrote them. Ids reach the handler as numbers; hashing them as
 * their text (the only spelling an id may have) keeps the hashes of requests recorded before ids
 * became numbers, so that a retry across that upgrade still replays instead of conflicting.
 */
function asWritten(params: unknown): unknown {
  if (params === null || typeof params !== 'object') return params;
  return Object.fromEntries(Object.entries(params).map(([name, value]) => [name, typeof value === 'number' ? String(value) : value]));
}
