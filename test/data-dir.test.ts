import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkClaim, claimDataDir, prepareDataDir, readDeployment, type DatabaseIdentity, type FoundDatabase } from '../src/data-dir.ts';
import { openPglite } from '../src/stores/sql/pglite.ts';
import type { SqlStore } from '../src/stores/sql/port.ts';

const mode = (path: string) => (statSync(path).mode & 0o777).toString(8);

const server = (sysid: string, name = 'bank'): DatabaseIdentity => ({ kind: 'postgres', system_identifier: sysid, name, server: '127.0.0.1:5432' });
const found = (identity: DatabaseIdentity, deploymentId: string | null = null, fresh = false): FoundDatabase => ({ identity, deploymentId, fresh });

describe('data dir claim', () => {
  const root = mkdtempSync(join(tmpdir(), 'databank-data-dir-'));
  let a: SqlStore;
  let b: SqlStore;
  beforeAll(async () => {
    [a, b] = await Promise.all([openPglite(null), openPglite(null)]);
  });
  afterAll(async () => {
    await Promise.all([a?.close(), b?.close()]);
    rmSync(root, { recursive: true, force: true });
  });

  it('accepts the same database, refuses another one with a message naming both and what to do', () => {
    const dir = join(root, 'pure');
    const record = { deployment_id: 'd1', created_at: '2026-01-01T00:00:00.000Z', database: server('111') };
    expect(checkClaim(dir, record, found(server('111')))).toBe('d1');
    expect(checkClaim(dir, record, found(server('222'), 'd1'))).toBe('d1');
    const refusal = () => checkClaim(dir, record, found(server('222')));
    expect(refusal).toThrow(/PostgreSQL database "bank" on 127\.0\.0\.1:5432 \(system identifier 111\)/);
    expect(refusal).toThrow(/system identifier 222/);
    expect(refusal).toThrow(/DATABANK_DATA_DIR to another directory.*remove .*deployment\.json/);
    expect(() => checkClaim(dir, record, found(server('111'), 'd2'))).toThrow(/deployment d1/);
    expect(() => checkClaim(dir, record, found(server('111'), null, true))).toThrow(/belongs to deployment d1/);
    expect(checkClaim(dir, null, found(server('333'), 'd3'))).toBe('d3');
    expect(checkClaim(dir, null, found(server('333')))).toMatch(/^[0-9a-f-]{36}$/);
  });

  it('refuses an old data dir holding a PGlite deployment, or another deployment\'s admin key, to a new database', () => {
    const dir = join(root, 'legacy');
    mkdirSync(join(dir, 'pglite'), { recursive: true });
    writeFileSync(join(dir, 'pglite', 'PG_VERSION'), '17\n');
    expect(() => checkClaim(dir, null, found(server('444')))).toThrow(/embedded PGlite database kept in it/);
    rmSync(join(dir, 'pglite'), { recursive: true });
    writeFileSync(join(dir, 'admin-key'), 'dbk_x\n');
    expect(() => checkClaim(dir, null, found(server('444'), null, true))).toThrow(/admin-key/);
    expect(checkClaim(dir, null, found(server('444')))).toMatch(/^[0-9a-f-]{36}$/);
  });

  it('records the deployment in deployment.json (0600, dir 0700) and in the database, and accepts it again', async () => {
    const dir = join(root, 'one');
    const first = await claimDataDir(dir, a);
    expect(first.database).toMatchObject({ kind: 'pglite', server: null });
    expect(first.database.system_identifier).toMatch(/^\d+$/);
    expect(readDeployment(dir)).toEqual(first);
    expect(mode(dir)).toBe('700');
    expect(mode(join(dir, 'deployment.json'))).toBe('600');
    const stored = await sql<{ id: string }>`select id::text as id from databank_deployment`.execute(a.db);
    expect(stored.rows).toEqual([{ id: first.deployment_id }]);
    expect(await claimDataDir(dir, a)).toEqual(first);
  });

  it('refuses a data dir to a database that holds another deployment, and leaves the file as it was', async () => {
    const mine = join(root, 'two');
    const theirs = join(root, 'three');
    const other = await claimDataDir(theirs, b);
    const before = readFileSync(join(theirs, 'deployment.json'), 'utf8');
    await claimDataDir(mine, a);
    await expect(claimDataDir(theirs, a)).rejects.toThrow(new RegExp(`belongs to deployment ${other.deployment_id}`));
    expect(readFileSync(join(theirs, 'deployment.json'), 'utf8')).toBe(before);
  });

  it('tightens a data dir made before the owner-only rule, recursively, once', () => {
    const dir = join(root, 'old');
    mkdirSync(join(dir, 'files', 'ab'), { recursive: true, mode: 0o755 });
    writeFileSync(join(dir, 'files', 'ab', 'blob'), 'x', { mode: 0o644 });
    writeFileSync(join(dir, 'admin-key'), 'k', { mode: 0o644 });
    chmodSync(dir, 0o755);
    prepareDataDir(dir);
    expect([mode(dir), mode(join(dir, 'files')), mode(join(dir, 'files', 'ab')), mode(join(dir, 'files', 'ab', 'blob')), mode(join(dir, 'admin-key'))]).toEqual(['700', '700', '700', '600', '600']);
    expect(existsSync(join(dir, 'deployment.json'))).toBe(false);
  });
});
