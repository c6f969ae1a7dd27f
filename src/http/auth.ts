import type { FastifyInstance, FastifyRequest } from 'fastify';
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

/** The authenticated caller; routes that are not public always have one. */
export function principalOf(request: FastifyRequest): Principal {
  if (!request.principal) throw new DatabankError('DATABANK_ERR_UNAUTHORIZED');
  return request.principal;
}

/**
 * Every route needs `Authorization: Bearer <key>` unless it is marked public. Unmatched paths skip
 * the check so that they answer 404 whoever asks.
 */
export function registerAuth(app: FastifyInstance, apiKeys: ApiKeysService): void {
  app.decorateRequest('principal', null);
  app.addHook('onRequest', async (request, reply) => {
    if (request.routeOptions.config.public || request.routeOptions.url === undefined) return;
    const header = request.headers.authorization;
    const match = header ? /^Bearer +(\S+) *$/i.exec(header) : null;
    try {
      request.principal = await apiKeys.authenticate(match?.[1]);
    } catch (err) {
      if (err instanceof DatabankError && err.code === 'DATABANK_ERR_UNAUTHORIZED') {
        reply.header('www-authenticate', 'Bearer realm="databank"');
      }
      throw err;
    }
  });
}
