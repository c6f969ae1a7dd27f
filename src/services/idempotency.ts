import { createHash } from 'node:crypto';
import { sql, type Kysely } from 'kysely';
import { DatabankError } from '../domain/errors.ts';
import type { Db } from '../stores/sql/port.ts';
import type { Database } from '../stores/sql/schema.ts';
import { read } from './transaction.ts';

/** How long a key is remembered, as Stripe does. */
export const KEY_TTL_MS = 24 * 60 * 60 * 1000;

/** A key this request may use, once its transaction holds the key's lock (`claim`). */
export interface IdempotencyClaim {
  readonly scope: string;
  readonly key: string;
  /** The request's fingerprint, stored with its answer. */
  readonly hash: string;
}

export type IdempotencyOutcome =
  | { readonly kind: 'claimed'; readonly claim: IdempotencyClaim }
  | { readonly kind: 'replay'; readonly status: number; readonly body: unknown };

/**
 * Thrown inside a movement's transaction when, holding the key's lock, it finds that an earlier
 * request with the same key has finished meanwhile: the HTTP layer answers with that response.
 */
export class IdempotentReplay extends Error {
  constructor(
    readonly status: number,
    readonly body: unknown,
  ) {
    super('idempotent replay');
    this.name = 'IdempotentReplay';
  }
}

/** The advisory lock key of an idempotency key: the same expression in SQL everywhere. */
export function claimLockKey(scope: string, key: string) {
  return sql<bigint>`hashtextextended(${`${scope} ${key}`}, 0)`;
}

/** Fingerprint of a request: method, route and a canonical form of the body. */
export function requestHash(method: string, route: string, body: unknown): string {
  return createHash('sha256').update(`${method} ${route}\n${canonicalJson(body)}`).digest('hex');
}

function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (value && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : 1));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
  }
  return JSON.stringify(value) ?? 'null';
}

/**
 * Idempotency keys with Stripe's semantics: the same key and request replays the stored response;
 * the same key with another request is refused (422); a key whose first request is still running
 * is refused (409).
 *
 * A claim is a transaction-scoped advisory lock on the key, taken by the movement's own transaction
 * (`claim`), and the stored response is inserted by that transaction (`complete`). So a response
 * is never stored without its movement nor a movement without its response, and a claim dies with
 * its holder: a crashed app's connection closes, PostgreSQL rolls its transaction back and drops
 * the lock, and the client's retry runs at once instead of waiting for a timeout. Every statement
 * here writes or decides a write, so all of them run on `writer`; times are the database's.
 */
export class IdempotencyService {
  constructor(private readonly db: Db) {}

  /**
   * Before the transaction: a stored response for this key replays (or, for another request, is
   * refused); otherwise the request may try to claim the key in its transaction.
   */
  async begin(scope: string, key: string, hash: string): Promise<IdempotencyOutcome> {
    const existing = await read(() => this.stored(this.db.writer, scope, key));
    if (existing) return this.replayOf(existing, hash);
    return { kind: 'claimed', claim: { scope, key, hash } };
  }

  /**
   * First statement of the movement's transaction: locks the key until the transaction ends, or
   * refuses with 409 when another transaction holds it; then, under the lock, replays a response
   * stored since `begin` looked.
   */
  async claim(trx: Kysely<Database>, claim: IdempotencyClaim): Promise<void> {
    const { rows } = await sql<{ locked: boolean }>`
      select pg_try_advisory_xact_lock(${claimLockKey(claim.scope, claim.key)}) as locked`.execute(trx);
    if (!rows[0]?.locked) throw new DatabankError('DATABANK_ERR_IDEMPOTENCY_IN_FLIGHT');
    const existing = await this.stored(trx, claim.scope, claim.key);
    if (existing) {
      const outcome = this.replayOf(existing, claim.hash);
      if (outcome.kind === 'replay') throw new IdempotentReplay(outcome.status, outcome.body);
    }
  }

  /** Records the response inside the movement's transaction (which holds the claim). */
  async complete(db: Kysely<Database>, claim: IdempotencyClaim, status: number, body: unknown): Promise<void> {
    await db
      .insertInto('idempotency_keys')
      .values({
        scope: claim.scope,
        key: claim.key,
        request_hash: claim.hash,
        state: 'done',
        response_status: status,
        response_body: JSON.stringify(body),
        expires_at: sql<Date>`now() + make_interval(secs => ${KEY_TTL_MS / 1000})`,
      })
      // Over an expired key, or one left in flight by a version before claims were locks; a live
      // response stays (a refusal recorded after a retry already stored its answer).
      .onConflict((oc) =>
        oc
          .columns(['scope', 'key'])
          .doUpdateSet({
            request_hash: (eb) => eb.ref('excluded.request_hash'),
            state: 'done',
            response_status: (eb) => eb.ref('excluded.response_status'),
            response_body: sql`excluded.response_body`,
            expires_at: (eb) => eb.ref('excluded.expires_at'),
            created_at: sql<Date>`now()`,
          })
          .where((eb) =>
            eb.or([eb('idempotency_keys.state', '<>', 'done'), eb('idempotency_keys.expires_at', '<', sql<Date>`now()`)]),
          ),
      )
      .execute();
  }

  /**
   * Records a refusal (insufficient funds, unknown account) after its transaction rolled back, so
   * that a retry gets the same answer. A response stored meanwhile by a retry wins.
   */
  async fail(claim: IdempotencyClaim, status: number, body: unknown): Promise<void> {
    await read(() => this.complete(this.db.writer, claim, status, body));
  }

  /** Deletes expired keys; returns how many. */
  async purgeExpired(): Promise<number> {
    const result = await read(() =>
      this.db.writer.deleteFrom('idempotency_keys').where('expires_at', '<', sql<Date>`now()`).executeTakeFirst(),
    );
    return Number(result.numDeletedRows ?? 0);
  }

  /** The key's stored response, unless it expired (rows in flight from before 0005 are ignored). */
  private stored(db: Kysely<Database>, scope: string, key: string) {
    return db
      .selectFrom('idempotency_keys')
      .select(['request_hash', 'response_status', 'response_body'])
      .where('scope', '=', scope)
      .where('key', '=', key)
      .where('state', '=', 'done')
      .where('expires_at', '>', sql<Date>`now()`)
      .executeTakeFirst();
  }

  private replayOf(
    row: { request_hash: string; response_status: number | null; response_body: unknown },
    hash: string,
  ): IdempotencyOutcome {
    if (row.request_hash !== hash) throw new DatabankError('DATABANK_ERR_IDEMPOTENCY_KEY_REUSED');
    return { kind: 'replay', status: row.response_status ?? 500, body: row.response_body };
  }
}
