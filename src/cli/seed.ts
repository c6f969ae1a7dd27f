import type { Command } from 'commander';
import { withStore } from './context.ts';
import { printResult, type JsonOption } from './output.ts';

/** `databank seed`: the chapter's demo customers, for a database that has none. */

/** Registers `seed`. */
export function register(program: Command): void {
  program
    .command('seed')
    .description("load the chapter's demo customers 1-3 when there are no customers yet")
    .option('--json', 'machine-readable output')
    .action((opts: JsonOption) =>
      withStore(async (store) => {
        const { seedIfEmpty } = await import('../services/bootstrap.ts');
        const { inTransaction } = await import('../services/transaction.ts');
        const seeded = await inTransaction(store.db, (trx) => seedIfEmpty(trx));
        printResult(opts, { seeded }, seeded ? 'loaded customers 1-3' : 'customers exist already; nothing loaded');
      }),
    );
}
