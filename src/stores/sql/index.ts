import type { SqlConfig } from '../../config.ts';
import type { SqlStore } from './port.ts';

export type { SqlStore } from './port.ts';

/**
 * Opens the relational store the config names. Each engine is imported only when it is the one
 * used: a server deployment never loads PGlite's WebAssembly, and PGlite never loads `pg`.
 */
export async function openSqlStore(
  config: SqlConfig,
  onError?: (err: Error) => void,
  options: { readonly migratedTemplate?: boolean } = {},
): Promise<SqlStore> {
  switch (config.kind) {
    case 'pglite':
      return (await import('./pglite.ts')).openPglite(config.dataDir, { migratedTemplate: options.migratedTemplate });
    case 'postgres':
      return (await import('./postgres.ts')).openPostgres({ ...config, onError });
  }
}
