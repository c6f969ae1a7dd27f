import type { SqlConfig } from '../../config.ts';
import type { SqlStore } from './port.ts';
import { openPglite } from './pglite.ts';
import { openPostgres } from './postgres.ts';

export type { SqlStore } from './port.ts';

/** Opens the relational store the config names. */
export async function openSqlStore(config: SqlConfig, onError?: (err: Error) => void): Promise<SqlStore> {
  switch (config.kind) {
    case 'pglite':
      return openPglite(config.dataDir);
    case 'postgres':
      return openPostgres({ ...config, onError });
  }
}
