import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Command, InvalidArgumentError, Option } from 'commander';
import { ConfigError, loadConfig, type Config } from './config.ts';
import type { FileStore } from './stores/files/index.ts';
import type { SqlStore } from './stores/sql/index.ts';

// Commands load the stores and the server only when they run, so that `--help` answers at once.
const lazy = {
  app: () => import('./app.ts'),
  logger: () => import('./logger.ts'),
  apiKeys: () => import('./services/api-keys.ts'),
  bootstrap: () => import('./services/bootstrap.ts'),
  transaction: () => import('./services/transaction.ts'),
  sql: () => import('./stores/sql/index.ts'),
  migrator: () => import('./stores/sql/migrator.ts'),
  kysely: () => import('kysely'),
  files: () => import('./stores/files/index.ts'),
  filesService: () => import('./services/files.ts'),
  site: () => import('./services/site.ts'),
  progress: () => import('./progress.ts'),
};

/** Loads the config or stops with the list of bad variables. */
function configOrExit(): Config {
  try {
    return loadConfig(process.env);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`databank: ${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }
}

async function withStore<T>(work: (store: SqlStore, config: Config) => Promise<T>): Promise<T> {
  const config = configOrExit();
  const store = await (await lazy.sql()).openSqlStore(config.sql);
  try {
    await store.ping(10_000);
    return await work(store, config);
  } finally {
    await store.close();
  }
}

async function withFiles<T>(work: (files: FileStore, config: Config) => Promise<T>): Promise<T> {
  const config = configOrExit();
  const files = await (await lazy.files()).openFileStore(config.files.store);
  try {
    return await work(files, config);
  } finally {
    await files.close();
  }
}

function print(json: boolean, value: unknown, text: string): void {
  process.stdout.write(json ? `${JSON.stringify(value)}\n` : `${text}\n`);
}

/** Writes the admin key where only this user can read it. */
function saveAdminKey(dataDir: string, key: string): string {
  mkdirSync(dataDir, { recursive: true });
  const file = join(dataDir, 'admin-key');
  writeFileSync(file, `${key}\n`, { mode: 0o600 });
  return file;
}

async function serve(): Promise<void> {
  const config = configOrExit();
  const logger = (await lazy.logger()).createLogger(config.logLevel);
  const app = await (await lazy.app()).createApp(config, { logger });
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
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, 'stopping: draining in-flight requests');
    app.close().then(
      () => {
        logger.info('stopped');
        process.exit(0);
      },
      (err: unknown) => {
        logger.error({ err }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

function wholeNumber(value: string): number {
  if (!/^(0|[1-9][0-9]{0,14})$/.test(value)) throw new InvalidArgumentError('expected a whole number');
  return Number(value);
}

function positiveInt(value: string): number {
  if (!/^[1-9][0-9]{0,14}$/.test(value)) throw new InvalidArgumentError('expected a positive integer');
  return Number(value);
}

export function buildCli(): Command {
  const program = new Command('databank')
    .description("A bank's data layer: every kind of data in the store made for it")
    .showHelpAfterError();

  program
    .command('serve')
    .description('serve the HTTP API (migrates, seeds demo data and makes an admin key on first start)')
    .action(serve);

  const migrate = program.command('migrate').description('versioned schema migrations');
  migrate
    .command('latest')
    .description('apply every pending migration')
    .option('--json', 'machine-readable output')
    .action((opts: { json?: boolean }) =>
      withStore(async (store) => {
        const { createMigrator, unwrap } = await lazy.migrator();
        const results = unwrap(await createMigrator(store.db).migrateToLatest()).results ?? [];
        const applied = results.map((r) => r.migrationName);
        print(!!opts.json, { applied }, applied.length ? applied.map((n) => `applied ${n}`).join('\n') : 'up to date');
      }),
    );
  migrate
    .command('rollback')
    .description('undo the newest applied migration')
    .option('--all', 'undo every migration')
    .option('--json', 'machine-readable output')
    .action((opts: { json?: boolean; all?: boolean }) =>
      withStore(async (store) => {
        const { createMigrator, unwrap } = await lazy.migrator();
        const { NO_MIGRATIONS } = await lazy.kysely();
        const migrator = createMigrator(store.db);
        const results = opts.all
          ? (unwrap(await migrator.migrateTo(NO_MIGRATIONS)).results ?? [])
          : (unwrap(await migrator.migrateDown()).results ?? []);
        const reverted = results.map((r) => r.migrationName);
        print(!!opts.json, { reverted }, reverted.length ? reverted.map((n) => `reverted ${n}`).join('\n') : 'nothing to roll back');
      }),
    );
  migrate
    .command('status')
    .description('list migrations and whether each is applied')
    .option('--json', 'machine-readable output')
    .action((opts: { json?: boolean }) =>
      withStore(async (store) => {
        const status = await (await lazy.migrator()).migrationStatus(store.db);
        print(
          !!opts.json,
          status.map((m) => ({ name: m.name, applied_at: m.executedAt?.toISOString() ?? null })),
          status.map((m) => `${m.executedAt ? 'applied' : 'pending'}  ${m.name}`).join('\n'),
        );
      }),
    );
  migrate
    .command('make')
    .description('create a new, empty migration file')
    .argument('<name>', 'snake_case name, e.g. add_statements')
    .action(async (name: string) => {
      print(false, null, `created ${await (await lazy.migrator()).makeMigration(name)}`);
    });

  program
    .command('seed')
    .description("load the chapter's demo customers 1-3 when there are no customers yet")
    .option('--json', 'machine-readable output')
    .action((opts: { json?: boolean }) =>
      withStore(async (store) => {
        const { seedIfEmpty } = await lazy.bootstrap();
        const seeded = await (await lazy.transaction()).inTransaction(store.db, (trx) => seedIfEmpty(trx));
        print(!!opts.json, { seeded }, seeded ? 'loaded customers 1-3' : 'customers exist already; nothing loaded');
      }),
    );

  const keys = program.command('keys').description('API keys');
  keys
    .command('create')
    .description('create an API key; it is printed once and stored only as a hash')
    .addOption(new Option('--role <role>', 'what the key may do').choices(['admin', 'customer']).makeOptionMandatory())
    .option('--customer <id>', 'the customer a customer key is bound to', positiveInt)
    .option('--json', 'print {"key","role","customer_id","id"}')
    .action((opts: { role: 'admin' | 'customer'; customer?: number; json?: boolean }) =>
      withStore(async (store) => {
        if ((opts.role === 'customer') !== (opts.customer !== undefined)) {
          throw new InvalidArgumentError('--customer is required with --role customer and not allowed with --role admin');
        }
        const { ApiKeysService } = await lazy.apiKeys();
        const created = await new ApiKeysService(store.db).create(opts.role, opts.customer ?? null);
        print(!!opts.json, created, created.key);
      }),
    );

  const site = program.command('site').description('the public website in the file store');
  site
    .command('deploy')
    .description(
      'upload a folder as the site: Content-Type by extension, ETag = MD5, only changed files, ' +
        'gzip and brotli copies of text files; files no longer in the folder are removed',
    )
    .argument('[dir]', 'the folder to publish (default: the site/ folder shipped with databank)')
    .option('--dry-run', 'say what would change, change nothing')
    .option('--json', 'print {"files","uploaded","unchanged","deleted","objectsRemoved","bytesUploaded"}')
    .action((dir: string | undefined, opts: { dryRun?: boolean; json?: boolean }) =>
      withFiles(async (files, config) => {
        const source = dir ?? config.files.siteDir;
        if (!source) throw new InvalidArgumentError('no folder given and DATABANK_SITE_DIR=none');
        const bar = (await lazy.progress()).progress(!opts.json, 'deploying');
        const report = await (await lazy.site())
          .deploySite(files, source, { dryRun: !!opts.dryRun, onProgress: (done, total, path) => bar.update(done, total, path) })
          .finally(() => bar.stop());
        const verb = opts.dryRun ? 'would upload' : 'uploaded';
        print(
          !!opts.json,
          report,
          [
            `${report.files} files: ${verb} ${report.uploaded.length} (${report.bytesUploaded} bytes), ` +
              `${report.unchanged} unchanged, ${report.deleted.length} gone from the site, ` +
              `${report.objectsRemoved} unused objects ${opts.dryRun ? 'to remove' : 'removed'}`,
            ...report.uploaded.map((k) => `  + ${k}`),
            ...report.deleted.map((k) => `  - ${k}`),
          ].join('\n'),
        );
      }),
    );

  const filesCommand = program.command('files').description('customer files');
  filesCommand
    .command('sweep')
    .description('remove stored objects that no file row refers to; report rows whose object is missing')
    .option('--dry-run', 'report, remove nothing')
    .option('--grace-seconds <n>', 'leave objects younger than this (uploads in progress)', wholeNumber, 3600)
    .option('--json', 'print {"orphanObjects","missingObjects","objectsSeen","rowsSeen"}')
    .action(async (opts: { dryRun?: boolean; graceSeconds: number; json?: boolean }) => {
      const report = await withStore((store, config) =>
        withFiles(async (files) => {
          const { FilesService } = await lazy.filesService();
          const bar = (await lazy.progress()).progress(!opts.json, 'sweeping');
          return new FilesService(store.db, files, config.files.maxUploadBytes)
            .sweep({
              graceMs: opts.graceSeconds * 1000,
              dryRun: !!opts.dryRun,
              onProgress: (seen) => bar.update(seen, null, 'objects'),
            })
            .finally(() => bar.stop());
        }),
      );
      print(
        !!opts.json,
        report,
        [
          `${report.objectsSeen} objects, ${report.rowsSeen} rows: ` +
            `${opts.dryRun ? 'would remove' : 'removed'} ${report.orphanObjects.length} objects without a row, ` +
            `${report.missingObjects.length} rows without an object`,
          ...report.orphanObjects.map((k) => `  - ${k}`),
          ...report.missingObjects.map((m) => `  ! file ${m.file_id}: object ${m.object_key} is missing`),
        ].join('\n'),
      );
      // Set after the stores are closed: closing the embedded engine resets process.exitCode.
      if (report.missingObjects.length > 0) process.exitCode = 3;
    });

  const cache = program
    .command('cache')
    .description("the running server's key-value cache (asks the server, so it works for the in-process cache too)");
  const serverOptions = (cmd: Command) =>
    cmd
      .option('--url <url>', 'the databank server (default http://HOST:PORT from the environment)')
      .option('--key-file <file>', 'file holding an admin API key (default $DATABANK_DATA_DIR/admin-key)')
      .option('--json', 'machine-readable output');
  serverOptions(cache.command('stats').description('entries, bytes and evictions of this deployment')).action(
    async (opts: ServerOpts) => {
      const body = (await callServer(opts, 'GET', '/cache/stats')) as { cache: Record<string, unknown> | null };
      print(
        !!opts.json,
        body,
        body.cache
          ? Object.entries(body.cache).map(([k, v]) => `${k.padEnd(10)} ${v ?? '-'}`).join('\n')
          : 'the cache is off (DATABANK_CACHE=off)',
      );
    },
  );
  serverOptions(cache.command('flush').description("delete this deployment's cached entries"))
    .option('--prefix <family>', 'only keys of one family, e.g. account: or customer:42')
    .action(async (opts: ServerOpts & { prefix?: string }) => {
      const body = (await callServer(opts, 'POST', '/cache/flush', { prefix: opts.prefix ?? '' })) as { deleted: number };
      print(!!opts.json, body, `deleted ${body.deleted} entries`);
    });

  return program;
}

interface ServerOpts {
  readonly url?: string;
  readonly keyFile?: string;
  readonly json?: boolean;
}

/** Calls the running server's admin API with the admin key. */
async function callServer(opts: ServerOpts, method: 'GET' | 'POST', path: string, body?: unknown): Promise<unknown> {
  const config = configOrExit();
  const base = opts.url ?? `http://${config.host.includes(':') ? `[${config.host}]` : config.host}:${config.port}`;
  const key = readFileSync(opts.keyFile ?? join(config.dataDir, 'admin-key'), 'utf8').trim();
  let res: Response;
  try {
    res = await fetch(new URL(path, base), {
      method,
      headers: { authorization: `Bearer ${key}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    throw new Error(`no databank server answers at ${base} (${(err as Error).cause ?? (err as Error).message})`);
  }
  const json = (await res.json()) as { code?: string; message?: string };
  if (!res.ok) throw new Error(`${res.status} ${json.code ?? ''}: ${json.message ?? ''}`);
  return json;
}

try {
  await buildCli().parseAsync(process.argv);
} catch (err) {
  process.stderr.write(`databank: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
}
