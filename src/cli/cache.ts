import type { Command } from 'commander';
import { printResult, table } from './output.ts';
import { callServer, withServerOptions, type ServerOptions } from './server-client.ts';

/**
 * `databank cache stats|flush`: the running server's key-value cache. These ask the server
 * rather than open the cache store, so they work for the in-process cache too.
 */

/** Registers `cache` and its subcommands. */
export function register(program: Command): void {
  const cache = program
    .command('cache')
    .description("the running server's key-value cache (asks the server, so it works for the in-process cache too)");
  withServerOptions(cache.command('stats').description("this deployment's entries and their bytes, and evictions (on Redis, the whole server's)")).action(
    async (opts: ServerOptions) => {
      const body = (await callServer(opts, 'GET', '/cache/stats')) as { cache: Record<string, unknown> | null };
      printResult(opts, body, () => (body.cache ? table(body.cache) : 'the cache is off (DATABANK_CACHE=off)'));
    },
  );
  withServerOptions(cache.command('flush').description("delete this deployment's cached entries"))
    .option('--prefix <family>', 'only keys of one family, e.g. account: or customer:42')
    .action(async (opts: ServerOptions & { readonly prefix?: string }) => {
      const body = (await callServer(opts, 'POST', '/cache/flush', { prefix: opts.prefix ?? '' })) as { deleted: number };
      printResult(opts, body, `deleted ${body.deleted} entries`);
    });
}
