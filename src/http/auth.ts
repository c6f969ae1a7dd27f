import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { DatabankError } from '../domain/errors.ts';
import type { Principal } from '../domain/types.ts';
import type { ApiKeysService } from '../services/api-keys.ts';

declare module 'fastify' {
  interface FastifyRequest {
    principal: Principal | null;
  }
  interface FastifyContextConfig {
    /** Served without an API key (health checks). */
    public?: boolean;
  }
}

/**
 * How authentication limits key guessing per client address (src/http/rate-limit.ts). It sees
 * only requests that present no valid key, so a valid key never pays for it.
 */
export interface KeyGuessLimiter {
  /**
   * True while the address is over its budget: a key it presents is then checked against the
   * cache only, never looked up in the database.
   */
  overBudget(request: FastifyRequest): boolean;
  /**
   * Counts a request that presented no valid key; throws DATABANK_ERR_RATE_LIMITED (with the
   * headers set) once the address is over its budget.
   */
  countFailure(request: FastifyRequest, reply: FastifyReply): Promise<void>;
}

const guessLimiters = new WeakMap<FastifyInstance, KeyGuessLimiter>();

/** Makes authentication on `app` consult `limiter`; registered after `registerAuth`. */
export function limitKeyGuessing(app: FastifyInstance, limiter: KeyGuessLimiter): void {
  guessLimiters.set(app, limiter);
}

/** The authenticated caller; routes that are not public always have one. */
export function principalOf(request: FastifyRequest): Principal {
  if (!request.principal) throw new DatabankError('DATABANK_ERR_UNAUTHORIZED');
  return request.principal;
}

/**
 * Every route needs `Authorization: Bearer <key>` unless it is marked public. Unmatched paths skip
 * the check so that they answer 404 whoever asks. A request without a valid key is counted
 * against its address's budget, and an address over it gets 429 without a database lookup.
 */
export function registerAuth(app: FastifyInstance, apiKeys: ApiKeysService): void {
  app.decorateRequest('principal', null);
  app.addHook('onRequest', async (request, reply) => {
    if (request.routeOptions.config.public || request.routeOptions.url === undefined) return;
    const header = request.headers.authorization;
    const match = header ? /^Bearer +(\S+) *$/i.exec(header) : null;
    const limiter = guessLimiters.get(app);
    try {
      request.principal = await apiKeys.authenticate(match?.[1], { cachedOnly: limiter?.overBudget(request) ?? false });
    } catch (err) {
      if (err instanceof DatabankError && err.code === 'DATABANK_ERR_UNAUTHORIZED') {
        await limiter?.countFailure(request, reply);
        reply.header('www-authenticate', 'Bearer realm="databank"');
      }
      throw err;
    }
  });
}
