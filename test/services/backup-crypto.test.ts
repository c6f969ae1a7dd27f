import { randomBytes } from 'node:crypto';
import { chmodSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import {
  BackupIntegrityError,
  BackupKeyError,
  CHUNK_BYTES,
  decryptStream,
  encryptStream,
  HEADER_BYTES,
  keyId,
  readBackupKey,
  writeNewBackupKey,
} from '../../src/services/backup/crypto.ts';
import { isoWeek, retention } from '../../src/services/backup/retention.ts';
import { loadConfig } from '../../src/config.ts';
import { fcParams } from '../support/property.ts';

/**
 * The backup format (AES-256-GCM in authenticated chunks), the key file rules, the retention
 * policy and the backup settings, without a database.
 */

const dir = mkdtempSync(join(tmpdir(), 'databank-backup-crypto-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const key = { id: keyId(Buffer.alloc(32, 7)), bytes: Buffer.alloc(32, 7) };
const otherKey = { id: keyId(Buffer.alloc(32, 8)), bytes: Buffer.alloc(32, 8) };

async function collect(stream: NodeJS.ReadableStream): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of stream) parts.push(c as Buffer);
  return Buffer.concat(parts);
}
const seal = (plain: Buffer, pieces = 3) => {
  const step = Math.max(1, Math.ceil(plain.length / pieces));
  const chunks = [];
  for (let i = 0; i < plain.length; i += step) chunks.push(plain.subarray(i, i + step));
  return collect(Readable.from(chunks).pipe(encryptStream(key)));
};
const open = (sealed: Buffer, k = key) => collect(Readable.from([sealed]).pipe(decryptStream(k)));

describe('backup encryption', () => {
  it('round-trips any bytes, across chunk boundaries and for empty input', async () => {
    for (const size of [0, 1, CHUNK_BYTES - 1, CHUNK_BYTES, CHUNK_BYTES + 1, 2 * CHUNK_BYTES + 17]) {
      const plain = randomBytes(size);
      const sealed = await seal(plain);
      expect(sealed.length).toBe(HEADER_BYTES + size + 16 * (Math.floor(size / CHUNK_BYTES) + (size % CHUNK_BYTES === 0 && size > 0 ? 0 : 1)));
      expect((await open(sealed)).equals(plain)).toBe(true);
    }
  });

  it('two encryptions of the same bytes differ (a salt per backup)', async () => {
    const plain = Buffer.from('same bytes');
    expect((await seal(plain)).equals(await seal(plain))).toBe(false);
  });

  it('any flipped byte, and any cut, fails authentication; no byte of a bad chunk is handed on', async () => {
    const plain = randomBytes(CHUNK_BYTES + 5000);
    const sealed = await seal(plain);
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: HEADER_BYTES, max: sealed.length - 1 }), fc.integer({ min: 1, max: 255 }), async (at, mask) => {
        const bad = Buffer.from(sealed);
        bad[at] = (bad[at] as number) ^ mask;
        await expect(open(bad)).rejects.toThrow(BackupIntegrityError);
      }),
      fcParams(40),
    );
    // Cut exactly after the first sealed chunk: the first chunk was not sealed as the last.
    await expect(open(sealed.subarray(0, HEADER_BYTES + CHUNK_BYTES + 16))).rejects.toThrow('failed authentication at chunk 0');
    await expect(open(sealed.subarray(0, 10))).rejects.toThrow('cut short');
  });

  it('a wrong key is named, not reported as damage', async () => {
    const sealed = await seal(Buffer.from('ledger'));
    await expect(open(sealed, otherKey)).rejects.toThrow(new BackupKeyError(`this backup was encrypted with backup key ${key.id}; the key given is ${otherKey.id}: use the key file it was made with`));
  });
});

describe('backup key files', () => {
  it('keygen writes 32 random bytes as base64, mode 0600, and never overwrites', async () => {
    const file = join(dir, 'k1');
    const made = writeNewBackupKey(file);
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect(Buffer.from(readFileSync(file, 'utf8').trim(), 'base64')).toHaveLength(32);
    expect((await readBackupKey(file)).id).toBe(made.id);
    expect(() => writeNewBackupKey(file)).toThrow(`${file} exists: a key file is never overwritten`);
  });

  it('refuses a key readable by others, and one that is not 32 bytes of base64', async () => {
    const open = join(dir, 'k2');
    writeFileSync(open, `${randomBytes(32).toString('base64')}\n`, { mode: 0o644 });
    chmodSync(open, 0o644);
    await expect(readBackupKey(open)).rejects.toThrow(`the backup key file ${open} is readable by others (mode 644): run chmod 600 ${open}`);
    const short = join(dir, 'k3');
    writeFileSync(short, randomBytes(16).toString('base64'), { mode: 0o600 });
    await expect(readBackupKey(short)).rejects.toThrow('must hold 32 random bytes as base64');
    await expect(readBackupKey(join(dir, 'none'))).rejects.toThrow('(ENOENT)');
  });
});

describe('retention', () => {
  const at = (iso: string, n = 0) => ({ backup_id: `${iso}-${n}`, created_at: iso });

  it('keeps the newest of each of the last N days, ISO weeks and months, and the newest of all', () => {
    const backups = [
      at('2026-12-02T02:15:00.000Z'),
      at('2026-12-02T01:00:00.000Z', 1),
      at('2026-12-01T02:15:00.000Z'),
      at('2026-11-30T02:15:00.000Z'),
      at('2026-11-23T02:15:00.000Z'),
      at('2026-10-15T02:15:00.000Z'),
      at('2026-09-15T02:15:00.000Z'),
    ];
    const plan = retention(backups, { daily: 2, weekly: 2, monthly: 2 });
    expect(plan.keep.map((k) => [k.backup_id, k.reasons])).toEqual([
      ['2026-12-02T02:15:00.000Z-0', ['newest', 'daily 2026-12-02', 'weekly 2026-W49', 'monthly 2026-12']],
      ['2026-12-01T02:15:00.000Z-0', ['daily 2026-12-01']],
      ['2026-11-30T02:15:00.000Z-0', ['monthly 2026-11']],
      ['2026-11-23T02:15:00.000Z-0', ['weekly 2026-W48']],
    ]);
    expect(plan.remove.map((r) => r.backup_id)).toEqual(['2026-12-02T01:00:00.000Z-1', '2026-10-15T02:15:00.000Z-0', '2026-09-15T02:15:00.000Z-0']);
  });

  it('ISO weeks: the Thursday decides the year', () => {
    expect(isoWeek(new Date('2026-01-01T00:00:00Z'))).toBe('2026-W01');
    expect(isoWeek(new Date('2027-01-01T00:00:00Z'))).toBe('2026-W53');
    expect(isoWeek(new Date('2026-12-28T00:00:00Z'))).toBe('2026-W53');
  });
});

describe('backup settings', () => {
  it('defaults, and clear problems for bad values', () => {
    const c = loadConfig({ DATABANK_DATA_DIR: join(dir, 'data') });
    expect(c.backup).toEqual({
      keyFile: null,
      copyTo: null,
      schedule: '15 2 * * *',
      drillSchedule: '45 3 * * *',
      keep: { daily: 7, weekly: 4, monthly: 12 },
      maxAgeSeconds: 93_600,
    });
    expect(loadConfig({ DATABANK_DATA_DIR: join(dir, 'data'), DATABANK_BACKUP_SCHEDULE: 'off', DATABANK_BACKUP_COPY_TO: join(dir, 'copy') }).backup).toMatchObject({
      schedule: null,
      copyTo: { kind: 'local', dir: join(dir, 'copy') },
    });
    expect(() => loadConfig({ DATABANK_DATA_DIR: join(dir, 'data'), DATABANK_BACKUP_SCHEDULE: 'every day' })).toThrow('DATABANK_BACKUP_SCHEDULE: not a cron expression');
    expect(() => loadConfig({ DATABANK_DATA_DIR: join(dir, 'data'), DATABANK_BACKUP_COPY_TO: join(dir, 'data', 'copies') })).toThrow(
      'DATABANK_BACKUP_COPY_TO: must be outside the data dir',
    );
    expect(() => loadConfig({ DATABANK_DATA_DIR: join(dir, 'data'), DATABANK_BACKUP_COPY_TO: 's3://other-bucket' })).toThrow('s3://bucket needs the file store on S3');
  });
});
