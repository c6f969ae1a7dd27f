import { createHash } from 'node:crypto';
import { sql, type Kysely, type Transaction } from 'kysely';
import type { Database } from '../../stores/sql/schema.ts';
import { primaryOnly } from '../../stores/sql/port.ts';
import { CachedReads } from '../cached-reads.ts';
import { CustomersService } from '../customers.ts';

/**
 * What a backup records of the database at its moment, and how a restored copy is checked
 * against it: every table's row count and content checksum, the bank's invariants, and the
 * answers of the API's core queries. The same functions read the original (inside the backup's
 * snapshot) and the restored copy, so the two can only agree if the data did.
 */

/** Schemas whose tables a backup counts: the bank's own and the job queue's. */
const SCHEMAS = ['public', 'pgboss'] as const;
/**
 * Left out of the counts: a backup's hold row is in its own snapshot (it was written before),
 * and a restore removes it.
 */
const UNCOUNTED = new Set(['public.backup_holds']);

export interface TableStat {
  readonly rows: number;
  /** Order-independent: the sum of the rows' 64-bit hashes, as a decimal string. */
  readonly checksum: string;
}

export interface Invariants {
  /** Customer balances by currency (decimal strings: the sums of many accounts). */
  readonly balances: Readonly<Record<string, string>>;
  /** Every ledger entry summed by currency: zero when every transaction balances. */
  readonly ledger: Readonly<Record<string, string>>;
  /** Accounts whose balance is not the sum of their entries. */
  readonly accounts_off_ledger: number;
  /** Ledger transactions that do not sum to zero in one of their currencies. */
  readonly unbalanced_transactions: number;
}

export interface CoreAnswers {
  /** `GET /customers`, every page, as an admin sees it. */
  readonly customers: { readonly count: number; readonly sha256: string };
  /** The chapter's query: customers born after 1990-01-01 with their balances. */
  readonly born_after_1990: { readonly count: number; readonly sha256: string };
}

export interface DatabaseFacts {
  readonly schema_version: string;
  readonly server_version: string;
  readonly tables: Readonly<Record<string, TableStat>>;
  readonly invariants: Invariants;
  readonly answers: CoreAnswers;
}

type Db = Kysely<Database> | Transaction<Database>;

/**
 * Settings for the rest of the transaction: a row's text the same on every server and in every
 * time zone, and no statement timeout (the pool's 30 s bounds requests, not a backup's reads).
 */
export async function stableText(db: Db): Promise<void> {
  await sql`select set_config('timezone', 'UTC', true), set_config('datestyle', 'ISO, YMD', true),
    set_config('intervalstyle', 'postgres', true), set_config('extra_float_digits', '1', true),
    set_config('bytea_output', 'hex', true), set_config('statement_timeout', '0', true)`.execute(db);
}

/**
 * The tables a backup counts. A partitioned table (the ledger's `ledger_entries`, pg-boss's `job`)
 * is counted once, as a whole: its partitions are left out, since their rows are its rows, and
 * which partitions hold them is the partition upkeep's business, not the data's.
 */
async function tableNames(db: Db): Promise<string[]> {
  const rows = await sql<{ name: string }>`
    select table_schema || '.' || table_name as name from information_schema.tables t
    where table_type = 'BASE TABLE' and table_schema in (${sql.join(SCHEMAS.map((s) => sql.lit(s)))})
      and not exists (
        select 1 from pg_class c join pg_namespace n on n.oid = c.relnamespace
        where n.nspname = t.table_schema and c.relname = t.table_name and c.relispartition)
    order by 1`.execute(db);
  return rows.rows.map((r) => r.name).filter((n) => !UNCOUNTED.has(n));
}

/**
 * The partitions among the tables of the counted schemas. Manifests written before partitions
 * were left out name them besides their parent; a check of such a manifest skips them.
 */
export async function partitionNames(db: Db): Promise<Set<string>> {
  const rows = await sql<{ name: string }>`
    select n.nspname || '.' || c.relname as name from pg_class c join pg_namespace n on n.oid = c.relnamespace
    where c.relispartition and n.nspname in (${sql.join(SCHEMAS.map((s) => sql.lit(s)))})`.execute(db);
  return new Set(rows.rows.map((r) => r.name));
}

/**
 * A table's row count and the sum of its rows' 64-bit hashes (`hash_record_extended`: the
 * values' own hash functions, several times faster than hashing each row's text). A table with a
 * column type that has no hash function falls back to the MD5 of each row's text, prefixed `md5:`.
 */
async function checksum(db: Db, schema: string, table: string): Promise<{ rows: string; checksum: string }> {
  const from = sql.id(schema, table);
  await sql`savepoint databank_checksum`.execute(db);
  try {
    const r = await sql<{ rows: string; checksum: string }>`
      select count(*)::text as rows, coalesce(sum(hash_record_extended(t, 0)), 0)::text as checksum from ${from} t`.execute(db);
    await sql`release savepoint databank_checksum`.execute(db);
    return r.rows[0] as { rows: string; checksum: string };
  } catch {
    await sql`rollback to savepoint databank_checksum`.execute(db);
    const r = await sql<{ rows: string; checksum: string }>`
      select count(*)::text as rows,
        'md5:' || coalesce(sum(('x' || left(md5(t::text), 16))::bit(64)::bigint::numeric), 0)::text as checksum
      from ${from} t`.execute(db);
    return r.rows[0] as { rows: string; checksum: string };
  }
}

/** Row count and checksum of every table; call inside a transaction after `stableText`. */
export async function tableStats(db: Db): Promise<Record<string, TableStat>> {
  const out: Record<string, TableStat> = {};
  for (const name of await tableNames(db)) {
    const [schema, table] = name.split('.') as [string, string];
    const row = await checksum(db, schema, table);
    out[name] = { rows: Number(row.rows), checksum: row.checksum };
  }
  return out;
}

const byKey = (rows: ReadonlyArray<{ k: string; v: string }>) => Object.fromEntries(rows.map((r) => [r.k, r.v]));

export async function invariants(db: Db): Promise<Invariants> {
  const balances = await sql<{ k: string; v: string }>`select currency as k, sum(balance)::text as v from accounts group by currency order by 1`.execute(db);
  const ledger = await sql<{ k: string; v: string }>`select currency as k, sum(amount)::text as v from ledger_entries group by currency order by 1`.execute(db);
  // One pass over the entries (a hash aggregate), not an index probe per account: 30 s → 3 s at 5M entries.
  const off = await sql<{ n: string }>`
    select count(*)::text as n from accounts a
    left join (select account_id, sum(amount) as total from ledger_entries where account_id is not null group by account_id) e
      on e.account_id = a.account_id
    where a.balance <> coalesce(e.total, 0)`.execute(db);
  const unbalanced = await sql<{ n: string }>`
    select count(distinct transaction_id)::text as n from (
      select transaction_id from ledger_entries group by transaction_id, currency having sum(amount) <> 0) u`.execute(db);
  return {
    balances: byKey(balances.rows),
    ledger: byKey(ledger.rows),
    accounts_off_ledger: Number(off.rows[0]?.n ?? 0),
    unbalanced_transactions: Number(unbalanced.rows[0]?.n ?? 0),
  };
}

/** Whether the invariants are those of a sound bank, whatever their amounts. */
export function invariantProblems(inv: Invariants): string[] {
  const problems: string[] = [];
  for (const [currency, sum] of Object.entries(inv.ledger)) if (sum !== '0') problems.push(`the ${currency} ledger sums to ${sum}, not 0`);
  if (inv.accounts_off_ledger > 0) problems.push(`${inv.accounts_off_ledger} accounts differ from their entries`);
  if (inv.unbalanced_transactions > 0) problems.push(`${inv.unbalanced_transactions} ledger transactions do not balance`);
  return problems;
}

const NO_EVENTS = { hit: () => {}, miss: () => {}, error: () => {} };
const ADMIN = { role: 'admin', keyId: 0 } as const;

/** Pages through `GET /customers` (as the service answers it) and digests the answers. */
async function customerAnswers(db: Db, bornAfter?: string): Promise<{ count: number; sha256: string }> {
  const cache = new CachedReads(null, { prefix: 'backup', ttlMs: 0, negativeTtlMs: 0, tombstoneMs: 0 }, NO_EVENTS);
  const service = new CustomersService(primaryOnly(db as Kysely<Database>), cache);
  const hash = createHash('sha256');
  let count = 0;
  let cursor: string | undefined;
  do {
    const page = await service.list(ADMIN, { limit: 500, ...(cursor ? { cursor } : {}), ...(bornAfter ? { bornAfter } : {}) });
    for (const c of page.result) hash.update(`${JSON.stringify(c)}\n`);
    count += page.result.length;
    cursor = page.next_cursor ?? undefined;
  } while (cursor);
  return { count, sha256: hash.digest('hex') };
}

export async function coreAnswers(db: Db): Promise<CoreAnswers> {
  return { customers: await customerAnswers(db), born_after_1990: await customerAnswers(db, '1990-01-01') };
}

/** Everything a backup records of the database; inside the snapshot's transaction. */
export async function databaseFacts(db: Db): Promise<DatabaseFacts> {
  await stableText(db);
  const versions = await sql<{ schema_version: string | null; server_version: string }>`
    select (select max(name) from databank_migrations) as schema_version, current_setting('server_version') as server_version`.execute(db);
  const v = versions.rows[0] as { schema_version: string | null; server_version: string };
  return {
    schema_version: v.schema_version ?? '',
    server_version: v.server_version,
    tables: await tableStats(db),
    invariants: await invariants(db),
    answers: await coreAnswers(db),
  };
}

/** Canonical JSON: keys sorted at every level, so a signature does not depend on key order. */
export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (value && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
  }
  return JSON.stringify(value);
}
