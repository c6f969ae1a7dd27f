import { mkdirSync } from 'node:fs';
import { PGlite } from '@electric-sql/pglite';
import { Kysely, sql } from 'kysely';
import { PGliteDialect } from 'kysely-pglite-dialect';
import type { Database } from './schema.ts';
import type { SqlStore } from './port.ts';
import { PARSERS } from './type-parsers.ts';
import { lockDataDir } from './data-dir-lock.ts';
import { withTimeout } from './timeout.ts';

/**
 * PostgreSQL in-process (PGlite). One connection, one process: the dialect queues callers, so a
 * transaction holds the engine until it ends.
 *
 * @param dataDir where to persist; null keeps everything in memory (tests).
 */
export async function openPglite(dataDir: string | null): Promise<SqlStore> {
  let unlock = () => {};
  if (dataDir) {
    mkdirSync(dataDir, { recursive: true });
    unlock = lockDataDir(dataDir);
  }
  let pg: PGlite;
  try {
    pg = await PGlite.create(dataDir ?? 'memory://', { parsers: PARSERS });
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
    async close() {
      try {
        await db.destroy();
      } finally {
        unlock();
      }
    },
  };
}
