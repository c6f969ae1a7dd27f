import { InvalidArgumentError, type Command } from 'commander';
import { withFiles, withStore } from './context.ts';
import { printResult, type JsonOption } from './output.ts';

/** `databank files sweep`: customer files, reconciled between the file rows and the stored objects. */

interface SweepOptions extends JsonOption {
  readonly dryRun?: boolean;
  readonly graceSeconds: number;
}

/** Exit code of `files sweep` when rows point at objects that are gone: data was lost, say so to scripts. */
const MISSING_OBJECTS_EXIT = 3;

/** Registers `files` and its subcommands. */
export function register(program: Command): void {
  const files = program.command('files').description('customer files');
  files
    .command('sweep')
    .description('remove stored objects that no file row refers to; report rows whose object is missing')
    .option('--dry-run', 'report, remove nothing')
    .option('--grace-seconds <n>', 'leave objects younger than this (uploads in progress)', wholeNumber, 3600)
    .option('--json', 'print {"orphanObjects","missingObjects","objectsSeen","rowsSeen"}')
    .action(sweep);
}

async function sweep(opts: SweepOptions): Promise<void> {
  const report = await withStore((store, config) =>
    withFiles(async (files) => {
      const { FilesService } = await import('../services/files.ts');
      const { primaryOnly } = await import('../stores/sql/port.ts');
      const bar = (await import('./progress.ts')).progress(!opts.json, 'sweeping');
      return new FilesService(primaryOnly(store.db), files, config.files.maxUploadBytes)
        .sweep({
          graceMs: opts.graceSeconds * 1000,
          dryRun: !!opts.dryRun,
          onProgress: (seen) => bar.update(seen, null, 'objects'),
        })
        .finally(() => bar.stop());
    }),
  );
  printResult(opts, report, () =>
    [
      `${report.objectsSeen} objects, ${report.rowsSeen} rows: ` +
        `${opts.dryRun ? 'would remove' : 'removed'} ${report.orphanObjects.length} objects without a row, ` +
        `${report.missingObjects.length} rows without an object`,
      ...report.orphanObjects.map((k) => `  - ${k}`),
      ...report.missingObjects.map((m) => `  ! file ${m.file_id}: object ${m.object_key} is missing`),
    ].join('\n'),
  );
  // Set after the stores are closed: closing the embedded engine resets process.exitCode.
  if (report.missingObjects.length > 0) process.exitCode = MISSING_OBJECTS_EXIT;
}

function wholeNumber(value: string): number {
  if (!/^(0|[1-9][0-9]{0,14})$/.test(value)) throw new InvalidArgumentError('expected a whole number');
  return Number(value);
}
