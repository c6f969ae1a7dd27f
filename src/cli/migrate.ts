import type { Command } from 'commander';
import { withStore } from './context.ts';
import { printResult, printText, type JsonOption } from './output.ts';

/** `databank migrate latest|rollback|status|make`: versioned schema migrations. */

/** Registers `migrate` and its subcommands. */
export function register(program: Command): void {
  const migrate = program.command('migrate').description('versioned schema migrations');
  migrate
    .command('latest')
    .description('apply every pending migration')
    .option('--json', 'machine-readable output')
    .action((opts: JsonOption) =>
      withStore(async (store) => {
        const { createMigrator, unwrap } = await import('../stores/sql/migrator.ts');
        const results = unwrap(await createMigrator(store.db).migrateToLatest()).results ?? [];
        const applied = results.map((r) => r.migrationName);
        printResult(opts, { applied }, () => (applied.length ? applied.map((n) => `applied ${n}`).join('\n') : 'up to date'));
      }),
    );
  migrate
    .command('rollback')
    .description('undo the newest applied migration')
    .option('--all', 'undo every migration')
    .option('--json', 'machine-readable output')
    .action((opts: JsonOption & { readonly all?: boolean }) =>
      withStore(async (store) => {
        const { createMigrator, unwrap } = await import('../stores/sql/migrator.ts');
        const { NO_MIGRATIONS } = await import('kysely');
        const migrator = createMigrator(store.db);
        const results = opts.all
          ? (unwrap(await migrator.migrateTo(NO_MIGRATIONS)).results ?? [])
          : (unwrap(await migrator.migrateDown()).results ?? []);
        const reverted = results.map((r) => r.migrationName);
        printResult(opts, { reverted }, () =>
          reverted.length ? reverted.map((n) => `reverted ${n}`).join('\n') : 'nothing to roll back',
        );
      }),
    );
  migrate
    .command('status')
    .description('list migrations and whether each is applied')
    .option('--json', 'machine-readable output')
    .action((opts: JsonOption) =>
      withStore(async (store) => {
        const status = await (await import('../stores/sql/migrator.ts')).migrationStatus(store.db);
        printResult(
          opts,
          status.map((m) => ({ name: m.name, applied_at: m.executedAt?.toISOString() ?? null })),
          () => status.map((m) => `${m.executedAt ? 'applied' : 'pending'}  ${m.name}`).join('\n'),
        );
      }),
    );
  migrate
    .command('make')
    .description('create a new, empty migration file')
    .argument('<name>', 'snake_case name, e.g. add_statements')
    .action(async (name: string) => {
      printText(`created ${await (await import('../stores/sql/migrator.ts')).makeMigration(name)}`);
    });
}
