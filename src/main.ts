import { Command } from 'commander';
import * as analytics from './cli/analytics.ts';
import * as backup from './cli/backup.ts';
import * as cache from './cli/cache.ts';
import * as events from './cli/events.ts';
import * as files from './cli/files.ts';
import * as keys from './cli/keys.ts';
import * as migrate from './cli/migrate.ts';
import * as queue from './cli/queue.ts';
import * as replica from './cli/replica.ts';
import * as search from './cli/search.ts';
import * as seed from './cli/seed.ts';
import * as serve from './cli/serve.ts';
import * as site from './cli/site.ts';
import * as worker from './cli/worker.ts';
import { packageVersion } from './cli/version.ts';

/**
 * The `databank` command: an index of the command families in src/cli/. Each family is one file
 * that exports `register(program)` and imports its stores and services only when its command
 * runs, so that `databank --help` answers at once.
 */

/** A command family: one file in src/cli/. */
export interface CommandFamily {
  register(program: Command): void;
}

/**
 * Every command family, in the order `databank --help` lists them. A new family is a new file in
 * src/cli/ and one line here.
 */
export const COMMAND_FAMILIES: readonly CommandFamily[] = [serve, worker, migrate, seed, keys, site, files, cache, queue, events, backup, replica, analytics, search];

/** The whole command tree, unparsed; tests read its help without starting a process. */
export function buildCli(): Command {
  const program = new Command('databank')
    .description("A bank's data layer: every kind of data in the store made for it")
    .version(packageVersion())
    .showHelpAfterError();
  for (const family of COMMAND_FAMILIES) family.register(program);
  return program;
}

/**
 * Runs the command `argv` names. An error a command throws ends the process with exit code 1 and
 * one line on stderr; commander reports bad arguments itself.
 */
export async function main(argv: readonly string[]): Promise<void> {
  // Everything databank writes (the data dir, PGlite's files, the admin key, local files,
  // backups) is the deployment's alone: owner-only whatever the user's umask.
  process.umask(0o077);
  try {
    await buildCli().parseAsync(argv);
  } catch (err) {
    process.stderr.write(`databank: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  }
}
