import { once } from 'node:events';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';
import type { Principal } from '../domain/types.ts';

/** The part of ApiKeysService the listener needs: who a bearer key stands for. */
export interface KeyChecker {
  authenticate(key: string | undefined): Promise<Principal>;
}

export interface MetricsListener {
  /** host:port it listens on. */
  readonly address: string;
  close(): Promise<void>;
}

/**
 * A small listener for `databank worker --metrics-port`: the worker host's metrics for Prometheus
 * (admin key, as on `databank serve`) and a health check without one. Nothing else answers.
 */
export async function serveWorkerMetrics(registry: Registry, keys: KeyChecker, host: string, port: number): Promise<MetricsListener> {
  const server = createServer((req, res) => {
    const send = (status: number, type: string, body: string) => {
      res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store', 'x-content-type-options': 'nosniff' });
      res.end(req.method === 'HEAD' ? undefined : body);
    };
    const json = (status: number, code: string, message: string) =>
      send(status, 'application/json; charset=utf-8', JSON.stringify({ statusCode: status, code, message }));
    const path = (req.url ?? '').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') return json(404, 'DATABANK_ERR_ROUTE_NOT_FOUND', 'No such route');
    if (path === '/healthz') return send(200, 'application/json; charset=utf-8', '{"status":"ok"}');
    if (path !== '/metrics') return json(404, 'DATABANK_ERR_ROUTE_NOT_FOUND', 'No such route');
    const bearer = /^Bearer +(\S+) *$/i.exec(req.headers.authorization ?? '')?.[1];
    keys
      .authenticate(bearer)
      .then(async (principal) => {
        if (principal.role !== 'admin') return json(403, 'DATABANK_ERR_FORBIDDEN', 'This API key may not do that');
        send(200, registry.contentType, await registry.metrics());
      })
      .catch((err: unknown) => {
        const code = (err as { code?: unknown }).code;
        if (code === 'DATABANK_ERR_UNAUTHORIZED') {
          res.setHeader('www-authenticate', 'Bearer realm="databank"');
          return json(401, 'DATABANK_ERR_UNAUTHORIZED', 'A valid API key is required');
        }
        json(503, 'DATABANK_ERR_UNAVAILABLE', 'The database is unavailable');
      });
  });
  server.listen(port, host);
  await once(server, 'listening');
  const { address, port: bound } = server.address() as AddressInfo;
  return {
    address: `${address.includes(':') ? `[${address}]` : address}:${bound}`,
    close: () => new Promise<void>((resolve, reject) => server.close((err) => (err ? reject(err) : resolve()))),
  };
}
