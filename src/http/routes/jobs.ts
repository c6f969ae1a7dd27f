import { Type } from 'typebox';
import { principalOf } from '../auth.ts';
import type { HttpDeps } from '../deps.ts';
import { COMMON_ERRORS, Cursor, ErrorBody, IdParams, Limit, limitOf, OneOf, Timestamp } from '../schemas.ts';
import type { TypedApp } from '../typed-app.ts';

const StatementBody = Type.Object(
  { month: Type.String({ pattern: '^[0-9]{4}-(0[1-9]|1[0-2])$', description: 'a month YYYY-MM, e.g. 2026-11' }) },
  { additionalProperties: false },
);
const JobAccepted = Type.Object({ job_id: Type.String(), state: OneOf(['queued'] as const) });
const JobParams = Type.Object(
  { id: Type.String({ format: 'uuid', description: 'a job id (UUID)' }) },
  { additionalProperties: false },
);
const Job = Type.Object({
  job_id: Type.String(),
  kind: OneOf(['image.variants', 'statement.monthly'] as const),
  state: OneOf(['queued', 'running', 'completed', 'failed'] as const),
  attempts: Type.Integer(),
  result: Type.Unknown({ description: 'what the job made once completed (statement.monthly: file_id …); null before' }),
  error: Type.Union([Type.String(), Type.Null()]),
  created_at: Timestamp,
  updated_at: Timestamp,
});
const ActivityQuery = Type.Object({ limit: Type.Optional(Limit), cursor: Type.Optional(Cursor) }, { additionalProperties: false });
const Activity = Type.Object({
  result: Type.Array(
    Type.Object({ event_id: Type.String(), type: Type.String(), occurred_at: Timestamp, payload: Type.Unknown() }),
  ),
  next_cursor: Type.Union([Type.String(), Type.Null()]),
});

/** Background jobs a customer asks for and follows, and the customer's activity (the audit projection). */
export async function jobRoutes(app: TypedApp, deps: HttpDeps): Promise<void> {
  app.post(
    '/accounts/:id/statements',
    {
      schema: {
        tags: ['jobs'],
        description: "Asks for the account's CSV statement of a month; the answer names the job (GET /jobs/:id)",
        params: IdParams,
        body: StatementBody,
        response: { 202: JobAccepted, ...COMMON_ERRORS },
      },
    },
    async (request, reply) => {
      const accepted = await deps.statements.request(principalOf(request), request.params.id, request.body.month);
      return reply.code(202).header('location', `/jobs/${accepted.job_id}`).send(accepted);
    },
  );

  app.get(
    '/jobs/:id',
    { schema: { tags: ['jobs'], params: JobParams, response: { 200: Job, ...COMMON_ERRORS } } },
    async (request) => deps.jobs.get(principalOf(request), request.params.id),
  );

  app.get(
    '/customers/:id/activity',
    {
      schema: {
        tags: ['customers'],
        description: "The customer's events, newest first (the audit log, kept from the event stream)",
        params: IdParams,
        querystring: ActivityQuery,
        response: { 200: Activity, ...COMMON_ERRORS, 403: ErrorBody },
      },
    },
    async (request) =>
      deps.activity.page(principalOf(request), request.params.id, { limit: limitOf(request.query), cursor: request.query.cursor }),
  );
}
