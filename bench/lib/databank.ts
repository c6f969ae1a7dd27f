import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { Agent, request } from 'node:http';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { freePort, startChild, waitForHttp, type Child } from './child.ts';
import { onCleanup } from './cleanup.ts';
import { BenchError } from './log.ts';

/** The checkout to benchmark; BENCH_DATABANK_DIR points at another (a scratch copy) to compare a change. */
export const DATABANK_DIR = resolve(process.env.BENCH_DATABANK_DIR || join(dirname(fileURLToPath(import.meta.url)), '../..'));

/** Environment variables of the parent that must not leak into a child's configuration. */
const CONFIG_VARS = ['DATABASE_URL', 'DATABASE_POOL_MAX', 'DATABASE_SSL_CA', 'PORT', 'HOST', 'LOG_LEVEL', 'MIGRATE_ON_BOOT', 'REDIS_URL', 'AMQP_URL', 'NATS_URL'];

/** The parent's environment minus databank's own settings, plus `extra`. */
export function childEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const name of CONFIG_VARS) delete env[name];
  // S3_* would move the child's file store (and the site) into a bucket.
  for (const name of Object.keys(env)) if (name.startsWith('DATABANK_') || name.startsWith('S3_')) delete env[name];
  return { ...env, ...extra };
}

export interface DatabankOptions {
  /** null runs the embedded PGlite engine, stored in the temp data dir. */
  readonly databaseUrl: string | null;
  readonly poolMax: number;
  /** More settings for the child, e.g. { DATABANK_CACHE: 'off' } or REDIS_URL. */
  readonly env?: Record<string, string>;
  /**
   * The admin key of a database an earlier databank already set up: databank writes the key file
   * only on the first start, when it makes the key.
   */
  readonly adminKey?: string;
  /** Arguments for `serve`, e.g. `--no-worker`. */
  readonly args?: readonly string[];
}

export interface Databank {
  readonly child: Child;
  readonly port: number;
  readonly adminKey: string;
  /** The child's own data dir (its PGlite database, files and admin key). */
  readonly dataDir: string;
  /** Calls the API as admin and returns the parsed body; any non-2xx answer throws. */
  api<T>(method: 'GET' | 'POST', path: string, body?: unknown): Promise<T>;
  stop(): Promise<void>;
}

/**
 * `node bin/databank.js serve` as a child process, as it runs in production: its own event loop
 * and its own CPU time, which the load generator in this process does not share.
 */
export async function startDatabank(options: DatabankOptions): Promise<Databank> {
  const dataDir = mkdtempSync(join(tmpdir(), 'databank-bench-'));
  const removeDir = onCleanup(async () => rmSync(dataDir, { recursive: true, force: true }));
  const port = await freePort();
  const env = childEnv({
    ...(options.databaseUrl ? { DATABASE_URL: options.databaseUrl } : {}),
    MIGRATE_ON_BOOT: 'true',
    DATABANK_DATA_DIR: dataDir,
    // No demo customers: every account and every unit of money in the database is the benchmark's.
    DATABANK_DEMO_DATA: 'false',
    PORT: String(port),
    HOST: '127.0.0.1',
    LOG_LEVEL: 'warn',
    DATABASE_POOL_MAX: String(options.poolMax),
    // One admin key drives thousands of requests a second: the per-key limit is still counted on
    // every request, but set past what the run can reach, so it measures the cost, not a 429.
    DATABANK_RATE_LIMIT_PER_MINUTE: '10000000',
    ...options.env,
  });
  const child = startChild('databank', process.execPath, ['bin/databank.js', 'serve', ...(options.args ?? [])], { cwd: DATABANK_DIR, env });
  const stop = async () => {
    await child.stop();
    await removeDir();
  };
  let adminKey: string;
  try {
    await waitForHttp(child, port, '/readyz');
    // The key is written before the server listens, so it is there once /readyz answers.
    adminKey = options.adminKey ?? readFileSync(join(dataDir, 'admin-key'), 'utf8').trim();
  } catch (err) {
    await stop();
    throw err instanceof BenchError ? err : new BenchError(`databank did not start: ${String(err)}\n${child.output()}`);
  }
  const agent = new Agent({ keepAlive: true, maxSockets: 16 });
  const api = <T>(method: 'GET' | 'POST', path: string, body?: unknown) =>
    new Promise<T>((resolvePromise, reject) => {
      const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
      const headers = {
        authorization: `Bearer ${adminKey}`,
        ...(payload ? { 'content-type': 'application/json', 'content-length': payload.length } : {}),
      };
      const req = request({ host: '127.0.0.1', port, method, path, agent, headers }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          const status = res.statusCode ?? 0;
          if (status < 200 || status > 299) reject(new BenchError(`${method} ${path} answered ${status}: ${text}`));
          else resolvePromise(JSON.parse(text) as T);
        });
      });
      req.on('error', reject);
      req.end(payload);
    });
  return {
    child,
    port,
    adminKey,
    dataDir,
    api,
    stop: async () => {
      agent.destroy();
      await stop();
    },
  };
}

/** GET /metrics as admin (the Prometheus text), on a connection of its own. */
export function databankMetrics(bank: Pick<Databank, 'port' | 'adminKey'>): Promise<string> {
  return new Promise((resolvePromise, reject) => {
    const req = request(
      { host: '127.0.0.1', port: bank.port, method: 'GET', path: '/metrics', headers: { authorization: `Bearer ${bank.adminKey}` } },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          if (res.statusCode === 200) resolvePromise(text);
          else reject(new BenchError(`GET /metrics answered ${res.statusCode}: ${text.slice(0, 200)}`));
        });
      },
    );
    req.on('error', reject);
    req.end();
  });
}

/** The value of an unlabelled metric line (`name 123`) in Prometheus text; null when absent. */
export function metricValue(text: string, name: string): number | null {
  const m = new RegExp(`^${name} (\\S+)$`, 'm').exec(text);
  return m?.[1] === undefined ? null : Number(m[1]);
}

/** Runs `work` over `items`, `width` at a time: setup is I/O-bound, so a little parallelism helps. */
export async function inParallel<T, R>(items: readonly T[], width: number, work: (item: T) => Promise<R>): Promise<R[]> {
  const results: R[] = new Array<R>(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      results[i] = await work(items[i] as T);
    }
  };
  await Promise.all(Array.from({ length: Math.min(width, items.length) }, worker));
  return results;
}

/** The benchmarked checkout's commit, with "+dirty" when it has uncommitted changes. */
export function databankRevision(): string {
  try {
    const git = (...args: string[]) => execFileSync('git', ['-C', DATABANK_DIR, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    return `${git('rev-parse', '--short', 'HEAD')}${git('status', '--porcelain', '--', 'src', 'bin') ? '+dirty' : ''}`;
  } catch {
    return 'unknown';
  }
}

/** A module of the databank checkout being measured (`BENCH_DATABANK_DIR`), not of this one. */
export function databankModule<T>(path: string): Promise<T> {
  return import(pathToFileURL(join(DATABANK_DIR, path)).href) as Promise<T>;
}
