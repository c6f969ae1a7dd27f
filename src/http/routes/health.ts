import { DatabankError } from '../../domain/errors.ts';
import { assertAdmin } from '../../services/access.ts';
import { principalOf } from '../auth.ts';
import type { HttpDeps } from '../deps.ts';
import type { TypedApp } from '../typed-app.ts';

/** Liveness and readiness, without authentication, for load balancers and orchestrators. */
export async function healthRoutes(app: TypedApp, deps: HttpDeps): Promise<void> {
  app.get('/healthz', { config: { public: true }, schema: { hide: true } }, async () => ({ status: 'ok' }));

  app.get('/readyz', { config: { public: true }, schema: { hide: true } }, async () => {
    try {
      await deps.ready();
    } catch (err) {
      throw new DatabankError('DATABANK_ERR_UNAVAILABLE', undefined, { cause: err });
    }
    // A stale backup is reported, never a reason to take the instance out of service.
    const backup = await deps.backups.readiness();
    return backup ? { status: 'ready', backup } : { status: 'ready' };
  });

  app.get('/metrics', { schema: { hide: true } }, async (request, reply) => {
    assertAdmin(principalOf(request));
    reply.type(deps.metrics.registry.contentType);
    return deps.metrics.registry.metrics();
  });
}
