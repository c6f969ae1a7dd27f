import type { FastifyInstance, FastifyRequest } from 'fastify';
import { DatabankError } from '../domain/errors.ts';
import {
  currentReadContext,
  formatLsn,
  newReadContext,
  parseLsn,
  readRoutingActive,
  runWithReadContext,
  type ReadContext,
  type ReplicaStatus,
} from '../stores/sql/read-routing.ts';

/** What the HTTP layer needs of read routing. */
export interface ReadRouting {
  /** The primary's WAL position, read after the caller's commit. */
  currentLsn(): Promise<bigint>;
  /** Each replica's state and lag. */
  status(): ReplicaStatus[];
  /** How long an API key's reads wait for its own last write without sending `X-Databank-Lsn`. */
  readonly readYourWritesMs: number;
  /** How far behind a replica may be for a read without a token. */
  readonly maxLagMs: number;
}

declare module 'fastify' {
  interface FastifyRequest {
    readContext: ReadContext | null;
  }
}

const WRITES = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);
/** Beyond this many remembered keys, those whose window has passed are forgotten. */
const MAX_REMEMBERED = 10_000;

/**
 * Read-your-writes over HTTP:
 * - a write answered with a 2xx carries `X-Databank-Lsn`, the primary's WAL position after its
 *   commit; the same API key's reads in the next `readYourWritesMs` wait for it by themselves
 *   (in this process), and a read that sends the header waits for it on any instance;
 * - every request's reads run with that position as their minimum (`read-routing.ts` sends them
 *   to a replica that has replayed it, or to the primary);
 * - every GET and HEAD answer says where its reads were served: `X-Databank-Read-From: replica`
 *   when any of them went to a replica (the answer may be as old as the bound, or as the token),
 *   `primary` when all of them, or none (a cache hit, a health check), went to the primary. Cache
 *   fills always read the primary.
 * A header that is not a WAL position is refused with DATABANK_ERR_INVALID_LSN.
 */
export function registerReadRouting(app: FastifyInstance, reads: ReadRouting): void {
  const lastWrite = new Map<number, { lsn: bigint; until: number }>();
  const remember = (keyId: number, lsn: bigint) => {
    if (reads.readYourWritesMs === 0) return;
    const now = Date.now();
    if (lastWrite.size >= MAX_REMEMBERED) {
      for (const [id, w] of lastWrite) if (w.until <= now) lastWrite.delete(id);
    }
    const before = lastWrite.get(keyId);
    lastWrite.delete(keyId);
    lastWrite.set(keyId, { lsn: before && before.lsn > lsn ? before.lsn : lsn, until: now + reads.readYourWritesMs });
    // Still full of live windows: the oldest (first inserted) goes.
    if (lastWrite.size > MAX_REMEMBERED) lastWrite.delete(lastWrite.keys().next().value as number);
  };

  app.decorateRequest('readContext', null);
  app.addHook('onRequest', (request, _reply, done) => {
    const given = request.headers['x-databank-lsn'];
    let minLsn: bigint | null = null;
    if (given !== undefined) {
      minLsn = typeof given === 'string' ? parseLsn(given.trim()) : null;
      if (minLsn === null) {
        done(new DatabankError('DATABANK_ERR_INVALID_LSN'));
        return;
      }
    }
    const ctx = newReadContext(minLsn);
    request.readContext = ctx;
    // Without replicas every read is the primary's: no context to carry (`readRoutingActive`).
    if (readRoutingActive()) runWithReadContext(ctx, () => done());
    else done();
  });
  // After authentication: the key's own last write raises the minimum.
  app.addHook('preHandler', async (request) => {
    const ctx = request.readContext;
    const keyId = request.principal?.keyId;
    if (!ctx || keyId === undefined) return;
    const w = lastWrite.get(keyId);
    if (w && w.until > Date.now() && (ctx.minLsn === null || w.lsn > ctx.minLsn)) ctx.minLsn = w.lsn;
  });
  app.addHook('onSend', async (request: FastifyRequest, reply) => {
    const ctx = request.readContext ?? currentReadContext();
    if (request.method === 'GET' || request.method === 'HEAD') {
      reply.header('x-databank-read-from', ctx && ctx.served.replica > 0 ? 'replica' : 'primary');
    } else if (WRITES.has(request.method) && reply.statusCode < 400) {
      let lsn: bigint;
      try {
        lsn = await reads.currentLsn();
      } catch (err) {
        // The write has committed; only its token is missing (the primary is going away).
        request.log.warn({ err }, 'could not read the WAL position after a write');
        return;
      }
      reply.header('x-databank-lsn', formatLsn(lsn));
      const keyId = request.principal?.keyId;
      if (keyId !== undefined) remember(keyId, lsn);
    }
  });
}
