import { Type } from 'typebox';
import { assertAdmin } from '../../services/access.ts';
import { principalOf } from '../auth.ts';
import type { HttpDeps } from '../deps.ts';
import { COMMON_ERRORS, ErrorBody } from '../schemas.ts';
import type { TypedApp } from '../typed-app.ts';

const Nullable = <T extends Parameters<typeof Type.Union>[0][number]>(t: T) => Type.Union([t, Type.Null()]);
const Replica = Type.Object({
  name: Type.String(),
  state: Type.Union([
    Type.Literal('starting'),
    Type.Literal('in_rotation'),
    Type.Literal('lagging'),
    Type.Literal('down'),
    Type.Literal('not_in_recovery'),
  ]),
  lag_ms: Nullable(Type.Integer()),
  lag_bytes: Nullable(Type.Integer()),
  replay_lsn: Nullable(Type.String()),
  reads: Type.Integer(),
  last_error: Nullable(Type.String()),
  checked_at: Nullable(Type.String()),
});

/** `GET /replicas` (admins): each replica as this instance sees it; `databank replica status` asks it. */
export async function replicaRoutes(app: TypedApp, deps: HttpDeps): Promise<void> {
  app.get(
    '/replicas',
    {
      schema: {
        tags: ['operations'],
        response: {
          200: Type.Object({ max_lag_ms: Type.Integer(), replicas: Type.Array(Replica) }),
          ...COMMON_ERRORS,
          403: ErrorBody,
        },
      },
    },
    async (request) => {
      assertAdmin(principalOf(request));
      return { max_lag_ms: deps.reads.maxLagMs, replicas: deps.reads.status() };
    },
  );
}
