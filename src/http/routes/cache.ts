import { Type } from 'typebox';
import { assertAdmin } from '../../services/access.ts';
import { principalOf } from '../auth.ts';
import type { HttpDeps } from '../deps.ts';
import { COMMON_ERRORS, ErrorBody } from '../schemas.ts';
import type { TypedApp } from '../typed-app.ts';

const FlushBody = Type.Object(
  { prefix: Type.Optional(Type.String({ maxLength: 128, pattern: '^[A-Za-z0-9:_-]*$' })) },
  { additionalProperties: false },
);

/**
 * What `/cache/stats` answers. Only the fields every cache store reports are named; the others
 * pass through as the store gives them, so that a store's own figures are not cut off.
 */
const StatsResponse = Type.Object({
  cache: Type.Union([
    Type.Object(
      { kind: Type.String(), namespace: Type.String(), entries: Type.Integer() },
      { additionalProperties: true },
    ),
    Type.Null(),
  ]),
});
const FlushResponse = Type.Object({ deleted: Type.Integer() });

/** Admin views of the cache, for `databank cache stats|flush`. */
export async function cacheRoutes(app: TypedApp, deps: HttpDeps): Promise<void> {
  app.get(
    '/cache/stats',
    { schema: { tags: ['cache'], response: { 200: StatsResponse, 403: ErrorBody, ...COMMON_ERRORS } } },
    async (request) => {
      assertAdmin(principalOf(request));
      return { cache: await deps.cache.stats() };
    },
  );

  app.post(
    '/cache/flush',
    { schema: { tags: ['cache'], body: FlushBody, response: { 200: FlushResponse, 403: ErrorBody, ...COMMON_ERRORS } } },
    async (request) => {
      assertAdmin(principalOf(request));
      const { prefix } = request.body;
      return { deleted: await deps.cache.flush(prefix ?? '') };
    },
  );
}
