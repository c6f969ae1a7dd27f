import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type {
  FastifyBaseLogger,
  FastifyInstance,
  RawReplyDefaultExpression,
  RawRequestDefaultExpression,
  RawServerDefault,
} from 'fastify';

/**
 * A Fastify instance whose routes take their request and reply types from their TypeBox schemas,
 * so that handlers read `request.params`, `request.query` and `request.body` without casts.
 * Only the types come from the provider: validation stays with Fastify's Ajv and its options.
 */
export type TypedApp = FastifyInstance<
  RawServerDefault,
  RawRequestDefaultExpression,
  RawReplyDefaultExpression,
  FastifyBaseLogger,
  TypeBoxTypeProvider
>;
