// Regenerates the PGlite data directory template after an upgrade of @electric-sql/pglite:
//   node --import tsx src/stores/sql/pglite-template/regenerate.ts
// Commit the new pglite-<version>.tar.br; the old version's file is removed.
import { buildPgliteTemplate, installedPgliteVersion } from '../pglite-template.ts';

const started = Date.now();
const file = await buildPgliteTemplate();
process.stdout.write(`PGlite ${installedPgliteVersion()}: wrote ${file} in ${((Date.now() - started) / 1000).toFixed(1)} s\n`);
