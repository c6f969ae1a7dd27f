import { Agent, request } from 'node:http';
import { performance } from 'node:perf_hooks';
import type { Child } from './child.ts';
import { startDatabank } from './databank.ts';

/**
 * `node bin/databank.js serve <args>` on the embedded engine (PGlite, a fresh data dir) through
 * `startDatabank`, with timed raw-body uploads as well as JSON calls: what the async benchmark's
 * upload series need.
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
  // The brokers the parent was pointed at are for its own series: `childEnv` leaves them out, so
  // this child keeps the embedded defaults (pg-boss and the log table in PGlite) unless `env` names them.
  const bank = await startDatabank({ databaseUrl: null, poolMax: 10, env, args });
  // One socket: the uploads are sequential, and a kept-alive connection is what a client reuses.
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  const postBytes = <T>(path: string, payload: Buffer, contentType: string) =>
    new Promise<{ status: number; body: T; ms: number }>((resolve, reject) => {
      const headers = { authorization: `Bearer ${bank.adminKey}`, 'content-type': contentType, 'content-length': payload.length };
      const started = performance.now();
      const req = request({ host: '127.0.0.1', port: bank.port, method: 'POST', path, agent, headers }, (res) => {
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
    child: bank.child,
    port: bank.port,
    adminKey: bank.adminKey,
    dataDir: bank.dataDir,
    api: (method, path, body) => bank.api(method, path, body),
    postBytes,
    async stop() {
      agent.destroy();
      await bank.stop();
    },
  };
}
