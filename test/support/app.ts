import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino, type Logger } from 'pino';
import { createApp, type App, type AppOptions } from '../../src/app.ts';
import { loadConfig, type Config } from '../../src/config.ts';
import { registerCleanup } from './processes.ts';
import { createTestDatabase, type EngineName, type TestDatabase } from './engines.ts';

export interface TestApp {
  readonly app: App;
  readonly db: TestDatabase;
  readonly adminKey: string;
  /** Authorization header value for the admin key. */
  readonly admin: { authorization: string };
  close(): Promise<void>;
}

const FILES_DIR_PREFIX = join(tmpdir(), 'databank-test-files-');

/**
 * Files in a new temporary local folder, removed by `TestApp.close` (default limits, no site
 * unless `siteDir` is given).
 */
export function localFiles(options: { maxUploadBytes?: number; siteDir?: string | null } = {}): Config['files'] {
  return {
    store: { kind: 'local', dir: mkdtempSync(FILES_DIR_PREFIX) },
    maxUploadBytes: options.maxUploadBytes ?? 25 * 1024 * 1024,
    siteDir: options.siteDir ?? null,
  };
}

/**
 * A new, empty data dir (it receives `deployment.json`), removed when the test or, made in a
 * `beforeAll`, the file ends.
 */
export function testDataDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'databank-test-data-'));
  registerCleanup(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

// DATABANK_BATCH_MAX=1 runs every suite on the single path (no batching writer).
const TEST_DEFAULTS = loadConfig({
  DATABANK_SITE_DIR: 'none',
  ...(process.env.DATABANK_BATCH_MAX ? { DATABANK_BATCH_MAX: process.env.DATABANK_BATCH_MAX } : {}),
});

/**
 * The limits test apps run with: the defaults but the request limits, since tests send thousands
 * of requests, and many 401s, from one address; the tests of the limits set their own.
 */
export const TEST_LIMITS: Config['limits'] = {
  ...TEST_DEFAULTS.limits,
  rateLimitPerMinute: 10_000_000,
  authFailureLimitPerMinute: 10_000_000,
};

/**
 * The config a test app runs with: everything default but the database, and files in a new
 * temporary folder (removed by `TestApp.close`); no site is deployed unless `files` says so.
 */
export function testConfig(db: TestDatabase, overrides: Partial<Config> = {}): Config {
  const dataDir = overrides.dataDir ?? testDataDir();
  return {
    dataDir,
    host: '127.0.0.1',
    port: 0,
    sql: db.sql,
    migrateOnBoot: true,
    demoData: true,
    logLevel: 'silent',
    cache: { store: { kind: 'memory', maxEntries: 10_000, maxBytes: 64 * 1024 * 1024 }, prefix: 'test', ttlSeconds: 300 },
    files: overrides.files ?? localFiles(),
    instances: 1,
    shutdownTimeoutMs: 25_000,
    limits: TEST_LIMITS,
    http: TEST_DEFAULTS.http,
    broker: TEST_DEFAULTS.broker,
    backup: TEST_DEFAULTS.backup,
    replicas: TEST_DEFAULTS.replicas,
    documents: TEST_DEFAULTS.documents,
    analytics: { ...TEST_DEFAULTS.analytics, path: join(dataDir, 'analytics.duckdb') },
    ...overrides,
  };
}

/** An app on a fresh database with the chapter's demo data and an admin key. */
export async function startTestApp(
  engine: EngineName,
  label: string,
  overrides: Partial<Config> = {},
  logger: Logger = pino({ level: 'silent' }),
  appOptions: Omit<AppOptions, 'logger'> = {},
): Promise<TestApp> {
  const db = await createTestDatabase(engine, label);
  const config = testConfig(db, overrides);
  const removeFiles = () => {
    const store = config.files.store;
    if (store.kind === 'local' && store.dir.startsWith(FILES_DIR_PREFIX)) rmSync(store.dir, { recursive: true, force: true });
  };
  let app: App;
  try {
    app = await createApp(config, { defaultMetrics: false, ...appOptions, logger });
  } catch (err) {
    removeFiles();
    throw err;
  }
  const adminKey = app.bootstrapped?.adminKey;
  if (!adminKey) throw new Error('bootstrap made no admin key');
  return {
    app,
    db,
    adminKey,
    admin: { authorization: `Bearer ${adminKey}` },
    async close() {
      await app.close();
      await db.drop();
      removeFiles();
    },
  };
}

/** Makes a key through the service, as `databank keys create` does. */
export async function customerKey(t: TestApp, customerId: number): Promise<{ authorization: string }> {
  const created = await t.app.deps.apiKeys.create('customer', customerId);
  return { authorization: `Bearer ${created.key}` };
}
