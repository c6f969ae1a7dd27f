import { Type } from 'typebox';
import { principalOf } from '../auth.ts';
import type { HttpDeps } from '../deps.ts';
import { COMMON_ERRORS, ErrorBody, Limit, limitOf, Timestamp } from '../schemas.ts';
import type { TypedApp } from '../typed-app.ts';

const QueueParams = Type.Object(
  { name: Type.String({ pattern: '^[a-z.]{1,64}$', description: 'a queue name: image.variants or statement.monthly' }) },
  { additionalProperties: false },
);
const QueueStats = Type.Object({
  queue: Type.String(),
  waiting: Type.Integer(),
  delayed: Type.Integer(),
  active: Type.Integer(),
  deadLetters: Type.Integer(),
});
const DeadLetter = Type.Object({
  id: Type.String(),
  queue: Type.String(),
  payload: Type.Unknown(),
  attempts: Type.Integer(),
  error: Type.Union([Type.String(), Type.Null()]),
  failedAt: Timestamp,
});
const RetryBody = Type.Object(
  { ids: Type.Optional(Type.Array(Type.String({ format: 'uuid' }), { minItems: 1, maxItems: 1000 })) },
  { additionalProperties: false },
);
const EventsQuery = Type.Object(
  {
    from: Type.Optional(Type.String({ pattern: '^[0-9]{1,15}$', description: 'the first sequence number (default 1)' })),
    limit: Type.Optional(Limit),
  },
  { additionalProperties: false },
);
const StreamEvent = Type.Object({
  id: Type.String(),
  type: Type.String(),
  version: Type.Integer(),
  occurred_at: Timestamp,
  aggregate_id: Type.String(),
  customer_ids: Type.Immutable(Type.Array(Type.Integer())),
  payload: Type.Unknown(),
});
const ReplayBody = Type.Object(
  {
    group: Type.String({ pattern: '^[a-z]{1,32}$', description: 'the consumer group of a projection: audit' }),
    from: Type.Optional(Type.Literal(0, { description: 'rebuilds from the start of the stream' })),
  },
  { additionalProperties: false },
);
const ADMIN_ERRORS = { ...COMMON_ERRORS, 403: ErrorBody } as const;

/** Admin operations on the job queue and the event stream, for `databank queue …` and `databank events …`. */
export async function asyncAdminRoutes(app: TypedApp, deps: HttpDeps): Promise<void> {
  const ops = deps.asyncOps;
  app.get(
    '/queues',
    {
      schema: {
        tags: ['operations'],
        response: {
          200: Type.Object({ backend: Type.String(), result: Type.Array(QueueStats) }),
          ...ADMIN_ERRORS,
        },
      },
    },
    async (request) => ({ backend: ops.backends.queue, result: await ops.queues(principalOf(request)) }),
  );
  app.get(
    '/queues/:name/dead-letters',
    {
      schema: {
        tags: ['operations'],
        params: QueueParams,
        querystring: Type.Object({ limit: Type.Optional(Limit) }, { additionalProperties: false }),
        response: { 200: Type.Object({ result: Type.Array(DeadLetter) }), ...ADMIN_ERRORS },
      },
    },
    async (request) => ({ result: await ops.deadLetters(principalOf(request), request.params.name, limitOf(request.query)) }),
  );
  app.post(
    '/queues/:name/dead-letters/retry',
    {
      schema: {
        tags: ['operations'],
        params: QueueParams,
        body: RetryBody,
        response: { 200: Type.Object({ retried: Type.Integer() }), ...ADMIN_ERRORS },
      },
    },
    async (request) => ({ retried: await ops.retryDeadLetters(principalOf(request), request.params.name, request.body.ids) }),
  );
  app.delete(
    '/queues/:name/dead-letters',
    {
      schema: { tags: ['operations'], params: QueueParams, response: { 200: Type.Object({ purged: Type.Integer() }), ...ADMIN_ERRORS } },
    },
    async (request) => ({ purged: await ops.purgeDeadLetters(principalOf(request), request.params.name) }),
  );
  app.get(
    '/events',
    {
      schema: {
        tags: ['operations'],
        description: 'Events of the stream from a sequence number on (databank events tail)',
        querystring: EventsQuery,
        response: {
          200: Type.Object({ backend: Type.String(), result: Type.Array(Type.Object({ seq: Type.Integer(), event: StreamEvent })) }),
          ...ADMIN_ERRORS,
        },
      },
    },
    async (request) => ({
      backend: ops.backends.stream,
      result: await ops.read(principalOf(request), Number(request.query.from ?? 1), limitOf(request.query)),
    }),
  );
  app.get(
    '/events/groups',
    {
      schema: {
        tags: ['operations'],
        response: {
          200: Type.Object({
            head: Type.Integer(),
            groups: Type.Array(Type.Object({ group: Type.String(), position: Type.Integer(), lag: Type.Integer() })),
          }),
          ...ADMIN_ERRORS,
        },
      },
    },
    async (request) => ops.groups(principalOf(request)),
  );
  app.post(
    '/events/replay',
    {
      schema: {
        tags: ['operations'],
        description: "Drops a projection and moves its consumer group to the stream's start, which rebuilds it",
        body: ReplayBody,
        response: { 202: Type.Object({ group: Type.String(), head: Type.Integer() }), ...ADMIN_ERRORS },
      },
    },
    async (request, reply) => reply.code(202).send(await ops.replay(principalOf(request), request.body.group)),
  );
}
