import { InvalidArgumentError, type Command } from 'commander';
import { withFiles } from './context.ts';
import { printResult, type JsonOption } from './output.ts';

/** `databank site deploy`: the public website, published into the file store. */

interface DeployOptions extends JsonOption {
  readonly dryRun?: boolean;
}

/** Registers `site` and its subcommands. */
export function register(program: Command): void {
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
    .action((dir: string | undefined, opts: DeployOptions) =>
      withFiles(async (files, config) => {
        const source = dir ?? config.files.siteDir;
        if (!source) throw new InvalidArgumentError('no folder given and DATABANK_SITE_DIR=none');
        const bar = (await import('./progress.ts')).progress(!opts.json, 'deploying');
        const report = await (await import('../services/site.ts'))
          .deploySite(files, source, { dryRun: !!opts.dryRun, onProgress: (done, total, path) => bar.update(done, total, path) })
          .finally(() => bar.stop());
        const verb = opts.dryRun ? 'would upload' : 'uploaded';
        printResult(opts, report, () =>
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
}
