import { createHash, randomBytes } from 'node:crypto';
import { cpSync, rmSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { deploySite } from '../../src/services/site.ts';
import { localFiles, startTestApp, type TestApp } from '../support/app.ts';

const SITE = fileURLToPath(new URL('../../site', import.meta.url));
const md5 = (b: Buffer) => createHash('md5').update(b).digest('hex');
const BOUNDARY = 'databank-test-boundary';

/** A multipart/form-data body with one part, written by hand so that it can be broken on purpose. */
function form(partHeaders: string[], content: Buffer, close = true): Buffer {
  return Buffer.concat([
    Buffer.from(`--${BOUNDARY}\r\n${partHeaders.join('\r\n')}\r\n\r\n`),
    content,
    Buffer.from(close ? `\r\n--${BOUNDARY}--\r\n` : ''),
  ]);
}

/** Headers a route sets for the file it means to send; no error answer may carry them. */
const REPRESENTATION = ['etag', 'last-modified', 'content-disposition', 'content-range', 'vary', 'content-encoding'];

describe('uploads and downloads that go wrong', () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await startTestApp('pglite', 'files-robustness', { files: localFiles({ siteDir: SITE }) });
  });
  afterAll(async () => {
    await t?.close();
  });

  const upload = (body: Buffer, contentType: string) =>
    t.app.http.inject({ method: 'POST', url: '/customers/1/files', headers: { ...t.admin, 'content-type': contentType }, payload: body });
  const objects = async () => {
    const keys: string[] = [];
    for await (const o of t.app.files.list('files/')) keys.push(o.key);
    return keys;
  };

  it('a broken multipart form is 400 DATABANK_ERR_BAD_UPLOAD (never a 5xx) and stores nothing', async () => {
    const text = Buffer.from('a line of text\n'.repeat(100));
    const cases: Array<[string, Buffer, string]> = [
      ['no boundary', text, 'multipart/form-data'],
      ['not multipart at all', Buffer.from('hello world'), `multipart/form-data; boundary=${BOUNDARY}`],
      [
        'a part cut short before 512 bytes',
        form(['Content-Disposition: form-data; name="file"; filename="a.txt"'], text.subarray(0, 100), false),
        `multipart/form-data; boundary=${BOUNDARY}`,
      ],
      [
        'a part cut short after 512 bytes',
        form(['Content-Disposition: form-data; name="file"; filename="a.txt"'], text, false),
        `multipart/form-data; boundary=${BOUNDARY}`,
      ],
    ];
    for (const [what, body, contentType] of cases) {
      const res = await upload(body, contentType);
      expect([what, res.statusCode, res.json().code]).toEqual([what, 400, 'DATABANK_ERR_BAD_UPLOAD']);
    }
    // A file part without a file name: the name is required.
    const nameless = await upload(
      form(['Content-Disposition: form-data; name="file"', 'Content-Type: application/octet-stream'], text),
      `multipart/form-data; boundary=${BOUNDARY}`,
    );
    expect([nameless.statusCode, nameless.json().code]).toEqual([400, 'DATABANK_ERR_VALIDATION']);
    expect(await objects()).toEqual([]);
    const list = await t.app.http.inject({ method: 'GET', url: '/customers/1/files', headers: t.admin });
    expect(list.json()).toEqual({ result: [] });
  });

  it('an error answer carries none of the file’s validators or caching headers', async () => {
    const created = await t.app.http.inject({
      method: 'POST',
      url: '/customers/1/files?filename=gone.txt',
      headers: { ...t.admin, 'content-type': 'application/octet-stream' },
      payload: Buffer.from('soon gone\n'),
    });
    expect(created.statusCode).toBe(201);
    const [key] = await objects();
    await t.app.files.delete(key as string);
    for (const method of ['GET', 'HEAD'] as const) {
      const res = await t.app.http.inject({ method, url: `/files/${created.json().file_id}/content`, headers: t.admin });
      expect([method, res.statusCode]).toEqual([method, 404]);
      if (method === 'GET') expect(res.json().code).toBe('DATABANK_ERR_NOT_FOUND');
      expect(res.headers['cache-control']).toBe('no-store');
      for (const name of REPRESENTATION) expect(res.headers[name], name).toBeUndefined();
    }
  });

  it('HEAD of a file whose bytes left the store folder answers 404 like GET; a file with its bytes 200', async () => {
    const store = t.app.config.files.store;
    if (store.kind !== 'local') throw new Error('this test removes a file from the local store folder');
    const upload = async (name: string, bytes: string) => {
      const res = await t.app.http.inject({
        method: 'POST',
        url: `/customers/1/files?filename=${name}`,
        headers: { ...t.admin, 'content-type': 'application/octet-stream' },
        payload: bytes,
      });
      expect(res.statusCode, res.body).toBe(201);
      return res.json<{ file_id: number }>().file_id;
    };
    const kept = await upload('kept.txt', 'still here\n');
    const emptyKept = await upload('empty.txt', '');
    const lost = await upload('lost.txt', 'about to vanish\n');
    const emptyLost = await upload('empty-lost.txt', '');
    for (const id of [lost, emptyLost]) {
      const row = await t.app.sql.db.selectFrom('files').select('object_key').where('id', '=', id).executeTakeFirstOrThrow();
      rmSync(join(store.dir, 'objects', encodeURIComponent(row.object_key)));
    }
    const answer = async (method: 'GET' | 'HEAD', id: number) => {
      const res = await t.app.http.inject({ method, url: `/files/${id}/content`, headers: t.admin });
      return { status: res.statusCode, code: method === 'GET' && res.statusCode === 404 ? res.json().code : undefined, length: res.headers['content-length'] };
    };
    for (const id of [lost, emptyLost]) {
      const get = await answer('GET', id);
      expect(get).toMatchObject({ status: 404, code: 'DATABANK_ERR_NOT_FOUND' });
      const head = await answer('HEAD', id);
      expect(head.status).toBe(404);
      // HEAD answers the GET's headers: the same length of the same error body.
      expect(head.length).toBe(get.length);
    }
    expect(await answer('HEAD', kept)).toMatchObject({ status: 200, length: String('still here\n'.length) });
    expect(await answer('HEAD', emptyKept)).toMatchObject({ status: 200, length: '0' });
  });

  it('a site object removed behind the app is a 503 without caching headers, not a cacheable error', async () => {
    const site = t.app.deps.site;
    const manifest = await site?.manifest();
    const entry = manifest?.files['styles.css'];
    expect(entry).toBeDefined();
    for (const variant of [entry, ...Object.values(entry?.variants ?? {})]) {
      await t.app.files.delete(`site/objects/${variant?.md5 as string}`);
    }
    const res = await t.app.http.inject({ method: 'GET', url: '/styles.css' });
    expect([res.statusCode, res.json().code]).toEqual([503, 'DATABANK_ERR_FILE_STORE_UNAVAILABLE']);
    expect(res.headers['cache-control']).toBe('no-store');
    for (const name of REPRESENTATION) expect(res.headers[name], name).toBeUndefined();
  });

  it('a deploy while the app holds the old manifest never pairs new bytes with old headers', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'databank-site-deploy-'));
    try {
      cpSync(SITE, dir, { recursive: true });
      const v1 = { big: randomBytes(2 * 1024 * 1024), small: Buffer.from('version one\n') };
      writeFileSync(join(dir, 'big.bin'), v1.big);
      writeFileSync(join(dir, 'small.txt'), v1.small);
      await deploySite(t.app.files, dir);
      t.app.deps.site?.invalidate();
      for (const [path, bytes] of [['/big.bin', v1.big], ['/small.txt', v1.small]] as const) {
        const res = await t.app.http.inject({ method: 'GET', url: path });
        expect([path, res.statusCode, res.headers.etag, res.rawPayload.equals(bytes)]).toEqual([path, 200, `"${md5(bytes)}"`, true]);
      }

      // A second deploy, while the app still trusts the manifest it read (it re-reads every 2 s).
      const v2 = { big: randomBytes(3 * 1024 * 1024), small: Buffer.from('version two, longer\n') };
      writeFileSync(join(dir, 'big.bin'), v2.big);
      writeFileSync(join(dir, 'small.txt'), v2.small);
      const report = await deploySite(t.app.files, dir);
      expect(report.objectsRemoved).toBe(2);
      // The old big object is gone, so the app reads the manifest again and sends the new file,
      // whole, with its own ETag and length.
      const big = await t.app.http.inject({ method: 'GET', url: '/big.bin' });
      expect([big.statusCode, big.headers.etag, big.headers['content-length'], big.rawPayload.equals(v2.big)]).toEqual([
        200,
        `"${md5(v2.big)}"`,
        String(v2.big.length),
        true,
      ]);
      // Every answer's ETag and length describe the bytes it carries.
      const small = await t.app.http.inject({ method: 'GET', url: '/small.txt' });
      expect(small.headers.etag).toBe(`"${md5(small.rawPayload)}"`);
      expect(small.headers['content-length']).toBe(String(small.rawPayload.length));
      expect([v1.small.toString(), v2.small.toString()]).toContain(small.rawPayload.toString());
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
