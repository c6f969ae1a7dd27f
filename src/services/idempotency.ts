import { createHash } from 'node:crypto';
import { sql, type Kysely } from 'kysely';
import { DatabankError } from '../domain/errors.ts';
import type { Db } from '../stores/sql/port.ts';
import type { Database } from '../stores/sql/schema.ts';
import { read } from './transaction.ts';

/** How long a key is remembered, as Stripe does. */
export const KEY_TTL_MS = 24 * 60 * 60 * 1000;
/**
 * How long a claim blocks others. The claim's completion commits with the movement itself, so a
 * claim still open after this long belongs to a process that died before committing anything:
 * the key may be used again.
 */
export const CLAIM_LOCK_MS = 60 * 1000;

/** A key this request now owns; pass it to the service so the result commits with the movement. */
export interface IdempotencyClaim {
  readonly scope: string;
  readonly key: string;
}

export type IdempotencyOutcome =
  | { readonly kind: 'claimed'; readonly claim: IdempotencyClaim }
  | { readonly kind: 'replay'; readonly status: number; readonly body: unknown };

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
 * is refused (409). The stored response commits in the same transaction as the movement, so a
 * replay never describes a movement that did not happen, and a movement never lacks its record.
 * Every statement here writes or decides a write, so all of them run on `writer`.
 */
export class IdempotencyService {
  constructor(private readonly db: Db) {}

  async begin(scope: string, key: string, hash: string): Promise<IdempotencyOutcome> {
    const now = Date.now();
    const claimed = await read(() =>
      this.db.writer
        .insertInto('idempotency_keys')
        .values({
          scope,
          key,
          request_hash: hash,
          state: 'in_flight',
          locked_until: new Date(now + CLAIM_LOCK_MS),
          expires_at: new Date(now + KEY_TTL_MS),
        })
        .onConflict((oc) =>
          oc
            .columns(['scope', 'key'])
            .doUpdateSet({
              request_hash: (eb) => eb.ref('excluded.request_hash'),
              state: 'in_flight',
              response_status: null,
              response_body: null,
              locked_until: (eb) => eb.ref('excluded.locked_until'),
              expires_at: (eb) => eb.ref('excluded.expires_at'),
            })
            // Take the key over only when it expired, or when its owner died before committing.
            .where((eb) =>
              eb.or([
                eb('idempotency_keys.expires_at', '<', sql<Date>`now()`),
                eb.and([
                  eb('idempotency_keys.state', '=', 'in_flight'),
                  eb('idempotency_keys.locked_until', '<', sql<Date>`now()`),
                  eb('idempotency_keys.request_hash', '=', hash),
                ]),
              ]),
            ),
        )
        .returning(['scope'])
        .executeTakeFirst(),
    );
    if (claimed) return { kind: 'claimed', claim: { scope, key } };
    // The key's row may have been written a moment ago by another request: only the primary is
    // sure to show it, and its state decides whether this request may run.
    const existing = await read(() =>
      this.db.writer
        .selectFrom('idempotency_keys')
        .select(['request_hash', 'state', 'response_status', 'response_body'])
        .where('scope', '=', scope)
        .where('key', '=', key)
        .executeTakeFirst(),
    );
    // Deleted between the two statements (a released claim): the client may simply retry.
    if (!existing) throw new DatabankError('DATABANK_ERR_IDEMPOTENCY_IN_FLIGHT');
    if (existing.request_hash !== hash) throw new DatabankError('DATABANK_ERR_IDEMPOTENCY_KEY_REUSED');
    if (existing.state === 'in_flight' || existing.response_status === null) {
      throw new DatabankError('DATABANK_ERR_IDEMPOTENCY_IN_FLIGHT');
    }
    return { kind: 'replay', status: existing.response_status, body: existing.response_body };
  }

  /** Records the response inside the movement's transaction. */
  async complete(db: Kysely<Database>, claim: IdempotencyClaim, status: number, body: unknown): Promise<void> {
    await db
      .updateTable('idempotency_keys')
      .set({ state: 'done', response_status: status, response_body: JSON.stringify(body) })
      .where('scope', '=', claim.scope)
      .where('key', '=', claim.key)
      .execute();
  }

  /** Records a refusal (insufficient funds, unknown account) so that a retry gets the same answer. */
  async fail(claim: IdempotencyClaim, status: number, body: unknown): Promise<void> {
    await read(() => this.complete(this.db.writer, claim, status, body));
  }

  /** Forgets a claim whose request neither succeeded nor was refused (database down, contention). */
  async release(claim: IdempotencyClaim): Promise<void> {
    await read(() =>
      this.db.writer
        .deleteFrom('idempotency_keys')
        .where('scope', '=', claim.scope)
        .where('key', '=', claim.key)
        .where('state', '=', 'in_flight')
        .execute(),
    );
  }

  /** Deletes expired keys; returns how many. */
  async purgeExpired(): Promise<number> {
    const result = await read(() =>
      this.db.writer.deleteFrom('idempotency_keys').where('expires_at', '<', sql<Date>`now()`).executeTakeFirst(),
    );
    return Number(result.numDeletedRows ?? 0);
  }
}
