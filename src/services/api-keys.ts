import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import type { Kysely } from 'kysely';
import { DatabankError } from '../domain/errors.ts';
import type { Principal } from '../domain/types.ts';
import type { Db } from '../stores/sql/port.ts';
import type { Database } from '../stores/sql/schema.ts';
import { read } from './transaction.ts';

/** `dbk_<prefix>_<secret>`: the prefix finds the row, the secret is checked against a hash. */
const KEY_PATTERN = /^dbk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$/;
/** Verified keys are remembered briefly so that a hot path does not hit the database per request. */
const VERIFIED_TTL_MS = 10_000;
const VERIFIED_MAX = 10_000;

export interface CreatedKey {
  readonly key: string;
  readonly id: number;
  readonly role: 'admin' | 'customer';
  readonly customer_id: number | null;
}

function hashSecret(secret: string): Buffer {
  // The secret is 256 random bits, so a plain SHA-256 cannot be brute-forced; no salt is needed.
  return createHash('sha256').update(secret).digest();
}

/**
 * API keys: made here, shown once, stored only as hashes. Making a key reads and writes the
 * primary (`writer`); checking one reads `reader`.
 */
export class ApiKeysService {
  private readonly verified = new Map<string, { principal: Principal; until: number }>();
  constructor(private readonly db: Db) {}

  /**
   * Makes a key; `db` is the caller's transaction when the key commits with other work. The
   * customer check decides the insert, so it reads the primary like the insert itself.
   */
  async create(
    role: 'admin' | 'customer',
    customerId: number | null,
    db: Kysely<Database> = this.db.writer,
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
      .values({ prefix, secret_hash: hashSecret(secret).toString('hex'), role, customer_id: customerId })
      .returning('id')
      .executeTakeFirstOrThrow();
    return { key: `dbk_${prefix}_${secret}`, id: row.id, role, customer_id: customerId };
  }

  /** The principal a bearer key stands for; DATABANK_ERR_UNAUTHORIZED for anything else. */
  async authenticate(key: string | undefined): Promise<Principal> {
    const match = key ? KEY_PATTERN.exec(key) : null;
    if (!key || !match) throw new DatabankError('DATABANK_ERR_UNAUTHORIZED');
    const cached = this.verified.get(key);
    if (cached && cached.until > Date.now()) return cached.principal;
    const row = await read(() =>
      this.db.reader
        .selectFrom('api_keys')
        .select(['id', 'secret_hash', 'role', 'customer_id'])
        .where('prefix', '=', match[1] as string)
        .where('revoked_at', 'is', null)
        .executeTakeFirst(),
    );
    if (!row || !timingSafeEqual(Buffer.from(row.secret_hash, 'hex'), hashSecret(match[2] as string))) {
      throw new DatabankError('DATABANK_ERR_UNAUTHORIZED');
    }
    const principal: Principal =
      row.role === 'admin'
        ? { role: 'admin', keyId: row.id }
        : { role: 'customer', keyId: row.id, customerId: row.customer_id as number };
    if (this.verified.size >= VERIFIED_MAX) this.verified.clear();
    this.verified.set(key, { principal, until: Date.now() + VERIFIED_TTL_MS });
    return principal;
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
}
