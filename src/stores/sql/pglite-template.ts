import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { brotliCompressSync, brotliDecompressSync, constants } from 'node:zlib';
import { PGlite } from '@electric-sql/pglite';
import { packTar, unpackTar, type TarEntry } from './tar.ts';

/**
 * A new embedded database starts from a data directory that PGlite's initdb made once and that
 * ships with the code: running initdb costs seconds and a second WASM instance (hundreds of MB),
 * unpacking the template costs a fraction of a second. The file name carries the PGlite version
 * that made it; for any other version there is no template and PGlite runs initdb as before.
 */
export const TEMPLATE_DIR = fileURLToPath(new URL('./pglite-template', import.meta.url));

/** The version of the installed @electric-sql/pglite package (its package.json is not exported). */
export function installedPgliteVersion(): string {
  const entry = createRequire(import.meta.url).resolve('@electric-sql/pglite');
  let dir = dirname(entry);
  while (!existsSync(join(dir, 'package.json'))) {
    const parent = dirname(dir);
    if (parent === dir) throw new Error('cannot find the package.json of @electric-sql/pglite');
    dir = parent;
  }
  return (JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as { version: string }).version;
}

/** Where the template for a PGlite version is (or would be) kept. */
export function templateFile(version: string = installedPgliteVersion()): string {
  return join(TEMPLATE_DIR, `pglite-${version}.tar.br`);
}

/** The template of the installed PGlite as an uncompressed tar archive, or null when none ships. */
export function readTemplateTar(): Buffer | null {
  const file = templateFile();
  return existsSync(file) ? brotliDecompressSync(readFileSync(file)) : null;
}

/**
 * Fills an empty or half-filled data directory from the template, owner-only (0700/0600).
 * `PG_VERSION` is written last: PGlite takes a directory with that file for a finished database,
 * so an unpack cut short is simply done again on the next start.
 *
 * @returns false when no template matches the installed PGlite (the caller lets initdb run).
 */
export function unpackPgliteTemplate(dataDir: string): boolean {
  const tar = readTemplateTar();
  if (!tar) return false;
  const entries = unpackTar(tar);
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  let last: TarEntry | undefined;
  for (const entry of entries) {
    const target = join(dataDir, entry.path);
    if (entry.type === 'dir') mkdirSync(target, { recursive: true, mode: 0o700 });
    else if (entry.path === 'PG_VERSION') last = entry;
    else writeFileSync(target, entry.data, { mode: 0o600 });
  }
  if (!last) throw new Error(`${templateFile()} holds no PG_VERSION: regenerate it`);
  writeFileSync(join(dataDir, 'PG_VERSION'), last.data, { mode: 0o600, flush: true });
  return true;
}

function collect(root: string, relative: string, out: TarEntry[]): void {
  for (const name of readdirSync(join(root, relative)).sort()) {
    const path = relative ? `${relative}/${name}` : name;
    const stat = statSync(join(root, path));
    if (stat.isDirectory()) {
      out.push({ path, type: 'dir', data: new Uint8Array(0) });
      collect(root, path, out);
    } else if (stat.isFile()) {
      out.push({ path, type: 'file', data: readFileSync(join(root, path)) });
    }
  }
}

/**
 * Makes the template for the installed PGlite: initdb into a temporary directory, a clean
 * shutdown (so that a start from the template needs no recovery), then a tar compressed with
 * brotli, whose 16 MiB window sees that the three initial databases are near copies of each other
 * (gzip's 32 KiB window does not: 4 MB instead of about 1 MB). Templates of other versions are
 * removed.
 *
 * @returns the file written.
 */
export async function buildPgliteTemplate(): Promise<string> {
  const work = mkdtempSync(join(tmpdir(), 'databank-pglite-template-'));
  try {
    const dataDir = join(work, 'pgdata');
    const pg = await PGlite.create(dataDir);
    await pg.close();
    const entries: TarEntry[] = [];
    collect(dataDir, '', entries);
    const tar = packTar(entries);
    const compressed = brotliCompressSync(tar, {
      params: {
        [constants.BROTLI_PARAM_QUALITY]: 11,
        [constants.BROTLI_PARAM_LGWIN]: 24,
        [constants.BROTLI_PARAM_SIZE_HINT]: tar.length,
      },
    });
    mkdirSync(TEMPLATE_DIR, { recursive: true });
    const file = templateFile();
    writeFileSync(file, compressed);
    for (const name of readdirSync(TEMPLATE_DIR)) {
      if (/^pglite-.*\.tar\.br$/.test(name) && join(TEMPLATE_DIR, name) !== file) rmSync(join(TEMPLATE_DIR, name));
    }
    return file;
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}
