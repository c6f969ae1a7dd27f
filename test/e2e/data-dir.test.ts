import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../support/cli.ts';
import { createTestDatabase, POSTGRES_UP, type TestDatabase } from '../support/engines.ts';

const SLOW = { timeout: 180_000 } as const;

/** Every file and folder under `dir`, with its permission bits. */
function modes(dir: string): Array<{ path: string; mode: number; isDir: boolean }> {
  const out: Array<{ path: string; mode: number; isDir: boolean }> = [];
  const walk = (path: string) => {
    const st = statSync(path);
    out.push({ path, mode: st.mode & 0o777, isDir: st.isDirectory() });
    if (st.isDirectory()) for (const name of readdirSync(path)) walk(join(path, name));
  };
  walk(dir);
  return out;
}

/**
 * A data dir is one deployment's: made on one database, it refuses another, and nothing of the
 * deployment it holds is overwritten or swept. Through the real command, as a user meets it.
 */
describe('the data dir belongs to one deployment', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'databank-data-dir-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('on PGlite: the data dir and every file in it are owner-only, and it records its deployment', SLOW, async () => {
    const data = join(dir, 'pglite-deployment');
    const r = await runCli(['migrate', 'latest', '--json'], { DATABANK_DATA_DIR: data });
    expect(r.code).toBe(0);
    const all = modes(data);
    expect(all.length).toBeGreaterThan(100);
    expect(all.filter((e) => e.isDir && e.mode !== 0o700)).toEqual([]);
    expect(all.filter((e) => !e.isDir && e.mode !== 0o600)).toEqual([]);
    const record = JSON.parse(readFileSync(join(data, 'deployment.json'), 'utf8')) as {
      deployment_id: string;
      database: { kind: string };
    };
    expect(record.deployment_id).toMatch(/^[0-9a-f-]{36}$/);
    expect(record.database.kind).toBe('pglite');
  });

  describe.skipIf(!POSTGRES_UP)('and a PostgreSQL server', () => {
    let a: TestDatabase;
    let b: TestDatabase;
    beforeAll(async () => {
      a = await createTestDatabase('postgres', 'e2e-data-dir-a');
      b = await createTestDatabase('postgres', 'e2e-data-dir-b');
    });
    afterAll(async () => {
      await a?.drop();
      await b?.drop();
    });

    it('a PGlite deployment\'s data dir is refused on PostgreSQL, its key and files untouched', SLOW, async () => {
      const data = join(dir, 'pglite-deployment');
      writeFileSync(join(data, 'admin-key'), 'the pglite deployment key\n', { mode: 0o600 });
      const before = readFileSync(join(data, 'deployment.json'), 'utf8');
      for (const args of [['migrate', 'latest'], ['keys', 'create', '--role', 'admin'], ['files', 'sweep', '--grace-seconds', '0']]) {
        const r = await runCli(args, { DATABANK_DATA_DIR: data, DATABASE_URL: a.url as string });
        expect(r.code, args.join(' ')).toBe(1);
        expect(r.stderr).toContain('the embedded PGlite database');
        expect(r.stderr).toContain(`PostgreSQL database "${new URL(a.url as string).pathname.slice(1)}"`);
        expect(r.stderr).toContain('DATABANK_DATA_DIR');
      }
      expect(readFileSync(join(data, 'admin-key'), 'utf8')).toBe('the pglite deployment key\n');
      expect(readFileSync(join(data, 'deployment.json'), 'utf8')).toBe(before);
    });

    it('a data dir made on one PostgreSQL database refuses another, and accepts its own again', SLOW, async () => {
      const data = join(dir, 'postgres-deployment');
      expect((await runCli(['migrate', 'latest', '--json'], { DATABANK_DATA_DIR: data, DATABASE_URL: a.url as string })).code).toBe(0);
      expect(existsSync(join(data, 'deployment.json'))).toBe(true);
      const other = await runCli(['migrate', 'latest'], { DATABANK_DATA_DIR: data, DATABASE_URL: b.url as string });
      expect(other.code).toBe(1);
      expect(other.stderr).toContain(`PostgreSQL database "${new URL(b.url as string).pathname.slice(1)}"`);
      expect(other.stderr).toContain(`PostgreSQL database "${new URL(a.url as string).pathname.slice(1)}"`);
      const again = await runCli(['migrate', 'status', '--json'], { DATABANK_DATA_DIR: data, DATABASE_URL: a.url as string });
      expect(again.code).toBe(0);
    });
  });
});
