import { randomUUID } from 'node:crypto';
import swagger from '@fastify/swagger';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import Fastify, { type FastifyError, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import type { FastifyBaseLogger, FastifyServerOptions, RouteOptions } from 'fastify';
import type { HttpSettings } from '../config.ts';
import { registerAuth } from './auth.ts';
import type { HttpDeps } from './deps.ts';
import { DatabankError } from '../domain/errors.ts';
import { connectionOptions } from './client-errors.ts';
import { errorBody, registerErrorHandlers } from './error-handler.ts';
import { idKeyword } from './id-keyword.ts';
import { registerJsonBody } from './json-body.ts';
import { registerConnectionMetrics, registerHttpMetrics } from './metrics.ts';
import { accountRoutes } from './routes/accounts.ts';
import { analyticsRoutes } from './routes/analytics.ts';
import { cacheRoutes } from './routes/cache.ts';
import { customerRoutes } from './routes/customers.ts';
import { fileRoutes } from './routes/files.ts';
import { healthRoutes } from './routes/health.ts';
import { apiKeyRoutes } from './routes/api-keys.ts';
import { asyncAdminRoutes } from './routes/async-admin.ts';
import { backupRoutes } from './routes/backups.ts';
import { jobRoutes } from './routes/jobs.ts';
import { moneyRoutes } from './routes/money.ts';
import { registerRateLimits } from './rate-limit.ts';
import { registerReadRouting } from './read-routing.ts';
import { replicaRoutes } from './routes/replicas.ts';
import { documentRoutes } from './routes/documents.ts';
import { searchRoutes } from './routes/search.ts';
import { registerSite, routeNotFound } from './site.ts';
import { schemaErrorFormatter } from './validation-messages.ts';

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,64}$/;

export interface ServerOptions {
  readonly logger: FastifyBaseLogger;
  /** Largest accepted request body in bytes. */
  readonly bodyLimit?: number;
  /**
   * Called with every route as it is registered, before any is: the authorization test lists the
   * routes this way, so that a route added without an authorization case fails it.
   */
  readonly onRoute?: (route: RouteOptions) => void;
  /** Client timeouts and connection limits (`client-errors.ts`); Node's defaults when absent (tests). */
  readonly http?: HttpSettings;
}

/**
 * The HTTP boundary: authentication, schemas, the catalog's errors, metrics and the routes.
 * Validation never coerces or strips: a body that does not match is refused, not changed.
 */
export async function buildServer(deps: HttpDeps, options: ServerOptions): Promise<FastifyInstance> {
  // A hop count trusts that many proxies in front (Fastify's types take it as a function).
  const hops = deps.limits.trustProxy;
  const trustProxy: FastifyServerOptions['trustProxy'] =
    typeof hops === 'number' ? (_address: string, hop: number) => hop < hops : hops;
  const app = Fastify({
    // Timeouts, the connection limit and Node's own client errors, answered from the catalog.
    ...connectionOptions(options.http, registerConnectionMetrics(deps.metrics)),
    loggerInstance: options.logger,
    bodyLimit: options.bodyLimit ?? 64 * 1024,
    // Clients may pass their own request id for tracing; anything odd is replaced.
    requestIdHeader: false,
    genReqId: (req) => {
      const given = req.headers['x-request-id'];
      return typeof given === 'string' && REQUEST_ID.test(given) ? given : randomUUID();
    },
    return503OnClosing: true,
    // Read the client address from X-Forwarded-For only behind the proxies TRUST_PROXY names.
    trustProxy,
    // A badly percent-encoded URL or an over-long path parameter is refused before routing, where
    // the error handler does not reach: answer those from the catalog too.
    // The hooks do not run for these, so the answer carries the API's headers itself, and never
    // echoes the path it refused.
    frameworkErrors: (err: FastifyError, request: FastifyRequest, reply: FastifyReply) => {
      const message = err.code === 'FST_ERR_BAD_URL' ? 'the path is not valid percent-encoded UTF-8' : err.message;
      reply
        .code(400)
        .header('x-request-id', request.id)
        .header('x-content-type-options', 'nosniff')
        .header('cache-control', 'no-store')
        .send(errorBody(new DatabankError('DATABANK_ERR_VALIDATION', message)));
    },
    // No coercion: path ids become numbers through the id keyword, after their pattern has passed.
    // `verbose` gives each error its schema and value, from which the refusal is put in words.
    ajv: {
      customOptions: { removeAdditional: false, coerceTypes: false, useDefaults: false, allErrors: false, verbose: true },
      plugins: [idKeyword],
    },
    schemaErrorFormatter,
  });
  if (options.onRoute) app.addHook('onRoute', options.onRoute);
  // The API speaks JSON only; Fastify's default text parser would let a text body reach validation.
  app.removeContentTypeParser('text/plain');
  // JSON without duplicate keys, deep nesting or prototype poisoning.
  registerJsonBody(app);
  app.addHook('onSend', async (request, reply) => {
    reply.header('x-request-id', request.id);
    reply.header('x-content-type-options', 'nosniff');
    // API answers are per caller and change with every write: no cache may keep them unless a
    // route says otherwise (the site, file content).
    if (!reply.hasHeader('cache-control')) reply.header('cache-control', 'no-store');
  });
  registerErrorHandlers(app);
  registerHttpMetrics(app, deps.metrics);
  // Before authentication, so that the key lookup and everything after it share the request's
  // read context.
  registerReadRouting(app, deps.reads);
  registerAuth(app, deps.apiKeys);
  await registerRateLimits(app, deps);
  await app.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: { title: 'databank', version: '0.1.0', description: "A bank's data layer over PostgreSQL" },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
      security: [{ bearer: [] }],
    },
  });
  if (deps.site) registerSite(app, deps.site);
  else app.setNotFoundHandler(routeNotFound);
  for (const routes of [healthRoutes, customerRoutes, accountRoutes, moneyRoutes, cacheRoutes, fileRoutes, apiKeyRoutes, jobRoutes, asyncAdminRoutes, backupRoutes, replicaRoutes, analyticsRoutes, documentRoutes, searchRoutes]) {
    await app.register(async (scope) => routes(scope.withTypeProvider<TypeBoxTypeProvider>(), deps));
  }
  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger());
  return app;
}
