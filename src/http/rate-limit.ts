import type { FastifyInstance } from 'fastify';
import type { HttpDeps } from './deps.ts';

/** Per-key and per-address request limits (filled in by the rate-limit work). */
export async function registerRateLimits(_app: FastifyInstance, _deps: HttpDeps): Promise<void> {}
