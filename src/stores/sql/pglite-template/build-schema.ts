// Run by `npm run build` (and so by `npm install`): the PGlite template with every migration
// applied, in dist/, so that a first `databank serve` unpacks a ready schema instead of migrating
// (about 0.6 s). Keyed by the PGlite version and a hash of the migrations, so it is never used
// for other ones; without it a first start unpacks the bare template and migrates, as before.
import { mkdtempSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { createMigrator, unwrap } from '../migrator.ts';
import { openPglite } from '../pglite.ts';
import { migratedTemplateFile, packDataDir } from '../pglite-template.ts';

const work = mkdtempSync(join(tmpdir(), 'databank-pglite-migrated-'));
try {
  const dataDir = join(work, 'pgdata');
  const store = await openPglite(dataDir);
  try {
    unwrap(await createMigrator(store.db).migrateToLatest());
  } finally {
    await store.close();
  }
  const file = migratedTemplateFile();
  writeFileSync(`${file}.tmp`, packDataDir(dataDir));
  renameSync(`${file}.tmp`, file);
  for (const name of readdirSync(dirname(file))) {
    if (name.startsWith('pglite-migrated-') && name !== basename(file)) rmSync(join(dirname(file), name));
  }
  process.stdout.write(`databank build: ${basename(file)} (the PGlite template with every migration applied)\n`);
} finally {
  rmSync(work, { recursive: true, force: true });
}
