import { Type } from 'typebox';
import { principalOf } from '../auth.ts';
import type { HttpDeps } from '../deps.ts';
import { COMMON_ERRORS, ErrorBody, Timestamp } from '../schemas.ts';
import type { TypedApp } from '../typed-app.ts';

const TableStat = Type.Object({ rows: Type.Integer(), checksum: Type.String() });
const Invariants = Type.Object({
  balances: Type.Record(Type.String(), Type.String()),
  ledger: Type.Record(Type.String(), Type.String()),
  accounts_off_ledger: Type.Integer(),
  unbalanced_transactions: Type.Integer(),
});
const Backup = Type.Object({
  backup_id: Type.String(),
  created_at: Timestamp,
  size: Type.Integer(),
  sha256: Type.String(),
  tables: Type.Record(Type.String(), TableStat),
  invariants: Invariants,
  objects: Type.Integer(),
  locations: Type.Array(Type.String()),
});
const Listed = Type.Intersect([Backup, Type.Object({ engine: Type.String(), key_id: Type.String() })]);
const Drill = Type.Object({
  ok: Type.Boolean(),
  backup_id: Type.Union([Type.String(), Type.Null()]),
  rto_ms: Type.Integer(),
  rpo_s: Type.Union([Type.Integer(), Type.Null()]),
  checks: Type.Array(Type.Object({ name: Type.String(), ok: Type.Boolean(), detail: Type.String() })),
  finished_at: Timestamp,
});
const ERRORS = { ...COMMON_ERRORS, 403: ErrorBody, 409: ErrorBody } as const;

/** `POST /backups` and `GET /backups`: `databank backup create|list` ask the running server. */
export async function backupRoutes(app: TypedApp, deps: HttpDeps): Promise<void> {
  app.post(
    '/backups',
    { schema: { tags: ['operations'], response: { 201: Backup, ...ERRORS } } },
    async (request, reply) => {
      const summary = await deps.backups.create(principalOf(request));
      reply.code(201).header('location', `/backups/${summary.backup_id}`);
      return summary;
    },
  );
  app.get(
    '/backups',
    {
      schema: {
        tags: ['operations'],
        response: { 200: Type.Object({ backups: Type.Array(Listed), last_drill: Type.Union([Drill, Type.Null()]) }), ...ERRORS },
      },
    },
    async (request) => deps.backups.list(principalOf(request)),
  );
}
