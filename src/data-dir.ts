import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { sql } from 'kysely';
import type { SqlStore } from './stores/sql/port.ts';
import { ownerOnlyDir } from './stores/sql/owner-only.ts';

/**
 * A data directory (`DATABANK_DATA_DIR`) holds one deployment's admin key, customer files and, on
 * the embedded engine, its database. Started against another database it would hand that
 * database's deployment a key and files that are not its own, or sweep its files as orphans, so
 * the directory records the database it belongs to and refuses any other.
 */
export const DEPLOYMENT_FILE = 'deployment.json';

/** Which database a deployment lives in; `system_identifier` is PostgreSQL's, made by initdb. */
export interface DatabaseIdentity {
  readonly kind: 'pglite' | 'postgres';
  readonly system_identifier: string;
  /** `current_database()`. */
  readonly name: string;
  /** `host:port` of a server reached over TCP; null for the embedded engine or a socket. */
  readonly server: string | null;
}

/** The content of `deployment.json`. */
export interface DeploymentRecord {
  readonly deployment_id: string;
  readonly created_at: string;
  readonly database: DatabaseIdentity;
}

/** What the database says about itself, read before anything is written to either side. */
export interface FoundDatabase {
  readonly identity: DatabaseIdentity;
  /** The deployment id recorded in the database; null when none was recorded yet. */
  readonly deploymentId: string | null;
  /** No databank migration ever ran in it: a new database. */
  readonly fresh: boolean;
}

/** The part of a `SqlStore` the claim needs. */
export type ClaimableStore = Pick<SqlStore, 'kind' | 'db'>;

/**
 * Creates the data dir owner-only (0700). A data dir made before this rule is tightened once,
 * recursively; afterwards its own mode (0700) says it was done. What the `databank` command
 * creates inside it afterwards is owner-only through the process umask (`src/main.ts`).
 */
export function prepareDataDir(dataDir: string): void {
  ownerOnlyDir(dataDir);
}

/** The deployment a data dir belongs to, or null when it has none yet. */
export function readDeployment(dataDir: string): DeploymentRecord | null {
  const file = join(dataDir, DEPLOYMENT_FILE);
  if (!existsSync(file)) return null;
  try {
    return JSON.parse(readFileSync(file, 'utf8')) as DeploymentRecord;
  } catch (err) {
    throw new Error(`${file} is not valid JSON (${(err as Error).message}): restore it, or remove it if its deployment is gone`);
  }
}

function writeDeployment(dataDir: string, record: DeploymentRecord): void {
  const file = join(dataDir, DEPLOYMENT_FILE);
  writeFileSync(`${file}.tmp`, `${JSON.stringify(record, null, 2)}\n`, { mode: 0o600 });
  renameSync(`${file}.tmp`, file);
}

/** How a database is named in messages. */
export function describeDatabase(identity: DatabaseIdentity): string {
  const where = identity.kind === 'pglite' ? 'the embedded PGlite database' : `PostgreSQL database "${identity.name}"${identity.server ? ` on ${identity.server}` : ''}`;
  return `${where} (system identifier ${identity.system_identifier})`;
}

function sameDatabase(a: DatabaseIdentity, b: DatabaseIdentity): boolean {
  return a.kind === b.kind && a.system_identifier === b.system_identifier && a.name === b.name;
}

function refuse(dataDir: string, owner: string, found: DatabaseIdentity): Error {
  return new Error(
    `the data dir ${dataDir} belongs to ${owner}, but this process is configured for ${describeDatabase(found)}. ` +
      'Set DATABANK_DATA_DIR to another directory for this database, or, if the old deployment is gone for good, ' +
      `remove ${join(dataDir, DEPLOYMENT_FILE)} (and the old deployment's admin-key and files) and start again.`,
  );
}

/**
 * Decides, from the data dir and the database alone, whether they belong together; writes
 * nothing. The deployment id the database holds wins over identities: a database restored onto
 * another server keeps its id and so keeps its data dir.
 *
 * @returns the deployment id to use; throws a message naming both databases when they do not match.
 */
export function checkClaim(dataDir: string, record: DeploymentRecord | null, found: FoundDatabase): string {
  if (record) {
    const owner = `deployment ${record.deployment_id} on ${describeDatabase(record.database)}`;
    if (found.deploymentId !== null) {
      if (found.deploymentId === record.deployment_id) return record.deployment_id;
      throw refuse(dataDir, owner, found.identity);
    }
    // No id in the database: the same database from before ids were recorded, or another one.
    if (!found.fresh && sameDatabase(record.database, found.identity)) return record.deployment_id;
    throw refuse(dataDir, owner, found.identity);
  }
  // No record: a new data dir, or one from before records were kept.
  if (found.identity.kind === 'postgres' && existsSync(join(dataDir, 'pglite', 'PG_VERSION'))) {
    throw refuse(dataDir, 'a deployment on the embedded PGlite database kept in it', found.identity);
  }
  if (found.fresh && found.deploymentId === null && existsSync(join(dataDir, 'admin-key'))) {
    throw refuse(dataDir, 'a deployment whose admin-key it holds (not of this new, empty database)', found.identity);
  }
  return found.deploymentId ?? randomUUID();
}

/** Reads the database's identity, its recorded deployment id and whether it is new. */
export async function inspectDatabase(store: ClaimableStore): Promise<FoundDatabase> {
  const { db } = store;
  const row = (
    await sql<{ system_identifier: string; name: string; server: string | null; has_ids: boolean; migrated: boolean }>`
      select (select system_identifier::text from pg_control_system()) as system_identifier,
             current_database() as name,
             case when inet_server_addr() is null then null
                  else host(inet_server_addr()) || ':' || inet_server_port() end as server,
             to_regclass('databank_deployment') is not null as has_ids,
             to_regclass('databank_migrations') is not null as migrated`.execute(db)
  ).rows[0];
  if (!row) throw new Error('the database did not describe itself');
  const ids = row.has_ids ? (await sql<{ id: string }>`select id::text as id from databank_deployment`.execute(db)).rows : [];
  return {
    identity: { kind: store.kind, system_identifier: row.system_identifier, name: row.name, server: store.kind === 'pglite' ? null : row.server },
    deploymentId: ids[0]?.id ?? null,
    fresh: !row.migrated,
  };
}

/**
 * Records the deployment id in the database unless one is there, and returns the one that is. The
 * table is made here rather than by a migration so that the claim can run before migrations:
 * a wrong database is refused before anything is migrated into it. An advisory lock makes two
 * processes starting together on one server agree on one id.
 */
export async function recordDeploymentId(store: ClaimableStore, id: string): Promise<string> {
  const { db } = store;
  return db.transaction().execute(async (tx) => {
    await sql`select pg_advisory_xact_lock(hashtext('databank_deployment'))`.execute(tx);
    await sql`create table if not exists databank_deployment (
      singleton boolean primary key default true check (singleton),
      id uuid not null,
      created_at timestamptz not null default now())`.execute(tx);
    await sql`insert into databank_deployment (id) values (${id}::uuid) on conflict (singleton) do nothing`.execute(tx);
    const rows = (await sql<{ id: string }>`select id::text as id from databank_deployment`.execute(tx)).rows;
    return rows[0]?.id ?? id;
  });
}

/**
 * Claims the data dir for the database `store` is connected to, at every start (serve, worker and
 * any CLI command that writes to the data dir), before migrations and before anything is written:
 * the first start records a new deployment id in `deployment.json` and in the database; a later
 * start against another database throws an error that names both and says what to do.
 *
 * @example const deployment = await claimDataDir(config.dataDir, sqlStore);
 */
export async function claimDataDir(dataDir: string, store: ClaimableStore): Promise<DeploymentRecord> {
  prepareDataDir(dataDir);
  const record = readDeployment(dataDir);
  const found = await inspectDatabase(store);
  let id = checkClaim(dataDir, record, found);
  if (found.deploymentId === null) {
    const stored = await recordDeploymentId(store, id);
    if (stored !== id && record) throw refuse(dataDir, `deployment ${record.deployment_id} on ${describeDatabase(record.database)}`, found.identity);
    id = stored;
  }
  const next: DeploymentRecord = { deployment_id: id, created_at: record?.created_at ?? new Date().toISOString(), database: found.identity };
  if (!record || record.deployment_id !== id || JSON.stringify(record.database) !== JSON.stringify(found.identity)) {
    writeDeployment(dataDir, next);
  }
  return next;
}
