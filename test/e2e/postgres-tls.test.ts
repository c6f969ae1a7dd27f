import { chmodSync, chownSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../../src/config.ts';
import type { Config } from '../../src/config.ts';
import { openSqlStore } from '../../src/stores/sql/index.ts';
import type { SqlStore } from '../../src/stores/sql/index.ts';
import { DatabaseConnectError } from '../../src/stores/sql/postgres.ts';
import { initCluster, missingClusterTools, PG_IDS, startCluster, stopCluster } from '../support/pg-cluster.ts';
import type { ClusterTimeouts } from '../support/pg-cluster.ts';
import { runProcess } from '../support/processes.ts';

/**
 * End to end TLS against a real PostgreSQL 15 server: a throwaway cluster with a certificate from a
 * private CA (SAN DNS:localhost only), reached through loadConfig → openSqlStore → ping, the way the
 * service does it. The machine's own cluster (port 5432) is never touched.
 */

const OPENSSL = '/usr/bin/openssl';
/** Tighter than the defaults: a fresh cluster starts quickly. */
const TIMEOUTS: ClusterTimeouts = { toolMs: 30_000, readyMs: 20_000 };

const missing = missingClusterTools('PostgreSQL TLS suite', [{ path: OPENSSL }]);

async function openssl(args: readonly string[], cwd: string): Promise<void> {
  await runProcess(OPENSSL, args, { cwd, timeoutMs: 30_000, check: true, what: `openssl ${args[0] ?? ''}` });
}

/** A CA: key plus self-signed certificate. */
async function makeCa(dir: string, name: string): Promise<string> {
  writeFileSync(
    join(dir, `${name}.cnf`),
    [
      '[req]',
      'distinguished_name = dn',
      'prompt = no',
      '[dn]',
      `CN = databank test ${name}`,
      '[v3_ca]',
      'basicConstraints = critical, CA:TRUE',
      'keyUsage = critical, keyCertSign, cRLSign',
      'subjectKeyIdentifier = hash',
      '',
    ].join('\n'),
  );
  await openssl(
    [
      'req', '-x509', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
      '-keyout', `${name}.key`, '-out', `${name}.crt`, '-days', '2',
      '-config', `${name}.cnf`, '-extensions', 'v3_ca',
    ],
    dir,
  );
  return join(dir, `${name}.crt`);
}

/** A server key and certificate signed by `ca`, valid for DNS:localhost only (no IP SAN). */
async function makeServerCert(dir: string, ca: string): Promise<{ cert: string; key: string }> {
  writeFileSync(
    join(dir, 'server.cnf'),
    ['[req]', 'distinguished_name = dn', 'prompt = no', '[dn]', 'CN = localhost', ''].join('\n'),
  );
  writeFileSync(
    join(dir, 'server.ext'),
    [
      'basicConstraints = critical, CA:FALSE',
      'keyUsage = critical, digitalSignature, keyEncipherment',
      'extendedKeyUsage = serverAuth',
      'subjectAltName = DNS:localhost',
      'authorityKeyIdentifier = keyid',
      '',
    ].join('\n'),
  );
  await openssl(
    [
      'req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
      '-keyout', 'server.key', '-out', 'server.csr', '-config', 'server.cnf',
    ],
    dir,
  );
  await openssl(
    [
      'x509', '-req', '-in', 'server.csr', '-CA', `${ca}.crt`, '-CAkey', `${ca}.key`, '-set_serial', '1001',
      '-out', 'server.crt', '-days', '2', '-extfile', 'server.ext',
    ],
    dir,
  );
  return { cert: join(dir, 'server.crt'), key: join(dir, 'server.key') };
}

describe.skipIf(missing.length > 0)('PostgreSQL over TLS (throwaway cluster)', () => {
  let root: string | null = null;
  let dataDir = '';
  let logFile = '';
  let started = false;
  let port = 0;
  let rightCa = '';
  let wrongCa = '';

  beforeAll(async () => {
    root = mkdtempSync(join(tmpdir(), 'databank-pgtls-'));
    const dir = root;
    chmodSync(dir, 0o700);
    dataDir = join(dir, 'data');
    logFile = join(dir, 'server.log');

    rightCa = await makeCa(dir, 'ca');
    wrongCa = await makeCa(dir, 'wrong-ca');
    const server = await makeServerCert(dir, 'ca');
    chmodSync(server.key, 0o600);
    if (PG_IDS) {
      chownSync(dir, PG_IDS.uid, PG_IDS.gid);
      chownSync(server.key, PG_IDS.uid, PG_IDS.gid);
      chownSync(server.cert, PG_IDS.uid, PG_IDS.gid);
    }

    port = await initCluster(
      dir,
      dataDir,
      'TLS test',
      [
        'ssl = on',
        `ssl_cert_file = '${server.cert}'`,
        `ssl_key_file = '${server.key}'`,
        'fsync = off',
        'max_connections = 20',
      ],
      TIMEOUTS,
    );
    const conf = join(dataDir, 'postgresql.conf');
    // TCP only over TLS; the unix socket stays for the tools.
    writeFileSync(
      join(dataDir, 'pg_hba.conf'),
      ['local all all trust', 'hostssl all all 127.0.0.1/32 trust', 'hostnossl all all 127.0.0.1/32 reject', ''].join('\n'),
    );
    if (PG_IDS) {
      chownSync(conf, PG_IDS.uid, PG_IDS.gid);
      chownSync(join(dataDir, 'pg_hba.conf'), PG_IDS.uid, PG_IDS.gid);
    }

    // Marked started before the call: if pg_ctl fails or times out, afterAll still stops whatever runs.
    started = true;
    await startCluster(dir, dataDir, logFile, port, TIMEOUTS);
  }, 60_000);

  afterAll(async () => {
    try {
      if (started && root) await stopCluster(root, dataDir, 'immediate', TIMEOUTS);
    } finally {
      if (root) rmSync(root, { recursive: true, force: true });
    }
  }, 30_000);

  function configFor(host: string, ca: string | null): Config {
    return loadConfig({
      DATABASE_URL: `postgres://postgres@${host}:${port}/postgres?sslmode=verify-full`,
      ...(ca ? { DATABASE_SSL_CA: ca } : {}),
    });
  }

  /** Opens a store, runs `body`, and always closes the store. */
  async function withStore<T>(config: Config, body: (store: SqlStore) => Promise<T>): Promise<T> {
    const store = await openSqlStore(config.sql);
    try {
      return await body(store);
    } finally {
      await store.close();
    }
  }

  /** The error ping rejects with (fails the test when ping succeeds). */
  async function pingError(config: Config): Promise<Error> {
    return withStore(config, async (store) => {
      try {
        await store.ping(5_000);
      } catch (err) {
        expect(err).toBeInstanceOf(Error);
        return err as Error;
      }
      throw new Error('ping succeeded, but the connection should have been refused');
    });
  }

  it('verify-full with the right CA and host name connects, over TLS', async () => {
    const config = configFor('localhost', rightCa);
    expect(config.sql).toMatchObject({
      kind: 'postgres',
      connectionString: `postgres://postgres@localhost:${port}/postgres`,
      ssl: { mode: 'verify-full', ca: readFileSync(rightCa, 'utf8') },
    });
    await withStore(config, async (store) => {
      await expect(store.ping(5_000)).resolves.toBeUndefined();
      const { rows } = await sql<{ ssl: boolean }>`select ssl from pg_stat_ssl where pid = pg_backend_pid()`.execute(
        store.db,
      );
      expect(rows).toEqual([{ ssl: true }]);
    });
  });

  it('verify-full with a CA that did not sign the server certificate is refused', async () => {
    const err = await pingError(configFor('localhost', wrongCa));
    expect(err).toBeInstanceOf(DatabaseConnectError);
    expect(err.message).toContain('certificate rejected');
    expect(err.message).toContain('not signed by the trusted CA');
  });

  it('verify-full to 127.0.0.1 is refused: the certificate names only localhost', async () => {
    const err = await pingError(configFor('127.0.0.1', rightCa));
    expect(err).toBeInstanceOf(DatabaseConnectError);
    expect(err.message).toContain('certificate rejected');
    expect(err.message).toContain('host name does not match');
    expect(err.message).toContain('ERR_TLS_CERT_ALTNAME_INVALID');
  });

  it('verify-full without a CA trusts only the system CAs, which do not know the private CA', async () => {
    const config = configFor('localhost', null);
    expect(config.sql).toMatchObject({ kind: 'postgres', ssl: { mode: 'verify-full', ca: null } });
    const err = await pingError(config);
    expect(err).toBeInstanceOf(DatabaseConnectError);
    expect(err.message).toContain('certificate rejected');
    expect(err.message).toContain('not signed by the trusted CA');
  });
});

describe('loadConfig: TLS settings', () => {
  const missingCa = join(tmpdir(), `databank-no-such-ca-${process.pid}-${Date.now()}.pem`);

  function configError(env: Record<string, string>): ConfigError {
    try {
      loadConfig(env);
    } catch (err) {
      expect(err).toBeInstanceOf(ConfigError);
      return err as ConfigError;
    }
    throw new Error('loadConfig accepted a bad configuration');
  }

  it('a CA file that cannot be read names DATABASE_SSL_CA', () => {
    const err = configError({
      DATABASE_URL: 'postgres://postgres@localhost:5432/postgres?sslmode=verify-full',
      DATABASE_SSL_CA: missingCa,
    });
    expect(err.problems).toEqual(['DATABASE_SSL_CA: cannot read the CA file (ENOENT)']);
    expect(err.message).toContain('DATABASE_SSL_CA');
  });

  it('an unknown sslmode names DATABASE_URL', () => {
    const err = configError({ DATABASE_URL: 'postgres://postgres@localhost:5432/postgres?sslmode=bogus' });
    expect(err.problems).toHaveLength(1);
    expect(err.problems[0]).toMatch(/^DATABASE_URL: sslmode=bogus is not supported/);
    expect(err.message).toContain('DATABASE_URL');
  });

  it('both problems at once are both listed', () => {
    const err = configError({
      DATABASE_URL: 'postgres://postgres@localhost:5432/postgres?sslmode=bogus',
      DATABASE_SSL_CA: missingCa,
    });
    expect(err.problems).toHaveLength(2);
    expect(err.problems.some((p) => p.startsWith('DATABASE_SSL_CA:'))).toBe(true);
    expect(err.problems.some((p) => p.startsWith('DATABASE_URL: sslmode=bogus'))).toBe(true);
    expect(err.message).toContain('DATABASE_SSL_CA');
    expect(err.message).toContain('DATABASE_URL');
  });
});
