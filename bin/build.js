#!/usr/bin/env node
// `npm run build` (and `npm install`, through "prepare"): compiles src/ into dist/ for a faster
// start. Without TypeScript installed (a production install without dev dependencies) there is
// nothing to build with, and the command runs the sources through tsx instead: say so, succeed.
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { rmSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
let tsc;
try {
  tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
} catch {
  process.stderr.write('databank build: TypeScript is not installed; the command will run the sources through tsx\n');
  process.exit(0);
}
// A clean tree: no compiled file may outlive its source.
rmSync(`${root}dist`, { recursive: true, force: true });
const compiled = spawnSync(process.execPath, [tsc, '-p', `${root}tsconfig.build.json`], { stdio: 'inherit' });
if (compiled.status !== 0) process.exit(compiled.status ?? 1);
// The embedded database's template with the schema in place: a first start then skips migrating.
const template = spawnSync(process.execPath, [`${root}dist/stores/sql/pglite-template/build-schema.js`], { stdio: 'inherit' });
process.exit(template.status ?? 1);
