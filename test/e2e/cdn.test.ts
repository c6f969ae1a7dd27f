import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { request as httpRequest, type IncomingHttpHeaders } from 'node:http';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { brotliDecompressSync, gunzipSync } from 'node:zlib';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { startTestApp, type TestApp } from '../support/app.ts';
import { HAVE_NGINX, SHIPPED_CONFIG, startNginx, type Nginx } from '../support/nginx.ts';

/**
 * The shipped CDN config (deploy/cdn/nginx.conf, only its site-specific lines rewritten) run by a
 * real nginx in front of the app, on PGlite, with the bundled site/ deployed. Every test gets a
 * fresh nginx, so it starts with an empty cache.
 *
 * "Reached the app" is shown two ways: the app sets a new X-Request-Id on every response it
 * makes, so a cached response repeats the id of the one it was stored from; and the app's own
 * request counter (databank_http_requests_total, read from the app directly) grows by exactly the
 * number of requests the proxy passed on.
 */
const SITE_DIR = resolve(dirname(fileURLToPath(import.meta.url)), '../../site');
const siteFile = (name: string) => readFileSync(join(SITE_DIR, name));

interface Answer {
  readonly status: number;
  readonly headers: IncomingHttpHeaders;
  readonly body: Buffer;
}

/** One request on its own connection, headers and bytes exactly as sent and received. */
function send(method: string, url: string, headers: Record<string, string> = {}, body?: Buffer): Promise<Answer> {
  return new Promise((resolveAnswer, reject) => {
    const req = httpRequest(url, { method, headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => resolveAnswer({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

const cacheStatus = (a: Answer) => a.headers['x-cache-status'];
const requestId = (a: Answer) => a.headers['x-request-id'];

describe.skipIf(!HAVE_NGINX)('the shipped nginx CDN config in front of the app', () => {
  let filesDir: string;
  let t: TestApp;
  let appBase: string;
  let appPort: number;
  let cdn: Nginx;

  beforeAll(async () => {
    filesDir = mkdtempSync(join(tmpdir(), 'databank-cdn-files-'));
    t = await startTestApp('pglite', 'cdn', {
      files: { store: { kind: 'local', dir: filesDir }, maxUploadBytes: 25 * 1024 * 1024, siteDir: SITE_DIR },
    });
    await t.app.http.listen({ host: '127.0.0.1', port: 0 });
    const address = t.app.http.server.address();
    if (!address || typeof address === 'string') throw new Error('the app has no port');
    appPort = address.port;
    appBase = `http://127.0.0.1:${appPort}`;
  });
  afterAll(async () => {
    await t?.close();
    if (filesDir) rmSync(filesDir, { recursive: true, force: true });
  });

  beforeEach(async () => {
    cdn = await startNginx(appPort);
  });
  afterEach(async () => {
    await cdn?.stop();
  });

  const viaCdn = (path: string, headers: Record<string, string> = {}, method = 'GET', body?: Buffer) =>
    send(method, cdn.base + path, headers, body);

  /** Requests the app has answered, all routes but /metrics itself, from its Prometheus counter. */
  async function appRequests(): Promise<number> {
    const res = await send('GET', `${appBase}/metrics`, t.admin);
    expect(res.status).toBe(200);
    let total = 0;
    for (const [, labels = '', value = ''] of res.body.toString().matchAll(/^databank_http_requests_total\{([^}]*)\} (\d+)$/gm)) {
      if (!labels.includes('route="/metrics"')) total += Number(value);
    }
    return total;
  }

  it('serves the shipped file with only the site-specific lines changed', () => {
    const shipped = readFileSync(SHIPPED_CONFIG, 'utf8').split('\n');
    const rendered = cdn.config.split('\n');
    expect(rendered).toHaveLength(shipped.length);
    const changed = shipped.flatMap((line, i) => (line === rendered[i] ? [] : [i]));
    // Each changed line is a site-specific statement or a continuation line of one (proxy_cache_path).
    for (const i of changed) {
      const statementEnd = shipped.slice(i).findIndex((l) => l.replace(/#.*$/, '').trim().endsWith(';'));
      expect(shipped[i + statementEnd], `line ${i + 1}`).toMatch(/#\s*site-specific/);
    }
    // And every site-specific line was rewritten.
    const marked = shipped.flatMap((line, i) => (/#\s*site-specific/.test(line) ? [i] : []));
    expect(marked.length).toBeGreaterThanOrEqual(7);
    for (const i of marked) expect(changed, `line ${i + 1}`).toContain(i);
    expect(rendered.filter((l) => /^\s*(listen|server) [^{]/.test(l)).map((l) => l.trim().split(/\s+/)[1])).toEqual([
      `127.0.0.1:${appPort};`,
      `${cdn.base.slice('http://'.length)};`,
    ]);
  });

  it('site files: the first request is a MISS that reaches the app, the second a HIT that does not', async () => {
    for (const [path, file, type] of [
      ['/', 'index.html', 'text/html; charset=utf-8'],
      ['/styles.css', 'styles.css', 'text/css; charset=utf-8'],
      ['/cover.png', 'cover.png', 'image/png'],
    ] as const) {
      const before = await appRequests();
      const first = await viaCdn(path);
      const second = await viaCdn(path);
      const after = await appRequests();

      for (const r of [first, second]) {
        expect(r.status, path).toBe(200);
        expect(r.headers['content-type'], path).toBe(type);
        expect(r.headers['cache-control'], path).toBe('public, max-age=300');
        expect(r.headers['content-encoding'], path).toBeUndefined();
        expect(r.body.equals(siteFile(file)), path).toBe(true);
      }
      expect([cacheStatus(first), cacheStatus(second)], path).toEqual(['MISS', 'HIT']);
      expect(requestId(first), path).toMatch(/^[0-9a-f-]{36}$/);
      expect(requestId(second), path).toBe(requestId(first));
      expect(second.headers.etag, path).toBe(first.headers.etag);
      expect(after - before, path).toBe(1);
    }
    // The app itself gives every response a new id: the same id twice above means one app answer.
    const a = await send('GET', `${appBase}/styles.css`);
    const b = await send('GET', `${appBase}/styles.css`);
    expect(requestId(a)).not.toBe(requestId(b));
  });

  it('brotli, gzip and unencoded answers are cached apart, each a MISS then a HIT, all the same bytes', async () => {
    for (const [path, file] of [
      ['/', 'index.html'],
      ['/styles.css', 'styles.css'],
    ] as const) {
      const before = await appRequests();
      const ids: string[] = [];
      for (const [accept, encoding, decode] of [
        ['br', 'br', brotliDecompressSync],
        ['gzip', 'gzip', gunzipSync],
        [null, undefined, (b: Buffer) => b],
      ] as const) {
        const headers: Record<string, string> = accept ? { 'accept-encoding': accept } : {};
        const first = await viaCdn(path, headers);
        const second = await viaCdn(path, headers);
        const what = `${path} ${accept ?? 'no Accept-Encoding'}`;
        expect([cacheStatus(first), cacheStatus(second)], what).toEqual(['MISS', 'HIT']);
        expect(requestId(second), what).toBe(requestId(first));
        for (const r of [first, second]) {
          expect(r.status, what).toBe(200);
          expect(r.headers['content-encoding'], what).toBe(encoding);
          expect(r.headers.vary, what).toBe('Accept-Encoding');
          expect(Number(r.headers['content-length']), what).toBe(r.body.length);
          expect(decode(r.body).equals(siteFile(file)), what).toBe(true);
        }
        expect(second.body.equals(first.body), what).toBe(true);
        ids.push(requestId(first) as string);
      }
      expect(new Set(ids).size, path).toBe(3);
      expect((await appRequests()) - before, path).toBe(3);
    }
  });

  it('other spellings of Accept-Encoding share the entry of the encoding they get; q=0 refuses a coding', async () => {
    const before = await appRequests();
    const first = await viaCdn('/styles.css', { 'accept-encoding': 'br' });
    expect([cacheStatus(first), first.headers['content-encoding']]).toEqual(['MISS', 'br']);
    for (const [accept, status, encoding] of [
      ['gzip, deflate, br', 'HIT', 'br'],
      ['BR', 'HIT', 'br'],
      ['br;q=0, gzip', 'MISS', 'gzip'],
      ['gzip;q=0.5', 'HIT', 'gzip'],
      ['xbr, gzip', 'HIT', 'gzip'],
      ['br;q=0.0, gzip;q=0', 'MISS', undefined],
      ['identity', 'HIT', undefined],
    ] as const) {
      const r = await viaCdn('/styles.css', { 'accept-encoding': accept });
      expect([r.status, cacheStatus(r), r.headers['content-encoding']], accept).toEqual([200, status, encoding]);
    }
    // HEAD is asked of the app as GET and shares its entry.
    const head = await viaCdn('/styles.css', { 'accept-encoding': 'br' }, 'HEAD');
    expect([head.status, cacheStatus(head), head.body.length]).toEqual([200, 'HIT', 0]);
    expect((await appRequests()) - before).toBe(3);
  });

  it('the API is never cached: every request reaches the app and no-store passes through', async () => {
    const before = await appRequests();
    const customer = [await viaCdn('/customers/1', t.admin), await viaCdn('/customers/1', t.admin), await viaCdn('/customers/1', t.admin)];
    for (const r of customer) {
      expect(r.status).toBe(200);
      expect(JSON.parse(r.body.toString())).toEqual({
        id: 1,
        name: 'Brian Kim',
        date_of_birth: '1948-09-23',
        balance: 1500,
        balances: { USD: 1500 },
      });
      expect(r.headers['cache-control']).toBe('no-store');
      // API paths go straight to the app, without a cache.
      expect(cacheStatus(r)).toBe('BYPASS');
    }
    const health = [await viaCdn('/healthz'), await viaCdn('/healthz'), await viaCdn('/healthz')];
    for (const r of health) {
      expect(r.status).toBe(200);
      expect(JSON.parse(r.body.toString())).toEqual({ status: 'ok' });
      expect(r.headers['cache-control']).toBe('no-store');
      expect(cacheStatus(r)).toBe('BYPASS');
    }
    expect(new Set([...customer, ...health].map(requestId)).size).toBe(6);
    expect((await appRequests()) - before).toBe(6);
  });

  it('a site request with an Authorization header is neither answered from nor stored in the cache', async () => {
    const before = await appRequests();
    const stored = await viaCdn('/styles.css');
    const withKey = await viaCdn('/styles.css', t.admin);
    const again = await viaCdn('/styles.css');
    expect([cacheStatus(stored), cacheStatus(withKey), cacheStatus(again)]).toEqual(['MISS', 'BYPASS', 'HIT']);
    expect(requestId(withKey)).not.toBe(requestId(stored));
    expect(requestId(again)).toBe(requestId(stored));
    expect((await appRequests()) - before).toBe(2);

    const other = await viaCdn('/cover.png', t.admin);
    const after = await viaCdn('/cover.png');
    expect([cacheStatus(other), cacheStatus(after)]).toEqual(['BYPASS', 'MISS']);
    expect(requestId(after)).not.toBe(requestId(other));
    expect((await appRequests()) - before).toBe(4);
  });

  it('user files: uploaded through the proxy, every read reaches the app, and without a key it is 401', async () => {
    const bytes = Buffer.from('a statement for the CDN test\n');
    const upload = await viaCdn(
      '/customers/1/files?filename=a.txt',
      { ...t.admin, 'content-type': 'application/octet-stream' },
      'POST',
      bytes,
    );
    expect(upload.status).toBe(201);
    const meta = JSON.parse(upload.body.toString()) as { file_id: number; content_type: string; size: number };
    expect(meta).toMatchObject({ content_type: 'text/plain', size: bytes.length });
    expect(cacheStatus(upload)).toBe('BYPASS');

    const path = `/files/${meta.file_id}/content`;
    const before = await appRequests();
    const reads = [await viaCdn(path, t.admin), await viaCdn(path, t.admin)];
    for (const r of reads) {
      expect(r.status).toBe(200);
      expect(r.body.equals(bytes)).toBe(true);
      expect(r.headers['cache-control']).toBe('private, no-cache');
      expect(r.headers['content-disposition']).toBe(`attachment; filename="a.txt"; filename*=UTF-8''a.txt`);
      expect(cacheStatus(r)).toBe('BYPASS');
    }
    const anonymous = [await viaCdn(path), await viaCdn(path)];
    for (const r of anonymous) {
      expect(r.status).toBe(401);
      expect(r.headers['www-authenticate']).toBe('Bearer realm="databank"');
      expect(r.headers['cache-control']).toBe('no-store');
      expect(r.body.includes(bytes)).toBe(false);
      expect(cacheStatus(r)).toBe('BYPASS');
    }
    expect(new Set([...reads, ...anonymous].map(requestId)).size).toBe(4);
    expect((await appRequests()) - before).toBe(4);

    // Range and conditional requests reach the app as sent: a download can be resumed, and a
    // client's copy revalidated, through the proxy.
    const part = await viaCdn(path, { ...t.admin, range: 'bytes=2-10' });
    expect([part.status, part.headers['content-range'], part.body.toString()]).toEqual([
      206,
      `bytes 2-10/${bytes.length}`,
      bytes.subarray(2, 11).toString(),
    ]);
    const etag = reads[0]?.headers.etag as string;
    const revalidated = await viaCdn(path, { ...t.admin, 'if-none-match': etag });
    expect([revalidated.status, revalidated.body.length]).toEqual([304, 0]);
  });

  it("a missing page is the site's 404.html, kept for 60 s", async () => {
    const before = await appRequests();
    const first = await viaCdn('/no-such-page');
    const second = await viaCdn('/no-such-page');
    for (const r of [first, second]) {
      expect(r.status).toBe(404);
      expect(r.headers['content-type']).toBe('text/html; charset=utf-8');
      expect(r.headers['cache-control']).toBe('public, max-age=60');
      expect(r.body.equals(siteFile('404.html'))).toBe(true);
    }
    expect([cacheStatus(first), cacheStatus(second)]).toEqual(['MISS', 'HIT']);
    expect(requestId(second)).toBe(requestId(first));
    expect((await appRequests()) - before).toBe(1);
  });
});
