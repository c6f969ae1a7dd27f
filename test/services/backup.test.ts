import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openFileStore } from '../../src/stores/files/index.ts';
import { writeNewBackupKey, type BackupKey } from '../../src/services/backup/crypto.ts';
import { BackupService, type RestoreTarget } from '../../src/services/backup/service.ts';
import { withDatabase } from '../../src/services/backup/engines.ts';
import { startTestApp, type TestApp } from '../support/app.ts';
import { ENGINES, type EngineName } from '../support/engines.ts';
import { checkLedger } from '../support/invariants.ts';
import { until } from '../support/until.ts';

/**
 * Backups end to end on each engine: create, the manifest's facts, a drill that passes, a restore
 * into a new target that a fresh handle reads back, and the negative controls: one flipped byte,
 * a wrong key, a tampered manifest.
 */
async function readAll(body: AsyncIterable<unknown> | undefined): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of body ?? []) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

/** Restores and drills start PGlite instances: several seconds each on a loaded machine. */
const SLOW = { timeout: 240_000 } as const;

describe.each(ENGINES)('backups on %s', (engine: EngineName) => {
  let t: TestApp;
  let key: BackupKey;
  let dir: string;
  let service: BackupService;

  beforeAll(async () => {
    t = await startTestApp(engine, `backup-${engine}`, {}, undefined, { worker: false });
    dir = mkdtempSync(join(tmpdir(), 'databank-backup-test-'));
    key = writeNewBackupKey(join(dir, 'backup.key'));
    const sqlConfig = t.db.sql;
    service = new BackupService({
      sql: t.app.sql,
      server: sqlConfig.kind === 'postgres' ? { connectionString: sqlConfig.connectionString, ssl: sqlConfig.ssl } : null,
      files: t.app.files,
      copy: { store: await openFileStore({ kind: 'local', dir: join(dir, 'copy') }), name: join(dir, 'copy') },
      key,
      keep: { daily: 7, weekly: 4, monthly: 12 },
    });
  }, SLOW.timeout);
  afterAll(async () => {
    await t?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  let summary: Awaited<ReturnType<BackupService['create']>>;
  let ledgerBefore: Awaited<ReturnType<typeof checkLedger>>;
  beforeAll(async () => {
    const upload = await t.app.http.inject({
      method: 'POST',
      url: '/customers/1/files?filename=note.txt',
      headers: { ...t.admin, 'content-type': 'application/octet-stream' },
      payload: Buffer.from('a statement of account\n'),
    });
    expect(upload.statusCode).toBe(201);
    ledgerBefore = await checkLedger(t.app.sql.db);
    summary = await service.create();
  }, SLOW.timeout);

  it('takes a backup whose manifest holds the invariants, then a drill passes', SLOW, async () => {
    expect(summary.backup_id).toMatch(/^\d{8}T\d{6}Z-[0-9a-f]{6}$/);
    expect(summary.locations).toEqual(['primary', join(dir, 'copy')]);
    expect(summary.tables['public.accounts']?.rows).toBe((await t.app.sql.db.selectFrom('accounts').select('account_id').execute()).length);
    // A partitioned table counts once, as a whole: the ledger's months are not counted again.
    expect(summary.tables['public.ledger_entries']?.rows).toBe((await t.app.sql.db.selectFrom('ledger_entries').select('id').execute()).length);
    const partitions = await sql<{ name: string }>`
      select n.nspname || '.' || c.relname as name from pg_class c join pg_namespace n on n.oid = c.relnamespace
      where c.relispartition`.execute(t.app.sql.db);
    expect(partitions.rows.map((p) => p.name)).toContain('public.ledger_entries_default');
    expect(partitions.rows.filter((p) => p.name in summary.tables)).toEqual([]);
    expect(summary.objects).toBe(1);
    expect(Number(summary.invariants.balances.USD)).toBe(
      (await t.app.sql.db.selectFrom('accounts').select('balance').where('currency', '=', 'USD').execute()).reduce((s, a) => s + a.balance, 0),
    );
    expect(ledgerBefore.unbalanced).toEqual([]);
    const report = await service.drill(summary.backup_id);
    expect(report.checks.filter((c) => !c.ok)).toEqual([]);
    expect(report.ok).toBe(true);
    expect(report.backup_id).toBe(summary.backup_id);
    expect(report.checks.map((c) => c.name)).toEqual(expect.arrayContaining(['manifest', 'sha256', 'restore', 'table public.accounts', 'invariants', 'queries', 'objects']));
  });

  it('a backup taken during concurrent transfers and deposits restores to a state where the invariants hold', SLOW, async () => {
    let stop = false;
    const outcomes = { before: 0, during: 0 };
    let phase: 'before' | 'during' = 'before';
    const client = async (n: number) => {
      while (!stop) {
        const res = await t.app.http.inject(
          n % 2 === 0
            ? { method: 'POST', url: '/transfers', headers: t.admin, payload: { from_account_id: 1 + (n % 3), to_account_id: 1 + ((n + 1) % 3), amount: 1 } }
            : { method: 'POST', url: `/accounts/${1 + (n % 3)}/deposits`, headers: t.admin, payload: { amount: 3 } },
        );
        // 201 moved money; 409 (too low a balance) moved none: both keep the ledger whole.
        expect([201, 409]).toContain(res.statusCode);
        if (res.statusCode === 201) outcomes[phase]++;
      }
    };
    const clients = Array.from({ length: 4 }, (_, n) => client(n));
    await until(async () => outcomes.before, (n) => n >= 10, { what: 'transfers under way' });
    phase = 'during';
    const taken = await service.create();
    const movedDuring = outcomes.during;
    stop = true;
    await Promise.all(clients);
    expect(movedDuring).toBeGreaterThan(0);
    const report = await service.drill(taken.backup_id);
    expect(report.checks.filter((c) => !c.ok)).toEqual([]);
    expect(report.checks.find((c) => c.name === 'invariants')?.ok).toBe(true);
    expect(taken.invariants.accounts_off_ledger).toBe(0);
    expect(taken.invariants.unbalanced_transactions).toBe(0);
    expect(Object.values(taken.invariants.ledger)).toEqual(['0']);
  });

  it('restores into a new target with the same rows and files; refuses a non-empty one without --force', SLOW, async () => {
    const newest = summary;
    const files = await openFileStore({ kind: 'local', dir: join(dir, `restored-files-${engine}`) });
    let target: RestoreTarget;
    let drop = async () => {};
    if (t.db.sql.kind === 'postgres') {
      const sqlConfig = t.db.sql;
      const name = `databank_restore_${Date.now().toString(36)}`;
      const { sql } = await import('kysely');
      await sql`create database ${sql.id(name)}`.execute(t.app.sql.db);
      drop = async () => void (await sql`drop database if exists ${sql.id(name)} with (force)`.execute(t.app.sql.db));
      target = { kind: 'postgres', target: withDatabase({ connectionString: sqlConfig.connectionString, ssl: sqlConfig.ssl }, name) };
    } else {
      target = { kind: 'pglite', dataDir: join(dir, 'restored-data') };
    }
    try {
      const restored = await service.restore(newest?.backup_id, target, { force: false, files: files });
      expect(restored.objects).toBe(1);
      const listed: string[] = [];
      for await (const o of files.list('files/')) listed.push(o.key);
      expect(listed).toHaveLength(1);
      await expect(service.restore(newest?.backup_id, target, { force: false, files: null })).rejects.toThrow(/is not empty: pass --force/);
      const again = await service.restore(newest?.backup_id, target, { force: true, files: null });
      expect(again.backup_id).toBe(newest?.backup_id);
    } finally {
      await drop();
      await files.close();
    }
  });

  it('a wrong key and a tampered manifest fail with clear errors; a flipped byte fails the drill', SLOW, async () => {
    const id = summary.backup_id;
    const other = writeNewBackupKey(join(dir, `other-${engine}.key`));
    await expect(service.restore(id, { kind: 'pglite', dataDir: join(dir, 'never') }, { force: false, files: null, key: other })).rejects.toThrow(
      `backup ${id} was made with backup key ${key.id}; the key file given holds key ${other.id}`,
    );
    // Tamper with the copy's manifest: the drill of the primary still passes; of the copy fails.
    const manifestKey = `backups/${id}/manifest.json`;
    const got = await t.app.files.get(manifestKey);
    const text = (await readAll(got?.body)).toString("utf8");
    const tampered = JSON.parse(text) as { invariants: { balances: Record<string, string> } };
    tampered.invariants.balances.USD = String(Number(tampered.invariants.balances.USD) + 100);
    await t.app.files.put(manifestKey, Buffer.from(JSON.stringify(tampered)), { contentType: 'application/json' });
    const tamperedDrill = await service.drill(id);
    expect(tamperedDrill.ok).toBe(false);
    expect(tamperedDrill.checks[0]).toEqual({ name: 'manifest', ok: false, detail: `the manifest of backup ${id} does not match its signature: it was altered or damaged` });
    await t.app.files.put(manifestKey, Buffer.from(text), { contentType: 'application/json' });
    // One flipped byte in the middle of the encrypted dump.
    const dataKey = `backups/${id}/database.enc`;
    const data = await readAll((await t.app.files.get(dataKey))?.body);
    const flipped = Buffer.from(data);
    const at = Math.floor(flipped.length / 2);
    flipped[at] = (flipped[at] as number) ^ 0x01;
    await t.app.files.put(dataKey, flipped, { contentType: 'application/octet-stream' });
    const broken = await service.drill(id);
    expect(broken.ok).toBe(false);
    expect(broken.checks.find((c) => !c.ok)?.name).toMatch(/^(sha256|restore)$/);
    await t.app.files.put(dataKey, data, { contentType: 'application/octet-stream' });
    expect((await service.drill(id)).ok).toBe(true);
  });
});
