import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  PGBACKREST,
  PitrCommandError,
  parsePitrTime,
  pitrConfig,
  pitrInit,
  pitrRestore,
  pitrSetup,
  writePitrConfig,
} from '../../src/services/backup/pitr.ts';
import type { CommandRunner, PitrSetupOptions } from '../../src/services/backup/pitr.ts';
import { freePort } from '../support/cli.ts';
import { AS_ROOT, initCluster, missingClusterTools, PG_IDS, startCluster, stopCluster } from '../support/pg-cluster.ts';
import { waitFor } from '../support/processes.ts';

/**
 * Point-in-time recovery end to end: a throwaway PostgreSQL 15 cluster archives WAL into an
 * encrypted pgBackRest repository in a temp dir, a small bank makes transfers on both sides of a
 * moment T, and a restore to T into a new data dir, started on another port, holds exactly the
 * transfers committed before T with the money intact. The machine's own cluster is never touched.
 */

/** pgBackRest refuses to run as root too; as root it runs as the `postgres` OS user. */
const AS_USER = AS_ROOT ? 'postgres' : undefined;

const missing = missingClusterTools('pgBackRest PITR suite', [{ path: PGBACKREST, hint: 'Debian package pgbackrest' }]);

/** Opens a connection with session time zone UTC, runs `body`, and always closes it. */
async function withClient<T>(port: number, body: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ host: '127.0.0.1', port, user: 'postgres', database: 'postgres', options: '-c TimeZone=UTC' });
  await client.connect();
  try {
    return await body(client);
  } finally {
    await client.end();
  }
}

/** Transfer `n` (1-based): a fixed pair of different accounts and amount, the same every run. */
function transferFor(n: number): { from: number; to: number; amount: number } {
  const from = ((n * 3) % 10) + 1;
  const to = ((n * 3 + 1 + (n % 9)) % 10) + 1;
  return { from, to, amount: 10 + n };
}

/** One transaction: money leaves one account, reaches another, and the transfer is recorded. */
async function transfer(client: pg.Client, n: number): Promise<void> {
  const { from, to, amount } = transferFor(n);
  await client.query('begin');
  try {
    await client.query('update accounts set balance = balance - $2 where id = $1', [from, amount]);
    await client.query('update accounts set balance = balance + $2 where id = $1', [to, amount]);
    await client.query('insert into transfers (id, from_id, to_id, amount) values ($1, $2, $3, $4)', [n, from, to, amount]);
    await client.query('commit');
  } catch (err) {
    await client.query('rollback');
    throw err;
  }
}

interface BankState {
  readonly balances: { id: number; balance: number }[];
  readonly transfers: { id: number; from_id: number; to_id: number; amount: number }[];
}

async function readBank(client: pg.Client): Promise<BankState> {
  const balances = await client.query<{ id: number; balance: string }>('select id, balance from accounts order by id');
  const transfers = await client.query<{ id: number; from_id: number; to_id: number; amount: string }>(
    'select id, from_id, to_id, amount from transfers order by id',
  );
  return {
    balances: balances.rows.map((r) => ({ id: r.id, balance: Number(r.balance) })),
    transfers: transfers.rows.map((r) => ({ ...r, amount: Number(r.amount) })),
  };
}

describe.skipIf(missing.length > 0)('point-in-time recovery with pgBackRest (throwaway clusters)', () => {
  let root: string | null = null;
  let dataDir = '';
  let restoredDir = '';
  let port = 0;
  let options: PitrSetupOptions;
  /** When the full backup ended, in whole seconds since the epoch, as pgBackRest records it. */
  let backupStop = 0;
  /** Data dirs of the clusters started, stopped last first in afterAll. */
  const clusters: string[] = [];

  beforeAll(async () => {
    root = mkdtempSync(join(tmpdir(), 'databank-pitr-'));
    const dir = root;
    chmodSync(dir, 0o700);
    if (PG_IDS) chownSync(dir, PG_IDS.uid, PG_IDS.gid);
    dataDir = join(dir, 'data');
    restoredDir = join(dir, 'restored');

    port = await initCluster(dir, dataDir, 'PITR test', ['max_connections = 20', 'max_wal_size = 64MB']);

    options = {
      stanza: 'bank',
      pgDataDir: dataDir,
      pgPort: port,
      pgSocketDir: dir,
      pgUser: 'postgres',
      repoPath: join(dir, 'repo'),
      cipherPass: 'correct horse battery staple',
      configPath: join(dir, 'pgbackrest.conf'),
      logPath: join(dir, 'log'),
      lockPath: join(dir, 'lock'),
      asUser: AS_USER,
      timeoutMs: 60_000,
    };

    clusters.push(dataDir);
    await startCluster(dir, dataDir, join(dir, 'server.log'), port);

    const setup = await pitrSetup(options);
    expect(setup).toEqual({ configPath: options.configPath, restartNeeded: true });
    expect(statSync(options.configPath).mode & 0o777).toBe(0o600);
    // archive_mode only changes at a restart.
    await stopCluster(dir, dataDir, 'fast');
    await startCluster(dir, dataDir, join(dir, 'server.log'), port);
    const first = await pitrInit(options);
    expect(first.label).toMatch(/^\d{8}-\d{6}F$/);
    backupStop = first.stoppedAt.getTime() / 1000;
  }, 120_000);

  afterAll(async () => {
    try {
      if (root) for (const dir of [...clusters].reverse()) await stopCluster(root, dir);
    } finally {
      if (root) rmSync(root, { recursive: true, force: true });
    }
  }, 60_000);

  it('a second setup changes nothing and needs no restart', async () => {
    const auto = readFileSync(join(dataDir, 'postgresql.auto.conf'), 'utf8');
    await expect(pitrSetup(options)).resolves.toEqual({ configPath: options.configPath, restartNeeded: false });
    expect(readFileSync(join(dataDir, 'postgresql.auto.conf'), 'utf8')).toBe(auto);
    expect(auto.match(/^archive_mode = 'on'$/gm)).toHaveLength(1);
  });

  it('a restore to T brings back exactly the transfers committed before T, money intact', async () => {
    const { t, atT, segment } = await withClient(port, async (client) => {
      // pgBackRest serves a target only from a backup that ended in an earlier whole second: the
      // server's clock moves past that second before T can be taken.
      await client.query(
        `do $$ begin while clock_timestamp() < to_timestamp(${backupStop + 1}) loop perform pg_sleep(0.01); end loop; end $$`,
      );
      await client.query(`
        create table accounts (id int primary key, balance bigint not null check (balance >= 0));
        create table transfers (
          id int primary key,
          from_id int not null references accounts,
          to_id int not null references accounts,
          amount bigint not null check (amount > 0),
          check (from_id <> to_id)
        );
        insert into accounts select g, 1000 from generate_series(1, 10) g;
      `);
      for (let n = 1; n <= 20; n++) await transfer(client, n);
      // T comes from the server after the 20 commits; the next commits are made strictly later
      // by waiting on the server's own clock, not by sleeping.
      const { rows } = await client.query<{ t: string }>('select now()::text as t');
      const t = rows[0]!.t;
      const atT = await readBank(client);
      await client.query(`do $$ begin while clock_timestamp() <= '${t}'::timestamptz loop end loop; end $$`);
      for (let n = 21; n <= 35; n++) await transfer(client, n);
      const switched = await client.query<{ segment: string }>('select pg_walfile_name(pg_switch_wal()) as segment');
      return { t, atT, segment: switched.rows[0]!.segment };
    });
    expect(atT.transfers.map((r) => r.id)).toEqual(Array.from({ length: 20 }, (_, i) => i + 1));

    // The segment holding commits 21..35 must be in the repository, or recovery would end before T.
    await withClient(port, (client) =>
      waitFor(
        `WAL segment ${segment} is archived`,
        async () => {
          const { rows } = await client.query<{ last: string | null }>('select last_archived_wal as last from pg_stat_archiver');
          return rows[0]!.last !== null && rows[0]!.last >= segment;
        },
        { timeoutMs: 30_000, everyMs: 100 },
      ),
    );

    const progress: string[] = [];
    const restored = await pitrRestore({
      configPath: options.configPath,
      stanza: options.stanza,
      time: t,
      toDir: restoredDir,
      asUser: AS_USER,
      timeoutMs: 60_000,
      onProgress: (line) => progress.push(line),
    });
    expect(restored).toEqual({ toDir: restoredDir, target: parsePitrTime(t) });
    expect(progress.some((line) => line.includes('restore command end: completed successfully'))).toBe(true);
    expect(existsSync(join(options.logPath!, 'bank-restore.log'))).toBe(true);

    const restoredPort = await freePort();
    clusters.push(restoredDir);
    await startCluster(root!, restoredDir, join(root!, 'restored.log'), restoredPort);
    await withClient(restoredPort, async (client) => {
      // Connections are accepted during recovery; the copy is done once it has promoted itself.
      await waitFor(
        'the restored cluster has promoted itself',
        async () => (await client.query<{ r: boolean }>('select pg_is_in_recovery() as r')).rows[0]!.r === false,
        { timeoutMs: 30_000, everyMs: 100 },
      );
      const bank = await readBank(client);
      expect(bank.transfers.map((r) => r.id)).toEqual(Array.from({ length: 20 }, (_, i) => i + 1));
      expect(bank).toEqual(atT);
      expect(bank.balances.reduce((sum, a) => sum + a.balance, 0)).toBe(10_000);
      for (const { id, balance } of bank.balances) {
        const incoming = bank.transfers.filter((r) => r.to_id === id).reduce((sum, r) => sum + r.amount, 0);
        const outgoing = bank.transfers.filter((r) => r.from_id === id).reduce((sum, r) => sum + r.amount, 0);
        expect({ id, balance }).toEqual({ id, balance: 1000 + incoming - outgoing });
      }
      // The copy does not archive into the stanza it came from.
      const { rows } = await client.query<{ archive_mode: string }>('show archive_mode');
      expect(rows[0]!.archive_mode).toBe('off');
    });

    // The source went on: all 35 transfers are there.
    await withClient(port, async (client) => {
      expect((await readBank(client)).transfers).toHaveLength(35);
    });
  });

  it('force empties a non-empty dir before restoring, and restores over an old data dir with a delta', async () => {
    const toDir = join(root!, 'forced');
    mkdirSync(toDir, { mode: 0o700 });
    writeFileSync(join(toDir, 'stray.txt'), 'not part of any backup\n');
    if (PG_IDS) {
      chownSync(toDir, PG_IDS.uid, PG_IDS.gid);
      chownSync(join(toDir, 'stray.txt'), PG_IDS.uid, PG_IDS.gid);
    }
    const time = new Date().toISOString();
    const restore = (progress: string[]) =>
      pitrRestore({
        configPath: options.configPath,
        stanza: options.stanza,
        time,
        toDir,
        force: true,
        asUser: AS_USER,
        timeoutMs: 60_000,
        onProgress: (line) => progress.push(line),
      });
    const first: string[] = [];
    await expect(restore(first)).resolves.toEqual({ toDir, target: parsePitrTime(time) });
    expect(first.find((line) => line.includes('restore command begin'))).not.toContain('--delta');
    expect(existsSync(join(toDir, 'PG_VERSION'))).toBe(true);
    expect(existsSync(join(toDir, 'stray.txt'))).toBe(false);

    const second: string[] = [];
    await expect(restore(second)).resolves.toEqual({ toDir, target: parsePitrTime(time) });
    const begin = second.find((line) => line.includes('restore command begin'));
    expect(begin).toContain('--delta');
    expect(begin).not.toContain('--force');
  });

  it('a restore with the wrong cipher pass fails and leaves the target dir without a cluster', async () => {
    const wrongConfig = join(root!, 'wrong-pass.conf');
    await writePitrConfig({ ...options, configPath: wrongConfig, cipherPass: 'not the pass' });
    const toDir = join(root!, 'wrong-pass-restore');
    const err = await pitrRestore({
      configPath: wrongConfig,
      stanza: options.stanza,
      time: new Date().toISOString(),
      toDir,
      asUser: AS_USER,
      timeoutMs: 60_000,
    }).then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(PitrCommandError);
    const message = (err as PitrCommandError).message;
    expect(message.split('\n')[0]).toBe(
      'pgbackrest restore failed (exit code 75) (the repository could not be read: check repo1-cipher-pass, and that stanza-create ran):',
    );
    // pgBackRest's own words: the decrypted backup.info is not an info file.
    expect(message).toContain(`[FormatError] unable to load info file '${options.repoPath}/backup/bank/backup.info'`);
    expect(existsSync(join(toDir, 'PG_VERSION'))).toBe(false);
  });
});

describe('pgBackRest PITR: configuration and input checks', () => {
  const base: PitrSetupOptions = {
    stanza: 'bank',
    pgDataDir: '/srv/pg/data',
    pgPort: 5433,
    pgSocketDir: '/run/postgresql',
    repoPath: '/srv/pgbackrest',
    cipherPass: 'secret pass',
    configPath: '/etc/pgbackrest/bank.conf',
    logPath: '/var/log/pgbackrest',
  };

  /** A runner that fails the test if anything is spawned. */
  const calls: string[] = [];
  const recording: CommandRunner = async (file, args) => {
    calls.push([file, ...args].join(' '));
    throw new Error('no process should have been started');
  };

  it('writes the pgbackrest.conf and archiving settings for a directory repository', () => {
    expect(pitrConfig(base)).toEqual({
      pgbackrestConf: [
        '[global]',
        'repo1-path=/srv/pgbackrest',
        'repo1-cipher-type=aes-256-cbc',
        'repo1-cipher-pass=secret pass',
        'repo1-retention-full=2',
        'compress-type=zst',
        'start-fast=y',
        'log-level-console=warn',
        'log-level-file=info',
        'log-path=/var/log/pgbackrest',
        '',
        '[bank]',
        'pg1-path=/srv/pg/data',
        'pg1-port=5433',
        'pg1-socket-path=/run/postgresql',
        '',
      ].join('\n'),
      postgresqlConf: [
        "archive_mode = 'on'",
        "archive_command = '/usr/bin/pgbackrest --config=/etc/pgbackrest/bank.conf --stanza=bank archive-push %p'",
        "wal_level = 'replica'",
        '',
      ].join('\n'),
    });
  });

  it('quotes a config path for the shell and for PostgreSQL, and escapes % for archive_command', () => {
    const { postgresqlConf } = pitrConfig({ ...base, configPath: "/etc/pg backrest/it's 100%.conf" });
    expect(postgresqlConf.split('\n')[1]).toBe(
      `archive_command = '/usr/bin/pgbackrest ''--config=/etc/pg backrest/it''\\''''s 100%%.conf'' --stanza=bank archive-push %p'`,
    );
  });

  it('writes S3 settings', () => {
    const { pgbackrestConf } = pitrConfig({
      ...base,
      repoPath: undefined,
      retentionFull: 4,
      s3: {
        bucket: 'backups',
        endpoint: '127.0.0.1:9443',
        region: 'us-east-1',
        key: 'AKID',
        secret: 'SECRET',
        verifyTls: false,
        pathStyle: true,
        prefix: 'bank/',
      },
    });
    expect(pgbackrestConf.split('\n').slice(0, 13)).toEqual([
      '[global]',
      'repo1-type=s3',
      'repo1-path=/bank',
      'repo1-s3-bucket=backups',
      'repo1-s3-endpoint=127.0.0.1:9443',
      'repo1-s3-region=us-east-1',
      'repo1-s3-key=AKID',
      'repo1-s3-key-secret=SECRET',
      'repo1-s3-uri-style=path',
      'repo1-storage-verify-tls=n',
      'repo1-cipher-type=aes-256-cbc',
      'repo1-cipher-pass=secret pass',
      'repo1-retention-full=4',
    ]);
  });

  it('refuses options pgBackRest would refuse', () => {
    expect(() => pitrConfig({ ...base, repoPath: undefined })).toThrow('give exactly one repository');
    expect(() => pitrConfig({ ...base, s3: { bucket: 'b', endpoint: 'e', region: 'r', key: 'k', secret: 's', verifyTls: true } })).toThrow(
      'give exactly one repository',
    );
    expect(() => pitrConfig({ ...base, cipherPass: 'two\nlines' })).toThrow('cipherPass must be one line');
    expect(() => pitrConfig({ ...base, pgDataDir: 'relative/data' })).toThrow('pgDataDir must be an absolute path');
    expect(() => pitrConfig({ ...base, stanza: 'bad stanza' })).toThrow('stanza "bad stanza" must be');
  });

  it('reads ISO 8601 and PostgreSQL times with a zone, and writes them one way', () => {
    expect(parsePitrTime('2026-12-01T09:30:00Z')).toBe('2026-12-01 09:30:00+00:00');
    expect(parsePitrTime('2026-12-01T09:30:00.123Z')).toBe('2026-12-01 09:30:00.123+00:00');
    expect(parsePitrTime('2026-12-01 09:30:00.123456+00')).toBe('2026-12-01 09:30:00.123456+00:00');
    expect(parsePitrTime('2026-12-01 09:30:00-0530')).toBe('2026-12-01 09:30:00-05:30');
    expect(parsePitrTime('2024-02-29T23:59:59+01:00')).toBe('2024-02-29 23:59:59+01:00');
  });

  it.each([
    ['no zone', '2026-12-01 09:30:00'],
    ['a date only', '2026-12-01'],
    ['no such day', '2026-02-29T10:00:00Z'],
    ['hour 24', '2026-12-01T24:00:00Z'],
    ['nanoseconds', '2026-12-01T09:30:00.123456789Z'],
    ['words', 'yesterday'],
    ['trailing text', "2026-12-01T09:30:00Z'; drop table accounts"],
  ])('rejects %s before any process runs', async (_what, time) => {
    calls.length = 0;
    const err = await pitrRestore(
      { configPath: '/etc/pgbackrest/bank.conf', stanza: 'bank', time, toDir: '/nonexistent/restore' },
      recording,
    ).then(
      () => null,
      (e: unknown) => e as Error,
    );
    expect(err?.message).toBe(
      `invalid recovery time "${time}": expected an ISO 8601 or PostgreSQL timestamp with a zone, ` +
        'such as 2026-12-01T09:30:00Z or 2026-12-01 09:30:00.123456+01:00',
    );
    expect(calls).toEqual([]);
  });

  it('refuses a non-empty target dir unless forced, before any process runs', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'databank-pitr-nonempty-'));
    try {
      mkdirSync(join(dir, 'something'));
      calls.length = 0;
      await expect(
        pitrRestore({ configPath: '/etc/pgbackrest/bank.conf', stanza: 'bank', time: '2026-12-01T09:30:00Z', toDir: dir }, recording),
      ).rejects.toThrow(`pitr restore: ${dir} is not empty; restore into a new directory, or pass force to overwrite it`);
      expect(calls).toEqual([]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('names the Debian package when the pgbackrest binary is missing', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'databank-pitr-nobin-'));
    try {
      calls.length = 0;
      await expect(
        pitrRestore(
          {
            configPath: '/etc/pgbackrest/bank.conf',
            stanza: 'bank',
            time: '2026-12-01T09:30:00Z',
            toDir: join(dir, 'restore'),
            binary: join(dir, 'no-pgbackrest'),
          },
          recording,
        ),
      ).rejects.toThrow(`${join(dir, 'no-pgbackrest')} is missing or not executable: install the Debian package pgbackrest`);
      expect(calls).toEqual([]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
