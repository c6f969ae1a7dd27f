import type { FastifyInstance } from 'fastify';
import { Type, type Static } from 'typebox';
import { assertAdmin } from '../../services/access.ts';
import { principalOf } from '../auth.ts';
import type { HttpDeps } from '../deps.ts';
import { COMMON_ERRORS, ErrorBody } from '../schemas.ts';

const FlushBody = Type.Object(
  { prefix: Type.Optional(Type.String({ maxLength: 128, pattern: '^[A-Za-z0-9:_-]*$' })) },
  { additionalProperties: false },
);

/** Admin views of the cache, for `databank cache stats|flush`. */
export async function cacheRoutes(app: FastifyInstance, deps: HttpDeps): Promise<void> {
  app.get('/cache/stats', { schema: { tags: ['cache'], response: { 403: ErrorBody, ...COMMON_ERRORS } } }, async (request) => {
    assertAdmin(principalOf(request));
    return { cache: await deps.cache.stats() };
  });

  app.post(
    '/cache/flush',
    { schema: { tags: ['cache'], body: FlushBody, response: { 403: ErrorBody, ...COMMON_ERRORS } } },
    async (request) => {
      assertAdmin(principalOf(request));
      const { prefix } = request.body as Static<typeof FlushBody>;
      return { deleted: await deps.cache.flush(prefix ?? '') };
    },
  );
}
