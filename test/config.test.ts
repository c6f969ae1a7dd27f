import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../src/config.ts';

describe('config', () => {
  it('defaults to PGlite under the data dir, migrations on boot', () => {
    const config = loadConfig({});
    expect(config).toEqual({
      dataDir: resolve('.databank'),
      host: '127.0.0.1',
      port: 3000,
      sql: { kind: 'pglite', dataDir: resolve('.databank/pglite') },
      migrateOnBoot: true,
      demoData: true,
      logLevel: 'info',
      cache: { store: { kind: 'memory', maxEntries: 10_000, maxBytes: 64 * 1024 * 1024 }, prefix: 'databank', ttlSeconds: 300 },
      files: {
        store: { kind: 'local', dir: resolve('.databank/files') },
        maxUploadBytes: 25 * 1024 * 1024,
        siteDir: resolve('site'),
      },
      instances: 1,
      shutdownTimeoutMs: 25_000,
      limits: {
        maxBalance: 100_000_000_000_000,
        maxAccountsPerCustomer: 20,
        maxFilesPerCustomer: 1000,
        maxFileBytesPerCustomer: 1024 ** 3,
        rateLimitPerMinute: 6000,
        authFailureLimitPerMinute: 60,
        trustProxy: false,
        batchMax: 256,
      },
      http: {
        headerTimeoutMs: 10_000,
        bodyTimeoutMs: 30_000,
        requestTimeoutMs: 600_000,
        keepAliveTimeoutMs: 5_000,
        maxRequestsPerSocket: 1000,
        maxConnections: 4096,
      },
      broker: { queue: { kind: 'postgres' }, stream: { kind: 'postgres' }, prefix: 'databank', jobConcurrency: 1, jobMaxAttempts: 5 },
      backup: {
        keyFile: null,
        copyTo: null,
        schedule: '15 2 * * *',
        drillSchedule: '45 3 * * *',
        keep: { daily: 7, weekly: 4, monthly: 12 },
        maxAgeSeconds: 93_600,
      },
      replicas: { urls: [], maxLagMs: 1000, checkMs: 200, readYourWritesMs: 10_000 },
      documents: { maxBytes: 65_536 },
      analytics: { path: resolve('.databank/analytics.duckdb'), refreshMs: 30_000 },
    });
    expect(Object.isFrozen(config)).toBe(true);
    expect(Object.isFrozen(config.sql)).toBe(true);
  });

  it('moves the queue to RabbitMQ and the stream to NATS, and refuses URLs and prefixes that cannot be', () => {
    expect(
      loadConfig({ AMQP_URL: 'amqp://u:p@mq:5672', NATS_URL: 'nats://n:4222', DATABANK_BROKER_PREFIX: 'bank_2', DATABANK_JOB_CONCURRENCY: '4' }).broker,
    ).toEqual({
      queue: { kind: 'rabbitmq', url: 'amqp://u:p@mq:5672' },
      stream: { kind: 'nats', url: 'nats://n:4222' },
      prefix: 'bank_2',
      jobConcurrency: 4,
      jobMaxAttempts: 5,
    });
    expect(() => loadConfig({ AMQP_URL: 'http://mq', NATS_URL: 'x', DATABANK_BROKER_PREFIX: 'a.b', DATABANK_JOB_MAX_ATTEMPTS: '0' })).toThrow(
      expect.objectContaining({
        problems: [
          'AMQP_URL: expected a URL starting with amqp:// or amqps://',
          'NATS_URL: expected a URL starting with nats:// or tls://',
          'DATABANK_BROKER_PREFIX: 1 to 32 letters, digits, _ or - (it starts queue, stream and consumer names)',
          'DATABANK_JOB_MAX_ATTEMPTS: "0" is not a whole number from 1 to 100',
        ],
      }),
    );
  });

  it('reads the documents limit and the analytics file and refresh, and refuses bad values', () => {
    const config = loadConfig({ DATABANK_DATA_DIR: '/srv/bank', DATABANK_MAX_DOCUMENT_BYTES: '1024', DATABANK_ANALYTICS_REFRESH_MS: '5000' });
    expect([config.documents, config.analytics]).toEqual([{ maxBytes: 1024 }, { path: '/srv/bank/analytics.duckdb', refreshMs: 5000 }]);
    expect(loadConfig({ DATABANK_ANALYTICS_PATH: '/var/lib/reports.duckdb' }).analytics.path).toBe('/var/lib/reports.duckdb');
    expect(() => loadConfig({ DATABANK_MAX_DOCUMENT_BYTES: '10', DATABANK_ANALYTICS_REFRESH_MS: 'soon' })).toThrow(
      expect.objectContaining({
        problems: [
          'DATABANK_MAX_DOCUMENT_BYTES: "10" is not a whole number from 64 to 16777216',
          'DATABANK_ANALYTICS_REFRESH_MS: "soon" is not a whole number from 1000 to 86400000',
        ],
      }),
    );
  });

  it('reads the limits, and refuses a balance ceiling and account quota whose customer total passes 2^53', () => {
    const config = loadConfig({
      DATABANK_MAX_BALANCE: '5000',
      DATABANK_MAX_ACCOUNTS_PER_CUSTOMER: '3',
      DATABANK_RATE_LIMIT_PER_MINUTE: '10',
      DATABANK_AUTH_FAILURE_LIMIT_PER_MINUTE: '2',
      TRUST_PROXY: '10.0.0.0/8, 127.0.0.1',
      DATABANK_BODY_TIMEOUT_MS: '500',
      DATABANK_BATCH_MAX: '1',
    });
    expect(config.limits).toMatchObject({ maxBalance: 5000, maxAccountsPerCustomer: 3, rateLimitPerMinute: 10, batchMax: 1 });
    expect(config.limits.trustProxy).toBe('10.0.0.0/8, 127.0.0.1');
    expect(loadConfig({ TRUST_PROXY: '2' }).limits.trustProxy).toBe(2);
    expect(loadConfig({ TRUST_PROXY: 'true' }).limits.trustProxy).toBe(true);
    expect(config.http.bodyTimeoutMs).toBe(500);
    const problems = (env: Record<string, string>) => {
      try {
        loadConfig(env);
        return [];
      } catch (err) {
        return (err as ConfigError).problems;
      }
    };
    expect(problems({ DATABANK_MAX_BALANCE: '100000000000001' })).toEqual([
      'DATABANK_MAX_BALANCE: "100000000000001" is not a whole number from 1 to 100000000000000',
    ]);
    expect(problems({ DATABANK_MAX_ACCOUNTS_PER_CUSTOMER: '100' })).toEqual([
      'DATABANK_MAX_BALANCE × DATABANK_MAX_ACCOUNTS_PER_CUSTOMER: 100000000000000 × 100 passes 2^53−1 ' +
        '(9007199254740991), so a customer\'s total could stop being exact; lower one of them',
    ]);
    expect(problems({ DATABANK_BATCH_MAX: '0' })).toEqual(['DATABANK_BATCH_MAX: "0" is not a whole number from 1 to 10000']);
    expect(problems({ TRUST_PROXY: 'everyone' })).toEqual([
      'TRUST_PROXY: "everyone" is not true, false, a hop count or a list of proxy addresses/CIDRs',
    ]);
    expect(problems({ DATABANK_HEADER_TIMEOUT_MS: '20000', DATABANK_REQUEST_TIMEOUT_MS: '10000' })).toEqual([
      'DATABANK_HEADER_TIMEOUT_MS: must not be longer than DATABANK_REQUEST_TIMEOUT_MS',
    ]);
  });

  it('uses a pool with DATABASE_URL and does not migrate on boot unless told', () => {
    const config = loadConfig({ DATABASE_URL: 'postgres://u:p@db.example:5432/bank', DATABASE_POOL_MAX: '7' });
    expect(config.sql).toEqual({
      kind: 'postgres',
      connectionString: 'postgres://u:p@db.example:5432/bank',
      ssl: { mode: 'disable' },
      poolMax: 7,
    });
    expect(config.migrateOnBoot).toBe(false);
    expect(loadConfig({ DATABASE_URL: 'postgres://h/db', MIGRATE_ON_BOOT: 'true' }).migrateOnBoot).toBe(true);
    expect(loadConfig({ MIGRATE_ON_BOOT: 'false' }).migrateOnBoot).toBe(false);
  });

  it('reads sslmode and the CA, and strips TLS parameters from the connection string', () => {
    const dir = mkdtempSync(join(tmpdir(), 'databank-config-'));
    const ca = join(dir, 'ca.pem');
    writeFileSync(ca, 'CA');
    const full = loadConfig({ DATABASE_URL: 'postgres://h/db?sslmode=verify-full', DATABASE_SSL_CA: ca });
    expect(full.sql).toMatchObject({ connectionString: 'postgres://h/db', ssl: { mode: 'verify-full', ca: 'CA' } });
    const implied = loadConfig({ DATABASE_URL: `postgres://h/db?sslrootcert=${ca}` });
    expect(implied.sql).toMatchObject({ ssl: { mode: 'verify-full', ca: 'CA' } });
  });

  it('lists every bad variable in one error', () => {
    let error: unknown;
    try {
      loadConfig({
        PORT: 'eighty',
        LOG_LEVEL: 'loud',
        DATABASE_URL: 'mysql://h/db',
        MIGRATE_ON_BOOT: 'maybe',
        DATABANK_DEMO_DATA: 'perhaps',
        DATABASE_POOL_MAX: '0',
      });
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(ConfigError);
    const problems = (error as ConfigError).problems.map((p) => p.split(':')[0]);
    expect(problems.sort()).toEqual(
      ['DATABANK_DEMO_DATA', 'DATABASE_POOL_MAX', 'DATABASE_URL', 'LOG_LEVEL', 'MIGRATE_ON_BOOT', 'PORT'].sort(),
    );
    expect((error as Error).message).toContain('PORT: "eighty" is not a whole number from 0 to 65535');
  });

  it('refuses unsupported sslmodes, unreadable CA files and a CA without a database', () => {
    expect(() => loadConfig({ DATABASE_URL: 'postgres://h/db?sslmode=prefer' })).toThrow(/sslmode=prefer is not supported/);
    expect(() => loadConfig({ DATABASE_URL: 'postgres://h/db', DATABASE_SSL_CA: '/no/such/ca.pem' })).toThrow(
      /DATABASE_SSL_CA: cannot read the CA file \(ENOENT\)/,
    );
    expect(() => loadConfig({ DATABASE_SSL_CA: '/no/such/ca.pem' })).toThrow(/DATABASE_URL is not/);
  });

  it('uses Redis with REDIS_URL, and refuses the in-process cache for several instances', () => {
    expect(loadConfig({ REDIS_URL: 'redis://127.0.0.1:6379', DATABANK_INSTANCES: '3' }).cache.store).toEqual({
      kind: 'redis',
      url: 'redis://127.0.0.1:6379',
      commandTimeoutMs: 50,
    });
    expect(() => loadConfig({ DATABANK_INSTANCES: '2' })).toThrow(/DATABANK_INSTANCES: 2 copies cannot share the in-process cache/);
    expect(loadConfig({ DATABANK_INSTANCES: '2', DATABANK_CACHE: 'off' }).cache.store).toEqual({ kind: 'off' });
    expect(() => loadConfig({ REDIS_URL: 'http://x' })).toThrow(/REDIS_URL: not a redis:\/\/ or rediss:\/\/ URL/);
  });

  it('never puts the password of DATABASE_URL into an error message', () => {
    expect(() => loadConfig({ DATABASE_URL: 'postgres://u:s3cret@h/db?sslmode=nope' })).toThrow(
      expect.objectContaining({ message: expect.not.stringContaining('s3cret') }),
    );
  });

  it('moves files to S3 with S3_BUCKET, and lists every bad files variable', () => {
    const config = loadConfig({ S3_BUCKET: 'bank-files', S3_ENDPOINT: 'http://127.0.0.1:9000', DATABANK_MAX_UPLOAD_BYTES: '1024' });
    expect(config.files).toEqual({
      store: { kind: 's3', bucket: 'bank-files', endpoint: 'http://127.0.0.1:9000', region: 'us-east-1', forcePathStyle: true },
      maxUploadBytes: 1024,
      siteDir: resolve('site'),
    });
    expect(loadConfig({ S3_BUCKET: 'b-1', S3_REGION: 'eu-west-1' }).files.store).toEqual({
      kind: 's3',
      bucket: 'b-1',
      endpoint: null,
      region: 'eu-west-1',
      forcePathStyle: false,
    });
    expect(loadConfig({ DATABANK_SITE_DIR: 'none' }).files.siteDir).toBeNull();
    expect(() => loadConfig({ DATABANK_SITE_DIR: '/nonexistent-site' })).toThrow(
      expect.objectContaining({ problems: ['DATABANK_SITE_DIR: "/nonexistent-site" is not a folder (or "none" to publish no site)'] }),
    );
    expect(() =>
      loadConfig({ S3_BUCKET: 'Bad_Bucket', S3_ENDPOINT: 'ftp://x', S3_FORCE_PATH_STYLE: 'maybe', DATABANK_MAX_UPLOAD_BYTES: '0' }),
    ).toThrow(
      expect.objectContaining({
        problems: [
          'DATABANK_MAX_UPLOAD_BYTES: "0" is not a whole number from 1 to 5497558138880',
          'S3_BUCKET: "Bad_Bucket" is not a valid bucket name (3 to 63 of a-z, 0-9, . and -)',
          'S3_ENDPOINT: not an http:// or https:// URL',
          'S3_FORCE_PATH_STYLE: "maybe" is not true or false',
        ],
      }),
    );
    expect(() => loadConfig({ S3_ENDPOINT: 'http://x' })).toThrow(
      expect.objectContaining({ problems: ['S3_ENDPOINT: set, but S3_BUCKET is not'] }),
    );
  });
});
