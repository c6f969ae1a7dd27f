import { createHmac } from 'node:crypto';
import { resolve } from 'node:path';
import { InvalidArgumentError, type Command } from 'commander';
import type { Config } from '../config.ts';
import type { BackupService, BackupSummary, DrillReport } from '../services/backup/index.ts';
import type { FileStore } from '../stores/files/port.ts';
import type { SqlStore } from '../stores/sql/port.ts';
import { configOrExit, withStore } from './context.ts';
import { printResult, table, type JsonOption } from './output.ts';
import { progress } from './progress.ts';
import { callServer, serverRuns, withServerOptions, type ServerOptions } from './server-client.ts';

/**
 * `databank backup keygen|create|list|prune|restore|drill|pitr`: encrypted logical backups in the
 * file store, restores, restore drills, and point-in-time recovery of a server with pgBackRest.
 * `create` and `list` ask the running server when there is one (on the embedded engine the
 * database is the server's); the others need only the file store and the key.
 */

interface RestoreOptions extends JsonOption {
  readonly to?: string;
  readonly dataDir?: string;
  readonly force?: boolean;
  readonly keyFile?: string;
}

/**
 * The file store and the backup service on it. The database is opened only when the work needs it:
 * a backup taken here, and anything on a server (a drill's scratch database is made there); the
 * embedded engine's data dir stays the running server's for restores, drills, lists and pruning.
 */
async function withBackups<T>(
  work: (service: BackupService, files: FileStore, config: Config) => Promise<T>,
  options: { keyFile?: string; database?: boolean } = {},
): Promise<T> {
  const config = configOrExit();
  const withKey: Config = options.keyFile ? { ...config, backup: { ...config.backup, keyFile: resolve(options.keyFile) } } : config;
  const run = async (store: SqlStore | null) => {
    const { openFileStore } = await import('../stores/files/index.ts');
    const { openBackups } = await import('../services/backup/index.ts');
    const files = await openFileStore(config.files.store);
    try {
      const backups = await openBackups(withKey, store, files);
      try {
        return await work(backups.service, files, withKey);
      } finally {
        await backups.close();
      }
    } finally {
      await files.close();
    }
  };
  return options.database || config.sql.kind === 'postgres' ? withStore(run) : run(null);
}

function summaryText(s: BackupSummary): string {
  return table({
    backup: s.backup_id,
    created: s.created_at,
    size: `${s.size} bytes`,
    sha256: s.sha256,
    tables: Object.keys(s.tables).length,
    objects: s.objects,
    balances: Object.entries(s.invariants.balances).map(([c, v]) => `${c} ${v}`).join(', ') || '-',
    copies: s.locations.join(', '),
  });
}

function drillText(r: DrillReport): string {
  const lines = r.checks.map((c) => `${c.ok ? 'ok  ' : 'FAIL'} ${c.name}: ${c.detail}`);
  return [
    ...lines,
    `${r.ok ? 'drill passed' : 'drill FAILED'}: backup ${r.backup_id ?? '-'}, RTO ${r.rto_ms} ms (restore time), RPO ${r.rpo_s ?? '-'} s (backup age)`,
  ].join('\n');
}

function bar(json: boolean | undefined, what: string) {
  const p = progress(!json, what);
  return { p, on: (done: number, total: number | null, label: string) => p.update(done, total, label.slice(0, 40)) };
}

/** Registers `backup` and its subcommands. */
export function register(program: Command): void {
  const backup = program.command('backup').description('encrypted backups in the file store, restores, drills, point-in-time recovery');

  backup
    .command('keygen')
    .description('write a new backup key (32 random bytes as base64, mode 0600) to FILE; never overwrites')
    .argument('<file>', 'where to write the key: keep it apart from the database credentials')
    .option('--json', 'machine-readable output')
    .action(async (file: string, opts: JsonOption) => {
      const { writeNewBackupKey } = await import('../services/backup/crypto.ts');
      const key = writeNewBackupKey(resolve(file));
      printResult(opts, { key_file: resolve(file), key_id: key.id }, `wrote backup key ${key.id} to ${resolve(file)}; set DATABANK_BACKUP_KEY_FILE=${resolve(file)}`);
    });

  withServerOptions(backup.command('create').description('take a backup now (through the running server when there is one)')).action(
    async (opts: ServerOptions) => {
      let summary: BackupSummary;
      if (await serverRuns(opts)) {
        summary = (await callServer(opts, 'POST', '/backups')) as BackupSummary;
      } else {
        summary = await withBackups(
          async (service) => {
            const { p, on } = bar(opts.json, 'backup');
            try {
              return await service.create(on);
            } finally {
              p.stop();
            }
          },
          { database: true },
        );
      }
      printResult(
        opts,
        { backup_id: summary.backup_id, size: summary.size, sha256: summary.sha256, tables: summary.tables, invariants: summary.invariants, objects: summary.objects, locations: summary.locations },
        () => summaryText(summary),
      );
    },
  );

  withServerOptions(backup.command('list').description('every backup, newest first, and where each copy lives')).action(async (opts: ServerOptions) => {
    const body = (await serverRuns(opts))
      ? ((await callServer(opts, 'GET', '/backups')) as { backups: Array<BackupSummary & { engine: string }>; last_drill: DrillReport | null })
      : await withBackups(async (service) => ({ backups: await service.list(), last_drill: await service.lastDrill() }));
    printResult(opts, body, () =>
      body.backups.length === 0
        ? 'no backups yet: databank backup create'
        : body.backups.map((b) => `${b.backup_id}  ${b.created_at}  ${b.engine}  ${b.size} bytes  in ${b.locations.join(', ')}`).join('\n'),
    );
  });

  backup
    .command('prune')
    .description('remove backups the retention policy does not keep (DATABANK_BACKUP_KEEP_DAILY|WEEKLY|MONTHLY)')
    .option('--dry-run', 'only show what would go')
    .option('--json', 'machine-readable output')
    .action(async (opts: JsonOption & { readonly dryRun?: boolean }) => {
      const result = await withBackups((service) => service.prune({ dryRun: Boolean(opts.dryRun) }));
      printResult(opts, { dry_run: Boolean(opts.dryRun), ...result }, () =>
        [
          ...result.keep.map((k) => `keep   ${k.backup_id} (${k.reasons.join(', ')})`),
          ...result.remove.map((id) => `${opts.dryRun ? 'would remove' : 'removed'} ${id}`),
        ].join('\n') || 'no backups',
      );
    });

  backup
    .command('restore')
    .description('restore a backup into a PostgreSQL database (--to) or a new data dir for the embedded engine (--data-dir)')
    .argument('[id]', 'the backup (default the newest)')
    .option('--to <database-url>', 'a PostgreSQL database (postgres://…); its file objects go to the configured file store')
    .option('--data-dir <dir>', 'a new databank data dir; its files go to <dir>/files')
    .option('--force', 'replace what the target holds')
    .option('--key-file <file>', 'the key the backup was made with (default DATABANK_BACKUP_KEY_FILE)')
    .option('--json', 'machine-readable output')
    .action(async (id: string | undefined, opts: RestoreOptions) => {
      if (Boolean(opts.to) === Boolean(opts.dataDir)) throw new Error('give exactly one of --to DATABASE_URL and --data-dir DIR');
      const result = await withBackups(
        async (service, files) => {
          const { openFileStore } = await import('../stores/files/index.ts');
          const { p, on } = bar(opts.json, 'restore');
          try {
            if (opts.to) {
              const { sqlConfigFor } = await import('../config.ts');
              const target = sqlConfigFor(opts.to);
              if (target.kind !== 'postgres') throw new Error('--to must be a postgres:// URL');
              return await service.restore(id, { kind: 'postgres', target }, { force: Boolean(opts.force), files, onProgress: on });
            }
            const dir = resolve(opts.dataDir as string);
            let local: FileStore | null = null;
            try {
              const openLocal = async () => (local = await openFileStore({ kind: 'local', dir: resolve(dir, 'files') }));
              return await service.restore(id, { kind: 'pglite', dataDir: dir }, { force: Boolean(opts.force), files: openLocal, onProgress: on });
            } finally {
              await (local as FileStore | null)?.close();
            }
          } finally {
            p.stop();
          }
        },
        { keyFile: opts.keyFile },
      );
      printResult(opts, result, `restored backup ${result.backup_id} (from ${result.from}) in ${result.restore_ms} ms: ${result.tables} tables, ${result.objects} objects`);
    });

  backup
    .command('drill')
    .description('restore a backup (default the newest) into a scratch database and check it against its manifest; exit 1 on any mismatch')
    .argument('[id]', 'the backup')
    .option('--key-file <file>', 'the key the backup was made with (default DATABANK_BACKUP_KEY_FILE)')
    .option('--json', 'machine-readable output')
    .action(async (id: string | undefined, opts: JsonOption & { readonly keyFile?: string }) => {
      const report = await withBackups(
        async (service) => {
          const { p, on } = bar(opts.json, 'drill');
          try {
            return await service.drill(id, on);
          } finally {
            p.stop();
          }
        },
        { keyFile: opts.keyFile },
      );
      printResult(opts, { ok: report.ok, backup_id: report.backup_id, rto_ms: report.rto_ms, rpo_s: report.rpo_s, checks: report.checks }, () => drillText(report));
      if (!report.ok) process.exitCode = 1;
    });

  registerPitr(backup);
}

interface PitrOptions extends JsonOption {
  readonly stanza: string;
  readonly config: string;
  readonly asUser?: string;
}

function port(value: string): number {
  if (!/^[0-9]{1,5}$/.test(value) || Number(value) < 1 || Number(value) > 65535) throw new InvalidArgumentError('expected a TCP port');
  return Number(value);
}

/** pgBackRest's repository pass, derived from the backup key: one secret protects every backup. */
async function cipherPass(): Promise<string> {
  const config = configOrExit();
  const { readBackupKey } = await import('../services/backup/crypto.ts');
  const { KEY_MISSING } = await import('../services/backup/index.ts');
  if (!config.backup.keyFile) throw new Error(KEY_MISSING);
  const key = await readBackupKey(config.backup.keyFile);
  return createHmac('sha256', key.bytes).update('databank pgbackrest repository').digest('base64url');
}

function registerPitr(backup: Command): void {
  const pitr = backup.command('pitr').description('continuous WAL archiving and point-in-time recovery of a PostgreSQL server (pgBackRest)');
  const common = (c: Command) =>
    c
      .option('--stanza <name>', 'the pgBackRest stanza', 'databank')
      .option('--config <file>', 'the pgbackrest.conf to write or read', '/etc/pgbackrest/databank.conf')
      .option('--as-user <user>', 'run the tools as the OS user that owns the cluster (e.g. postgres)')
      .option('--json', 'machine-readable output');

  common(pitr.command('setup').description("write pgBackRest's configuration and the cluster's archive_command; with --init, create the stanza and take a full backup"))
    .requiredOption('--pg-data <dir>', "the cluster's data directory")
    .option('--pg-port <port>', "the cluster's port", port, 5432)
    .option('--pg-socket <dir>', "the cluster's socket directory", '/var/run/postgresql')
    .option('--repo-path <dir>', 'a repository in a directory')
    .option('--repo-s3 <bucket>', 'a repository in a bucket of the S3 store (S3_ENDPOINT, S3_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)')
    .option('--init', 'after a restart of the cluster: create the stanza, check archiving and take the first full backup')
    .action(async (opts: PitrOptions & { pgData: string; pgPort: number; pgSocket: string; repoPath?: string; repoS3?: string; init?: boolean }) => {
      if (Boolean(opts.repoPath) === Boolean(opts.repoS3)) throw new Error('give exactly one of --repo-path DIR and --repo-s3 BUCKET');
      const { pitrInit, pitrSetup } = await import('../services/backup/pitr.ts');
      const s3 = opts.repoS3
        ? { bucket: opts.repoS3, ...(await import('../config.ts')).s3FromEnv(), verifyTls: true, pathStyle: true }
        : undefined;
      const options = {
        stanza: opts.stanza,
        configPath: resolve(opts.config),
        asUser: opts.asUser,
        pgDataDir: resolve(opts.pgData),
        pgPort: opts.pgPort,
        pgSocketDir: opts.pgSocket,
        ...(opts.repoPath ? { repoPath: resolve(opts.repoPath) } : {}),
        ...(s3 ? { s3 } : {}),
        cipherPass: await cipherPass(),
      };
      const setup = await pitrSetup(options);
      const first = opts.init ? await pitrInit(options) : null;
      printResult(opts, { config: setup.configPath, restart_needed: setup.restartNeeded, first_backup: first }, () =>
        [
          `wrote ${setup.configPath}`,
          setup.restartNeeded ? 'restart the cluster for archive_mode, then run this again with --init' : 'archiving is configured',
          ...(first ? [`first full backup ${first.label}`] : []),
        ].join('\n'),
      );
    });

  common(pitr.command('backup').description('take a full, differential or incremental base backup'))
    .option('--type <type>', 'full, diff or incr', 'incr')
    .action(async (opts: PitrOptions & { type: string }) => {
      if (!['full', 'diff', 'incr'].includes(opts.type)) throw new Error('--type must be full, diff or incr');
      const { pitrBackup } = await import('../services/backup/pitr.ts');
      const result = await pitrBackup({ stanza: opts.stanza, configPath: resolve(opts.config), asUser: opts.asUser }, opts.type as 'full' | 'diff' | 'incr');
      printResult(opts, result, `backup ${result.label}`);
    });

  common(pitr.command('restore').description('restore the cluster as it was at --time into a new data directory'))
    .requiredOption('--time <time>', 'the moment, with its zone: 2026-12-01T14:03:00Z or "2026-12-01 14:03:00+00"')
    .requiredOption('--to <dir>', 'a new (empty) data directory')
    .option('--force', 'replace what the directory holds')
    .action(async (opts: PitrOptions & { time: string; to: string; force?: boolean }) => {
      const { pitrRestore } = await import('../services/backup/pitr.ts');
      const result = await pitrRestore({
        stanza: opts.stanza,
        configPath: resolve(opts.config),
        asUser: opts.asUser,
        time: opts.time,
        toDir: resolve(opts.to),
        force: Boolean(opts.force),
        onProgress: opts.json ? undefined : (line) => process.stderr.write(`${line}\n`),
      });
      printResult(opts, result, `restored to ${result.target} into ${result.toDir}: start it on a free port (postgres -D ${result.toDir} -p PORT)`);
    });
}
