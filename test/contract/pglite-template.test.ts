import { existsSync, mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sql } from 'kysely';
import { afterAll, describe, expect, it } from 'vitest';
import { openPglite } from '../../src/stores/sql/pglite.ts';
import {
  installedPgliteVersion,
  migratedTemplateFile,
  loadTemplateTar,
  TEMPLATE_DIR,
  templateFile,
} from '../../src/stores/sql/pglite-template.ts';
import { pendingMigrations } from '../../src/stores/sql/migrator.ts';
import { MIGRATIONS } from '../../src/stores/sql/migrations/index.ts';
import { packTar, unpackTar } from '../../src/stores/sql/tar.ts';

/** Every path under `dir` whose mode lets anyone but the owner in, or is not 0700/0600. */
function notOwnerOnly(dir: string): string[] {
  const bad: string[] = [];
  const walk = (path: string) => {
    const stat = statSync(path);
    const want = stat.isDirectory() ? 0o700 : 0o600;
    if ((stat.mode & 0o777) !== want) bad.push(`${path} ${(stat.mode & 0o777).toString(8)}`);
    if (stat.isDirectory()) for (const name of readdirSync(path)) walk(join(path, name));
  };
  walk(dir);
  return bad;
}

describe('PGlite data directory template', () => {
  const root = mkdtempSync(join(tmpdir(), 'databank-pglite-template-'));
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  it('ships for the installed PGlite version, and only for it', async () => {
    const version = installedPgliteVersion();
    expect(existsSync(templateFile(version)), `no template for PGlite ${version}: run node --import tsx src/stores/sql/pglite-template/regenerate.ts`).toBe(true);
    expect(readdirSync(TEMPLATE_DIR).filter((n) => n.endsWith('.tar.br'))).toEqual([`pglite-${version}.tar.br`]);
    const paths = unpackTar((await loadTemplateTar()) as Buffer).map((e) => e.path);
    expect(paths).toEqual(expect.arrayContaining(['PG_VERSION', 'global/pg_control', 'postgresql.conf']));
  });

  it('packs and unpacks files and directories byte for byte, and refuses paths that leave the directory', () => {
    const data = Buffer.from('x'.repeat(1000));
    const tar = packTar([
      { path: 'a', type: 'dir', data: new Uint8Array(0) },
      { path: 'a/b', type: 'file', data },
      { path: 'empty', type: 'file', data: new Uint8Array(0) },
    ]);
    expect(unpackTar(tar).map((e) => [e.path, e.type, Buffer.from(e.data).toString()])).toEqual([
      ['a', 'dir', ''],
      ['a/b', 'file', data.toString()],
      ['empty', 'file', ''],
    ]);
    expect(() => unpackTar(packTar([{ path: '../x', type: 'file', data }]))).toThrow(/unsafe path/);
  });

  it('starts a new data dir from the template, owner-only, and keeps its data across restarts', async () => {
    const dataDir = join(root, 'deployment', 'pglite');
    let notices = 0;
    const store = await openPglite(dataDir, { onNotice: () => notices++ });
    try {
      await sql`create table kept (id int primary key, v text)`.execute(store.db);
      await sql`insert into kept select g, repeat('x', 200) from generate_series(1, 5000) g`.execute(store.db);
      await sql`checkpoint`.execute(store.db);
      const id = await sql<{ id: string }>`select system_identifier::text as id from pg_control_system()`.execute(store.db);
      expect(id.rows[0]?.id).toMatch(/^\d+$/);
    } finally {
      await store.close();
    }
    expect(notices).toBe(0);
    expect(notOwnerOnly(join(root, 'deployment'))).toEqual([]);
    const again = await openPglite(dataDir);
    try {
      const rows = await sql<{ n: number }>`select count(*)::int as n from kept`.execute(again.db);
      expect(rows.rows[0]?.n).toBe(5000);
    } finally {
      await again.close();
    }
    expect(notOwnerOnly(join(root, 'deployment'))).toEqual([]);
  });

  it('a first start of the server finds the schema in place (the migrated template that npm run build makes)', async () => {
    expect(existsSync(migratedTemplateFile()), `${migratedTemplateFile()} is missing: run npm run build`).toBe(true);
    const dir = join(root, 'migrated');
    const store = await openPglite(dir, { migratedTemplate: true });
    try {
      expect(await pendingMigrations(store.db)).toEqual([]);
      // The schema only: no customers, no keys, no deployment of its own.
      const counts = await sql<{ customers: number; keys: number; deployment: string | null }>`
        select (select count(*)::int from customers) as customers, (select count(*)::int from api_keys) as keys,
               to_regclass('databank_deployment')::text as deployment`.execute(store.db);
      expect(counts.rows[0]).toEqual({ customers: 0, keys: 0, deployment: null });
    } finally {
      await store.close();
    }
    expect(notOwnerOnly(dir)).toEqual([]);
  });

  it('the migration commands start a new data dir empty, so that `migrate latest` applies every migration', async () => {
    const store = await openPglite(join(root, 'bare'));
    try {
      expect(await pendingMigrations(store.db)).toEqual(Object.keys(MIGRATIONS));
    } finally {
      await store.close();
    }
  });
});
