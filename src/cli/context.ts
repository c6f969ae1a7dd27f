import { ConfigError, loadConfig, type Config } from '../config.ts';
import type { FileStore } from '../stores/files/index.ts';
import type { SqlStore } from '../stores/sql/index.ts';

/**
 * What the commands share: the config, and the stores opened for one command and closed after it.
 * The stores are imported only when a command runs, so that `databank --help` answers at once.
 */

/** Loads the config from the environment, or stops with exit code 2 and the list of bad variables. */
export function configOrExit(): Config {
  try {
    return loadConfig();
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`databank: ${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }
}

/**
 * Opens the SQL store, checks that it answers and that the data dir belongs to it, runs `work` and
 * closes the store however `work` ends.
 *
 * @example
 * await withStore(async (store) => migrationStatus(store.db));
 */
export async function withStore<T>(work: (store: SqlStore, config: Config) => Promise<T>): Promise<T> {
  const config = configOrExit();
  const { openSqlStore } = await import('../stores/sql/index.ts');
  const { claimDataDir } = await import('../data-dir.ts');
  const store = await openSqlStore(config.sql);
  try {
    await store.ping(10_000);
    // A command never keys, migrates or sweeps for a database the data dir does not belong to.
    await claimDataDir(config.dataDir, store);
    return await work(store, config);
  } finally {
    await store.close();
  }
}

/** Opens the file store, runs `work` and closes the store however `work` ends. */
export async function withFiles<T>(work: (files: FileStore, config: Config) => Promise<T>): Promise<T> {
  const config = configOrExit();
  const { openFileStore } = await import('../stores/files/index.ts');
  const files = await openFileStore(config.files.store);
  try {
    return await work(files, config);
  } finally {
    await files.close();
  }
}
