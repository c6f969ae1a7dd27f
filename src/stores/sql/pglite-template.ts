import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { readFile } from 'node:fs/promises';
import { promisify } from 'node:util';
import { brotliCompressSync, brotliDecompress, constants } from 'node:zlib';
import { PGlite } from '@electric-sql/pglite';
import { packagePath } from '../../paths.ts';
import { packTar, unpackTar, type TarEntry } from './tar.ts';

/**
 * A new embedded database starts from a data directory that PGlite's initdb made once and that
 * ships with the code: running initdb costs seconds and a second WASM instance (hundreds of MB),
 * unpacking the template costs a fraction of a second. The file name carries the PGlite version
 * that made it; for any other version there is no template and PGlite runs initdb as before.
 */
export const TEMPLATE_DIR = packagePath('src', 'stores', 'sql', 'pglite-template');

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

/**
 * Which template: `bare` is initdb's directory, shipped in the repository (an in-memory database
 * for tests starts from it, empty); `migrated` also has every migration applied, made by
 * `npm run build` (`build-schema.ts`) so that a first start skips the migrations, and falls back
 * to `bare` when it was not built or the migrations changed since.
 */
export type TemplateKind = 'bare' | 'migrated';

const loading = new Map<TemplateKind, Promise<Buffer | null>>();

/** A short hash of the migrations' sources: a migrated template is only good for these. */
export function migrationsKey(): string {
  const dir = packagePath('src', 'stores', 'sql', 'migrations');
  const hash = createHash('sha256');
  for (const name of readdirSync(dir).filter((n) => n.endsWith('.ts')).sort()) {
    hash.update(`${name}\0`).update(readFileSync(join(dir, name))).update('\0');
  }
  return hash.digest('hex').slice(0, 12);
}

/** Where `npm run build` keeps the migrated template for this PGlite and these migrations. */
export function migratedTemplateFile(): string {
  return packagePath('dist', `pglite-migrated-${installedPgliteVersion()}-${migrationsKey()}.tar`);
}

/**
 * The template's tar, once per process and kind, read (and the bare one decompressed) on the
 * thread pool: `databank serve` starts this before loading the rest of the app, so it runs on the
 * second core while the first loads modules. In-memory databases (tests) share the result.
 */
export function loadTemplateTar(kind: TemplateKind = 'bare'): Promise<Buffer | null> {
  let pending = loading.get(kind);
  if (!pending) {
    pending = (async () => {
      if (kind === 'migrated') {
        const migrated = migratedTemplateFile();
        if (existsSync(migrated)) return readFile(migrated);
        return loadTemplateTar('bare');
      }
      const file = templateFile();
      if (!existsSync(file)) return null;
      return promisify(brotliDecompress)(await readFile(file));
    })();
    loading.set(kind, pending);
  }
  return pending;
}

/** Drops a tar (40 MB) once a persistent data dir was made from it. */
export function releaseTemplateTar(kind: TemplateKind): void {
  loading.delete(kind);
}

/**
 * Fills an empty or half-filled data directory from the template, owner-only (0700/0600).
 * `PG_VERSION` is written last: PGlite takes a directory with that file for a finished database,
 * so an unpack cut short is simply done again on the next start.
 *
 * @returns false when no template matches the installed PGlite (the caller lets initdb run).
 */
export async function unpackPgliteTemplate(dataDir: string, kind: TemplateKind = 'bare'): Promise<boolean> {
  const tar = await loadTemplateTar(kind);
  releaseTemplateTar('migrated');
  releaseTemplateTar('bare');
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

/** The files of a closed data directory as a tar, in a stable order (the lock file left out). */
export function packDataDir(dataDir: string): Buffer {
  const entries: TarEntry[] = [];
  collect(dataDir, '', entries);
  return packTar(entries.filter((e) => e.path !== 'databank.lock'));
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
