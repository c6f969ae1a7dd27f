import { readFileSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { Cron } from 'croner';
import { packagePath } from './paths.ts';

/** How the app reaches PostgreSQL: the embedded engine, or a server through a pool. */
export type SqlConfig = { readonly kind: 'pglite'; readonly dataDir: string | null } | PostgresSqlConfig;

/** A PostgreSQL server: the primary (`DATABASE_URL`) or a replica (`DATABASE_REPLICA_URLS`). */
export interface PostgresSqlConfig {
  readonly kind: 'postgres';
  /** The connection string with TLS parameters removed; TLS is described by `ssl`. */
  readonly connectionString: string;
  readonly ssl: SslConfig;
  readonly poolMax: number;
}

export type SslConfig =
  | { readonly mode: 'disable' }
  | { readonly mode: 'require' | 'verify-ca' | 'verify-full'; readonly ca: string | null };

/** The key-value cache: off, in-process (one process only), or Redis/Valkey shared by all. */
export type CacheConfig =
  | { readonly kind: 'off' }
  | { readonly kind: 'memory'; readonly maxEntries: number; readonly maxBytes: number }
  | { readonly kind: 'redis'; readonly url: string; readonly commandTimeoutMs: number };

export interface CacheSettings {
  readonly store: CacheConfig;
  /** Keys start with `<prefix>:v<schema>:`, so deployments and cached shapes never mix. */
  readonly prefix: string;
  /** The last line of defence against a missed invalidation, not the correctness mechanism. */
  readonly ttlSeconds: number;
}

/** Where file bytes live: a local folder, or a bucket of any S3-compatible store. */
export type FilesConfig =
  | { readonly kind: 'local'; readonly dir: string }
  | {
      readonly kind: 's3';
      readonly bucket: string;
      /** null: the AWS endpoint of the region. */
      readonly endpoint: string | null;
      readonly region: string;
      readonly forcePathStyle: boolean;
    };

export interface FilesSettings {
  readonly store: FilesConfig;
  /** Largest customer upload in bytes; larger ones get 413. */
  readonly maxUploadBytes: number;
  /** The folder `databank serve` deploys to the store on first start; null: none. */
  readonly siteDir: string | null;
}

/** Bounds on money and on what one customer may hold (the [hardening] rules). */
export interface LimitsSettings {
  /** Largest balance any account may reach, in minor units; the database checks 10^14 too. */
  readonly maxBalance: number;
  readonly maxAccountsPerCustomer: number;
  readonly maxFilesPerCustomer: number;
  readonly maxFileBytesPerCustomer: number;
  /** Requests per minute per API key. */
  readonly rateLimitPerMinute: number;
  /** Requests per minute per client IP without a valid key. */
  readonly authFailureLimitPerMinute: number;
  /** Whether the client IP is read from `X-Forwarded-For` (Fastify's `trustProxy`). */
  readonly trustProxy: boolean | string | number;
  /**
   * `DATABANK_BATCH_MAX`: most money movements the batching writer sends to PostgreSQL in one
   * transaction; 1 sends each alone (no batching).
   */
  readonly batchMax: number;
}

/** How long a client may take, and how many may be connected. */
export interface HttpSettings {
  /** Longest wait for the request headers. */
  readonly headerTimeoutMs: number;
  /** Longest idle time between two chunks of a request body (uploads included). */
  readonly bodyTimeoutMs: number;
  /** Longest time to receive a whole request, headers and body. */
  readonly requestTimeoutMs: number;
  /** How long an idle keep-alive connection stays open. */
  readonly keepAliveTimeoutMs: number;
  /** Requests served on one connection before it is closed. */
  readonly maxRequestsPerSocket: number;
  /** Open connections at most; more are refused. */
  readonly maxConnections: number;
}

/** Where background jobs and events go (the [async] roles). */
export interface BrokerSettings {
  /** `AMQP_URL` moves the job queue to RabbitMQ; default pg-boss on the deployment's database. */
  readonly queue: { readonly kind: 'postgres' } | { readonly kind: 'rabbitmq'; readonly url: string };
  /** `NATS_URL` moves the event stream to NATS JetStream; default a log table in the database. */
  readonly stream: { readonly kind: 'postgres' } | { readonly kind: 'nats'; readonly url: string };
  /** `DATABANK_BROKER_PREFIX`: the start of every queue, stream and consumer name on a shared broker. */
  readonly prefix: string;
  /** `DATABANK_JOB_CONCURRENCY`: jobs of one kind a process runs at once (the consumer's prefetch). */
  readonly jobConcurrency: number;
  /** `DATABANK_JOB_MAX_ATTEMPTS`: deliveries of a job before it goes to the dead-letter queue. */
  readonly jobMaxAttempts: number;
}

/** Backups (the [backup] issue): the key, a second copy, the schedules and what is kept. */
export interface BackupSettings {
  /** `DATABANK_BACKUP_KEY_FILE`: 32 random bytes as base64; null: backups are refused. */
  readonly keyFile: string | null;
  /** `DATABANK_BACKUP_COPY_TO`: a directory, or `s3://bucket`, another bucket of the S3 service the file store uses. */
  readonly copyTo: FilesConfig | null;
  /** `DATABANK_BACKUP_SCHEDULE` (cron, UTC; `off`): when the worker takes a backup and prunes. */
  readonly schedule: string | null;
  /** `DATABANK_BACKUP_DRILL_SCHEDULE` (cron, UTC; `off`): when the worker runs a restore drill. */
  readonly drillSchedule: string | null;
  /** `DATABANK_BACKUP_KEEP_DAILY|WEEKLY|MONTHLY`: the newest backup of each of the last N days, weeks, months. */
  readonly keep: { readonly daily: number; readonly weekly: number; readonly monthly: number };
  /** `DATABANK_BACKUP_MAX_AGE_SECONDS`: `/readyz` reports (without failing) a newest backup older than this. */
  readonly maxAgeSeconds: number;
}

/** Read replicas (the [replicas] issue): where reads may go, and how stale they may be. */
export interface ReplicaSettings {
  /** `DATABASE_REPLICA_URLS` (comma-separated PostgreSQL URLs); empty: every read goes to the primary. */
  readonly urls: readonly PostgresSqlConfig[];
  /** `DATABANK_MAX_REPLICA_LAG_MS`: a read without a token goes to a replica at most this far behind. */
  readonly maxLagMs: number;
  /** `DATABANK_REPLICA_CHECK_MS`: how often each replica's replay position and the primary's are read. */
  readonly checkMs: number;
  /** `DATABANK_READ_YOUR_WRITES_MS`: how long an API key's reads wait for its own last write without a header. */
  readonly readYourWritesMs: number;
}

/** Documents and search (the [documents+analytics] issue). */
export interface DocumentSettings {
  /** `DATABANK_MAX_DOCUMENT_BYTES`: a document's body as compact JSON, in bytes; larger → 413. */
  readonly maxBytes: number;
}

/** Columnar analytics on DuckDB (the [documents+analytics] issue). */
export interface AnalyticsSettings {
  /** `DATABANK_ANALYTICS_PATH`: the DuckDB database file; default `DATABANK_DATA_DIR/analytics.duckdb`. */
  readonly path: string;
  /** `DATABANK_ANALYTICS_REFRESH_MS`: the longest the worker lets reports fall behind the database. */
  readonly refreshMs: number;
}

export interface Config {
  readonly dataDir: string;
  readonly host: string;
  readonly port: number;
  readonly sql: SqlConfig;
  readonly migrateOnBoot: boolean;
  readonly demoData: boolean;
  readonly logLevel: LogLevel;
  readonly cache: CacheSettings;
  readonly files: FilesSettings;
  /** How many copies of the app run against the same stores. */
  readonly instances: number;
  /** How long a stop may take before the process exits non-zero naming what was still open. */
  readonly shutdownTimeoutMs: number;
  readonly limits: LimitsSettings;
  readonly http: HttpSettings;
  readonly broker: BrokerSettings;
  readonly backup: BackupSettings;
  readonly replicas: ReplicaSettings;
  readonly documents: DocumentSettings;
  readonly analytics: AnalyticsSettings;
}

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/** Thrown when the environment holds bad values; the message lists every bad variable. */
export class ConfigError extends Error {
  readonly problems: readonly string[];
  constructor(problems: readonly string[]) {
    super(`invalid configuration:\n${problems.map((p) => `  - ${p}`).join('\n')}`);
    this.name = 'ConfigError';
    this.problems = problems;
  }
}

type Env = Readonly<Record<string, string | undefined>>;

/**
 * Reads the environment once into a validated, frozen Config. This is the only place that reads
 * `process.env`; everything else receives the Config.
 *
 * @example
 * const config = loadConfig(process.env);
 */
export function loadConfig(env: Env = process.env): Config {
  const problems: string[] = [];
  const dataDir = resolve(env.DATABANK_DATA_DIR || './.databank');
  const host = env.HOST || '127.0.0.1';
  const port = parseIntVar(env, 'PORT', 3000, 0, 65535, problems);
  const logLevel = (env.LOG_LEVEL || 'info') as LogLevel;
  if (!LOG_LEVELS.includes(logLevel)) {
    problems.push(`LOG_LEVEL: "${env.LOG_LEVEL}" is not one of ${LOG_LEVELS.join(', ')}`);
  }
  const sql = parseSql(env, dataDir, problems);
  const migrateOnBoot = parseBoolVar(env, 'MIGRATE_ON_BOOT', sql?.kind !== 'postgres', problems);
  const demoData = parseBoolVar(env, 'DATABANK_DEMO_DATA', true, problems);
  const instances = parseIntVar(env, 'DATABANK_INSTANCES', 1, 1, 10_000, problems);
  const cache = parseCache(env, instances, problems);
  const files = parseFiles(env, dataDir, problems);
  const shutdownTimeoutMs = parseIntVar(env, 'DATABANK_SHUTDOWN_TIMEOUT_MS', 25_000, 100, 3_600_000, problems);
  const limits = parseLimits(env, problems);
  const http = parseHttp(env, problems);
  const broker = parseBroker(env, problems);
  const backup = parseBackup(env, dataDir, files.store, problems);
  const replicas = parseReplicas(env, sql, problems);
  const documents: DocumentSettings = {
    maxBytes: parseIntVar(env, 'DATABANK_MAX_DOCUMENT_BYTES', 65_536, 64, 16 * 1024 * 1024, problems),
  };
  const analytics: AnalyticsSettings = {
    path: resolve(env.DATABANK_ANALYTICS_PATH || join(dataDir, 'analytics.duckdb')),
    refreshMs: parseIntVar(env, 'DATABANK_ANALYTICS_REFRESH_MS', 30_000, 1_000, 86_400_000, problems),
  };
  if (problems.length > 0 || sql === null) throw new ConfigError(problems);
  return deepFreeze({
    dataDir,
    host,
    port,
    sql,
    migrateOnBoot,
    demoData,
    logLevel,
    cache,
    files,
    instances,
    shutdownTimeoutMs,
    limits,
    http,
    broker,
    backup,
    replicas,
    documents,
    analytics,
  });
}

function parseReplicas(env: Env, primary: SqlConfig | null, problems: string[]): ReplicaSettings {
  const maxLagMs = parseIntVar(env, 'DATABANK_MAX_REPLICA_LAG_MS', 1000, 10, 3_600_000, problems);
  const checkMs = parseIntVar(env, 'DATABANK_REPLICA_CHECK_MS', 200, 10, 60_000, problems);
  const readYourWritesMs = parseIntVar(env, 'DATABANK_READ_YOUR_WRITES_MS', 10_000, 0, 3_600_000, problems);
  const given = (env.DATABASE_REPLICA_URLS ?? '').split(',').map((u) => u.trim()).filter((u) => u !== '');
  if (given.length > 0 && primary?.kind === 'pglite') {
    problems.push('DATABASE_REPLICA_URLS: replicas need a PostgreSQL server as the primary (set DATABASE_URL)');
    return { urls: [], maxLagMs, checkMs, readYourWritesMs };
  }
  const urls: PostgresSqlConfig[] = [];
  for (const [i, url] of given.entries()) {
    const own: string[] = [];
    const parsed = parseSql({ ...env, DATABASE_URL: url }, '', own);
    problems.push(...own.map((p) => `DATABASE_REPLICA_URLS (#${i + 1}): ${p.replace(/^DATABASE_URL: /, '')}`));
    if (parsed?.kind === 'postgres') urls.push(parsed);
  }
  if (given.length > 0 && checkMs * 2 > maxLagMs) {
    problems.push('DATABANK_REPLICA_CHECK_MS: must be at most half of DATABANK_MAX_REPLICA_LAG_MS, or no replica is ever fresh enough');
  }
  return { urls, maxLagMs, checkMs, readYourWritesMs };
}

function parseBroker(env: Env, problems: string[]): BrokerSettings {
  const url = (name: 'AMQP_URL' | 'NATS_URL', schemes: readonly string[]): string | null => {
    const value = env[name];
    if (value === undefined || value === '') return null;
    try {
      const parsed = new URL(value);
      if (schemes.includes(parsed.protocol)) return value;
    } catch {
      // reported below
    }
    problems.push(`${name}: expected a URL starting with ${schemes.map((s) => `${s}//`).join(' or ')}`);
    return null;
  };
  const amqp = url('AMQP_URL', ['amqp:', 'amqps:']);
  const nats = url('NATS_URL', ['nats:', 'tls:']);
  const prefix = env.DATABANK_BROKER_PREFIX || 'databank';
  if (!/^[A-Za-z0-9_-]{1,32}$/.test(prefix)) {
    problems.push('DATABANK_BROKER_PREFIX: 1 to 32 letters, digits, _ or - (it starts queue, stream and consumer names)');
  }
  return {
    queue: amqp ? { kind: 'rabbitmq', url: amqp } : { kind: 'postgres' },
    stream: nats ? { kind: 'nats', url: nats } : { kind: 'postgres' },
    prefix,
    jobConcurrency: parseIntVar(env, 'DATABANK_JOB_CONCURRENCY', 1, 1, 256, problems),
    jobMaxAttempts: parseIntVar(env, 'DATABANK_JOB_MAX_ATTEMPTS', 5, 1, 100, problems),
  };
}

function parseBackup(env: Env, dataDir: string, files: FilesConfig, problems: string[]): BackupSettings {
  const cron = (name: string, dflt: string): string | null => {
    const value = env[name] || dflt;
    if (value === 'off') return null;
    try {
      new Cron(value, { paused: true, timezone: 'UTC' }).stop();
    } catch (err) {
      problems.push(`${name}: not a cron expression (${(err as Error).message}); "off" turns it off`);
    }
    return value;
  };
  let copyTo: BackupSettings['copyTo'] = null;
  const target = env.DATABANK_BACKUP_COPY_TO;
  if (target) {
    const bucket = /^s3:\/\/([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])\/?$/.exec(target);
    if (bucket) {
      if (files.kind === 's3') copyTo = { ...files, bucket: bucket[1] as string };
      else problems.push('DATABANK_BACKUP_COPY_TO: s3://bucket needs the file store on S3 (S3_BUCKET, S3_ENDPOINT): the copy goes to another bucket of that service');
    } else if (target.includes('://')) problems.push('DATABANK_BACKUP_COPY_TO: a directory, or s3://bucket (on the S3 endpoint of S3_ENDPOINT)');
    else {
      const dir = resolve(target);
      if (dir === resolve(dataDir) || dir.startsWith(`${resolve(dataDir)}/`)) {
        problems.push('DATABANK_BACKUP_COPY_TO: must be outside the data dir (a second copy on the same disk as the first is not a second copy)');
      }
      copyTo = { kind: 'local', dir };
    }
  }
  const keyFile = env.DATABANK_BACKUP_KEY_FILE ? resolve(env.DATABANK_BACKUP_KEY_FILE) : null;
  return {
    keyFile,
    copyTo,
    schedule: cron('DATABANK_BACKUP_SCHEDULE', '15 2 * * *'),
    drillSchedule: cron('DATABANK_BACKUP_DRILL_SCHEDULE', '45 3 * * *'),
    keep: {
      daily: parseIntVar(env, 'DATABANK_BACKUP_KEEP_DAILY', 7, 0, 3650, problems),
      weekly: parseIntVar(env, 'DATABANK_BACKUP_KEEP_WEEKLY', 4, 0, 520, problems),
      monthly: parseIntVar(env, 'DATABANK_BACKUP_KEEP_MONTHLY', 12, 0, 1200, problems),
    },
    maxAgeSeconds: parseIntVar(env, 'DATABANK_BACKUP_MAX_AGE_SECONDS', 26 * 3600, 60, 365 * 86_400, problems),
  };
}

/** The database's own ceiling on a balance (migration 0005's check). */
export const BALANCE_CEILING = 100_000_000_000_000;

function parseLimits(env: Env, problems: string[]): LimitsSettings {
  const maxBalance = parseIntVar(env, 'DATABANK_MAX_BALANCE', BALANCE_CEILING, 1, BALANCE_CEILING, problems);
  const maxAccountsPerCustomer = parseIntVar(env, 'DATABANK_MAX_ACCOUNTS_PER_CUSTOMER', 20, 1, 10_000, problems);
  // A customer's total is a sum of its accounts' balances: it must stay an exact JSON number.
  if (maxBalance * maxAccountsPerCustomer > Number.MAX_SAFE_INTEGER) {
    problems.push(
      `DATABANK_MAX_BALANCE × DATABANK_MAX_ACCOUNTS_PER_CUSTOMER: ${maxBalance} × ${maxAccountsPerCustomer} passes ` +
        `2^53−1 (${Number.MAX_SAFE_INTEGER}), so a customer's total could stop being exact; lower one of them`,
    );
  }
  const trustRaw = env.TRUST_PROXY;
  let trustProxy: boolean | string | number = false;
  if (trustRaw !== undefined && trustRaw !== '') {
    if (['true', 'false'].includes(trustRaw)) trustProxy = trustRaw === 'true';
    else if (/^\d{1,2}$/.test(trustRaw)) trustProxy = Number(trustRaw);
    else if (/^[0-9A-Fa-f:./, ]+$/.test(trustRaw)) trustProxy = trustRaw;
    else problems.push(`TRUST_PROXY: "${trustRaw}" is not true, false, a hop count or a list of proxy addresses/CIDRs`);
  }
  return {
    maxBalance,
    maxAccountsPerCustomer,
    maxFilesPerCustomer: parseIntVar(env, 'DATABANK_MAX_FILES_PER_CUSTOMER', 1000, 1, 10_000_000, problems),
    maxFileBytesPerCustomer: parseIntVar(env, 'DATABANK_MAX_FILE_BYTES_PER_CUSTOMER', 1024 ** 3, 1, 2 ** 50, problems),
    rateLimitPerMinute: parseIntVar(env, 'DATABANK_RATE_LIMIT_PER_MINUTE', 6000, 1, 10_000_000, problems),
    authFailureLimitPerMinute: parseIntVar(env, 'DATABANK_AUTH_FAILURE_LIMIT_PER_MINUTE', 60, 1, 10_000_000, problems),
    trustProxy,
    batchMax: parseIntVar(env, 'DATABANK_BATCH_MAX', 256, 1, 10_000, problems),
  };
}

function parseHttp(env: Env, problems: string[]): HttpSettings {
  const requestTimeoutMs = parseIntVar(env, 'DATABANK_REQUEST_TIMEOUT_MS', 600_000, 1000, 86_400_000, problems);
  const headerTimeoutMs = parseIntVar(env, 'DATABANK_HEADER_TIMEOUT_MS', 10_000, 100, 600_000, problems);
  if (headerTimeoutMs > requestTimeoutMs) {
    problems.push('DATABANK_HEADER_TIMEOUT_MS: must not be longer than DATABANK_REQUEST_TIMEOUT_MS');
  }
  return {
    headerTimeoutMs,
    bodyTimeoutMs: parseIntVar(env, 'DATABANK_BODY_TIMEOUT_MS', 30_000, 100, 3_600_000, problems),
    requestTimeoutMs,
    keepAliveTimeoutMs: parseIntVar(env, 'DATABANK_KEEP_ALIVE_TIMEOUT_MS', 5_000, 100, 600_000, problems),
    maxRequestsPerSocket: parseIntVar(env, 'DATABANK_MAX_REQUESTS_PER_SOCKET', 1000, 1, 10_000_000, problems),
    maxConnections: parseIntVar(env, 'DATABANK_MAX_CONNECTIONS', 4096, 1, 1_000_000, problems),
  };
}

function parseSql(env: Env, dataDir: string, problems: string[]): SqlConfig | null {
  const poolMax = parseIntVar(env, 'DATABASE_POOL_MAX', 10, 1, 1000, problems);
  const url = env.DATABASE_URL;
  if (!url) {
    if (env.DATABASE_SSL_CA) problems.push('DATABASE_SSL_CA: set, but DATABASE_URL is not');
    return { kind: 'pglite', dataDir: resolve(dataDir, 'pglite') };
  }
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    problems.push('DATABASE_URL: not a valid URL (expected postgres://user:password@host:port/database)');
    return null;
  }
  if (parsed.protocol !== 'postgres:' && parsed.protocol !== 'postgresql:') {
    problems.push(`DATABASE_URL: scheme must be postgres:// or postgresql://, not ${parsed.protocol}//`);
    return null;
  }
  const sslmode = parsed.searchParams.get('sslmode');
  const caPath = env.DATABASE_SSL_CA || parsed.searchParams.get('sslrootcert');
  for (const p of ['sslmode', 'sslrootcert', 'sslcert', 'sslkey', 'ssl']) parsed.searchParams.delete(p);
  let ca: string | null = null;
  if (caPath) {
    try {
      ca = readFileSync(caPath, 'utf8');
    } catch (err) {
      const source = env.DATABASE_SSL_CA ? 'DATABASE_SSL_CA' : 'DATABASE_URL (sslrootcert)';
      problems.push(`${source}: cannot read the CA file (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
    }
  }
  const mode = sslmode ?? (caPath ? 'verify-full' : 'disable');
  let ssl: SslConfig;
  switch (mode) {
    case 'disable':
      if (caPath) problems.push('DATABASE_SSL_CA: a CA is set but sslmode=disable turns TLS off');
      ssl = { mode: 'disable' };
      break;
    case 'require':
    case 'verify-ca':
    case 'verify-full':
      ssl = { mode, ca };
      break;
    default:
      problems.push(`DATABASE_URL: sslmode=${mode} is not supported (use disable, require, verify-ca or verify-full)`);
      return null;
  }
  return { kind: 'postgres', connectionString: parsed.toString(), ssl, poolMax };
}

function parseCache(env: Env, instances: number, problems: string[]): CacheSettings {
  const prefix = env.DATABANK_CACHE_PREFIX || 'databank';
  if (!/^[A-Za-z0-9_.-]{1,64}$/.test(prefix)) {
    problems.push(`DATABANK_CACHE_PREFIX: "${prefix}" is not 1 to 64 of A-Z, a-z, 0-9, _ . -`);
  }
  const ttlSeconds = parseIntVar(env, 'DATABANK_CACHE_TTL_SECONDS', 300, 1, 86_400, problems);
  const mode = env.DATABANK_CACHE || 'on';
  if (mode !== 'on' && mode !== 'off') problems.push(`DATABANK_CACHE: "${mode}" is not on or off`);
  let store: CacheConfig;
  if (mode === 'off') {
    store = { kind: 'off' };
  } else if (env.REDIS_URL) {
    let ok = false;
    try {
      ok = ['redis:', 'rediss:'].includes(new URL(env.REDIS_URL).protocol);
    } catch {
      ok = false;
    }
    if (!ok) problems.push('REDIS_URL: not a redis:// or rediss:// URL');
    const commandTimeoutMs = parseIntVar(env, 'DATABANK_CACHE_TIMEOUT_MS', 50, 1, 10_000, problems);
    store = { kind: 'redis', url: env.REDIS_URL, commandTimeoutMs };
  } else {
    if (instances > 1) {
      problems.push(
        `DATABANK_INSTANCES: ${instances} copies cannot share the in-process cache: a write through one copy ` +
          'would leave the others serving the old value. Set REDIS_URL, or DATABANK_CACHE=off',
      );
    }
    store = {
      kind: 'memory',
      maxEntries: parseIntVar(env, 'DATABANK_CACHE_MAX_ENTRIES', 10_000, 1, 10_000_000, problems),
      maxBytes: parseIntVar(env, 'DATABANK_CACHE_MAX_BYTES', 64 * 1024 * 1024, 1024, 2 ** 40, problems),
    };
  }
  return { store, prefix, ttlSeconds };
}

/** The `site/` folder shipped with databank, next to `src/`. */
const BUNDLED_SITE = packagePath('site');

function parseFiles(env: Env, dataDir: string, problems: string[]): FilesSettings {
  const maxUploadBytes = parseIntVar(env, 'DATABANK_MAX_UPLOAD_BYTES', 25 * 1024 * 1024, 1, 5 * 1024 ** 4, problems);
  const siteRaw = env.DATABANK_SITE_DIR;
  const siteDir = siteRaw === 'none' ? null : resolve(siteRaw || BUNDLED_SITE);
  if (siteRaw && siteDir !== null && !isDirectory(siteDir)) {
    problems.push(`DATABANK_SITE_DIR: "${siteRaw}" is not a folder (or "none" to publish no site)`);
  }
  const bucket = env.S3_BUCKET;
  if (!bucket) {
    for (const name of ['S3_ENDPOINT', 'S3_REGION', 'S3_FORCE_PATH_STYLE']) {
      if (env[name]) problems.push(`${name}: set, but S3_BUCKET is not`);
    }
    return { store: { kind: 'local', dir: resolve(dataDir, 'files') }, maxUploadBytes, siteDir };
  }
  if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket)) {
    problems.push(`S3_BUCKET: "${bucket}" is not a valid bucket name (3 to 63 of a-z, 0-9, . and -)`);
  }
  let endpoint: string | null = null;
  if (env.S3_ENDPOINT) {
    try {
      const url = new URL(env.S3_ENDPOINT);
      if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new Error('scheme');
      endpoint = env.S3_ENDPOINT;
    } catch {
      problems.push('S3_ENDPOINT: not an http:// or https:// URL');
    }
  }
  const region = env.S3_REGION || env.AWS_REGION || 'us-east-1';
  const forcePathStyle = parseBoolVar(env, 'S3_FORCE_PATH_STYLE', endpoint !== null, problems);
  return { store: { kind: 's3', bucket, endpoint, region, forcePathStyle }, maxUploadBytes, siteDir };
}

function isDirectory(path: string): boolean {
  try {
    return statSync(path).isDirectory();
  } catch {
    return false;
  }
}

function parseIntVar(env: Env, name: string, dflt: number, min: number, max: number, problems: string[]): number {
  const raw = env[name];
  if (raw === undefined || raw === '') return dflt;
  if (!/^\d+$/.test(raw) || Number(raw) < min || Number(raw) > max) {
    problems.push(`${name}: "${raw}" is not a whole number from ${min} to ${max}`);
    return dflt;
  }
  return Number(raw);
}

function parseBoolVar(env: Env, name: string, dflt: boolean, problems: string[]): boolean {
  const raw = env[name];
  if (raw === undefined || raw === '') return dflt;
  if (['true', '1', 'yes'].includes(raw)) return true;
  if (['false', '0', 'no'].includes(raw)) return false;
  problems.push(`${name}: "${raw}" is not true or false`);
  return dflt;
}

function deepFreeze<T>(value: T): T {
  if (value && typeof value === 'object') {
    for (const v of Object.values(value)) deepFreeze(v);
    Object.freeze(value);
  }
  return value;
}

/**
 * The environment a child tool (pg_dump, pg_restore) runs with: this process's, with `extra`
 * on top (an undefined value removes the variable). The one place outside `loadConfig` that
 * reads the environment, so that tools find PATH, HOME and the locale as the user set them.
 */
export function childEnv(extra: Readonly<Record<string, string | undefined>>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const [name, value] of Object.entries(extra)) {
    if (value === undefined) delete env[name];
    else env[name] = value;
  }
  return env;
}

/** The SQL config of another database (a restore's target), read with this process's TLS variables. */
export function sqlConfigFor(databaseUrl: string): SqlConfig {
  return loadConfig({ ...process.env, DATABASE_URL: databaseUrl }).sql;
}

/** The S3 service's address and credentials as the AWS variables give them (pgBackRest needs them spelled out). */
export function s3FromEnv(): { endpoint: string; region: string; key: string; secret: string } {
  return {
    endpoint: process.env.S3_ENDPOINT ?? '',
    region: process.env.S3_REGION || process.env.AWS_REGION || 'us-east-1',
    key: process.env.AWS_ACCESS_KEY_ID ?? '',
    secret: process.env.AWS_SECRET_ACCESS_KEY ?? '',
  };
}
