import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { cpSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { connect, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { brotliDecompressSync, gunzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ERRORS } from '../../src/domain/errors.ts';
import { deploySite } from '../../src/services/site.ts';
import { startTestApp, type TestApp } from '../support/app.ts';
import { ENGINES } from '../support/engines.ts';

/**
 * The public site served from the file store: the bundled site/ folder deployed on first start,
 * content types, validators, precompressed variants, index documents, 404.html, the boundary with
 * the API, and paths that try to leave the site (through inject and over a raw socket, where no
 * client normalises the path first).
 */

const SITE = fileURLToPath(new URL('../../site', import.meta.url));
const PACKAGE_JSON = readFileSync(new URL('../../package.json', import.meta.url), 'utf8');
const site = (name: string) => readFileSync(join(SITE, name));
const INDEX = site('index.html');
const NOT_FOUND = site('404.html');
const md5 = (bytes: Buffer) => createHash('md5').update(bytes).digest('hex');

type Headers = Record<string, string>;

interface Answer {
  readonly status: number;
  readonly headers: Record<string, string | string[] | undefined>;
  readonly body: Buffer;
}

/** Sends the request line exactly as given over a new connection and reads the whole answer. */
async function rawRequest(port: number, method: string, path: string, headers: Headers = {}): Promise<Answer> {
  const socket = connect(port, '127.0.0.1');
  await once(socket, 'connect');
  const lines = [`${method} ${path} HTTP/1.1`, 'Host: 127.0.0.1', 'Connection: close', ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`)];
  socket.write(`${lines.join('\r\n')}\r\n\r\n`);
  const chunks: Buffer[] = [];
  for await (const chunk of socket) chunks.push(chunk as Buffer);
  const all = Buffer.concat(chunks);
  const split = all.indexOf('\r\n\r\n');
  const head = all.subarray(0, split).toString('latin1').split('\r\n');
  const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(head[0] ?? '')?.[1]);
  const parsed: Record<string, string> = {};
  for (const line of head.slice(1)) {
    const colon = line.indexOf(':');
    parsed[line.slice(0, colon).toLowerCase()] = line.slice(colon + 1).trim();
  }
  let body = all.subarray(split + 4);
  if (parsed['transfer-encoding'] === 'chunked') {
    const out: Buffer[] = [];
    let at = 0;
    for (;;) {
      const eol = body.indexOf('\r\n', at);
      const size = parseInt(body.subarray(at, eol).toString(), 16);
      if (!size) break;
      out.push(body.subarray(eol + 2, eol + 2 + size));
      at = eol + 2 + size + 2;
    }
    body = Buffer.concat(out);
  }
  return { status, headers: parsed, body };
}

function routeNotFound(method: string, path: string) {
  return {
    statusCode: 404,
    code: 'DATABANK_ERR_ROUTE_NOT_FOUND',
    message: `no route ${method} ${path}`,
  };
}

/**
 * Paths that try to reach outside the site, with the status expected through inject (which
 * normalises `..` and `%2e%2e` segments as a URL parser does) and over a raw socket (exactly as
 * sent). 400 is DATABANK_ERR_BAD_PATH; 404 is the site's 404.html; 200 is the site's own index.
 */
const TRAVERSALS: ReadonlyArray<{ path: string; inject: 200 | 400 | 404; raw: 400 | 404 }> = [
  { path: '/../package.json', inject: 404, raw: 400 },
  { path: '/%2e%2e/package.json', inject: 404, raw: 400 },
  { path: '/%2E%2E/package.json', inject: 404, raw: 400 },
  { path: '/%2e%2e%2fpackage.json', inject: 400, raw: 400 },
  { path: '/..%2fpackage.json', inject: 400, raw: 400 },
  { path: '/..%5cpackage.json', inject: 400, raw: 400 },
  { path: '/%5c..%5cpackage.json', inject: 400, raw: 400 },
  { path: '/%2F%2Fetc/passwd', inject: 400, raw: 400 },
  { path: '//etc/passwd', inject: 400, raw: 400 },
  { path: '/etc/passwd', inject: 404, raw: 404 },
  { path: '/%00', inject: 400, raw: 400 },
  { path: '/index.html%00.png', inject: 400, raw: 400 },
  { path: '/index.html%00', inject: 400, raw: 400 },
  { path: '/.%2e/', inject: 200, raw: 400 },
  { path: '/.%2e/package.json', inject: 404, raw: 400 },
  { path: '/%252e%252e%252fpackage.json', inject: 404, raw: 404 },
  { path: '/docs/../../package.json', inject: 404, raw: 400 },
  { path: '/./index.html', inject: 200, raw: 400 },
  { path: '/..', inject: 200, raw: 400 },
  { path: '/manifest.json', inject: 404, raw: 404 },
  { path: '/objects/', inject: 404, raw: 404 },
  { path: `/objects/${createHash('md5').update(readFileSync(join(SITE, 'index.html'))).digest('hex')}`, inject: 404, raw: 404 },
  { path: '/site/index.html', inject: 404, raw: 404 },
  { path: '/site/manifest.json', inject: 404, raw: 404 },
  { path: '/constructor', inject: 404, raw: 404 },
  { path: '/__proto__', inject: 404, raw: 404 },
  { path: '/toString', inject: 404, raw: 404 },
  { path: '/hasOwnProperty/', inject: 404, raw: 404 },
];

/** Bytes that must never appear in an answer to a traversal: files outside the site, or the site's internals. */
const FORBIDDEN = [PACKAGE_JSON.slice(0, 40), '"name": "databank"', 'root:x:0:0', '"deployed_at"', '"variants"'];

for (const engine of ENGINES) {
  describe(`public site on ${engine}`, () => {
    let t: TestApp;
    let filesDir: string;
    let ownDir: string;
    let port: number;

    beforeAll(async () => {
      filesDir = await mkdtemp(join(tmpdir(), 'databank-site-store-'));
      ownDir = await mkdtemp(join(tmpdir(), 'databank-site-src-'));
      t = await startTestApp(engine, `site-${engine}`, {
        files: { store: { kind: 'local', dir: filesDir }, maxUploadBytes: 25 * 1024 * 1024, siteDir: SITE },
      });
      await t.app.http.listen({ host: '127.0.0.1', port: 0 });
      port = (t.app.http.server.address() as AddressInfo).port;
    });
    afterAll(async () => {
      await t?.close();
      await rm(filesDir, { recursive: true, force: true });
      await rm(ownDir, { recursive: true, force: true });
    });

    const get = (url: string, headers: Headers = {}, method: 'GET' | 'HEAD' | 'POST' | 'DELETE' = 'GET') =>
      t.app.http.inject({ method, url, headers });

    /** Deploys `dir` into the app's store and makes the app read the new manifest at once. */
    const deploy = async (dir: string) => {
      const report = await deploySite(t.app.files, dir);
      t.app.deps.site?.invalidate();
      return report;
    };

    describe('the bundled site', () => {
      it('GET / without a key answers index.html with its validators and caching headers', async () => {
        for (const url of ['/', '/index.html']) {
          const res = await get(url);
          expect([url, res.statusCode]).toEqual([url, 200]);
          expect(res.headers['content-type']).toBe('text/html; charset=utf-8');
          expect(res.rawPayload.equals(INDEX)).toBe(true);
          expect(res.headers['content-length']).toBe(String(INDEX.length));
          expect(res.headers.etag).toBe(`"${md5(INDEX)}"`);
          expect(res.headers['cache-control']).toBe('public, max-age=300');
          expect(res.headers.vary).toBe('Accept-Encoding');
          expect(res.headers['x-content-type-options']).toBe('nosniff');
          expect(res.headers['accept-ranges']).toBe('bytes');
          expect(res.headers['content-encoding']).toBeUndefined();
          expect(res.headers['content-security-policy']).toMatch(/default-src 'self'/);
          expect(new Date(res.headers['last-modified'] as string).toUTCString()).toBe(res.headers['last-modified']);
        }
      });

      it('serves each file with the content type of its extension and identical bytes', async () => {
        const css = await get('/styles.css');
        expect([css.statusCode, css.headers['content-type']]).toEqual([200, 'text/css; charset=utf-8']);
        expect(css.rawPayload.equals(site('styles.css'))).toBe(true);
        expect(css.headers.etag).toBe(`"${md5(site('styles.css'))}"`);

        const png = await get('/cover.png');
        expect([png.statusCode, png.headers['content-type']]).toEqual([200, 'image/png']);
        expect(png.rawPayload.equals(site('cover.png'))).toBe(true);
        expect(png.headers.etag).toBe(`"${md5(site('cover.png'))}"`);
        expect(png.headers['cache-control']).toBe('public, max-age=300');
        expect(png.headers['content-security-policy']).toBeUndefined();
      });

      it('sends the brotli or gzip variant the client accepts, and identity otherwise', async () => {
        const cases: Array<{ accept: string | null; encoding: 'br' | 'gzip' | null }> = [
          { accept: 'br', encoding: 'br' },
          { accept: 'gzip', encoding: 'gzip' },
          { accept: 'gzip, deflate, br', encoding: 'br' },
          { accept: 'br;q=0, gzip', encoding: 'gzip' },
          { accept: 'br;q=0, gzip;q=0.5', encoding: 'gzip' },
          { accept: 'GZIP', encoding: 'gzip' },
          { accept: '*', encoding: 'br' },
          { accept: 'gzip;q=0, br;q=0', encoding: null },
          { accept: 'identity', encoding: null },
          { accept: 'deflate', encoding: null },
          { accept: null, encoding: null },
        ];
        for (const c of cases) {
          const res = await get('/', c.accept === null ? {} : { 'accept-encoding': c.accept });
          const what = String(c.accept);
          expect([what, res.statusCode, res.headers['content-encoding']]).toEqual([what, 200, c.encoding ?? undefined]);
          expect(res.headers.vary, what).toBe('Accept-Encoding');
          expect(res.headers['content-type'], what).toBe('text/html; charset=utf-8');
          expect(res.headers['content-length'], what).toBe(String(res.rawPayload.length));
          const decoded =
            c.encoding === 'br' ? brotliDecompressSync(res.rawPayload) : c.encoding === 'gzip' ? gunzipSync(res.rawPayload) : res.rawPayload;
          expect(decoded.equals(INDEX), what).toBe(true);
          if (c.encoding) {
            expect(res.rawPayload.length, what).toBeLessThan(INDEX.length);
            expect(res.headers.etag, what).toBe(`"${md5(res.rawPayload)}"`);
          } else {
            expect(res.headers.etag, what).toBe(`"${md5(INDEX)}"`);
          }
        }
        const css = await get('/styles.css', { 'accept-encoding': 'gzip' });
        expect(css.headers['content-encoding']).toBe('gzip');
        expect(gunzipSync(css.rawPayload).equals(site('styles.css'))).toBe(true);
        // An image has no compressed variant.
        const png = await get('/cover.png', { 'accept-encoding': 'br, gzip' });
        expect(png.headers['content-encoding']).toBeUndefined();
        expect(png.rawPayload.equals(site('cover.png'))).toBe(true);
      });

      it('answers 304 to a matching If-None-Match, ranges with 206 and HEAD without a body', async () => {
        const etag = `"${md5(INDEX)}"`;
        const cached = await get('/', { 'if-none-match': etag });
        expect([cached.statusCode, cached.rawPayload.length, cached.headers.etag]).toEqual([304, 0, etag]);
        const brotli = await get('/', { 'accept-encoding': 'br' });
        const cachedBr = await get('/', { 'accept-encoding': 'br', 'if-none-match': brotli.headers.etag as string });
        expect([cachedBr.statusCode, cachedBr.rawPayload.length]).toEqual([304, 0]);
        const stale = await get('/', { 'if-none-match': '"0123"' });
        expect(stale.statusCode).toBe(200);
        const since = await get('/', { 'if-modified-since': cached.headers['last-modified'] as string });
        expect(since.statusCode).toBe(304);

        const ranged = await get('/', { range: 'bytes=0-9' });
        expect([ranged.statusCode, ranged.headers['content-range'], ranged.headers['content-length']]).toEqual([
          206,
          `bytes 0-9/${INDEX.length}`,
          '10',
        ]);
        expect(ranged.rawPayload.equals(INDEX.subarray(0, 10))).toBe(true);
        const tail = await get('/cover.png', { range: 'bytes=-16' });
        expect(tail.statusCode).toBe(206);
        expect(tail.rawPayload.equals(site('cover.png').subarray(-16))).toBe(true);
        const outside = await get('/', { range: `bytes=${INDEX.length}-` });
        expect([outside.statusCode, outside.headers['content-range'], outside.json<{ code: string }>().code]).toEqual([
          416,
          `bytes */${INDEX.length}`,
          'DATABANK_ERR_RANGE_NOT_SATISFIABLE',
        ]);

        const head = await get('/', {}, 'HEAD');
        expect([head.statusCode, head.headers['content-length'], head.rawPayload.length]).toEqual([200, String(INDEX.length), 0]);
        expect(head.headers.etag).toBe(etag);
        const headBr = await get('/', { 'accept-encoding': 'br' }, 'HEAD');
        expect([headBr.headers['content-encoding'], headBr.headers['content-length']]).toEqual(['br', String(brotli.rawPayload.length)]);
      });

      it('a missing page answers 404 with the body of 404.html', async () => {
        for (const url of ['/no-such-page', '/no/such/page.html', '/styles.css/', '/cover.png.gz', '/INDEX.HTML']) {
          const res = await get(url);
          expect([url, res.statusCode]).toEqual([url, 404]);
          expect(res.headers['content-type']).toBe('text/html; charset=utf-8');
          expect(res.rawPayload.equals(NOT_FOUND), url).toBe(true);
          expect(res.headers['cache-control']).toBe('public, max-age=60');
          expect(res.headers['x-content-type-options']).toBe('nosniff');
        }
        const head = await get('/no-such-page', {}, 'HEAD');
        expect([head.statusCode, head.rawPayload.length]).toEqual([404, 0]);
      });
    });

    describe('the boundary with the API', () => {
      it('API routes still need a key', async () => {
        const res = await get('/customers/1');
        expect([res.statusCode, res.json()]).toEqual([
          401,
          { statusCode: 401, code: 'DATABANK_ERR_UNAUTHORIZED', message: ERRORS.DATABANK_ERR_UNAUTHORIZED.message },
        ]);
        const files = await get('/customers/1/files');
        expect(files.statusCode).toBe(401);
        const ok = await get('/customers/1', t.admin);
        expect(ok.statusCode).toBe(200);
      });

      it('unmatched paths under API prefixes and other methods answer the JSON 404, not the site', async () => {
        const cases: Array<{ method: 'GET' | 'HEAD' | 'POST' | 'DELETE'; url: string }> = [
          { method: 'GET', url: '/customers/1/nope' },
          { method: 'GET', url: '/files/1/nope' },
          { method: 'GET', url: '/accounts/1/nope' },
          { method: 'GET', url: '/customers/1/accounts/nope' },
          { method: 'GET', url: '/files/1/content/nope' },
          { method: 'POST', url: '/' },
          { method: 'POST', url: '/index.html' },
          { method: 'DELETE', url: '/index.html' },
        ];
        for (const c of cases) {
          for (const headers of [{}, t.admin]) {
            const res = await get(c.url, headers, c.method);
            const what = `${c.method} ${c.url}`;
            expect([what, res.statusCode]).toEqual([what, 404]);
            expect(res.headers['content-type']).toMatch(/^application\/json/);
            expect([what, res.json()]).toEqual([what, routeNotFound(c.method, c.url)]);
          }
        }
      });
    });

    describe('paths that try to leave the site', () => {
      const check = (how: string, path: string, expected: number, status: number, body: Buffer, type: string | undefined) => {
        const what = `${how} ${path}`;
        expect([what, status]).toEqual([what, expected]);
        const text = body.toString('latin1');
        for (const forbidden of FORBIDDEN) expect(text.includes(forbidden), `${what} shows ${forbidden}`).toBe(false);
        if (expected === 400) {
          expect(type, what).toMatch(/^application\/json/);
          expect(JSON.parse(text), what).toEqual({
            statusCode: 400,
            code: 'DATABANK_ERR_BAD_PATH',
            message: ERRORS.DATABANK_ERR_BAD_PATH.message,
          });
        } else if (expected === 404) {
          expect(body.equals(NOT_FOUND), what).toBe(true);
        } else {
          expect(body.equals(INDEX), what).toBe(true);
        }
      };

      it('through inject', async () => {
        for (const c of TRAVERSALS) {
          const res = await get(c.path);
          check('inject', c.path, c.inject, res.statusCode, res.rawPayload, res.headers['content-type'] as string | undefined);
        }
      });

      it('over a raw socket, exactly as sent', async () => {
        for (const c of TRAVERSALS) {
          const res = await rawRequest(port, 'GET', c.path);
          check('raw', c.path, c.raw, res.status, res.body, res.headers['content-type'] as string | undefined);
        }
        // The same with a key: nothing outside the site is served to an admin either.
        for (const c of TRAVERSALS) {
          const res = await rawRequest(port, 'GET', c.path, t.admin);
          check('raw with a key', c.path, c.raw, res.status, res.body, res.headers['content-type'] as string | undefined);
        }
        const index = await rawRequest(port, 'GET', '/', { 'accept-encoding': 'gzip' });
        expect(index.status).toBe(200);
        expect(gunzipSync(index.body).equals(INDEX)).toBe(true);
      });
    });

    describe('a folder of our own', () => {
      const APP_JS = Buffer.from(`export const hello = () => ${JSON.stringify('x'.repeat(400))};\n`);
      const DOCS = Buffer.from(`<!doctype html><title>docs</title>\n${'<p>documentation</p>\n'.repeat(30)}`);

      beforeAll(async () => {
        cpSync(SITE, ownDir, { recursive: true });
        writeFileSync(join(ownDir, 'app.0123abcd.js'), APP_JS);
        mkdirSync(join(ownDir, 'docs'));
        writeFileSync(join(ownDir, 'docs', 'index.html'), DOCS);
        const report = await deploy(ownDir);
        expect(report.files).toBe(6);
        expect(report.deleted).toEqual([]);
      });

      it('a fingerprinted asset may be cached for a year', async () => {
        const res = await get('/app.0123abcd.js');
        expect(res.statusCode).toBe(200);
        expect(res.headers['content-type']).toBe('text/javascript; charset=utf-8');
        expect(res.headers['cache-control']).toBe('public, max-age=31536000, immutable');
        expect(res.rawPayload.equals(APP_JS)).toBe(true);
        const br = await get('/app.0123abcd.js', { 'accept-encoding': 'br' });
        expect(br.headers['cache-control']).toBe('public, max-age=31536000, immutable');
        expect(brotliDecompressSync(br.rawPayload).equals(APP_JS)).toBe(true);
        const plain = await get('/styles.css');
        expect(plain.headers['cache-control']).toBe('public, max-age=300');
      });

      it('a directory serves its index.html; without the slash it redirects', async () => {
        for (const url of ['/docs/', '/docs/index.html']) {
          const res = await get(url);
          expect([url, res.statusCode]).toEqual([url, 200]);
          expect(res.headers['content-type']).toBe('text/html; charset=utf-8');
          expect(res.rawPayload.equals(DOCS)).toBe(true);
          expect(res.headers.etag).toBe(`"${md5(DOCS)}"`);
        }
        const redirect = await get('/docs');
        expect([redirect.statusCode, redirect.headers.location]).toEqual([301, '/docs/']);
        const withQuery = await get('/docs?lang=en');
        expect([withQuery.statusCode, withQuery.headers.location]).toEqual([301, '/docs/?lang=en']);
        const raw = await rawRequest(port, 'GET', '/docs');
        expect([raw.status, raw.headers.location]).toEqual([301, '/docs/']);
      });

      it('a redeploy with a changed file is served as soon as the manifest is read again', async () => {
        const before = await get('/');
        expect(before.rawPayload.equals(INDEX)).toBe(true);
        const changed = Buffer.from(`${INDEX.toString()}\n<!-- redeployed -->\n`);
        writeFileSync(join(ownDir, 'index.html'), changed);
        const report = await deploy(ownDir);
        expect([...report.uploaded].sort()).toEqual(['index.html', 'index.html (br)', 'index.html (gzip)']);
        const after = await get('/');
        expect(after.statusCode).toBe(200);
        expect(after.rawPayload.equals(changed)).toBe(true);
        expect(after.headers.etag).toBe(`"${md5(changed)}"`);
        const br = await get('/', { 'accept-encoding': 'br' });
        expect(brotliDecompressSync(br.rawPayload).equals(changed)).toBe(true);
        const old = await get('/', { 'if-none-match': before.headers.etag as string });
        expect(old.statusCode).toBe(200);
      });

      it('without a 404.html a missing page answers the JSON 404', async () => {
        rmSync(join(ownDir, '404.html'));
        const report = await deploy(ownDir);
        expect(report.deleted).toEqual(['404.html']);
        const res = await get('/no-such-page');
        expect([res.statusCode, res.json()]).toEqual([404, routeNotFound('GET', '/no-such-page')]);
        const traversal = await rawRequest(port, 'GET', '/%252e%252e%252fpackage.json');
        expect(traversal.status).toBe(404);
        expect(JSON.parse(traversal.body.toString())).toEqual(routeNotFound('GET', '/%252e%252e%252fpackage.json'));
        const index = await get('/');
        expect(index.statusCode).toBe(200);
      });
    });
  });
}
