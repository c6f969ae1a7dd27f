import type { Config } from '../config.ts';
import type { Background } from '../background.ts';
import type { SqlStore } from '../stores/sql/index.ts';
import { withStore } from './context.ts';

/** The operator of the CLI holds the database: an admin. */
export const OPERATOR = { role: 'admin', keyId: 0 } as const;

/**
 * Opens the queue and the stream on this process's own connections (no server runs to ask), runs
 * `work` and closes them. No worker starts: the command does its one thing.
 */
export async function withBackground<T>(work: (background: Background, store: SqlStore, config: Config) => Promise<T>): Promise<T> {
  return withStore(async (store, config) => {
    const { Closers } = await import('../closers.ts');
    const { openBackground } = await import('../background.ts');
    const { openFileStore } = await import('../stores/files/index.ts');
    const { primaryOnly } = await import('../stores/sql/port.ts');
    const { createLogger } = await import('../logger.ts');
    const { Registry } = await import('prom-client');
    const closers = new Closers();
    try {
      const files = await openFileStore(config.files.store);
      closers.add('file store', () => files.close());
      const background = await openBackground({
        config,
        sql: store,
        db: primaryOnly(store.db),
        files,
        logger: createLogger('warn'),
        closers,
        registry: new Registry(),
      });
      return await work(background, store, config);
    } finally {
      await closers.close();
    }
  });
}
