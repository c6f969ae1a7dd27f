import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Config } from '../../src/config.ts';
import { writeNewBackupKey } from '../../src/services/backup/crypto.ts';
import { BackupOps } from '../../src/services/backup/ops.ts';
import { BackupService } from '../../src/services/backup/service.ts';
import { SINGLE_PROCESS_LOCK } from '../../src/workers/index.ts';
import { customerKey, startTestApp, type TestApp } from '../support/app.ts';
import { ENGINES, type EngineName } from '../support/engines.ts';
import { until } from '../support/until.ts';

/**
 * The backup routes (`POST /backups`, `GET /backups`), what `/readyz` and `/metrics` say of
 * backups, and the worker's schedules taking backups and running drills by themselves.
 */

const SLOW = { timeout: 240_000 } as const;
const dir = mkdtempSync(join(tmpdir(), 'databank-backup-api-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function backupSettings(name: string, schedules: { schedule: string | null; drillSchedule: string | null }): Config['backup'] {
  return {
    keyFile: (writeNewBackupKey(join(dir, `${name}.key`)), join(dir, `${name}.key`)),
    copyTo: null,
    ...schedules,
    keep: { daily: 7, weekly: 4, monthly: 12 },
    maxAgeSeconds: 3600,
  };
}

describe('backups refused without a key', () => {
  it('409 DATABANK_ERR_BACKUP_NOT_CONFIGURED, for admins only', async () => {
    const service = new BackupService({ sql: null, server: null, files: null as never, copy: null, key: null, keep: { daily: 1, weekly: 1, monthly: 1 } });
    const ops = new BackupOps(service, SINGLE_PROCESS_LOCK, 60);
    await expect(ops.create({ role: 'admin', keyId: 1 })).rejects.toMatchObject({ code: 'DATABANK_ERR_BACKUP_NOT_CONFIGURED', statusCode: 409 });
    await expect(ops.list({ role: 'admin', keyId: 1 })).rejects.toMatchObject({ code: 'DATABANK_ERR_BACKUP_NOT_CONFIGURED' });
    await expect(ops.create({ role: 'customer', keyId: 2, customerId: 1 })).rejects.toMatchObject({ code: 'DATABANK_ERR_FORBIDDEN' });
    expect(await ops.readiness()).toBeNull();
  });
});

describe.each(ENGINES)('backup routes on %s', (engine: EngineName) => {
  let t: TestApp;
  beforeAll(async () => {
    t = await startTestApp(engine, `backup-api-${engine}`, { backup: backupSettings(`routes-${engine}`, { schedule: null, drillSchedule: null }) });
  }, SLOW.timeout);
  afterAll(async () => t?.close());

  it('POST /backups takes one (201, Location), a second at the same time is 409, GET /backups lists it, /readyz reports its age', SLOW, async () => {
    const before = await t.app.http.inject({ method: 'GET', url: '/readyz' });
    expect(before.json()).toEqual({ status: 'ready', backup: { configured: true, age_s: null, max_age_s: 3600, stale: true } });
    const [a, b] = await Promise.all([
      t.app.http.inject({ method: 'POST', url: '/backups', headers: t.admin }),
      t.app.http.inject({ method: 'POST', url: '/backups', headers: t.admin }),
    ]);
    expect([a.statusCode, b.statusCode].sort()).toEqual([201, 409]);
    const created = a.statusCode === 201 ? a : b;
    const busy = a.statusCode === 201 ? b : a;
    expect(busy.json().code).toBe('DATABANK_ERR_BACKUP_RUNNING');
    const body = created.json();
    expect(created.headers.location).toBe(`/backups/${body.backup_id}`);
    expect(Object.keys(body).sort()).toEqual(['backup_id', 'created_at', 'invariants', 'locations', 'objects', 'sha256', 'size', 'tables']);
    expect(body.tables['public.customers'].rows).toBe(3);
    expect(body.locations).toEqual(['primary']);
    const listed = await t.app.http.inject({ method: 'GET', url: '/backups', headers: t.admin });
    expect(listed.statusCode).toBe(200);
    expect(listed.json().backups.map((x: { backup_id: string }) => x.backup_id)).toEqual([body.backup_id]);
    expect(listed.json().last_drill).toBeNull();
    const ready = await until(
      async () => (await t.app.http.inject({ method: 'GET', url: '/readyz' })).json(),
      (r) => r.backup?.age_s !== null,
      { what: '/readyz to see the backup' },
    );
    expect(ready.backup.stale).toBe(false);
    expect(ready.status).toBe('ready');
  });

  it('a customer key gets 403 on both routes', async () => {
    const customer = await customerKey(t, 1);
    for (const [method, url] of [['POST', '/backups'], ['GET', '/backups']] as const) {
      const res = await t.app.http.inject({ method, url, headers: customer });
      expect(res.statusCode).toBe(403);
      expect(res.json().code).toBe('DATABANK_ERR_FORBIDDEN');
    }
  });
});

describe('the worker takes backups and runs drills on its schedules', () => {
  let t: TestApp;
  beforeAll(async () => {
    // Every 5 seconds each: the worker host's cron takes seconds as a sixth field.
    t = await startTestApp('pglite', 'backup-schedule', { backup: backupSettings('schedule', { schedule: '*/5 * * * * *', drillSchedule: '*/5 * * * * *' }) });
  }, SLOW.timeout);
  afterAll(async () => t?.close());

  it('a scheduled backup appears, a scheduled drill passes, and /metrics says so', SLOW, async () => {
    const listed = await until(
      async () => (await t.app.http.inject({ method: 'GET', url: '/backups', headers: t.admin })).json(),
      (l) => l.backups.length >= 1 && l.last_drill?.backup_id != null,
      { what: 'a scheduled backup and drill', timeoutMs: 200_000 },
    );
    expect(listed.last_drill.ok).toBe(true);
    expect(listed.last_drill.checks.every((c: { ok: boolean }) => c.ok)).toBe(true);
    const metrics = await until(
      async () => (await t.app.http.inject({ method: 'GET', url: '/metrics', headers: t.admin })).body,
      (m) => /^databank_backup_last_drill_success 1$/m.test(m),
      { what: 'drill metrics' },
    );
    expect(metrics).toMatch(/^databank_backup_age_seconds \d+(\.\d+)?$/m);
    expect(metrics).toMatch(/^databank_backup_last_drill_timestamp_seconds \d+(\.\d+)?(e\+\d+)?$/m);
    expect(metrics).toMatch(/^databank_worker_runs_total\{worker="backup-schedule"\} [1-9]/m);
  });
});
