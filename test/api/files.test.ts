import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { request as httpRequest } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ERRORS, type ErrorCode } from '../../src/domain/errors.ts';
import { customerKey, startTestApp, type TestApp } from '../support/app.ts';
import { runCli } from '../support/cli.ts';
import { ENGINES } from '../support/engines.ts';

/**
 * The customer files API: uploads (raw and multipart) whose type is told from the bytes, the size
 * limit, filenames, listing, the content with file-server semantics (validators, 304, ranges,
 * HEAD), ownership, deletion, and the sweeper that reconciles the store with the table.
 */

type Headers = Record<string, string>;
type Response = Awaited<ReturnType<TestApp['app']['http']['inject']>>;

const PENDING_VARIANTS = ['web', 'mobile', 'thumbnail'].map((name) => ({
  name,
  status: 'pending',
  content_type: 'image/webp',
  width: null,
  height: null,
  size: null,
}));
/** An image gets three pending variants (no worker runs in this file to make them); other files none. */
const variantsOf = (type: string) => (type.startsWith('image/') ? PENDING_VARIANTS : []);

interface FileMeta {
  file_id: number;
  customer_id: number;
  filename: string;
  content_type: string;
  size: number;
  sha256: string;
  created_at: string;
}

const COVER = readFileSync(new URL('../../site/cover.png', import.meta.url));
const ISO = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;
const GHOST = 999_999;
const MiB = 1024 * 1024;

const sha256 = (bytes: Buffer) => createHash('sha256').update(bytes).digest('hex');

function catalogError(code: ErrorCode) {
  return { statusCode: ERRORS[code].status, code, message: ERRORS[code].message };
}

/** The status and the error code of a JSON error response. */
function errorOf(res: Response): [number, string | undefined] {
  return [res.statusCode, (res.json() as { code?: string }).code];
}

/** A multipart/form-data body with one file part, as a browser would send it. */
async function multipartBody(
  bytes: Buffer,
  filename: string,
  type = 'application/octet-stream',
): Promise<{ payload: Buffer; contentType: string }> {
  const form = new FormData();
  form.append('file', new Blob([new Uint8Array(bytes)], { type }), filename);
  const request = new Request('http://localhost/', { method: 'POST', body: form });
  const contentType = request.headers.get('content-type');
  if (!contentType) throw new Error('no multipart content type');
  return { payload: Buffer.from(await request.arrayBuffer()), contentType };
}

/** A body that arrives in exactly these chunks, a few milliseconds apart. */
function chunked(chunks: readonly Buffer[]): Readable {
  return Readable.from(
    (async function* () {
      for (const [i, chunk] of chunks.entries()) {
        if (i > 0) await new Promise((resolve) => setTimeout(resolve, 20));
        yield chunk;
      }
    })(),
    { objectMode: false },
  );
}

/** Sample files of every allowed type, each starting with its signature. */
const SAMPLES: ReadonlyArray<{ name: string; bytes: Buffer; type: string; declared: string }> = [
  { name: 'cover.png', bytes: COVER, type: 'image/png', declared: 'text/html' },
  {
    name: 'photo.jpg',
    bytes: Buffer.concat([Buffer.from([0xff, 0xd8, 0xff, 0xe0, 0x00, 0x10]), Buffer.from('JFIF\0'), randomBytes(700)]),
    type: 'image/jpeg',
    declared: 'image/png',
  },
  { name: 'old.gif', bytes: Buffer.concat([Buffer.from('GIF87a'), randomBytes(300)]), type: 'image/gif', declared: 'application/pdf' },
  { name: 'new.gif', bytes: Buffer.concat([Buffer.from('GIF89a'), randomBytes(300)]), type: 'image/gif', declared: 'text/plain' },
  {
    name: 'pic.webp',
    bytes: Buffer.concat([Buffer.from('RIFF'), Buffer.from([0x24, 0x08, 0, 0]), Buffer.from('WEBPVP8 '), randomBytes(400)]),
    type: 'image/webp',
    declared: 'application/json',
  },
  {
    name: 'statement.pdf',
    bytes: Buffer.concat([Buffer.from('%PDF-1.7\n%\xe2\xe3\xcf\xd3\n', 'latin1'), randomBytes(900)]),
    type: 'application/pdf',
    declared: 'application/octet-stream',
  },
  { name: 'notes.txt', bytes: Buffer.from('Dear bank,\r\n\tplease find my notes.\f\n'), type: 'text/plain', declared: 'image/jpeg' },
  { name: 'empty.txt', bytes: Buffer.alloc(0), type: 'text/plain', declared: 'application/octet-stream' },
];

for (const engine of ENGINES) {
  describe(`files API on ${engine}`, () => {
    let t: TestApp;
    let cust1: Headers;
    let cust2: Headers;

    beforeAll(async () => {
      t = await startTestApp(engine, `files-api-${engine}`, {}, undefined, { worker: false });
      cust1 = await customerKey(t, 1);
      cust2 = await customerKey(t, 2);
    });
    afterAll(async () => t?.close());

    const inject = (method: 'GET' | 'HEAD' | 'POST' | 'DELETE', url: string, headers: Headers = t.admin, payload?: Buffer | string | Readable) =>
      t.app.http.inject({ method, url, headers, ...(payload === undefined ? {} : { payload }) });

    const uploadRaw = (
      customer: number,
      bytes: Buffer | Readable,
      filename: string | null,
      headers: Headers = t.admin,
      contentType = 'application/octet-stream',
    ) =>
      inject(
        'POST',
        `/customers/${customer}/files${filename === null ? '' : `?filename=${encodeURIComponent(filename)}`}`,
        { ...headers, 'content-type': contentType, ...(Buffer.isBuffer(bytes) ? {} : { 'transfer-encoding': 'chunked' }) },
        bytes,
      );

    /** Uploads and checks the 201; returns the file's description. */
    const created = async (customer: number, bytes: Buffer, filename: string, contentType = 'application/octet-stream') => {
      const res = await uploadRaw(customer, bytes, filename, t.admin, contentType);
      expect(res.statusCode, res.body).toBe(201);
      return res.json<FileMeta>();
    };

    const storeKeys = async (prefix = 'files/') => {
      const keys: string[] = [];
      for await (const object of t.app.files.list(prefix)) keys.push(object.key);
      return keys;
    };

    const listAll = async (customer: number) => {
      const res = await inject('GET', `/customers/${customer}/files`);
      expect(res.statusCode).toBe(200);
      return res.json<{ result: FileMeta[] }>().result;
    };

    /** The store's leftover temporary files: a refused upload leaves none. */
    const storeTemporaries = () => {
      const store = t.app.config.files.store;
      return store.kind === 'local' ? readdirSync(join(store.dir, 'tmp')) : [];
    };

    describe('upload', () => {
      it('a raw body with ?filename= answers 201 with exactly the description and a Location', async () => {
        const before = Date.now();
        const res = await uploadRaw(1, COVER, 'cover.png');
        expect(res.statusCode, res.body).toBe(201);
        const body = res.json<FileMeta>();
        expect(Object.keys(body).sort()).toEqual(['content_type', 'created_at', 'customer_id', 'file_id', 'filename', 'sha256', 'size', 'variants']);
        expect(body).toEqual({
          file_id: expect.any(Number),
          customer_id: 1,
          filename: 'cover.png',
          content_type: 'image/png',
          size: COVER.length,
          sha256: sha256(COVER),
          created_at: expect.stringMatching(ISO),
          variants: PENDING_VARIANTS,
        });
        expect(Number.isInteger(body.file_id) && body.file_id > 0).toBe(true);
        expect(Date.parse(body.created_at)).toBeGreaterThanOrEqual(before - 5_000);
        expect(Date.parse(body.created_at)).toBeLessThanOrEqual(Date.now() + 5_000);
        expect(res.headers.location).toBe(`/files/${body.file_id}`);

        const meta = await inject('GET', `/files/${body.file_id}`);
        expect([meta.statusCode, meta.json()]).toEqual([200, body]);
      });

      it('a multipart body answers 201 with the part filename; ?filename= overrides it', async () => {
        const form = await multipartBody(COVER, 'from-form.png', 'image/png');
        const res = await inject('POST', '/customers/1/files', { ...t.admin, 'content-type': form.contentType }, form.payload);
        expect(res.statusCode, res.body).toBe(201);
        const body = res.json<FileMeta>();
        expect(body).toEqual({
          file_id: expect.any(Number),
          customer_id: 1,
          filename: 'from-form.png',
          content_type: 'image/png',
          size: COVER.length,
          sha256: sha256(COVER),
          created_at: expect.stringMatching(ISO),
          variants: PENDING_VARIANTS,
        });
        expect(res.headers.location).toBe(`/files/${body.file_id}`);

        const text = Buffer.from('multipart text\n');
        const other = await multipartBody(text, 'ignored.txt', 'text/plain');
        const renamed = await inject(
          'POST',
          '/customers/1/files?filename=chosen.txt',
          { ...t.admin, 'content-type': other.contentType },
          other.payload,
        );
        expect(renamed.statusCode, renamed.body).toBe(201);
        expect(renamed.json()).toMatchObject({ filename: 'chosen.txt', content_type: 'text/plain', size: text.length, sha256: sha256(text) });

        const content = await inject('GET', `/files/${body.file_id}/content`);
        expect(content.rawPayload.equals(COVER)).toBe(true);

        const unicode = await multipartBody(text, 'résumé 📄.txt', 'text/plain');
        const named = await inject('POST', '/customers/1/files', { ...t.admin, 'content-type': unicode.contentType }, unicode.payload);
        expect(named.statusCode, named.body).toBe(201);
        expect(named.json<FileMeta>().filename).toBe('résumé 📄.txt');
      });

      it('a multipart form without a file part answers 400', async () => {
        const form = new FormData();
        form.append('note', 'no file here');
        const request = new Request('http://localhost/', { method: 'POST', body: form });
        const payload = Buffer.from(await request.arrayBuffer());
        const res = await inject('POST', '/customers/1/files', { ...t.admin, 'content-type': request.headers.get('content-type') ?? '' }, payload);
        expect(errorOf(res)).toEqual([400, 'DATABANK_ERR_VALIDATION']);
      });

      it('tells every allowed type from the bytes, whatever Content-Type the client declares', async () => {
        for (const sample of SAMPLES) {
          const res = await uploadRaw(1, sample.bytes, sample.name, t.admin, sample.declared);
          expect([sample.name, res.statusCode], res.body).toEqual([sample.name, 201]);
          expect(res.json(), sample.name).toEqual({
            file_id: expect.any(Number),
            customer_id: 1,
            filename: sample.name,
            content_type: sample.type,
            size: sample.bytes.length,
            sha256: sha256(sample.bytes),
            created_at: expect.stringMatching(ISO),
            variants: variantsOf(sample.type),
          });
          const id = res.json<FileMeta>().file_id;
          const content = await inject('GET', `/files/${id}/content`);
          expect([sample.name, content.statusCode]).toEqual([sample.name, 200]);
          expect(content.rawPayload.equals(sample.bytes), sample.name).toBe(true);
          expect(content.headers['content-type'], sample.name).toBe(
            sample.type === 'text/plain' ? 'text/plain; charset=utf-8' : sample.type,
          );
        }
      });

      it('accepts UTF-8 text whose multi-byte characters straddle the 512-byte sniff boundary', async () => {
        const texts = [
          // 'é' is bytes 511 and 512.
          Buffer.from(`${'a'.repeat(511)}é and more: ü ñ 中文\n`),
          // '😀' is bytes 510 to 513.
          Buffer.from(`${'b'.repeat(510)}😀 and more: 𝄞 €\n`),
          // '€' is bytes 511 to 513.
          Buffer.from(`${'c'.repeat(511)}€${'d'.repeat(2000)}\n`),
        ];
        expect(texts[0]?.[511]).toBe(0xc3);
        expect(texts[1]?.[510]).toBe(0xf0);
        for (const [i, text] of texts.entries()) {
          // In one piece, then in two pieces split inside the character at the boundary.
          for (const body of [text, chunked([text.subarray(0, 512), text.subarray(512)])]) {
            const res = await uploadRaw(1, body, `split-${i}.txt`);
            expect(res.statusCode, res.body).toBe(201);
            expect(res.json()).toMatchObject({ content_type: 'text/plain', size: text.length, sha256: sha256(text) });
            const content = await inject('GET', `/files/${res.json<FileMeta>().file_id}/content`);
            expect(content.rawPayload.equals(text)).toBe(true);
          }
        }
      });

      it('refuses anything else with 415, and stores nothing', async () => {
        const listBefore = await listAll(1);
        const keysBefore = await storeKeys();
        const text = Buffer.from('x'.repeat(600));
        const withByteAt = (at: number, byte: number) => {
          const b = Buffer.from(text);
          b[at] = byte;
          return b;
        };
        const random = randomBytes(4096);
        random[0] = 0x00;
        const cases: Array<{ what: string; body: Buffer | Readable }> = [
          { what: 'random binary', body: random },
          { what: 'ELF header', body: Buffer.concat([Buffer.from([0x7f, 0x45, 0x4c, 0x46, 0x02, 0x01, 0x01, 0x00]), randomBytes(200)]) },
          { what: 'ZIP header', body: Buffer.concat([Buffer.from([0x50, 0x4b, 0x03, 0x04, 0x14, 0x00, 0x00, 0x00]), randomBytes(200)]) },
          { what: 'text with a NUL at byte 2', body: withByteAt(2, 0x00) },
          { what: 'text with a NUL after 512 bytes', body: withByteAt(580, 0x00) },
          { what: 'text with invalid UTF-8 after 512 bytes', body: withByteAt(580, 0xff) },
          { what: 'text with an escape character after 512 bytes', body: withByteAt(599, 0x1b) },
          { what: 'text ending inside a multi-byte character', body: Buffer.concat([text, Buffer.from([0xe2, 0x82])]) },
          { what: 'short text ending inside a multi-byte character', body: Buffer.from([0x61, 0x62, 0xc3]) },
          // The same refusals when the bad bytes arrive in a later chunk than the sniffed ones.
          { what: 'streamed: a NUL after 512 bytes', body: chunked([text.subarray(0, 512), withByteAt(580, 0x00).subarray(512)]) },
          { what: 'streamed: invalid UTF-8 after 512 bytes', body: chunked([text.subarray(0, 512), withByteAt(590, 0xc0).subarray(512)]) },
          {
            what: 'streamed: text ending inside a multi-byte character',
            body: chunked([text.subarray(0, 512), text.subarray(512), Buffer.from([0xf0, 0x9f, 0x98])]),
          },
        ];
        for (const c of cases) {
          const res = await uploadRaw(1, c.body, 'refused.txt', t.admin, 'text/plain');
          expect([c.what, ...errorOf(res)], res.body).toEqual([c.what, 415, 'DATABANK_ERR_UNSUPPORTED_FILE_TYPE']);
          expect(res.json<{ statusCode: number }>().statusCode).toBe(415);
        }
        expect(await listAll(1)).toEqual(listBefore);
        expect(await storeKeys()).toEqual(keysBefore);
        expect(storeTemporaries()).toEqual([]);
      });

      it('stores HTML and SVG only as plain text, served as a sandboxed, unsniffable attachment', async () => {
        const pages = [
          { name: 'page.html', bytes: Buffer.from('<!doctype html><html><body><script>alert(document.cookie)</script></body></html>\n') },
          {
            name: 'image.svg',
            bytes: Buffer.from('<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script><circle r="4"/></svg>'),
          },
        ];
        for (const page of pages) {
          const res = await uploadRaw(1, page.bytes, page.name, t.admin, page.name.endsWith('.svg') ? 'image/svg+xml' : 'text/html');
          expect(res.statusCode, res.body).toBe(201);
          expect(res.json<FileMeta>().content_type).toBe('text/plain');
          const content = await inject('GET', `/files/${res.json<FileMeta>().file_id}/content`);
          expect(content.statusCode).toBe(200);
          expect(content.rawPayload.equals(page.bytes)).toBe(true);
          expect(content.headers['content-type']).toBe('text/plain; charset=utf-8');
          expect(content.headers['content-disposition']).toBe(`attachment; filename="${page.name}"; filename*=UTF-8''${page.name}`);
          expect(content.headers['x-content-type-options']).toBe('nosniff');
          expect(content.headers['content-security-policy']).toBe("default-src 'none'; sandbox");
          expect(content.headers['cache-control']).toBe('private, no-cache');
        }
      });
    });

    describe('filenames', () => {
      it('a raw body without ?filename= answers 400', async () => {
        const res = await uploadRaw(1, Buffer.from('hello'), null);
        expect(errorOf(res)).toEqual([400, 'DATABANK_ERR_VALIDATION']);
      });

      it('refuses names with separators, control characters, empty or over 255 characters', async () => {
        const keysBefore = await storeKeys();
        const bad = ['a/b.txt', '../etc.txt', 'a\\b.txt', 'C:\\x.txt', 'tab\there', 'line\nbreak', 'nul\u0000', 'del\u007f', 'esc\u001b[0m', '', '   ', '.', '..', 'x'.repeat(256)];
        for (const name of bad) {
          const res = await uploadRaw(1, Buffer.from('hello'), name);
          expect([JSON.stringify(name), ...errorOf(res)], res.body).toEqual([JSON.stringify(name), 400, 'DATABANK_ERR_VALIDATION']);
        }
        const ok = await uploadRaw(1, Buffer.from('hello'), 'x'.repeat(255));
        expect(ok.statusCode).toBe(201);
        expect(ok.json<FileMeta>().filename).toBe('x'.repeat(255));
        expect((await storeKeys()).length).toBe(keysBefore.length + 1);
      });

      it('keeps unicode names and sends them back percent-encoded in Content-Disposition', async () => {
        const cases = [
          { name: 'résumé 2026.txt', encoded: 'r%C3%A9sum%C3%A9%202026.txt' },
          { name: '账单📄.txt', encoded: '%E8%B4%A6%E5%8D%95%F0%9F%93%84.txt' },
          { name: `it's (100%) "done";.txt`, encoded: 'it%27s%20%28100%25%29%20%22done%22%3B.txt' },
        ];
        for (const c of cases) {
          const res = await uploadRaw(1, Buffer.from('unicode\n'), c.name);
          expect(res.statusCode, res.body).toBe(201);
          expect(res.json<FileMeta>().filename).toBe(c.name);
          const content = await inject('GET', `/files/${res.json<FileMeta>().file_id}/content`);
          const disposition = content.headers['content-disposition'] as string;
          expect(disposition.endsWith(`; filename*=UTF-8''${c.encoded}`), disposition).toBe(true);
          // The quoted fallback is printable ASCII without quotes, backslashes or percent signs.
          expect(disposition).toMatch(/^attachment; filename="[\x20-\x21\x23-\x24\x26-\x5b\x5d-\x7e]*"; filename\*=/);
          expect(decodeURIComponent(c.encoded)).toBe(c.name);
        }
      });
    });

    describe('listing', () => {
      let customer: number;
      /** A customer of this block's own with no files, whatever other tests upload. */
      let noFiles: number;
      const files: FileMeta[] = [];

      beforeAll(async () => {
        const newCustomer = async (name: string) => {
          const res = await inject('POST', '/customers', { ...t.admin, 'content-type': 'application/json' }, JSON.stringify({ name, date_of_birth: '1990-01-01' }));
          expect(res.statusCode).toBe(201);
          return res.json<{ id: number }>().id;
        };
        customer = await newCustomer('Lister');
        noFiles = await newCustomer('Nofiles');
        files.push(await created(customer, Buffer.from('first\n'), 'a.txt'));
        files.push(await created(customer, COVER, 'b.png'));
        files.push(await created(customer, Buffer.from('third\n'), 'c.txt'));
        files.push(await created(customer, Buffer.from('%PDF-1.4\nfourth'), 'd.pdf'));
        files.push(await created(customer, Buffer.from('fifth\n'), 'e.txt'));
      });

      it('lists newest first', async () => {
        const res = await inject('GET', `/customers/${customer}/files`);
        expect(res.statusCode).toBe(200);
        expect(res.json()).toEqual({ result: [...files].reverse() });
        const empty = await inject('GET', `/customers/${noFiles}/files`);
        expect([empty.statusCode, empty.json()]).toEqual([200, { result: [] }]);
      });

      it('filters by content_type', async () => {
        const text = await inject('GET', `/customers/${customer}/files?content_type=text/plain`);
        expect(text.json()).toEqual({ result: [files[4], files[2], files[0]] });
        const png = await inject('GET', `/customers/${customer}/files?content_type=${encodeURIComponent('image/png')}`);
        expect(png.json()).toEqual({ result: [files[1]] });
        const gif = await inject('GET', `/customers/${customer}/files?content_type=image/gif`);
        expect(gif.json()).toEqual({ result: [] });
      });

      it('pages with limit and cursor', async () => {
        const first = await inject('GET', `/customers/${customer}/files?limit=2`);
        expect(first.json<{ result: FileMeta[] }>().result).toEqual([files[4], files[3]]);
        const c1 = first.json<{ next_cursor: string }>().next_cursor;
        expect(typeof c1).toBe('string');
        const second = await inject('GET', `/customers/${customer}/files?limit=2&cursor=${c1}`);
        expect(second.json<{ result: FileMeta[] }>().result).toEqual([files[2], files[1]]);
        const c2 = second.json<{ next_cursor: string }>().next_cursor;
        const third = await inject('GET', `/customers/${customer}/files?limit=2&cursor=${c2}`);
        expect(third.json()).toEqual({ result: [files[0]] });
        const filtered = await inject('GET', `/customers/${customer}/files?limit=1&content_type=text/plain`);
        expect(filtered.json<{ result: FileMeta[] }>().result).toEqual([files[4]]);
        const next = await inject(
          'GET',
          `/customers/${customer}/files?limit=1&content_type=text/plain&cursor=${filtered.json<{ next_cursor: string }>().next_cursor}`,
        );
        expect(next.json<{ result: FileMeta[] }>().result).toEqual([files[2]]);
      });

      it('refuses an invalid content_type, limit, cursor or query parameter with 400', async () => {
        for (const query of ['content_type=text/html', 'content_type=image/svg%2Bxml', 'content_type=', 'limit=0', 'limit=101', 'sort=name']) {
          const res = await inject('GET', `/customers/${customer}/files?${query}`);
          expect([query, ...errorOf(res)]).toEqual([query, 400, 'DATABANK_ERR_VALIDATION']);
        }
        const res = await inject('GET', `/customers/${customer}/files?cursor=bm90LWEtY3Vyc29y`);
        expect(errorOf(res)).toEqual([400, 'DATABANK_ERR_INVALID_CURSOR']);
      });

      it('answers 404 for a customer that does not exist', async () => {
        const res = await inject('GET', `/customers/${GHOST}/files`);
        expect(errorOf(res)).toEqual([404, 'DATABANK_ERR_NOT_FOUND']);
      });
    });

    describe('content', () => {
      let file: FileMeta;
      let url: string;
      let lastModified: string;

      beforeAll(async () => {
        file = await created(1, COVER, 'served.png');
        url = `/files/${file.file_id}/content`;
        // Every test below reads the validator itself; the first test checks its exact value.
        const res = await inject('GET', url);
        lastModified = res.headers['last-modified'] as string;
      });

      it('GET /files/:id describes the file; /content sends identical bytes with validators', async () => {
        const meta = await inject('GET', `/files/${file.file_id}`);
        expect([meta.statusCode, meta.json()]).toEqual([200, file]);
        const res = await inject('GET', url);
        expect(res.statusCode).toBe(200);
        expect(res.rawPayload.equals(COVER)).toBe(true);
        expect(res.headers['content-type']).toBe('image/png');
        expect(res.headers['content-length']).toBe(String(COVER.length));
        expect(res.headers.etag).toBe(`"${sha256(COVER)}"`);
        expect(res.headers['accept-ranges']).toBe('bytes');
        expect(res.headers['content-disposition']).toBe(`attachment; filename="served.png"; filename*=UTF-8''served.png`);
        expect(res.headers['x-content-type-options']).toBe('nosniff');
        expect(res.headers['content-security-policy']).toBe("default-src 'none'; sandbox");
        expect(res.headers['cache-control']).toBe('private, no-cache');
        expect(res.headers['last-modified']).toBe(lastModified);
        expect(new Date(lastModified).toUTCString()).toBe(lastModified);
        expect(Date.parse(lastModified)).toBe(Math.floor(Date.parse(file.created_at) / 1000) * 1000);
      });

      it('If-None-Match answers 304 without a body for the tag, * or a list holding it', async () => {
        const etag = `"${file.sha256}"`;
        for (const inm of [etag, '*', `"abc", ${etag}`, `W/${etag}`, `"x",${etag},"y"`]) {
          const res = await inject('GET', url, { ...t.admin, 'if-none-match': inm });
          expect([inm, res.statusCode]).toEqual([inm, 304]);
          expect(res.rawPayload.length).toBe(0);
          expect(res.headers.etag).toBe(etag);
        }
        for (const inm of ['"abc"', `"${file.sha256.slice(1)}"`, file.sha256]) {
          const res = await inject('GET', url, { ...t.admin, 'if-none-match': inm });
          expect([inm, res.statusCode]).toEqual([inm, 200]);
          expect(res.rawPayload.equals(COVER)).toBe(true);
        }
      });

      it('If-Modified-Since answers 304 when it is not before Last-Modified, 200 when it is', async () => {
        const at = Date.parse(lastModified);
        for (const ims of [lastModified, new Date(at + 1000).toUTCString(), new Date(at + 86_400_000).toUTCString()]) {
          const res = await inject('GET', url, { ...t.admin, 'if-modified-since': ims });
          expect([ims, res.statusCode]).toEqual([ims, 304]);
          expect(res.rawPayload.length).toBe(0);
        }
        for (const ims of [new Date(at - 1000).toUTCString(), 'not a date']) {
          const res = await inject('GET', url, { ...t.admin, 'if-modified-since': ims });
          expect([ims, res.statusCode]).toEqual([ims, 200]);
          expect(res.rawPayload.equals(COVER)).toBe(true);
        }
        // If-None-Match that does not match wins over If-Modified-Since.
        const both = await inject('GET', url, { ...t.admin, 'if-none-match': '"other"', 'if-modified-since': lastModified });
        expect(both.statusCode).toBe(200);
      });

      it('a single Range answers 206 with exactly those bytes', async () => {
        const size = COVER.length;
        const cases = [
          { range: 'bytes=0-0', start: 0, end: 0 },
          { range: 'bytes=10-19', start: 10, end: 19 },
          { range: 'bytes=-5', start: size - 5, end: size - 1 },
          { range: 'bytes=100-', start: 100, end: size - 1 },
          { range: `bytes=${size - 1}-`, start: size - 1, end: size - 1 },
          { range: `bytes=0-${size + 1000}`, start: 0, end: size - 1 },
          { range: `bytes=-${size + 1000}`, start: 0, end: size - 1 },
        ];
        for (const c of cases) {
          const res = await inject('GET', url, { ...t.admin, range: c.range });
          expect([c.range, res.statusCode]).toEqual([c.range, 206]);
          expect(res.headers['content-range'], c.range).toBe(`bytes ${c.start}-${c.end}/${size}`);
          expect(res.headers['content-length'], c.range).toBe(String(c.end - c.start + 1));
          expect(res.rawPayload.equals(COVER.subarray(c.start, c.end + 1)), c.range).toBe(true);
          expect(res.headers.etag).toBe(`"${file.sha256}"`);
        }
      });

      it('a Range outside the file answers 416 with the size', async () => {
        const size = COVER.length;
        for (const range of [`bytes=${size}-`, `bytes=${size + 10}-${size + 20}`, 'bytes=-0']) {
          const res = await inject('GET', url, { ...t.admin, range });
          expect([range, res.statusCode]).toEqual([range, 416]);
          expect(res.headers['content-range']).toBe(`bytes */${size}`);
          expect(res.json()).toEqual(catalogError('DATABANK_ERR_RANGE_NOT_SATISFIABLE'));
        }
      });

      it('several ranges or a malformed one answer 200 with the whole file', async () => {
        for (const range of ['bytes=0-1,5-6', 'bytes=0-1, 10-', 'bytes=abc', 'items=0-1', 'bytes=-', 'bytes=5-2', 'bytes 0-1', 'bytes=0x10-']) {
          const res = await inject('GET', url, { ...t.admin, range });
          expect([range, res.statusCode]).toEqual([range, 200]);
          expect(res.headers['content-range']).toBeUndefined();
          expect(res.headers['content-length']).toBe(String(COVER.length));
          expect(res.rawPayload.equals(COVER)).toBe(true);
        }
      });

      it('If-Range with the ETag answers 206, with another validator 200', async () => {
        const match = await inject('GET', url, { ...t.admin, range: 'bytes=10-19', 'if-range': `"${file.sha256}"` });
        expect(match.statusCode).toBe(206);
        expect(match.rawPayload.equals(COVER.subarray(10, 20))).toBe(true);
        const byDate = await inject('GET', url, { ...t.admin, range: 'bytes=10-19', 'if-range': lastModified });
        expect(byDate.statusCode).toBe(206);
        for (const ifRange of ['"other"', `W/"${file.sha256}"`, new Date(Date.parse(lastModified) - 1000).toUTCString()]) {
          const res = await inject('GET', url, { ...t.admin, range: 'bytes=10-19', 'if-range': ifRange });
          expect([ifRange, res.statusCode]).toEqual([ifRange, 200]);
          expect(res.rawPayload.equals(COVER)).toBe(true);
        }
      });

      it("HEAD answers the GET's headers without a body", async () => {
        const get = await inject('GET', url);
        const head = await inject('HEAD', url);
        expect(head.statusCode).toBe(200);
        expect(head.rawPayload.length).toBe(0);
        expect(head.headers['content-length']).toBe(String(COVER.length));
        for (const name of ['content-type', 'etag', 'last-modified', 'content-disposition', 'cache-control', 'content-security-policy']) {
          expect(head.headers[name], name).toBe(get.headers[name]);
        }
        const ranged = await inject('HEAD', url, { ...t.admin, range: 'bytes=10-19' });
        expect([ranged.statusCode, ranged.headers['content-length'], ranged.headers['content-range'], ranged.rawPayload.length]).toEqual([
          206,
          '10',
          `bytes 10-19/${COVER.length}`,
          0,
        ]);
        const cond = await inject('HEAD', url, { ...t.admin, 'if-none-match': `"${file.sha256}"` });
        expect([cond.statusCode, cond.rawPayload.length]).toEqual([304, 0]);
      });

      it('an empty file has a Content-Length of 0 and no satisfiable range', async () => {
        const empty = await created(1, Buffer.alloc(0), 'empty.txt');
        expect(empty.sha256).toBe(sha256(Buffer.alloc(0)));
        const res = await inject('GET', `/files/${empty.file_id}/content`);
        expect([res.statusCode, res.headers['content-length'], res.rawPayload.length]).toEqual([200, '0', 0]);
        const ranged = await inject('GET', `/files/${empty.file_id}/content`, { ...t.admin, range: 'bytes=0-' });
        expect([ranged.statusCode, ranged.headers['content-range']]).toEqual([416, 'bytes */0']);
      });

      it('answers 404 for a file that does not exist', async () => {
        for (const path of [`/files/${GHOST}`, `/files/${GHOST}/content`]) {
          const res = await inject('GET', path);
          expect([path, ...errorOf(res)]).toEqual([path, 404, 'DATABANK_ERR_NOT_FOUND']);
        }
        for (const path of ['/files/0', '/files/abc/content', '/files/-1']) {
          const res = await inject('GET', path);
          expect([path, ...errorOf(res)]).toEqual([path, 400, 'DATABANK_ERR_VALIDATION']);
        }
      });
    });

    describe('ownership', () => {
      let file: FileMeta;

      beforeAll(async () => {
        file = await created(1, Buffer.from('private to customer 1\n'), 'private.txt');
      });

      /** Every files route for customer 1's resources (`id` = the file) and for missing ones. */
      const routes = (fileId: number, customerId: number) => [
        { method: 'POST' as const, url: `/customers/${customerId}/files?filename=x.txt`, payload: Buffer.from('x') },
        { method: 'GET' as const, url: `/customers/${customerId}/files` },
        { method: 'GET' as const, url: `/files/${fileId}` },
        { method: 'GET' as const, url: `/files/${fileId}/content` },
        { method: 'HEAD' as const, url: `/files/${fileId}/content` },
        { method: 'DELETE' as const, url: `/files/${fileId}` },
      ];
      const send = (route: ReturnType<typeof routes>[number], headers: Headers) =>
        inject(route.method, route.url, { ...headers, ...(route.payload ? { 'content-type': 'application/octet-stream' } : {}) }, route.payload);

      it("a customer key gets exactly the 404 of a missing id for another customer's files", async () => {
        const keysBefore = await storeKeys();
        const notFound = JSON.stringify(catalogError('DATABANK_ERR_NOT_FOUND'));
        const answer = (what: string, res: Response) => ({
          what,
          status: res.statusCode,
          body: res.body,
          length: res.headers['content-length'],
        });
        const expected = (what: string, method: string) => ({
          what,
          status: 404,
          body: method === 'HEAD' ? '' : notFound,
          length: String(Buffer.byteLength(notFound)),
        });
        // Byte for byte the same answer for customer 1's ids and for ids that do not exist: nothing
        // tells an existing id from a missing one.
        for (const [fileId, customerId] of [
          [file.file_id, 1],
          [GHOST, GHOST],
        ] as const) {
          const got = [];
          const want = [];
          for (const route of routes(fileId, customerId)) {
            const what = `${route.method} ${route.url}`;
            got.push(answer(what, await send(route, cust2)));
            want.push(expected(what, route.method));
          }
          expect(got).toEqual(want);
        }
        expect(await storeKeys()).toEqual(keysBefore);
        const still = await inject('GET', `/files/${file.file_id}`);
        expect([still.statusCode, still.json()]).toEqual([200, file]);
      });

      it('the owner and the admin may do everything; no key is 401', async () => {
        for (const route of routes(file.file_id, 1).filter((r) => r.method !== 'DELETE')) {
          const what = `${route.method} ${route.url}`;
          const none = await send(route, {});
          expect([what, none.statusCode]).toEqual([what, 401]);
          if (route.method !== 'HEAD') expect([what, none.json()]).toEqual([what, catalogError('DATABANK_ERR_UNAUTHORIZED')]);
          for (const headers of [cust1, t.admin]) {
            const ok = await send(route, headers);
            expect([what, ok.statusCode]).toEqual([what, route.method === 'POST' ? 201 : 200]);
          }
        }
        const noKeyDelete = await inject('DELETE', `/files/${file.file_id}`, {});
        expect(errorOf(noKeyDelete)).toEqual([401, 'DATABANK_ERR_UNAUTHORIZED']);
        const own = await created(1, Buffer.from('mine to delete\n'), 'mine.txt');
        const ownDelete = await inject('DELETE', `/files/${own.file_id}`, cust1);
        expect(ownDelete.statusCode).toBe(204);
        const own2 = await inject('GET', '/customers/2/files', cust2);
        expect(own2.statusCode).toBe(200);
        const upload2 = await uploadRaw(2, Buffer.from('customer 2 file\n'), 'two.txt', cust2);
        expect(upload2.statusCode).toBe(201);
        expect(upload2.json<FileMeta>().customer_id).toBe(2);
        const adminReads = await inject('GET', `/files/${upload2.json<FileMeta>().file_id}/content`);
        expect(adminReads.rawPayload.toString()).toBe('customer 2 file\n');
        const adminDeletes = await inject('DELETE', `/files/${upload2.json<FileMeta>().file_id}`);
        expect(adminDeletes.statusCode).toBe(204);
      });
    });

    describe('delete', () => {
      it('answers 204, then the file and its object are gone', async () => {
        const before = await storeKeys();
        const file = await created(1, COVER, 'doomed.png');
        const added = (await storeKeys()).filter((k) => !before.includes(k));
        expect(added).toHaveLength(1);
        const key = added[0] as string;
        expect(key).toMatch(/^files\/[0-9a-f-]{36}$/);
        expect((await t.app.files.head(key))?.size).toBe(COVER.length);

        const res = await inject('DELETE', `/files/${file.file_id}`);
        expect([res.statusCode, res.rawPayload.length]).toEqual([204, 0]);
        for (const path of [`/files/${file.file_id}`, `/files/${file.file_id}/content`]) {
          const gone = await inject('GET', path);
          expect([path, ...errorOf(gone)]).toEqual([path, 404, 'DATABANK_ERR_NOT_FOUND']);
        }
        expect(await t.app.files.head(key)).toBeNull();
        expect(await storeKeys()).toEqual(before);
        expect((await listAll(1)).some((f) => f.file_id === file.file_id)).toBe(false);
        const again = await inject('DELETE', `/files/${file.file_id}`);
        expect(errorOf(again)).toEqual([404, 'DATABANK_ERR_NOT_FOUND']);
      });
    });

    describe('sweep', () => {
      it('removes objects without a row, reports rows without an object, leaves the rest alone', async () => {
        const before = await storeKeys();
        const kept = await created(1, Buffer.from('kept\n'), 'kept.txt');
        const victim = await created(1, Buffer.from('object deleted behind our back\n'), 'victim.txt');
        const afterUploads = await storeKeys();
        const newKeys = afterUploads.filter((k) => !before.includes(k));
        expect(newKeys).toHaveLength(2);
        // Find which new key is the victim's by its bytes.
        let victimKey = '';
        for (const key of newKeys) {
          if ((await t.app.files.head(key))?.size === victim.size) victimKey = key;
        }
        expect(victimKey).not.toBe('');
        await t.app.files.delete(victimKey);

        const orphan = `files/${randomUUID()}`;
        await t.app.files.put(orphan, Buffer.from('nobody refers to me'), { contentType: 'text/plain' });
        const rows = before.length + 2;

        const dry = await t.app.deps.files.sweep({ graceMs: 0, dryRun: true });
        expect(dry).toEqual({
          orphanObjects: [orphan],
          missingObjects: [{ file_id: victim.file_id, object_key: victimKey }],
          objectsSeen: rows,
          rowsSeen: rows,
        });
        expect(await t.app.files.head(orphan)).not.toBeNull();

        // A grace period longer than the orphan's age leaves it alone.
        const young = await t.app.deps.files.sweep({ graceMs: 3_600_000, dryRun: false });
        expect(young.orphanObjects).toEqual([]);
        expect(await t.app.files.head(orphan)).not.toBeNull();

        const real = await t.app.deps.files.sweep({ graceMs: 0, dryRun: false });
        expect(real).toEqual(dry);
        expect(await t.app.files.head(orphan)).toBeNull();
        expect(await storeKeys()).toEqual(afterUploads.filter((k) => k !== victimKey));

        const keptContent = await inject('GET', `/files/${kept.file_id}/content`);
        expect(keptContent.rawPayload.toString()).toBe('kept\n');
        const missing = await inject('GET', `/files/${victim.file_id}/content`);
        expect(errorOf(missing)).toEqual([404, 'DATABANK_ERR_NOT_FOUND']);

        expect(await inject('DELETE', `/files/${victim.file_id}`)).toMatchObject({ statusCode: 204 });
        const clean = await t.app.deps.files.sweep({ graceMs: 0, dryRun: false });
        expect(clean).toEqual({ orphanObjects: [], missingObjects: [], objectsSeen: rows - 1, rowsSeen: rows - 1 });
      });
    });
  });

  describe(`files size limit on ${engine}`, () => {
    const LIMIT = 1000;
    let t: TestApp;
    let filesDir: string;

    beforeAll(async () => {
      filesDir = await mkdtemp(join(tmpdir(), 'databank-files-limit-'));
      t = await startTestApp(engine, `files-limit-${engine}`, {
        files: { store: { kind: 'local', dir: filesDir }, maxUploadBytes: LIMIT, siteDir: null },
      });
    });
    afterAll(async () => {
      await t?.close();
      await rm(filesDir, { recursive: true, force: true });
    });

    const storeKeys = async () => {
      const keys: string[] = [];
      for await (const object of t.app.files.list('files/')) keys.push(object.key);
      return keys;
    };
    const raw = (payload: Buffer | Readable, headers: Headers = {}) =>
      t.app.http.inject({
        method: 'POST',
        url: '/customers/1/files?filename=limit.txt',
        headers: { ...t.admin, 'content-type': 'application/octet-stream', ...headers },
        payload,
      });
    const tooLarge = { statusCode: 413, code: 'DATABANK_ERR_PAYLOAD_TOO_LARGE', message: `files may be at most ${LIMIT} bytes` };

    it('takes a file of exactly the limit and refuses one byte more, raw or multipart, storing nothing', async () => {
      const exact = Buffer.alloc(LIMIT, 'a');
      const over = Buffer.alloc(LIMIT + 1, 'a');
      const binaryOver = Buffer.concat([COVER.subarray(0, 8), Buffer.alloc(LIMIT - 7)]);
      expect(binaryOver.length).toBe(LIMIT + 1);

      const before = (await storeKeys()).length;
      const ok = await raw(exact);
      expect(ok.statusCode, ok.body).toBe(201);
      expect(ok.json()).toMatchObject({ size: LIMIT, sha256: sha256(exact) });
      const keys = await storeKeys();
      expect(keys).toHaveLength(before + 1);

      for (const [what, payload, headers] of [
        ['raw, with Content-Length', over, {}],
        ['raw PNG, with Content-Length', binaryOver, {}],
        ['raw, chunked', chunked([over.subarray(0, 600), over.subarray(600)]), { 'transfer-encoding': 'chunked' }],
        ['raw, chunked, one piece', chunked([over]), { 'transfer-encoding': 'chunked' }],
        ['raw PNG, chunked', chunked([binaryOver.subarray(0, 512), binaryOver.subarray(512)]), { 'transfer-encoding': 'chunked' }],
      ] as const) {
        const res = await raw(payload, headers);
        expect([what, res.statusCode, res.json()]).toEqual([what, 413, tooLarge]);
      }

      const okForm = await multipartBody(exact, 'exact.txt');
      const okMultipart = await t.app.http.inject({
        method: 'POST',
        url: '/customers/1/files',
        headers: { ...t.admin, 'content-type': okForm.contentType },
        payload: okForm.payload,
      });
      expect(okMultipart.statusCode, okMultipart.body).toBe(201);
      expect(okMultipart.json()).toMatchObject({ filename: 'exact.txt', size: LIMIT });

      for (const body of [over, binaryOver, Buffer.alloc(5 * LIMIT, 'b')]) {
        const form = await multipartBody(body, 'over.txt');
        const res = await t.app.http.inject({
          method: 'POST',
          url: '/customers/1/files',
          headers: { ...t.admin, 'content-type': form.contentType },
          payload: form.payload,
        });
        expect([body.length, ...errorOf(res)], res.body).toEqual([body.length, 413, 'DATABANK_ERR_PAYLOAD_TOO_LARGE']);
      }
      expect((await storeKeys()).length).toBe(before + 2);
      const store = t.app.config.files.store;
      if (store.kind === 'local') expect(readdirSync(join(store.dir, 'tmp'))).toEqual([]);
    });

    it('refuses a Content-Length over the limit before reading the body', async () => {
      const before = await storeKeys();
      let read = false;
      const body = new Readable({
        read() {
          read = true;
          this.push(Buffer.from('tiny'));
          this.push(null);
        },
      });
      const res = await raw(body, { 'content-length': String(LIMIT * 10) });
      expect([res.statusCode, res.json()]).toEqual([413, tooLarge]);
      expect(res.headers.connection).toBe('close');
      expect(read).toBe(false);
      expect(await storeKeys()).toEqual(before);
    });

    it('a client sending a large body over a socket receives the 413, not a reset', async () => {
      await t.app.http.listen({ host: '127.0.0.1', port: 0 });
      const { port } = t.app.http.server.address() as AddressInfo;
      const before = await storeKeys();
      const total = LIMIT + MiB;
      // Refused from the declared Content-Length before any byte is read, and, chunked, after the limit.
      for (const framing of [{ 'content-length': String(total) }, { 'transfer-encoding': 'chunked' }]) {
        const outcome = await new Promise<{ status: number; body: string }>((resolve, reject) => {
          let responded = false;
          let written = 0;
          const req = httpRequest({
            host: '127.0.0.1',
            port,
            method: 'POST',
            path: '/customers/1/files?filename=big.txt',
            headers: { ...t.admin, 'content-type': 'application/octet-stream', ...framing },
          });
          req.on('error', (err) => {
            if (!responded) reject(new Error(`no response before the connection failed (${written} of ${total} bytes written): ${err.message}`));
          });
          req.on('response', (res) => {
            responded = true;
            const chunks: Buffer[] = [];
            res.on('data', (c: Buffer) => chunks.push(c));
            res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString() }));
            res.on('error', (err) => reject(err));
          });
          const chunk = Buffer.alloc(64 * 1024, 'z');
          const pump = () => {
            while (written < total && !req.destroyed && !responded) {
              const n = Math.min(chunk.length, total - written);
              written += n;
              if (!req.write(chunk.subarray(0, n))) {
                req.once('drain', pump);
                return;
              }
            }
            if (written >= total) req.end();
          };
          pump();
        });
        expect([JSON.stringify(framing), outcome.status]).toEqual([JSON.stringify(framing), 413]);
        expect(JSON.parse(outcome.body)).toEqual(tooLarge);
      }
      expect(await storeKeys()).toEqual(before);
    });
  });
}

describe('databank files sweep and site deploy (CLI, PGlite)', () => {
  let root: string;

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'databank-files-cli-'));
  });
  afterAll(async () => {
    await rm(root, { recursive: true, force: true });
  });

  it('files sweep --json reports and removes orphans, and reports missing objects', async () => {
    const dir = join(root, 'sweep');
    const env = { DATABANK_DATA_DIR: dir, DATABANK_SITE_DIR: 'none' };
    // The server's data, made in this process; closed before the CLI runs, so PGlite is free.
    const t = await startTestApp('pglite', 'files-cli', {
      sql: { kind: 'pglite', dataDir: join(dir, 'pglite') },
      files: { store: { kind: 'local', dir: join(dir, 'files') }, maxUploadBytes: 25 * MiB, siteDir: null },
    });
    const keysOf = async () => {
      const keys: string[] = [];
      for await (const object of t.app.files.list('files/')) keys.push(object.key);
      return keys;
    };
    const uploaded: Array<{ fileId: number; key: string }> = [];
    const orphan = `files/${randomUUID()}`;
    try {
      for (const name of ['kept.txt', 'lost.txt']) {
        const before = await keysOf();
        const res = await t.app.http.inject({
          method: 'POST',
          url: `/customers/1/files?filename=${name}`,
          headers: { ...t.admin, 'content-type': 'text/plain' },
          payload: `${name}\n`,
        });
        expect(res.statusCode).toBe(201);
        const [key = ''] = (await keysOf()).filter((k) => !before.includes(k));
        uploaded.push({ fileId: res.json<FileMeta>().file_id, key });
      }
      await t.app.files.put(orphan, Buffer.from('orphan'), { contentType: 'text/plain' });
    } finally {
      await t.close();
    }
    const [kept, lost] = uploaded as [{ fileId: number; key: string }, { fileId: number; key: string }];
    const objects = () => readdirSync(join(dir, 'files', 'objects')).map(decodeURIComponent).sort();

    const dry = await runCli(['files', 'sweep', '--dry-run', '--grace-seconds', '0', '--json'], env);
    expect(dry.code, dry.stderr).toBe(0);
    expect(JSON.parse(dry.stdout)).toEqual({ orphanObjects: [orphan], missingObjects: [], objectsSeen: 3, rowsSeen: 2 });
    expect(objects()).toEqual([kept.key, lost.key, orphan].sort());

    const young = await runCli(['files', 'sweep', '--json'], env);
    expect(young.code, young.stderr).toBe(0);
    expect(JSON.parse(young.stdout)).toEqual({ orphanObjects: [], missingObjects: [], objectsSeen: 3, rowsSeen: 2 });
    expect(objects()).toEqual([kept.key, lost.key, orphan].sort());

    // One run both removes the orphan and reports the file whose object went missing; the file
    // that has its object is left alone.
    rmSync(join(dir, 'files', 'objects', encodeURIComponent(lost.key)));
    const real = await runCli(['files', 'sweep', '--grace-seconds', '0', '--json'], env);
    expect(JSON.parse(real.stdout)).toEqual({
      orphanObjects: [orphan],
      missingObjects: [{ file_id: lost.fileId, object_key: lost.key }],
      objectsSeen: 2,
      rowsSeen: 2,
    });
    expect(objects()).toEqual([kept.key]);
    // Rows without an object make the command fail, so that a scheduled run is noticed.
    expect(real.code, real.stderr).toBe(3);
  }, 180_000);

  it('site deploy DIR --json uploads only what changed and removes what is gone', async () => {
    // A data dir of this test's own: site deploy uses only the file store.
    const dir = join(root, 'site');
    const env = () => ({ DATABANK_DATA_DIR: dir, DATABANK_SITE_DIR: 'none' });
    const src = join(root, 'site-src');
    mkdirSync(join(src, 'docs'), { recursive: true });
    const page = (title: string) => `<!doctype html><title>${title}</title>\n${'<p>Lorem ipsum dolor sit amet.</p>\n'.repeat(20)}`;
    writeFileSync(join(src, 'index.html'), page('home'));
    writeFileSync(join(src, 'docs', 'index.html'), page('docs'));
    writeFileSync(join(src, 'tiny.txt'), 'small\n');
    writeFileSync(join(src, 'logo.png'), COVER);
    writeFileSync(join(src, '.hidden'), 'never deployed');

    const deploy = async () => {
      const r = await runCli(['site', 'deploy', src, '--json'], env());
      expect(r.code, r.stderr).toBe(0);
      return JSON.parse(r.stdout) as {
        files: number;
        uploaded: string[];
        unchanged: number;
        deleted: string[];
        objectsRemoved: number;
        bytesUploaded: number;
      };
    };
    const variants = (path: string) => [path, `${path} (br)`, `${path} (gzip)`];
    /** The site's objects in the store: the manifest, and one object per distinct MD5. */
    const siteObjects = () =>
      readdirSync(join(dir, 'files', 'objects'))
        .map(decodeURIComponent)
        .filter((k) => k.startsWith('site/'))
        .sort();

    const first = await deploy();
    expect(first.files).toBe(4);
    expect([...first.uploaded].sort()).toEqual([...variants('docs/index.html'), ...variants('index.html'), 'logo.png', 'tiny.txt'].sort());
    expect([first.unchanged, first.deleted, first.objectsRemoved]).toEqual([0, [], 0]);
    expect(first.bytesUploaded).toBeGreaterThan(COVER.length);
    expect(siteObjects()).toHaveLength(9);

    const second = await deploy();
    expect(second).toEqual({ files: 4, uploaded: [], unchanged: 8, deleted: [], objectsRemoved: 0, bytesUploaded: 0 });

    writeFileSync(join(src, 'docs', 'index.html'), page('changed docs'));
    const third = await deploy();
    expect([...third.uploaded].sort()).toEqual(variants('docs/index.html').sort());
    expect([third.unchanged, third.deleted, third.objectsRemoved]).toEqual([5, [], 3]);

    rmSync(join(src, 'docs'), { recursive: true });
    const fourth = await deploy();
    expect([fourth.files, fourth.uploaded, fourth.deleted, fourth.objectsRemoved]).toEqual([3, [], ['docs/index.html'], 3]);
    const md5 = (b: Buffer | string) => createHash('md5').update(b).digest('hex');
    const home = readFileSync(join(src, 'index.html'));
    const objects = siteObjects();
    expect(objects).toHaveLength(6);
    expect(objects).toContain('site/manifest.json');
    for (const bytes of [home, COVER, Buffer.from('small\n')]) expect(objects).toContain(`site/objects/${md5(bytes)}`);
  });
});
