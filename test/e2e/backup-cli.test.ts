import { createHmac } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { testDataDir } from '../support/app.ts';
import { runCli, serve, type RunResult, type Served } from '../support/cli.ts';
import { until } from '../support/until.ts';

/**
 * `databank backup …` against a running `databank serve` on the embedded engine: a key made by
 * `keygen`, a backup taken through the server with a second copy, listed, drilled, restored into a
 * new data dir that a second server then serves identically, a drill with the wrong key, and the
 * retention plan; and what /readyz and /metrics say of them.
 */

const SLOW = { timeout: 180_000 } as const;
/** A restore or a drill loads a whole PGlite data dir: several seconds on a loaded machine. */
const LONG_CLI = { timeoutMs: 150_000 } as const;

const ID = /^\d{8}T\d{6}Z-[0-9a-f]{6}$/;

interface Invariants {
  balances: Record<string, string>;
  ledger: Record<string, string>;
  accounts_off_ledger: number;
  unbalanced_transactions: number;
}

interface Summary {
  backup_id: string;
  size: number;
  sha256: string;
  tables: Record<string, { rows: number; checksum: string }>;
  invariants: Invariants;
  objects: number;
  locations: string[];
}

interface Check {
  name: string;
  ok: boolean;
  detail: string;
}

interface Drill {
  ok: boolean;
  backup_id: string | null;
  rto_ms: number;
  rpo_s: number | null;
  checks: Check[];
}

interface Listing {
  backups: Array<Summary & { created_at: string; engine: string; key_id: string }>;
  last_drill: (Drill & { finished_at: string }) | null;
}

function parsed<T>(r: RunResult): T {
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout) as T;
}

/** The key id `keygen` prints: the first 8 bytes of an HMAC under the key, so it reveals nothing of it. */
function keyIdOf(file: string): string {
  const bytes = Buffer.from(readFileSync(file, 'utf8').trim(), 'base64');
  return createHmac('sha256', bytes).update('databank backup key id').digest().subarray(0, 8).toString('hex');
}

describe('databank backup on the embedded engine', () => {
  let tmp: string;
  let dir: string;
  let restored: string;
  let copyDir: string;
  let keyFile: string;
  let keyId: string;
  let s: Served;
  let env: Record<string, string>;
  let admin: { authorization: string };
  /** What the tests before hand on to the ones after. */
  let backup: Summary;
  let fileId: number;
  const uploaded = Buffer.from('statement of account, kept for the backup test\n');
  let customerAtBackup: string;

  beforeAll(async () => {
    tmp = mkdtempSync(join(tmpdir(), 'databank-backup-cli-'));
    dir = testDataDir();
    restored = testDataDir();
    copyDir = join(tmp, 'copy');
    keyFile = join(tmp, 'backup.key');
    const made = await runCli(['backup', 'keygen', keyFile, '--json'], {});
    keyId = parsed<{ key_file: string; key_id: string }>(made).key_id;
    env = {
      DATABANK_DATA_DIR: dir,
      DATABANK_BACKUP_KEY_FILE: keyFile,
      DATABANK_BACKUP_COPY_TO: copyDir,
      // Only the backups the tests ask for: a scheduled one would add a second backup.
      DATABANK_BACKUP_SCHEDULE: 'off',
      DATABANK_BACKUP_DRILL_SCHEDULE: 'off',
    };
    s = await serve(env);
    env = { ...env, PORT: new URL(s.base).port };
    admin = { authorization: `Bearer ${readFileSync(join(dir, 'admin-key'), 'utf8').trim()}` };
  }, 120_000);
  afterAll(async () => {
    await s?.stop();
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  });

  const get = (base: string, path: string) => fetch(`${base}${path}`, { headers: admin });
  const metrics = async () => (await (await get(s.base, '/metrics')).text()).split('\n');

  it('keygen writes a 0600 key of 32 random bytes and prints its id; it never overwrites', SLOW, async () => {
    expect(statSync(keyFile).mode & 0o777).toBe(0o600);
    const text = readFileSync(keyFile, 'utf8').trim();
    expect(text).toMatch(/^[A-Za-z0-9+/]{43}=$/);
    expect(Buffer.from(text, 'base64')).toHaveLength(32);
    expect(keyId).toBe(keyIdOf(keyFile));

    const again = await runCli(['backup', 'keygen', keyFile, '--json'], {});
    expect(again.code).not.toBe(0);
    expect(again.stderr).toContain('exists');
    expect(readFileSync(keyFile, 'utf8').trim()).toBe(text);
  });

  it('a server without a backup key refuses to take one', SLOW, async () => {
    const bare = testDataDir();
    const plain = await serve({ DATABANK_DATA_DIR: bare, DATABANK_BACKUP_SCHEDULE: 'off', DATABANK_BACKUP_DRILL_SCHEDULE: 'off' });
    try {
      const r = await runCli(['backup', 'create', '--json'], { DATABANK_DATA_DIR: bare, PORT: new URL(plain.base).port });
      expect(r.code).toBe(1);
      expect(r.stderr).toContain('DATABANK_ERR_BACKUP_NOT_CONFIGURED');
      expect(r.stdout).toBe('');
      const ready = (await (await fetch(`${plain.base}/readyz`)).json()) as unknown;
      expect(ready).toEqual({ status: 'ready' });
    } finally {
      expect(await plain.stop()).toBe(0);
    }
  });

  it('create through the server: both copies, the balances the API shows; list, /readyz, a passing drill and /metrics', SLOW, async () => {
    const deposit = await fetch(`${s.base}/accounts/1/deposits`, {
      method: 'POST',
      headers: { ...admin, 'content-type': 'application/json' },
      body: JSON.stringify({ amount: 250 }),
    });
    expect(deposit.status, await deposit.clone().text()).toBe(201);
    const upload = await fetch(`${s.base}/customers/1/files?filename=a.txt`, {
      method: 'POST',
      headers: { ...admin, 'content-type': 'application/octet-stream' },
      body: uploaded,
    });
    expect(upload.status, await upload.clone().text()).toBe(201);
    const meta = (await upload.json()) as { file_id: number; size: number; content_type: string };
    expect(meta).toMatchObject({ size: uploaded.length, content_type: 'text/plain' });
    fileId = meta.file_id;

    const customers = await Promise.all(
      [1, 2, 3].map(async (id) => {
        const res = await get(s.base, `/customers/${id}`);
        expect(res.status).toBe(200);
        return { id, text: await res.text() };
      }),
    );
    const usd = customers.map((c) => (JSON.parse(c.text) as { balances: Record<string, number> }).balances.USD ?? 0);
    customerAtBackup = customers[0]?.text as string;

    backup = parsed<Summary>(await runCli(['backup', 'create', '--json'], env, LONG_CLI));
    expect(Object.keys(backup).sort()).toEqual(['backup_id', 'invariants', 'locations', 'objects', 'sha256', 'size', 'tables']);
    expect(backup.backup_id).toMatch(ID);
    expect(backup.locations).toEqual(['primary', copyDir]);
    expect(backup.invariants.balances.USD).toBe(String(usd.reduce((a, b) => a + b, 0)));
    expect(backup.invariants.accounts_off_ledger).toBe(0);
    expect(backup.invariants.unbalanced_transactions).toBe(0);
    expect(backup.objects).toBeGreaterThanOrEqual(1);
    expect(backup.size).toBeGreaterThan(0);
    expect(backup.sha256).toMatch(/^[0-9a-f]{64}$/);
    expect(backup.tables['public.customers']?.rows).toBe(3);
    expect(backup.tables['public.files']?.rows).toBe(1);
    // The second copy is a local file store of its own: one file per object key.
    expect(existsSync(join(copyDir, 'objects', encodeURIComponent(`backups/${backup.backup_id}/manifest.json`)))).toBe(true);
    // Nothing was written between the reads above and the backup.
    expect(await (await get(s.base, '/customers/1')).text()).toBe(customerAtBackup);

    const listing = parsed<Listing>(await runCli(['backup', 'list', '--json'], env));
    expect(listing.last_drill).toBeNull();
    expect(listing.backups).toHaveLength(1);
    expect(listing.backups[0]).toEqual({
      ...backup,
      created_at: expect.any(String),
      engine: 'pglite',
      key_id: keyId,
      locations: ['primary', copyDir],
    });
    // The id starts with the creation time to the second.
    expect(listing.backups[0]?.created_at.replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z')).toBe(backup.backup_id.slice(0, 16));

    const ready = (await (await fetch(`${s.base}/readyz`)).json()) as { status: string; backup: { age_s: number } };
    expect(ready).toEqual({ status: 'ready', backup: { configured: true, age_s: expect.any(Number), max_age_s: 93_600, stale: false } });
    expect(ready.backup.age_s).toBeGreaterThanOrEqual(0);

    const drill = parsed<Drill>(await runCli(['backup', 'drill', '--json'], env, LONG_CLI));
    expect(drill.ok, JSON.stringify(drill.checks)).toBe(true);
    expect(drill.backup_id).toBe(backup.backup_id);
    expect(drill.rpo_s).toBeGreaterThanOrEqual(0);
    expect(drill.rto_ms).toBeGreaterThan(0);
    expect(drill.checks.filter((c) => !c.ok)).toEqual([]);
    const names = drill.checks.map((c) => c.name);
    for (const name of ['manifest', 'sha256', 'restore', 'invariants', 'queries', 'objects', 'table public.customers', 'table public.files']) {
      expect(names).toContain(name);
    }
    expect(drill.checks.find((c) => c.name === 'manifest')?.detail).toBe(`signed with key ${keyId}, found in primary`);

    const after = parsed<Listing>(await runCli(['backup', 'list', '--json'], env));
    expect(after.last_drill).toEqual({ ...drill, finished_at: expect.any(String) });

    const lines = await until(metrics, (l) => l.includes('databank_backup_last_drill_success 1'), {
      what: 'databank_backup_last_drill_success 1',
      everyMs: 500,
    });
    const stamp = lines.find((l) => l.startsWith('databank_backup_last_drill_timestamp_seconds '));
    expect(Number(stamp?.split(' ')[1])).toBe(Date.parse(after.last_drill?.finished_at as string) / 1000);
    expect(lines.some((l) => /^databank_backup_age_seconds \d+(\.\d+)?(e[-+]?\d+)?$/.test(l))).toBe(true);
  });

  it('restore into a new data dir, served by a second server exactly as the first served it', SLOW, async () => {
    const result = parsed<{ backup_id: string; from: string; restore_ms: number; objects: number; tables: number }>(
      await runCli(['backup', 'restore', '--data-dir', restored, '--json'], env, LONG_CLI),
    );
    expect(result).toEqual({
      backup_id: backup.backup_id,
      from: 'primary',
      restore_ms: expect.any(Number),
      objects: backup.objects,
      tables: Object.keys(backup.tables).length,
    });
    expect(result.objects).toBeGreaterThanOrEqual(1);

    const second = await serve({ DATABANK_DATA_DIR: restored, DATABANK_BACKUP_SCHEDULE: 'off', DATABANK_BACKUP_DRILL_SCHEDULE: 'off' });
    try {
      expect(second.base).not.toBe(s.base);
      const customer = await get(second.base, '/customers/1');
      expect(customer.status).toBe(200);
      expect(await customer.text()).toBe(customerAtBackup);
      const content = await get(second.base, `/files/${fileId}/content`);
      expect(content.status).toBe(200);
      expect(Buffer.from(await content.arrayBuffer())).toEqual(uploaded);
    } finally {
      expect(await second.stop()).toBe(0);
    }

    const refused = await runCli(['backup', 'restore', '--data-dir', restored, '--json'], env, LONG_CLI);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain('not empty: pass --force');
    expect(existsSync(join(restored, 'pglite', 'PG_VERSION'))).toBe(true);
  });

  it('a drill with another key fails on the manifest and exits 1; /metrics then reports the failed drill', SLOW, async () => {
    const otherKey = join(tmp, 'other.key');
    const made = parsed<{ key_file: string; key_id: string }>(await runCli(['backup', 'keygen', otherKey, '--json'], {}));
    expect(made).toEqual({ key_file: otherKey, key_id: keyIdOf(otherKey) });
    expect(made.key_id).not.toBe(keyId);

    const r = await runCli(['backup', 'drill', '--key-file', otherKey, '--json'], env, LONG_CLI);
    expect(r.code, r.stderr).toBe(1);
    const drill = JSON.parse(r.stdout) as Drill;
    expect(drill.ok).toBe(false);
    expect(drill.checks).toHaveLength(1);
    const [manifest] = drill.checks;
    expect(manifest?.name).toBe('manifest');
    expect(manifest?.ok).toBe(false);
    expect(manifest?.detail).toContain(`was made with backup key ${keyId}`);
    expect(manifest?.detail).toContain(made.key_id);

    await until(metrics, (l) => l.includes('databank_backup_last_drill_success 0'), { what: 'databank_backup_last_drill_success 0', everyMs: 500 });
  });

  it('prune --dry-run keeps the only backup as the newest and removes nothing', SLOW, async () => {
    const plan = parsed<{ dry_run: boolean; keep: Array<{ backup_id: string; reasons: string[] }>; remove: string[]; objects_removed: number }>(
      await runCli(['backup', 'prune', '--dry-run', '--json'], env),
    );
    expect(plan.dry_run).toBe(true);
    expect(plan.remove).toEqual([]);
    expect(plan.objects_removed).toBe(0);
    expect(plan.keep.map((k) => k.backup_id)).toEqual([backup.backup_id]);
    const reasons = plan.keep[0]?.reasons ?? [];
    const day = `${backup.backup_id.slice(0, 4)}-${backup.backup_id.slice(4, 6)}-${backup.backup_id.slice(6, 8)}`;
    expect(reasons).toContain('newest');
    expect(reasons).toContain(`daily ${day}`);
    expect(reasons).toContain(`monthly ${day.slice(0, 7)}`);
    expect(reasons).toHaveLength(4);

    const listing = parsed<Listing>(await runCli(['backup', 'list', '--json'], env));
    expect(listing.backups.map((b) => [b.backup_id, b.locations])).toEqual([[backup.backup_id, ['primary', copyDir]]]);
  });
});
