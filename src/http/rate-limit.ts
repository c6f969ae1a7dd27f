import rateLimit from '@fastify/rate-limit';
import type { FastifyInstance, FastifyReply } from 'fastify';
import { Redis } from 'ioredis';
import { DatabankError } from '../domain/errors.ts';
import type { LimitsRedis } from '../services/api-keys.ts';
import { limitKeyGuessing } from './auth.ts';
import type { HttpDeps } from './deps.ts';

/** Both limits count requests per minute. */
const WINDOW_MS = 60_000;
/** Addresses remembered as over budget at most; beyond it the oldest is forgotten. */
const MAX_BLOCKED = 10_000;

type Limit = Awaited<ReturnType<ReturnType<FastifyInstance['createRateLimit']>>>;

/**
 * Request limits, counted by @fastify/rate-limit in Redis when the cache is on Redis (so that they
 * hold across instances, on a connection of their own) and in-process otherwise:
 *
 * - per API key (`DATABANK_RATE_LIMIT_PER_MINUTE`), after authentication, keyed by the key's id;
 * - per client address for requests that present no valid key
 *   (`DATABANK_AUTH_FAILURE_LIMIT_PER_MINUTE`), counted by authentication when it refuses one.
 *   Once an address has spent its budget, the instance that counted it remembers so until the
 *   window ends, and authentication then checks the keys it presents against the cache only: its
 *   guesses no longer reach the database (another instance sharing the counters learns it from
 *   its own next refusal, so it looks up at most one guess more). A valid key is never counted
 *   against its address.
 *
 * Public routes (health checks) and the site (no route) have no principal and are not limited.
 * Answers carry `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`; a 429 also
 * `Retry-After`, with the catalog's DATABANK_ERR_RATE_LIMITED. If the store fails (Redis down or
 * slow), the request is served uncounted.
 */
export async function registerRateLimits(app: FastifyInstance, deps: HttpDeps): Promise<void> {
  const { rateLimitPerMinute, authFailureLimitPerMinute } = deps.limits;
  const shared = deps.apiKeys.limitsRedis;
  await app.register(rateLimit, {
    global: false,
    timeWindow: WINDOW_MS,
    skipOnError: true,
    keyGenerator: (request) => (request.principal ? `key:${request.principal.keyId}` : `ip:${request.ip}`),
    max: (_request, key) => (key.startsWith('key:') ? rateLimitPerMinute : authFailureLimitPerMinute),
    ...(shared ? { redis: await connect(app, shared), nameSpace: shared.keyPrefix } : {}),
  });
  const count = app.createRateLimit();

  app.addHook('onRequest', async (request, reply) => {
    // Runs after authentication's hook (registered before this one): only keys that passed.
    if (request.principal) enforce(reply, await count(request));
  });

  /** Address → until when (epoch ms) it is over its budget, as far as this instance has seen. */
  const blocked = new Map<string, number>();
  limitKeyGuessing(app, {
    overBudget(request) {
      const until = blocked.get(request.ip);
      if (until === undefined) return false;
      if (until > Date.now()) return true;
      blocked.delete(request.ip);
      return false;
    },
    async countFailure(request, reply) {
      const limit = await count(request);
      // Its budget is spent: from its next request on, no key it presents is looked up.
      if (!limit.isAllowed && limit.remaining === 0 && limit.ttl > 0) {
        if (blocked.size >= MAX_BLOCKED) blocked.delete(blocked.keys().next().value as string);
        blocked.set(request.ip, Date.now() + limit.ttl);
      }
      enforce(reply, limit);
    },
  });
}

/** Sets the RateLimit headers of `limit`; throws DATABANK_ERR_RATE_LIMITED when it is exceeded. */
function enforce(reply: FastifyReply, limit: Limit): void {
  if (limit.isAllowed) return;
  reply.header('ratelimit-limit', limit.max);
  reply.header('ratelimit-remaining', limit.remaining);
  reply.header('ratelimit-reset', limit.ttlInSeconds);
  if (!limit.isExceeded) return;
  reply.header('retry-after', limit.ttlInSeconds);
  throw new DatabankError('DATABANK_ERR_RATE_LIMITED');
}

/**
 * The limits' own Redis connection, closed with the server. Commands fail at once while it is
 * disconnected (no offline queue) and after the cache's command timeout when it hangs, so an
 * outage costs a request at most that timeout; it is logged once per outage.
 */
async function connect(app: FastifyInstance, shared: LimitsRedis): Promise<Redis> {
  const redis = new Redis(shared.url, {
    commandTimeout: shared.commandTimeoutMs,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    lazyConnect: true,
    enableAutoPipelining: true,
    retryStrategy: (times) => Math.min(50 * times, 1_000),
  });
  let up = true;
  redis.on('error', (err: Error) => {
    if (up) app.log.warn({ err }, 'rate-limit store unavailable: requests are served uncounted until it answers');
    up = false;
  });
  redis.on('ready', () => {
    up = true;
  });
  app.addHook('onClose', async () => redis.disconnect());
  await redis.connect().catch(() => undefined);
  return redis;
}
