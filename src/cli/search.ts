import { InvalidArgumentError, type Command } from 'commander';
import { printResult } from './output.ts';
import { progress } from './progress.ts';
import { callServer, serverRuns, withServerOptions, type ServerOptions } from './server-client.ts';
import { withStore } from './context.ts';

interface ReindexOptions extends ServerOptions {
  readonly batch: number;
}

interface Reindexed {
  readonly customers: number;
  readonly documents: number;
  readonly removed: number;
}

function batchSize(value: string): number {
  const n = Number(value);
  if (!/^[0-9]{1,6}$/.test(value) || n < 1 || n > 100_000) throw new InvalidArgumentError('expected 1 to 100000');
  return n;
}

/** `databank search reindex`: the search index rebuilt from the tables. */
export function register(program: Command): void {
  const search = program.command('search').description('search over customers and documents');
  withServerOptions(search.command('reindex').description('rebuild the search index from the customers and documents tables (through the running server when there is one)'))
    .option('--batch <n>', 'ids per statement (1 to 100000)', batchSize, 1_000)
    .action(reindex);
}

async function reindex(opts: ReindexOptions): Promise<void> {
  const started = Date.now();
  let done: Reindexed;
  if (await serverRuns(opts)) {
    done = (await callServer(opts, 'POST', '/search/reindex', { batch_size: opts.batch })) as Reindexed;
  } else {
    const bar = progress(!opts.json, 'reindexing');
    try {
      done = await withStore(async (store) => {
        const { SearchService } = await import('../services/search.ts');
        const service = new SearchService({ reader: store.db, writer: store.db });
        return service.reindex({ batchSize: opts.batch, onProgress: (n, total) => bar.update(n, total, 'rows') });
      });
    } finally {
      bar.stop();
    }
  }
  const result = { ...done, duration_ms: Date.now() - started };
  printResult(opts, result, `reindexed ${done.customers} customer(s) and ${done.documents} document(s); removed ${done.removed} stale row(s) in ${result.duration_ms} ms`);
}
