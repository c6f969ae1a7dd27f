import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { sql, type Kysely } from 'kysely';
import { assertRealDate } from '../domain/dates.ts';
import { DatabankError } from '../domain/errors.ts';
import type { Page, Principal } from '../domain/types.ts';
import type { Db } from '../stores/sql/port.ts';
import type { Database } from '../stores/sql/schema.ts';
import { assertAdmin } from './access.ts';
import type { CachedReads } from './cached-reads.ts';
import { decodeCursor, toPage } from './paging.ts';
import { inTransaction, read, withRetry } from './transaction.ts';

/** `dbk_<prefix>_<secret>`: the prefix finds the row, the secret is checked against a hash. */
const KEY_PATTERN = /^dbk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$/;
/** An ISO 8601 timestamp with a time zone (`Z` or `±hh:mm`); seconds and fractions optional. */
const ISO_TIMESTAMP = /^\d{4}-\d{2}-\d{2}T([01]\d|2[0-3]):[0-5]\d(:[0-5]\d(\.\d{1,6})?)?(Z|[+-]([01]\d|2[0-3]):[0-5]\d)$/;
/** How often the times keys were last used are written: never per request. */
const LAST_USED_FLUSH_MS = 30_000;
/** Most key ids in one `last_used_at` statement (two parameters each). */
const FLUSH_BATCH = 1_000;

export type KeyRole = 'admin' | 'customer';

export interface CreatedKey {
  /** The whole key: shown once, never stored. */
  readonly key: string;
  readonly id: number;
  readonly role: KeyRole;
  readonly customer_id: number | null;
  /** ISO timestamp after which the key is refused; null: never. */
  readonly expires_at: string | null;
}

/** A key as the admin list shows it: everything but the secret. */
export interface KeyInfo {
  readonly id: number;
  /** The part of the key after `dbk_` that identifies it (not a secret: it alone opens nothing). */
  readonly prefix: string;
  readonly role: KeyRole;
  readonly customer_id: number | null;
  readonly created_at: string;
  readonly expires_at: string | null;
  /** To within ~30 s (uses are written in batches); null: never used. */
  readonly last_used_at: string | null;
  readonly revoked_at: string | null;
}

export interface NewKeyRequest {
  readonly role: KeyRole;
  readonly customer_id?: number | null;
  /** ISO 8601 timestamp with a time zone, in the future; absent or null: never expires. */
  readonly expires_at?: string | null;
}

/** Where the request limits of the HTTP layer count, when they are shared by every instance. */
export interface LimitsRedis {
  readonly url: string;
  /** Every counter's key starts with this (the deployment's cache prefix), so deployments never mix. */
  readonly keyPrefix: string;
  /** A command slower than this is abandoned and the request is served uncounted. */
  readonly commandTimeoutMs: number;
}

export interface ApiKeysOptions {
  /**
   * The app's cache. Verified keys are read through it (keyed by prefix) and revocations
   * invalidate it before they answer; without one, every check reads the database.
   */
  readonly cache?: CachedReads;
  /** Redis for the request limits (src/http/rate-limit.ts); null or absent: counted in-process. */
  readonly limitsRedis?: LimitsRedis | null;
  /** Told when writing the last-used times failed (they are kept and tried again). */
  readonly onError?: (err: unknown) => void;
}

/** What authentication needs of a key row; cached as JSON, so times are epoch milliseconds. */
interface KeyRecord {
  readonly id: number;
  readonly secret_hash: string;
  readonly role: KeyRole;
  readonly customer_id: number | null;
  readonly expires_at: number | null;
}

function hashSecret(secret: string): Buffer {
  // The secret is 256 random bits, so a plain SHA-256 cannot be brute-forced; no salt is needed.
  return createHash('sha256').update(secret).digest();
}

const iso = (d: Date | null): string | null => (d === null ? null : d.toISOString());

/** The later of a stored time and an epoch-ms time, either possibly absent. */
function later(stored: Date | null, pending: number | undefined): Date | null {
  return pending !== undefined && (stored === null || pending > stored.getTime()) ? new Date(pending) : stored;
}

/**
 * An `expires_at` from a request: an ISO 8601 timestamp with a time zone, of a day that exists,
 * later than `now`; DATABANK_ERR_VALIDATION otherwise.
 */
export function parseExpiry(value: string, now: number = Date.now()): Date {
  const at = ISO_TIMESTAMP.test(value) ? Date.parse(value) : Number.NaN;
  if (Number.isNaN(at)) {
    throw new DatabankError('DATABANK_ERR_VALIDATION', 'expires_at must be an ISO 8601 timestamp with a time zone, e.g. 2027-01-31T00:00:00Z');
  }
  assertRealDate(value.slice(0, 10), 'expires_at');
  if (at <= now) throw new DatabankError('DATABANK_ERR_VALIDATION', `expires_at ${value} is not in the future`);
  return new Date(at);
}

/**
 * API keys: made here, shown once, stored only as hashes; listed, revoked and rotated by admins.
 *
 * Checking a key reads it through the shared cache (no database round trip while the cache holds
 * it), and a revocation overwrites the cached entry with a tombstone before it answers: from then
 * on no instance gets the old entry, so a revoked key is refused on its very next request
 * everywhere. Expiry is checked on every request against the cached expiry time. Without a cache
 * (DATABANK_CACHE=off, or the worker's metrics listener) every check reads the database.
 *
 * When each key was last used is kept in memory and written at most every 30 s, outside any
 * request, and once more by `close()`. Making, revoking and rotating read and write the primary
 * (`writer`), and so does checking a key (a replica may not have the revocation yet); listing reads
 * `reader`.
 */
export class ApiKeysService {
  readonly limitsRedis: LimitsRedis | null;
  private readonly cache: CachedReads | null;
  private readonly onError: (err: unknown) => void;
  /** Key id → when it was last used (epoch ms), not yet written. */
  private readonly used = new Map<number, number>();
  private timer: NodeJS.Timeout | null = null;
  private flushing: Promise<void> = Promise.resolve();

  constructor(
    private readonly db: Db,
    options: ApiKeysOptions = {},
  ) {
    this.cache = options.cache ?? null;
    this.limitsRedis = options.limitsRedis ?? null;
    this.onError = options.onError ?? (() => undefined);
  }

  /**
   * Makes a key; `db` is the caller's transaction when the key commits with other work. The
   * customer check decides the insert, so it reads the primary like the insert itself.
   */
  async create(
    role: KeyRole,
    customerId: number | null,
    db: Kysely<Database> = this.db.writer,
    expiresAt: Date | null = null,
  ): Promise<CreatedKey> {
    if ((role === 'customer') !== (customerId !== null)) {
      throw new DatabankError('DATABANK_ERR_VALIDATION', 'a customer key needs a customer id; an admin key has none');
    }
    if (customerId !== null) {
      const customer = await db.selectFrom('customers').select('id').where('id', '=', customerId).executeTakeFirst();
      if (!customer) throw new DatabankError('DATABANK_ERR_NOT_FOUND', `customer ${customerId} does not exist`);
    }
    const prefix = randomBytes(8).toString('hex');
    const secret = randomBytes(32).toString('base64url');
    const row = await db
      .insertInto('api_keys')
      .values({
        prefix,
        secret_hash: hashSecret(secret).toString('hex'),
        role,
        customer_id: customerId,
        expires_at: expiresAt,
      })
      .returning('id')
      .executeTakeFirstOrThrow();
    return { key: `dbk_${prefix}_${secret}`, id: row.id, role, customer_id: customerId, expires_at: iso(expiresAt) };
  }

  /** `POST /api-keys`: an admin makes a key, optionally with an expiry. */
  async issue(principal: Principal, request: NewKeyRequest): Promise<CreatedKey> {
    assertAdmin(principal);
    const expiresAt = request.expires_at == null ? null : parseExpiry(request.expires_at);
    return this.create(request.role, request.customer_id ?? null, this.db.writer, expiresAt);
  }

  /** Every key, revoked and expired ones included, by id; no secrets. */
  async list(principal: Principal, query: { limit: number; cursor?: string }): Promise<Page<KeyInfo>> {
    assertAdmin(principal);
    const after = decodeCursor(query.cursor) ?? 0;
    const rows = await read(() =>
      this.db.reader
        .selectFrom('api_keys')
        .select(['id', 'prefix', 'role', 'customer_id', 'created_at', 'expires_at', 'last_used_at', 'revoked_at'])
        .where('id', '>', after)
        .orderBy('id')
        .limit(query.limit + 1)
        .execute(),
    );
    const keys = rows.map((r): KeyInfo => ({
      ...r,
      created_at: r.created_at.toISOString(),
      expires_at: iso(r.expires_at),
      // A use this process has not written yet is newer than the row's.
      last_used_at: iso(later(r.last_used_at, this.used.get(r.id))),
      revoked_at: iso(r.revoked_at),
    }));
    return toPage(keys, query.limit, (k) => k.id);
  }

  /**
   * Revokes key `id` (again is fine); DATABANK_ERR_NOT_FOUND when there is no such key. Once this
   * returns, the key is refused on every instance sharing the cache.
   */
  async revoke(principal: Principal, id: number): Promise<void> {
    assertAdmin(principal);
    const row = await withRetry(() =>
      this.db.writer
        .updateTable('api_keys')
        .set({ revoked_at: sql<Date>`coalesce(revoked_at, now())` })
        .where('id', '=', id)
        .returning('prefix')
        .executeTakeFirst(),
    );
    if (!row) throw new DatabankError('DATABANK_ERR_NOT_FOUND', `api key ${id} does not exist`);
    await this.forget(row.prefix);
  }

  /**
   * A new key with the role, customer and expiry of key `id`, which is revoked in the same
   * transaction; DATABANK_ERR_NOT_FOUND unless `id` is a live (unrevoked, unexpired) key.
   */
  async rotate(principal: Principal, id: number): Promise<CreatedKey> {
    assertAdmin(principal);
    const { created, prefix } = await inTransaction(this.db.writer, async (trx) => {
      const old = await trx
        .selectFrom('api_keys')
        .select(['prefix', 'role', 'customer_id', 'expires_at', 'revoked_at'])
        .where('id', '=', id)
        .forUpdate()
        .executeTakeFirst();
      if (!old) throw new DatabankError('DATABANK_ERR_NOT_FOUND', `api key ${id} does not exist`);
      if (old.revoked_at !== null) throw new DatabankError('DATABANK_ERR_NOT_FOUND', `api key ${id} is revoked`);
      if (old.expires_at !== null && old.expires_at.getTime() <= Date.now()) {
        throw new DatabankError('DATABANK_ERR_NOT_FOUND', `api key ${id} expired at ${old.expires_at.toISOString()}`);
      }
      const made = await this.create(old.role, old.customer_id, trx, old.expires_at);
      await trx.updateTable('api_keys').set({ revoked_at: sql<Date>`now()` }).where('id', '=', id).execute();
      return { created: made, prefix: old.prefix };
    });
    await this.forget(prefix);
    return created;
  }

  /**
   * The principal a bearer key stands for; DATABANK_ERR_UNAUTHORIZED for anything else: no key,
   * a malformed, unknown, revoked or expired one. With `cachedOnly`, only a key the cache holds
   * can pass: nothing is read from the database (for addresses over their guessing budget).
   */
  async authenticate(key: string | undefined, options: { cachedOnly?: boolean } = {}): Promise<Principal> {
    const match = key ? KEY_PATTERN.exec(key) : null;
    if (!match) throw new DatabankError('DATABANK_ERR_UNAUTHORIZED');
    const prefix = match[1] as string;
    const secret = match[2] as string;
    const record = options.cachedOnly ? (await this.cache?.peek<KeyRecord>('api-key', prefix))?.value : await this.lookup(prefix);
    if (
      !record ||
      !timingSafeEqual(Buffer.from(record.secret_hash, 'hex'), hashSecret(secret)) ||
      (record.expires_at !== null && record.expires_at <= Date.now())
    ) {
      throw new DatabankError('DATABANK_ERR_UNAUTHORIZED');
    }
    this.noteUse(record.id);
    return record.role === 'admin'
      ? { role: 'admin', keyId: record.id }
      : { role: 'customer', keyId: record.id, customerId: record.customer_id as number };
  }

  /** Whether an unrevoked admin key exists; asked before making one, so it reads the primary. */
  async hasAdminKey(db: Kysely<Database> = this.db.writer): Promise<boolean> {
    const row = await db
      .selectFrom('api_keys')
      .select('id')
      .where('role', '=', 'admin')
      .where('revoked_at', 'is', null)
      .limit(1)
      .executeTakeFirst();
    return row !== undefined;
  }

  /** Writes the last-used times not written yet; the next write waits for this one. */
  flushLastUsed(): Promise<void> {
    this.flushing = this.flushing.then(() => this.writeLastUsed()).catch(this.onError);
    return this.flushing;
  }

  /** Stops the periodic write and writes what is left; call before the database closes. */
  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    await this.flushLastUsed();
  }

  /** The unrevoked key with this prefix, through the cache when there is one. */
  private async lookup(prefix: string): Promise<KeyRecord | null> {
    const load = async (): Promise<KeyRecord | null> => {
      // On the primary: a key revoked or made a moment ago is refused or accepted at once, on
      // every instance, whatever a replica has replayed.
      const row = await read(() =>
        this.db.writer
          .selectFrom('api_keys')
          .select(['id', 'secret_hash', 'role', 'customer_id', 'expires_at'])
          .where('prefix', '=', prefix)
          .where('revoked_at', 'is', null)
          .executeTakeFirst(),
      );
      return row ? { ...row, expires_at: row.expires_at?.getTime() ?? null } : null;
    };
    return this.cache ? (await this.cache.getOrLoad('api-key', prefix, load)).value : load();
  }

  /** After a revocation committed: no instance may find the key's cached entry any more. */
  private async forget(prefix: string): Promise<void> {
    await this.cache?.invalidate([['api-key', prefix]]);
  }

  private noteUse(id: number): void {
    this.used.set(id, Date.now());
    if (this.timer) return;
    this.timer = setInterval(() => void this.flushLastUsed(), LAST_USED_FLUSH_MS);
    // The write must never keep a process alive; close() writes what is left.
    this.timer.unref();
  }

  private async writeLastUsed(): Promise<void> {
    if (this.used.size === 0) return;
    const batch = [...this.used];
    this.used.clear();
    for (let i = 0; i < batch.length; i += FLUSH_BATCH) {
      const chunk = batch.slice(i, i + FLUSH_BATCH);
      const rows = sql.join(chunk.map(([id, at]) => sql`(${id}::bigint, ${new Date(at).toISOString()}::timestamptz)`));
      try {
        // greatest(): another instance may have written a later use already.
        await sql`update api_keys k set last_used_at = greatest(k.last_used_at, v.used_at)
          from (values ${rows}) as v(id, used_at) where k.id = v.id`.execute(this.db.writer);
      } catch (err) {
        // Kept for the next write, unless a newer use came in meanwhile.
        for (const [id, at] of chunk) if ((this.used.get(id) ?? 0) < at) this.used.set(id, at);
        this.onError(err);
      }
    }
  }
}
