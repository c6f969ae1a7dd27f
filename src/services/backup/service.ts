import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { PassThrough, Readable, Transform, type TransformCallback, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip, createGzip } from 'node:zlib';
import { Kysely, sql } from 'kysely';
import type { FileStore } from '../../stores/files/port.ts';
import type { Database } from '../../stores/sql/schema.ts';
import type { SqlStore } from '../../stores/sql/port.ts';
import { variantKey, type VARIANT_ORDER } from '../files.ts';
import { BackupIntegrityError, BackupKeyError, decryptStream, encryptStream, manifestMac, sameMac, type BackupKey } from './crypto.ts';
import { databaseName, pgDump, pgRestore, withDatabase, type ServerTarget } from './engines.ts';
import { holdDeletions } from './hold.ts';
import {
  canonicalJson,
  coreAnswers,
  databaseFacts,
  invariantProblems,
  invariants,
  partitionNames,
  stableText,
  tableStats,
  type CoreAnswers,
  type DatabaseFacts,
  type Invariants,
  type TableStat,
} from './manifest.ts';
import { retention, type Keep } from './retention.ts';

/**
 * Logical backups of the whole deployment: the database (`pg_dump -Fc` of a snapshot on a server,
 * the embedded engine's data directory on PGlite), encrypted, in the file store under `backups/`,
 * with the file store's objects that the snapshot's rows name, and a signed manifest written last
 * (a backup without a manifest is not a backup). Restores, drills and pruning read the manifests.
 *
 *   backups/<id>/database.enc      the dump, compressed then encrypted
 *   backups/<id>/manifest.json     what the backup holds and the checks a restore must pass
 *   backups/objects/<key id>/<h>   one encrypted copy of each object version, shared by backups
 *   backups/drills/latest.json     the last restore drill's report
 */

export const BACKUP_PREFIX = 'backups/';
const OBJECTS_PREFIX = 'backups/objects/';
const LAST_DRILL = 'backups/drills/latest.json';
const MANIFEST_FORMAT = 'databank-backup/1';

export interface StoredObject {
  /** Where the object lives in the deployment's file store. */
  readonly key: string;
  readonly size: number;
  /** SHA-256 of its bytes. */
  readonly sha256: string;
  /** Its encrypted copy under `backups/objects/`. */
  readonly stored: string;
}

export interface Manifest {
  readonly format: typeof MANIFEST_FORMAT;
  readonly backup_id: string;
  readonly created_at: string;
  readonly engine: 'postgres' | 'pglite';
  readonly database: { readonly name: string; readonly server_version: string; readonly schema_version: string };
  readonly key_id: string;
  /** The encrypted dump: its key, stored size and SHA-256 of the stored bytes. */
  readonly data: { readonly key: string; readonly size: number; readonly sha256: string };
  readonly tables: Readonly<Record<string, TableStat>>;
  readonly invariants: Invariants;
  readonly answers: CoreAnswers;
  readonly objects: readonly StoredObject[];
  /** Objects a row named that were not in the store when the backup copied (the sweeper's "missing"). */
  readonly missing_objects: readonly string[];
  readonly duration_ms: number;
  readonly hmac: string;
}

export interface BackupSummary {
  readonly backup_id: string;
  readonly created_at: string;
  readonly size: number;
  readonly sha256: string;
  readonly tables: Readonly<Record<string, TableStat>>;
  readonly invariants: Invariants;
  readonly objects: number;
  readonly locations: string[];
}

export interface DrillCheck {
  readonly name: string;
  readonly ok: boolean;
  readonly detail: string;
}

export interface DrillReport {
  readonly ok: boolean;
  readonly backup_id: string | null;
  readonly rto_ms: number;
  readonly rpo_s: number | null;
  readonly checks: DrillCheck[];
  readonly finished_at: string;
}

/** Where a restore goes: a PostgreSQL database, or a new data dir for the embedded engine. */
export type RestoreTarget = { readonly kind: 'postgres'; readonly target: ServerTarget } | { readonly kind: 'pglite'; readonly dataDir: string };

/** Told how far a long step is: `done` of `total` bytes (or objects), and what is at hand. */
export type OnProgress = (done: number, total: number | null, label: string) => void;

export interface BackupServiceOptions {
  /** The deployment's database; null for the commands that need only the file store (a drill of an embedded backup, restores, lists). */
  readonly sql: SqlStore | null;
  /** The server a `postgres` store connects to (pg_dump's target); null on PGlite. */
  readonly server: ServerTarget | null;
  readonly files: FileStore;
  /** The second target of the 3-2-1 rule, with a name for listings; null: none. */
  readonly copy: { readonly store: FileStore; readonly name: string } | null;
  /** null: no key configured; every operation that needs one refuses with `keyMissing`. */
  readonly key: BackupKey | null;
  readonly keep: Keep;
  readonly now?: () => Date;
}

/** Refusal when no key is configured. */
export const KEY_MISSING =
  'backups are encrypted and no key is configured: set DATABANK_BACKUP_KEY_FILE to a file holding 32 random bytes as base64 ' +
  '(make one with `databank backup keygen FILE`, mode 0600), kept apart from the database credentials';

export class BackupError extends Error {}

/** A sortable, unique id: the UTC time to the second and 6 random hex digits. */
function newBackupId(now: Date): string {
  return `${now.toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z')}-${randomBytes(3).toString('hex')}`;
}

const ID = /^\d{8}T\d{6}Z-[0-9a-f]{6}$/;

/** Counts and hashes what passes. */
class Meter extends Transform {
  bytes = 0;
  private readonly hash = createHash('sha256');
  constructor(private readonly onBytes?: (bytes: number) => void) {
    super();
  }
  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    this.bytes += chunk.length;
    this.hash.update(chunk);
    this.onBytes?.(this.bytes);
    done(null, chunk);
  }
  digest(): string {
    return this.hash.digest('hex');
  }
}

/** Pipes `streams` in order, destroying the last with the first error of any; returns the last. */
function chain(first: Readable, ...rest: Array<Transform | PassThrough>): Readable {
  const all: Readable[] = [first, ...rest];
  const last = all[all.length - 1] as Readable;
  let current: Readable = first;
  for (const next of rest) current = current.pipe(next);
  for (const stream of all) {
    stream.on('error', (err) => {
      // The last stream carries the error to its consumer; the others stop (files are closed).
      for (const other of all) if (other !== stream) other.destroy(other === last ? err : undefined);
    });
  }
  return last;
}

export class BackupService {
  private readonly now: () => Date;

  constructor(private readonly options: BackupServiceOptions) {
    this.now = options.now ?? (() => new Date());
  }

  private database(): SqlStore {
    if (!this.options.sql) throw new BackupError('this needs the database: run it where the deployment\'s database is open');
    return this.options.sql;
  }

  get configured(): boolean {
    return this.options.key !== null;
  }

  private key(): BackupKey {
    if (!this.options.key) throw new BackupKeyError(KEY_MISSING);
    return this.options.key;
  }

  /** Takes a backup: snapshot, dump, objects, manifest; then the second copy. */
  async create(onProgress?: OnProgress): Promise<BackupSummary> {
    const key = this.key();
    const started = this.now();
    const id = newBackupId(started);
    const t0 = performance.now();
    const dataKey = `${BACKUP_PREFIX}${id}/database.enc`;
    const release = await holdDeletions(this.database().db, id);
    try {
      const previous = await this.newestManifest().catch(() => null);
      const snap = await this.snapshot(dataKey, key, onProgress);
      const site: string[] = [];
      for await (const o of this.options.files.list('site/')) site.push(o.key);
      const copied = await this.copyObjects([...snap.objectKeys, ...site], key, previous, onProgress);
      const unsigned: Omit<Manifest, 'hmac'> = {
        format: MANIFEST_FORMAT,
        backup_id: id,
        created_at: started.toISOString(),
        engine: this.database().kind,
        database: { name: snap.databaseName, server_version: snap.facts.server_version, schema_version: snap.facts.schema_version },
        key_id: key.id,
        data: { key: dataKey, size: snap.size, sha256: snap.sha256 },
        tables: snap.facts.tables,
        invariants: snap.facts.invariants,
        answers: snap.facts.answers,
        objects: copied.objects,
        missing_objects: copied.missing,
        duration_ms: Math.round(performance.now() - t0),
      };
      const manifest: Manifest = { ...unsigned, hmac: manifestMac(key, canonicalJson(unsigned)) };
      await this.options.files.put(`${BACKUP_PREFIX}${id}/manifest.json`, Buffer.from(JSON.stringify(manifest, null, 2)), {
        contentType: 'application/json',
      });
      const locations = ['primary'];
      if (this.options.copy) {
        await this.copyBackup(manifest, this.options.files, this.options.copy.store, onProgress);
        locations.push(this.options.copy.name);
      }
      return {
        backup_id: id,
        created_at: manifest.created_at,
        size: manifest.data.size,
        sha256: manifest.data.sha256,
        tables: manifest.tables,
        invariants: manifest.invariants,
        objects: manifest.objects.length,
        locations,
      };
    } catch (err) {
      // No manifest, no backup: what was written so far goes (shared objects stay for the next one).
      await this.removeBackup(this.options.files, id).catch(() => undefined);
      throw err;
    } finally {
      await release();
    }
  }

  /**
   * The database at one moment, and the keys of the objects its rows name, read in the same
   * snapshot; the dump streams into the file store encrypted.
   */
  private async snapshot(dataKey: string, key: BackupKey, onProgress?: OnProgress) {
    const store = this.database();
    const put = async (source: Readable) => {
      const meter = new Meter((n) => onProgress?.(n, null, 'database'));
      const stored = chain(source, encryptStream(key), meter);
      await this.options.files.put(dataKey, stored, { contentType: 'application/octet-stream' });
      return { size: meter.bytes, sha256: meter.digest() };
    };
    const objectKeys = async (trx: Kysely<Database>) => {
      const files = await trx.selectFrom('files').select('object_key').orderBy('id').execute();
      const variants = await trx.selectFrom('file_variants').select(['file_id', 'name']).where('status', '=', 'ready').orderBy('file_id').execute();
      return [...files.map((f) => f.object_key), ...variants.map((v) => variantKey(v.file_id, v.name as (typeof VARIANT_ORDER)[number]))];
    };
    if (store.kind === 'postgres') {
      const server = this.options.server;
      if (!server) throw new BackupError('no server connection to dump');
      return store.db
        .transaction()
        .setIsolationLevel('repeatable read')
        .execute(async (trx) => {
          await sql`set transaction read only`.execute(trx);
          const snapshot = (await sql<{ s: string }>`select pg_export_snapshot() as s`.execute(trx)).rows[0]?.s as string;
          const dump = pgDump(server, snapshot);
          const out = new PassThrough();
          dump.stdout.pipe(out);
          dump.done.catch((err: unknown) => out.destroy(err as Error));
          const uploaded = put(out);
          const facts = await databaseFacts(trx);
          const keys = await objectKeys(trx);
          const [stored] = await Promise.all([uploaded, dump.done]);
          return { ...stored, facts, objectKeys: keys, databaseName: databaseName(server) };
        });
    }
    if (!store.copyDataDir) throw new BackupError('this engine has no dump');
    // Fewer WAL records for the restore to replay; writes between here and the snapshot are fine.
    await sql`checkpoint`.execute(store.db);
    const taken = await store.db
      .transaction()
      .setIsolationLevel('repeatable read')
      .execute(async (trx) => {
        const facts = await databaseFacts(trx);
        const keys = await objectKeys(trx);
        // The transaction holds the only connection: the files are exactly what it sees.
        const tar = await (store.copyDataDir as () => Promise<Uint8Array>)();
        return { facts, keys, tar };
      });
    const stored = await put(chain(Readable.from([Buffer.from(taken.tar.buffer, taken.tar.byteOffset, taken.tar.byteLength)]), createGzip({ level: 3 })));
    return { ...stored, facts: taken.facts, objectKeys: taken.keys, databaseName: 'pglite' };
  }

  /** Copies each object once per version (by key, size and time), encrypted; earlier backups' copies are reused. */
  private async copyObjects(keys: readonly string[], key: BackupKey, previous: Manifest | null, onProgress?: OnProgress) {
    const reuse = new Map((previous?.key_id === key.id ? previous.objects : []).map((o) => [o.stored, o]));
    const objects: StoredObject[] = [];
    const missing: string[] = [];
    let done = 0;
    for (const source of keys) {
      done++;
      onProgress?.(done, keys.length, source);
      const got = await this.options.files.get(source);
      if (!got) {
        missing.push(source);
        continue;
      }
      const version = createHash('sha256').update(`${source}\n${got.info.size}\n${got.info.lastModified.getTime()}`).digest('hex');
      const stored = `${OBJECTS_PREFIX}${key.id}/${version}`;
      const known = reuse.get(stored);
      if (known && known.key === source && (await this.options.files.head(stored))) {
        got.body.destroy();
        objects.push(known);
        continue;
      }
      const plain = new Meter();
      await this.options.files.put(stored, chain(got.body, plain, encryptStream(key)), { contentType: 'application/octet-stream' });
      objects.push({ key: source, size: plain.bytes, sha256: plain.digest(), stored });
    }
    return { objects, missing };
  }

  /** Puts one backup into `to`: the dump and objects it lacks, the manifest last. */
  private async copyBackup(manifest: Manifest, from: FileStore, to: FileStore, onProgress?: OnProgress): Promise<void> {
    const keys = [manifest.data.key, ...manifest.objects.map((o) => o.stored)];
    let done = 0;
    for (const k of keys) {
      done++;
      onProgress?.(done, keys.length, `copy ${k}`);
      if (k !== manifest.data.key && (await to.head(k))) continue;
      const got = await from.get(k);
      if (!got) throw new BackupError(`${k} vanished while it was copied`);
      await to.put(k, got.body, { contentType: 'application/octet-stream' });
    }
    await to.put(`${BACKUP_PREFIX}${manifest.backup_id}/manifest.json`, Buffer.from(JSON.stringify(manifest, null, 2)), { contentType: 'application/json' });
  }

  private async removeBackup(store: FileStore, id: string): Promise<void> {
    // The manifest first: a backup without it is no longer listed, whatever happens next.
    await store.delete(`${BACKUP_PREFIX}${id}/manifest.json`);
    for await (const o of store.list(`${BACKUP_PREFIX}${id}/`)) await store.delete(o.key);
  }

  private stores(): Array<{ name: string; store: FileStore }> {
    return [{ name: 'primary', store: this.options.files }, ...(this.options.copy ? [this.options.copy] : [])];
  }

  private async manifestsIn(store: FileStore): Promise<Manifest[]> {
    const out: Manifest[] = [];
    for await (const o of store.list(BACKUP_PREFIX)) {
      const m = /^backups\/([^/]+)\/manifest\.json$/.exec(o.key);
      if (!m || !ID.test(m[1] as string)) continue;
      const read = await readManifest(store, m[1] as string);
      if (read) out.push(read);
    }
    return out.sort((a, b) => (a.created_at < b.created_at ? 1 : -1));
  }

  /** Every backup with where its copies live, newest first. */
  async list(): Promise<Array<BackupSummary & { engine: string; key_id: string }>> {
    const byId = new Map<string, { manifest: Manifest; locations: string[] }>();
    for (const { name, store } of this.stores()) {
      for (const m of await this.manifestsIn(store)) {
        const entry = byId.get(m.backup_id) ?? { manifest: m, locations: [] };
        entry.locations.push(name);
        byId.set(m.backup_id, entry);
      }
    }
    return [...byId.values()]
      .sort((a, b) => (a.manifest.created_at < b.manifest.created_at ? 1 : -1))
      .map(({ manifest: m, locations }) => ({
        backup_id: m.backup_id,
        created_at: m.created_at,
        engine: m.engine,
        key_id: m.key_id,
        size: m.data.size,
        sha256: m.data.sha256,
        tables: m.tables,
        invariants: m.invariants,
        objects: m.objects.length,
        locations,
      }));
  }

  async newestManifest(): Promise<Manifest | null> {
    return (await this.manifestsIn(this.options.files))[0] ?? null;
  }

  /** The backup's manifest and the store it was found in (the primary first, then the copy), its signature checked. */
  async locate(id: string | undefined, key: BackupKey = this.key()): Promise<{ manifest: Manifest; store: FileStore; where: string }> {
    if (id !== undefined && !ID.test(id)) throw new BackupError(`not a backup id: ${JSON.stringify(id)} (see databank backup list)`);
    for (const { name, store } of this.stores()) {
      const manifest = id === undefined ? ((await this.manifestsIn(store))[0] ?? null) : await readManifest(store, id);
      if (manifest) {
        verifyManifest(manifest, key);
        return { manifest, store, where: name };
      }
    }
    throw new BackupError(id === undefined ? 'there is no backup yet: run databank backup create' : `no backup ${id} in any backup location`);
  }

  /** The decrypted dump as a stream, its stored bytes hashed on the way (`sha256()` after the end). */
  private openDump(store: FileStore, manifest: Manifest, key: BackupKey, onProgress?: OnProgress) {
    return (async () => {
      const got = await store.get(manifest.data.key);
      if (!got) throw new BackupIntegrityError(`the backup's data ${manifest.data.key} is missing`);
      const meter = new Meter((n) => onProgress?.(n, manifest.data.size, 'restore'));
      let checked = false;
      const check = new Transform({
        transform(chunk: Buffer, _e, done) {
          done(null, chunk);
        },
        flush(done) {
          const sha = meter.digest();
          checked = true;
          done(sha === manifest.data.sha256 ? null : new BackupIntegrityError(`SHA-256 of the backup data is ${sha}, the manifest says ${manifest.data.sha256}`));
        },
      });
      const stream = chain(got.body, meter, check, decryptStream(key));
      return { stream, checked: () => checked };
    })();
  }

  /**
   * Restores a backup into `target` (refused when the target holds data, unless `force`), then the
   * objects into `files`, the file store that goes with the target.
   */
  async restore(
    id: string | undefined,
    target: RestoreTarget,
    options: { force: boolean; files: FileStore | null | (() => Promise<FileStore>); key?: BackupKey; onProgress?: OnProgress },
  ): Promise<{ backup_id: string; from: string; restore_ms: number; objects: number; tables: number }> {
    const key = options.key ?? this.key();
    const { manifest, store, where } = await this.locate(id, key);
    const t0 = performance.now();
    await restoreDatabase(manifest, target, options.force, await this.openDump(store, manifest, key, options.onProgress));
    let objects = 0;
    if (options.files) {
      // Opened after the database is in place: a new data dir's file store lives inside it.
      const files = typeof options.files === 'function' ? await options.files() : options.files;
      objects = await this.restoreObjects(manifest, store, files, key, options.onProgress);
    }
    return { backup_id: manifest.backup_id, from: where, restore_ms: Math.round(performance.now() - t0), objects, tables: Object.keys(manifest.tables).length };
  }

  private async restoreObjects(manifest: Manifest, from: FileStore, to: FileStore, key: BackupKey, onProgress?: OnProgress): Promise<number> {
    let done = 0;
    for (const o of manifest.objects) {
      done++;
      onProgress?.(done, manifest.objects.length, o.key);
      await to.put(o.key, await this.decryptObject(from, o, key), { contentType: contentTypeOf(o.key) });
    }
    return done;
  }

  /** An object's bytes, authenticated chunk by chunk, with its SHA-256 checked at the end. */
  private async decryptObject(from: FileStore, o: StoredObject, key: BackupKey): Promise<Readable> {
    const got = await from.get(o.stored);
    if (!got) throw new BackupIntegrityError(`the backup copy of ${o.key} (${o.stored}) is missing`);
    const plain = new Meter();
    const check = new Transform({
      transform(chunk: Buffer, _e, done) {
        done(null, chunk);
      },
      flush(done) {
        const sha = plain.digest();
        done(sha === o.sha256 ? null : new BackupIntegrityError(`${o.key}: SHA-256 ${sha}, the manifest says ${o.sha256}`));
      },
    });
    return chain(got.body, decryptStream(key), plain, check);
  }

  /**
   * Restores a backup into a scratch database, checks it against its manifest, and drops it.
   * Never throws for what it finds: every finding is a check.
   */
  async drill(id?: string, onProgress?: OnProgress): Promise<DrillReport> {
    const checks: DrillCheck[] = [];
    const add = (name: string, ok: boolean, detail: string) => checks.push({ name, ok, detail });
    let backupId: string | null = id ?? null;
    let rto = 0;
    let rpo: number | null = null;
    try {
      const key = this.key();
      let located: Awaited<ReturnType<BackupService['locate']>>;
      try {
        located = await this.locate(id, key);
        add('manifest', true, `signed with key ${located.manifest.key_id}, found in ${located.where}`);
      } catch (err) {
        add('manifest', false, (err as Error).message);
        // Name the backup the drill tried, even though its manifest did not verify.
        backupId ??= (await this.newestManifest().catch(() => null))?.backup_id ?? null;
        return this.report(false, backupId, 0, null, checks);
      }
      const { manifest, store } = located;
      backupId = manifest.backup_id;
      rpo = Math.max(0, Math.round((this.now().getTime() - Date.parse(manifest.created_at)) / 1000));
      const t0 = performance.now();
      await withScratch(this.options, manifest, async (target, open) => {
        try {
          const dump = await this.openDump(store, manifest, key, onProgress);
          await restoreDatabase(manifest, target, false, dump);
          add('sha256', dump.checked(), `stored bytes match ${manifest.data.sha256.slice(0, 16)}…`);
          add('restore', true, `restored into a scratch ${manifest.engine === 'postgres' ? 'database' : 'PGlite'}`);
        } catch (err) {
          const integrity = err instanceof BackupIntegrityError || err instanceof BackupKeyError;
          add(integrity && /SHA-256/.test((err as Error).message) ? 'sha256' : 'restore', false, (err as Error).message);
          return;
        }
        rto = Math.round(performance.now() - t0);
        const db = await open();
        try {
          await verifyDatabase(db, manifest, add);
        } finally {
          await db.destroy();
        }
      });
      await this.verifyObjects(manifest, store, key, add);
    } catch (err) {
      add('drill', false, (err as Error).message);
    }
    return this.report(checks.length > 0 && checks.every((c) => c.ok), backupId, rto, rpo, checks);
  }

  private async verifyObjects(manifest: Manifest, store: FileStore, key: BackupKey, add: (n: string, ok: boolean, d: string) => void) {
    const bad: string[] = [];
    for (const o of manifest.objects) {
      try {
        await pipeline(await this.decryptObject(store, o, key), devNull());
      } catch (err) {
        bad.push(`${o.key}: ${(err as Error).message}`);
      }
    }
    const missing = manifest.missing_objects.length > 0 ? `; ${manifest.missing_objects.length} named by rows were already missing when the backup ran` : '';
    add('objects', bad.length === 0, bad.length === 0 ? `${manifest.objects.length} objects decrypt to their SHA-256${missing}` : bad.slice(0, 5).join('; '));
  }

  private async report(ok: boolean, backupId: string | null, rto: number, rpo: number | null, checks: DrillCheck[]): Promise<DrillReport> {
    const report: DrillReport = { ok, backup_id: backupId, rto_ms: rto, rpo_s: rpo, checks, finished_at: this.now().toISOString() };
    await this.options.files.put(LAST_DRILL, Buffer.from(JSON.stringify(report)), { contentType: 'application/json' }).catch(() => undefined);
    return report;
  }

  async lastDrill(): Promise<DrillReport | null> {
    const got = await this.options.files.get(LAST_DRILL);
    if (!got) return null;
    return JSON.parse((await readAll(got.body)).toString('utf8')) as DrillReport;
  }

  /** Removes what the policy does not keep (every location), then objects no kept backup names. */
  async prune(options: { dryRun: boolean }): Promise<{ keep: Array<{ backup_id: string; reasons: string[] }>; remove: string[]; objects_removed: number }> {
    const all = await this.list();
    const plan = retention(all, this.options.keep);
    const remove = plan.remove.map((b) => b.backup_id);
    let objectsRemoved = 0;
    if (!options.dryRun) {
      for (const { store } of this.stores()) {
        for (const id of remove) await this.removeBackup(store, id);
        objectsRemoved += await this.collectObjects(store);
      }
    }
    return { keep: plan.keep.map((b) => ({ backup_id: b.backup_id, reasons: b.reasons })), remove, objects_removed: objectsRemoved };
  }

  /** Deletes object copies no manifest names, except young ones (a backup running now may be about to name them). */
  private async collectObjects(store: FileStore): Promise<number> {
    const named = new Set((await this.manifestsIn(store)).flatMap((m) => m.objects.map((o) => o.stored)));
    const cutoff = this.now().getTime() - 24 * 3600 * 1000;
    let removed = 0;
    for await (const o of store.list(OBJECTS_PREFIX)) {
      if (named.has(o.key) || o.lastModified.getTime() > cutoff) continue;
      await store.delete(o.key);
      removed++;
    }
    return removed;
  }
}

function devNull(): Writable {
  return new PassThrough().resume();
}

async function readAll(body: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of body) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

async function readManifest(store: FileStore, id: string): Promise<Manifest | null> {
  const got = await store.get(`${BACKUP_PREFIX}${id}/manifest.json`);
  if (!got) return null;
  try {
    const m = JSON.parse((await readAll(got.body)).toString('utf8')) as Manifest;
    return m.format === MANIFEST_FORMAT && m.backup_id === id ? m : null;
  } catch {
    return null;
  }
}

/** Throws unless the manifest was signed with `key` and not changed since. */
export function verifyManifest(manifest: Manifest, key: BackupKey): void {
  if (manifest.key_id !== key.id) {
    throw new BackupKeyError(
      `backup ${manifest.backup_id} was made with backup key ${manifest.key_id}; the key file given holds key ${key.id}: use the key it was made with`,
    );
  }
  const { hmac, ...unsigned } = manifest;
  if (!sameMac(hmac, manifestMac(key, canonicalJson(unsigned)))) {
    throw new BackupIntegrityError(`the manifest of backup ${manifest.backup_id} does not match its signature: it was altered or damaged`);
  }
}

function contentTypeOf(key: string): string {
  if (key.endsWith('.webp')) return 'image/webp';
  if (key.endsWith('.json')) return 'application/json';
  return 'application/octet-stream';
}

/** Loads the dump into the target; refuses a target that holds data unless `force`. */
async function restoreDatabase(
  manifest: Manifest,
  target: RestoreTarget,
  force: boolean,
  dump: { stream: Readable; checked: () => boolean },
): Promise<void> {
  if (manifest.engine !== (target.kind === 'postgres' ? 'postgres' : 'pglite')) {
    dump.stream.destroy();
    throw new BackupError(
      manifest.engine === 'postgres'
        ? `backup ${manifest.backup_id} is a PostgreSQL server's dump: restore it --to a PostgreSQL database URL`
        : `backup ${manifest.backup_id} is of the embedded engine: restore it --data-dir into a new data dir`,
    );
  }
  if (target.kind === 'postgres') {
    const { openPostgres } = await import('../../stores/sql/postgres.ts');
    const store = await openPostgres({ connectionString: target.target.connectionString, ssl: target.target.ssl, poolMax: 1 });
    try {
      const tables = await sql<{ n: string }>`
        select count(*)::text as n from pg_tables where schemaname not in ('pg_catalog', 'information_schema')`.execute(store.db);
      if (Number(tables.rows[0]?.n) > 0) {
        if (!force) {
          dump.stream.destroy();
          throw new BackupError(`the target database ${databaseName(target.target)} is not empty: pass --force to replace what it holds`);
        }
        await sql`drop schema if exists pgboss cascade`.execute(store.db);
        await sql`drop schema if exists public cascade`.execute(store.db);
        await sql`create schema public`.execute(store.db);
      }
    } finally {
      await store.close();
    }
    const restore = pgRestore(target.target);
    dump.stream.on('error', () => restore.stdin.destroy());
    await Promise.all([pipeline(dump.stream, restore.stdin), restore.done]);
    await afterRestore(target);
    return;
  }
  const dir = target.dataDir;
  if (existsSync(dir) && readdirSync(dir).length > 0) {
    if (!force) {
      dump.stream.destroy();
      throw new BackupError(`the data dir ${dir} is not empty: pass --force to replace what it holds`);
    }
    for (const entry of ['pglite', 'files', 'deployment.json', 'admin-key']) rmSync(join(dir, entry), { recursive: true, force: true });
  }
  const tar = await readAll(chain(dump.stream, createGunzip()));
  const { ownerOnlyDir } = await import('../../stores/sql/owner-only.ts');
  ownerOnlyDir(dir);
  ownerOnlyDir(join(dir, 'pglite'));
  const { PGlite } = await import('@electric-sql/pglite');
  const { PGLITE_EXTENSIONS } = await import('../../stores/sql/pglite.ts');
  const pg = await PGlite.create(join(dir, 'pglite'), { loadDataDir: new Blob([tar]), extensions: PGLITE_EXTENSIONS });
  try {
    await pg.query('delete from backup_holds');
  } finally {
    await pg.close();
  }
  // The copy was taken from a running server's directory, its lock file with it.
  const { LOCK_FILE } = await import('../../stores/sql/data-dir-lock.ts');
  rmSync(join(dir, 'pglite', LOCK_FILE), { force: true });
}

/** A restored database forgets the hold of the backup it came from. */
async function afterRestore(target: RestoreTarget): Promise<void> {
  if (target.kind !== 'postgres') return;
  const { openPostgres } = await import('../../stores/sql/postgres.ts');
  const store = await openPostgres({ connectionString: target.target.connectionString, ssl: target.target.ssl, poolMax: 1 });
  try {
    await sql`delete from backup_holds`.execute(store.db);
  } finally {
    await store.close();
  }
}

/**
 * A scratch place to restore into, removed afterwards: a new database on the same server, or a
 * temporary directory for the embedded engine. `open` gives a handle on what was restored.
 */
async function withScratch(
  options: BackupServiceOptions,
  manifest: Manifest,
  work: (target: RestoreTarget, open: () => Promise<Kysely<Database>>) => Promise<void>,
): Promise<void> {
  if (manifest.engine === 'postgres') {
    if (!options.server) throw new BackupError('a drill of a PostgreSQL backup needs a PostgreSQL server (DATABASE_URL) for its scratch database');
    const name = `databank_drill_${randomBytes(6).toString('hex')}`;
    if (!options.sql) throw new BackupError('a drill of a PostgreSQL backup needs the server (DATABASE_URL) for its scratch database');
    const admin = options.sql.db;
    await sql`create database ${sql.id(name)}`.execute(admin);
    const target = withDatabase(options.server, name);
    let opened: SqlStore | null = null;
    try {
      await work({ kind: 'postgres', target }, async () => {
        const { openPostgres } = await import('../../stores/sql/postgres.ts');
        opened = await openPostgres({ connectionString: target.connectionString, ssl: target.ssl, poolMax: 2 });
        return opened.db;
      });
    } finally {
      await (opened as SqlStore | null)?.close().catch(() => undefined);
      await sql`drop database if exists ${sql.id(name)} with (force)`.execute(admin);
    }
    return;
  }
  const { mkdtempSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const dir = mkdtempSync(join(tmpdir(), 'databank-drill-'));
  try {
    await work({ kind: 'pglite', dataDir: join(dir, 'data') }, async () => {
      const { PGlite } = await import('@electric-sql/pglite');
      const { PGliteDialect } = await import('kysely-pglite-dialect');
      const { PARSERS } = await import('../../stores/sql/type-parsers.ts');
      const { PGLITE_EXTENSIONS } = await import('../../stores/sql/pglite.ts');
      const pg = await PGlite.create(join(dir, 'data', 'pglite'), { parsers: PARSERS, extensions: PGLITE_EXTENSIONS });
      return new Kysely<Database>({ dialect: new PGliteDialect(pg) });
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Row counts, checksums, invariants and the core answers of a restored copy, against the manifest. */
export async function verifyDatabase(db: Kysely<Database>, manifest: Manifest, add: (name: string, ok: boolean, detail: string) => void): Promise<void> {
  const { partitions, ...facts } = await db
    .transaction()
    .execute(async (trx): Promise<Omit<DatabaseFacts, 'schema_version' | 'server_version'> & { partitions: Set<string> }> => {
      await stableText(trx);
      return { tables: await tableStats(trx), invariants: await invariants(trx), answers: await coreAnswers(trx), partitions: await partitionNames(trx) };
    });
  const names = new Set([...Object.keys(manifest.tables), ...Object.keys(facts.tables)]);
  for (const name of [...names].sort()) {
    // An older manifest counted partitions besides their parent, whose count covers their rows.
    if (!(name in facts.tables) && partitions.has(name)) continue;
    const want = manifest.tables[name];
    const got = facts.tables[name];
    const ok = want !== undefined && got !== undefined && want.rows === got.rows && want.checksum === got.checksum;
    add(
      `table ${name}`,
      ok,
      !want ? 'not in the manifest' : !got ? 'missing from the restore' : ok ? `${got.rows} rows, checksum matches` : `rows ${got.rows} (manifest ${want.rows}), checksum ${got.checksum === want.checksum ? 'matches' : 'differs'}`,
    );
  }
  const problems = invariantProblems(facts.invariants);
  const same = canonicalJson(facts.invariants) === canonicalJson(manifest.invariants);
  add(
    'invariants',
    same && problems.length === 0,
    same && problems.length === 0
      ? `balances ${canonicalJson(facts.invariants.balances)}, every ledger sums to 0`
      : [...problems, ...(same ? [] : [`recorded ${canonicalJson(manifest.invariants)}, restored ${canonicalJson(facts.invariants)}`])].join('; '),
  );
  const answersSame = canonicalJson(facts.answers) === canonicalJson(manifest.answers);
  add(
    'queries',
    answersSame,
    answersSame
      ? `GET /customers (${facts.answers.customers.count}) and the born-after-1990 query give the recorded answers`
      : `recorded ${canonicalJson(manifest.answers)}, restored ${canonicalJson(facts.answers)}`,
  );
}
