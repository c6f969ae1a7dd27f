import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Command } from 'commander';
import { configOrExit } from './context.ts';
import { stopOnSignals } from './shutdown.ts';

/**
 * `databank serve`: the HTTP API in the foreground until SIGTERM or SIGINT, then a drain and an
 * orderly close with a deadline (DATABANK_SHUTDOWN_TIMEOUT_MS).
 */

/** Registers `serve`. */
export function register(program: Command): void {
  program
    .command('serve')
    .description('serve the HTTP API (migrates, seeds demo data and makes an admin key on first start)')
    .option('--no-worker', 'do not run the scheduled background jobs in this process (run `databank worker` instead)')
    .action(serve);
}

async function serve(opts: { readonly worker: boolean }): Promise<void> {
  const config = configOrExit();
  if (config.sql.kind === 'pglite' && config.sql.dataDir && !existsSync(join(config.sql.dataDir, 'PG_VERSION'))) {
    // A first start: decompress the database template on another core while the app loads.
    void (await import('../stores/sql/pglite-template.ts')).loadTemplateTar('migrated').catch(() => undefined);
  }
  const { createLogger } = await import('../logger.ts');
  const logger = createLogger(config.logLevel);
  const app = await (await import('../app.ts')).createApp(config, { logger, worker: opts.worker });
  if (app.bootstrapped?.seeded) logger.info('loaded the demo customers 1-3');
  if (app.bootstrapped?.adminKey) {
    const file = saveAdminKey(config.dataDir, app.bootstrapped.adminKey);
    // Shown once, on the terminal only: never through the logger.
    process.stderr.write(
      `\nAn admin API key was created. It is shown only this once and saved to ${file} (mode 0600):\n\n` +
        `  ${app.bootstrapped.adminKey}\n\n`,
    );
  }
  await app.http.listen({ host: config.host, port: config.port });
  stopOnSignals((onStep) => app.close({ onStep }), {
    timeoutMs: config.shutdownTimeoutMs,
    log: logger,
    message: 'stopping: draining in-flight requests',
  });
}

/** Writes the admin key where only this user can read it. */
function saveAdminKey(dataDir: string, key: string): string {
  mkdirSync(dataDir, { recursive: true });
  const file = join(dataDir, 'admin-key');
  writeFileSync(file, `${key}\n`, { mode: 0o600 });
  return file;
}
