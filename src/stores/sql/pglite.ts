import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { PGlite } from '@electric-sql/pglite';
import { pg_trgm } from '@electric-sql/pglite/contrib/pg_trgm';
import { Kysely, sql } from 'kysely';
import { PGliteDialect } from 'kysely-pglite-dialect';
import type { Database } from './schema.ts';
import type { SqlStore } from './port.ts';
import { PARSERS } from './type-parsers.ts';
import { lockDataDir } from './data-dir-lock.ts';
import { ownerOnlyDir, restrictToOwner } from './owner-only.ts';
import { loadTemplateTar, unpackPgliteTemplate } from './pglite-template.ts';
import { withTimeout } from './timeout.ts';

/**
 * PostgreSQL's default of 128 MB of shared buffers is touched while the engine starts and stays
 * resident: about 130 MB of RSS for a database that is a few MB on a laptop. Pages not in the
 * pool come from the OS page cache through the WASM file system, so a smaller pool costs little.
 */
const SHARED_BUFFERS = '16MB';

const START_PARAMS: readonly string[] = [...PGlite.defaultStartParams, '-c', `shared_buffers=${SHARED_BUFFERS}`];

/**
 * The contrib extensions a databank database uses (migration 0012: trigram search). PGlite loads
 * an extension's code only when it is listed here, so every `PGlite.create` of a databank data
 * directory passes these.
 */
export const PGLITE_EXTENSIONS = { pg_trgm } as const;

export interface PgliteOptions {
  /** Told when a new data directory falls back to initdb (no template for this PGlite version). */
  readonly onNotice?: (message: string) => void;
  /**
   * A new data directory starts with every migration applied when `npm run build` made that
   * template (`serve` and `worker` ask for it, so a first start skips migrating); otherwise, and
   * for the migration commands, it starts empty as initdb leaves it.
   */
  readonly migratedTemplate?: boolean;
}

/**
 * PostgreSQL in-process (PGlite). One connection, one process: the dialect queues callers, so a
 * transaction holds the engine until it ends. A new data directory is unpacked from the shipped
 * template instead of running initdb; everything in it is owner-only.
 *
 * @param dataDir where to persist; null keeps everything in memory (tests).
 */
export async function openPglite(dataDir: string | null, options: PgliteOptions = {}): Promise<SqlStore> {
  let unlock = () => {};
  let pg: PGlite;
  try {
    if (dataDir) {
      ownerOnlyDir(dataDir);
      unlock = lockDataDir(dataDir);
      const initdb = !existsSync(join(dataDir, 'PG_VERSION')) && !(await unpackPgliteTemplate(dataDir, options.migratedTemplate ? 'migrated' : 'bare'));
      if (initdb) options.onNotice?.('no PGlite data directory template for this PGlite version: running initdb (slow)');
      pg = await PGlite.create(dataDir, { parsers: PARSERS, startParams: [...START_PARAMS], extensions: PGLITE_EXTENSIONS });
      // initdb's files reach the disk through PGlite's tar loader with the process umask (0644);
      // the template's and PostgreSQL's own files are created 0600.
      if (initdb) restrictToOwner(dataDir);
    } else {
      const tar = await loadTemplateTar();
      pg = await PGlite.create('memory://', {
        parsers: PARSERS,
        startParams: [...START_PARAMS],
        extensions: PGLITE_EXTENSIONS,
        ...(tar ? { loadDataDir: new Blob([tar]) } : {}),
      });
    }
  } catch (err) {
    unlock();
    throw err;
  }
  const db = new Kysely<Database>({ dialect: new PGliteDialect(pg) });
  return {
    kind: 'pglite',
    db,
    capabilities: { multipleConnections: false, listen: false },
    async ping(timeoutMs) {
      await withTimeout(sql`select 1`.execute(db), timeoutMs);
    },
    poolStats: () => ({ total: 1, idle: 1, waiting: 0 }),
    async copyDataDir() {
      return new Uint8Array(await (await pg.dumpDataDir('none')).arrayBuffer());
    },
    async close() {
      try {
        await db.destroy();
      } finally {
        unlock();
      }
    },
  };
}
