import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { Agent, request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { freePort, startChild, waitForHttp, type Child } from './child.ts';
import { onCleanup } from './cleanup.ts';
import { childEnv, DATABANK_DIR } from './databank.ts';
import { BenchError } from './log.ts';

/**
 * `node bin/databank.js serve <args>` on the embedded engine (PGlite, a fresh data dir), like
 * `startDatabank` but with arguments for `serve` (e.g. `--no-worker`), and with raw-body requests
 * as well as JSON ones: what the async benchmark's upload series need.
 */

export interface ServeChild {
  readonly child: Child;
  readonly port: number;
  readonly adminKey: string;
  readonly dataDir: string;
  /** Calls the API as admin with a JSON body (or none); any non-2xx answer throws. */
  api<T>(method: 'GET' | 'POST', path: string, body?: unknown): Promise<T>;
  /** POSTs raw bytes as admin; resolves with the status, the parsed body and the answer time in ms. */
  postBytes<T>(path: string, bytes: Buffer, contentType: string): Promise<{ status: number; body: T; ms: number }>;
  stop(): Promise<void>;
}

export async function startServe(args: readonly string[], env: Record<string, string> = {}): Promise<ServeChild> {
  const dataDir = mkdtempSync(join(tmpdir(), 'databank-bench-'));
  const removeDir = onCleanup(async () => rmSync(dataDir, { recursive: true, force: true }));
  const port = await freePort();
  const childVars = childEnv({
    MIGRATE_ON_BOOT: 'true',
    DATABANK_DATA_DIR: dataDir,
    DATABANK_DEMO_DATA: 'false',
    PORT: String(port),
    HOST: '127.0.0.1',
    LOG_LEVEL: 'warn',
    DATABANK_RATE_LIMIT_PER_MINUTE: '10000000',
    ...env,
  });
  // The brokers the parent was pointed at are for its own series: this child keeps the embedded
  // defaults (pg-boss and the log table in PGlite) unless `env` names them.
  for (const name of ['AMQP_URL', 'NATS_URL']) if (!(name in env)) delete childVars[name];
  const child = startChild('databank', process.execPath, ['bin/databank.js', 'serve', ...args], { cwd: DATABANK_DIR, env: childVars });
  const stopChild = async () => {
    await child.stop();
    await removeDir();
  };
  let adminKey: string;
  try {
    await waitForHttp(child, port, '/readyz');
    adminKey = readFileSync(join(dataDir, 'admin-key'), 'utf8').trim();
  } catch (err) {
    await stopChild();
    throw err instanceof BenchError ? err : new BenchError(`databank did not start: ${String(err)}\n${child.output()}`);
  }
  // One socket: the uploads are sequential, and a kept-alive connection is what a client reuses.
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  const send = <T>(method: 'GET' | 'POST', path: string, payload: Buffer | undefined, contentType: string | undefined) =>
    new Promise<{ status: number; body: T; ms: number }>((resolve, reject) => {
      const headers = {
        authorization: `Bearer ${adminKey}`,
        ...(payload ? { 'content-type': contentType ?? 'application/octet-stream', 'content-length': payload.length } : {}),
      };
      const started = performance.now();
      const req = request({ host: '127.0.0.1', port, method, path, agent, headers }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const ms = performance.now() - started;
          const text = Buffer.concat(chunks).toString('utf8');
          let body: unknown = text;
          try {
            body = JSON.parse(text);
          } catch {
            // Kept as text, for the error message.
          }
          resolve({ status: res.statusCode ?? 0, body: body as T, ms });
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
    async api<T>(method: 'GET' | 'POST', path: string, body?: unknown) {
      const r = await send<T>(method, path, body === undefined ? undefined : Buffer.from(JSON.stringify(body)), 'application/json');
      if (r.status < 200 || r.status > 299) throw new BenchError(`${method} ${path} answered ${r.status}: ${JSON.stringify(r.body)}`);
      return r.body;
    },
    postBytes: (path, bytes, contentType) => send('POST', path, bytes, contentType),
    async stop() {
      agent.destroy();
      await stopChild();
    },
  };
}
