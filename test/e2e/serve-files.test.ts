import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, cpSync, unlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli, serve } from '../support/cli.ts';
import { runProcess } from '../support/processes.ts';
import { startS3Server, type S3Server } from '../support/s3.ts';
import { until } from '../support/until.ts';

const SITE = join(import.meta.dirname, '../../site');
const md5 = (b: Buffer) => createHash('md5').update(b).digest('hex');
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

interface CurlResult {
  readonly status: number;
  readonly headers: Record<string, string>;
  readonly body: Buffer;
}

/** Runs the real curl, as the README tells a new user to, and parses what it wrote. */
async function curl(args: readonly string[]): Promise<CurlResult> {
  const dir = mkdtempSync(join(tmpdir(), 'databank-curl-'));
  try {
    const headerFile = join(dir, 'headers');
    const bodyFile = join(dir, 'body');
    await runProcess('curl', ['-s', '--max-time', '30', '-D', headerFile, '-o', bodyFile, ...args], { timeoutMs: 40_000, check: true });
    const lines = readFileSync(headerFile, 'utf8').trim().split('\r\n');
    const status = Number(lines[0]?.split(' ')[1]);
    const headers: Record<string, string> = {};
    for (const line of lines.slice(1)) {
      const i = line.indexOf(':');
      headers[line.slice(0, i).toLowerCase()] = line.slice(i + 1).trim();
    }
    let body: Buffer;
    try {
      body = readFileSync(bodyFile);
    } catch {
      body = Buffer.alloc(0); // curl writes no file for an empty body
    }
    return { status, headers, body };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * The "done" of the files issue, on the real `databank serve`: the site at / with the chapter's
 * headers right after the first start, a file uploaded with curl and fetched back identical, a 304
 * on the conditional request, on the default local store and on S3 by environment variables only.
 */
const STORES = [
  { name: 'the local folder (default)', s3: false },
  { name: 'S3 (s3rver), by environment variables only', s3: true },
] as const;

describe.each(STORES)('databank serve with files in $name', ({ s3 }) => {
  let dir: string;
  let server: S3Server | null = null;
  let env: Record<string, string>;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'databank-serve-files-'));
    env = { DATABANK_DATA_DIR: dir };
    if (s3) {
      server = await startS3Server('databank-e2e');
      env = {
        ...env,
        S3_BUCKET: server.bucket,
        S3_ENDPOINT: server.endpoint,
        AWS_ACCESS_KEY_ID: 'S3RVER',
        AWS_SECRET_ACCESS_KEY: 'S3RVER',
        AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true',
      };
    }
  });
  afterAll(async () => {
    await server?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('the first start publishes the site: / answers with the chapter headers, no key needed', async () => {
    const s = await serve(env);
    try {
      const index = readFileSync(join(SITE, 'index.html'));
      const page = await curl([`${s.base}/`]);
      expect(page.status).toBe(200);
      expect(page.body.equals(index)).toBe(true);
      expect(page.headers['content-type']).toBe('text/html; charset=utf-8');
      expect(page.headers.etag).toBe(`"${md5(index)}"`);
      expect(page.headers['cache-control']).toBe('public, max-age=300');
      const cover = readFileSync(join(SITE, 'cover.png'));
      const image = await curl([`${s.base}/cover.png`]);
      expect([image.status, image.headers['content-type'], image.headers.etag]).toEqual([200, 'image/png', `"${md5(cover)}"`]);
      expect(image.body.equals(cover)).toBe(true);
      const css = await curl([`${s.base}/styles.css`]);
      expect([css.status, css.headers['content-type']]).toEqual([200, 'text/css; charset=utf-8']);
      const again = await curl(['-H', `If-None-Match: ${page.headers.etag}`, `${s.base}/`]);
      expect([again.status, again.body.length]).toEqual([304, 0]);
    } finally {
      expect(await s.stop()).toBe(0);
    }
  });

  it('a file uploaded with curl comes back byte-identical, then 304; the sweeper finds nothing to do', async () => {
    const s = await serve(env);
    const key = readFileSync(join(dir, 'admin-key'), 'utf8').trim();
    const auth = ['-H', `Authorization: Bearer ${key}`];
    const cover = readFileSync(join(SITE, 'cover.png'));
    let fileId: number;
    try {
      const upload = await curl([...auth, '-F', `file=@${join(SITE, 'cover.png')}`, `${s.base}/customers/1/files`]);
      expect(upload.status).toBe(201);
      const meta = JSON.parse(upload.body.toString()) as { file_id: number; content_type: string; size: number; sha256: string };
      expect(meta).toMatchObject({ customer_id: 1, filename: 'cover.png', content_type: 'image/png', size: cover.length, sha256: sha256(cover) });
      fileId = meta.file_id;
      const back = await curl([...auth, `${s.base}/files/${fileId}/content`]);
      expect(back.status).toBe(200);
      expect(back.body.equals(cover)).toBe(true);
      expect(back.headers.etag).toBe(`"${sha256(cover)}"`);
      expect(back.headers['content-disposition']).toBe(`attachment; filename="cover.png"; filename*=UTF-8''cover.png`);
      const conditional = await curl([...auth, '-H', `If-None-Match: ${back.headers.etag}`, `${s.base}/files/${fileId}/content`]);
      expect([conditional.status, conditional.body.length]).toEqual([304, 0]);
      const noKey = await curl([`${s.base}/files/${fileId}/content`]);
      expect(noKey.status).toBe(401);
      // The worker makes the image's three variants; the sweep below then counts their objects too.
      await until(
        async () => JSON.parse((await curl([...auth, `${s.base}/files/${fileId}`])).body.toString()) as { variants: Array<{ status: string }> },
        (f) => f.variants.every((v) => v.status === 'ready'),
        { what: 'the variants of cover.png' },
      );
    } finally {
      expect(await s.stop()).toBe(0);
    }
    // With the server stopped (the embedded database belongs to one process): the store and the
    // table agree.
    const sweep = await runCli(['files', 'sweep', '--grace-seconds', '0', '--json'], env);
    expect(sweep.stderr).toBe('');
    expect([sweep.code, JSON.parse(sweep.stdout)]).toEqual([
      0,
      { orphanObjects: [], missingObjects: [], objectsSeen: 4, rowsSeen: 1 },
    ]);
  });

  it('databank site deploy uploads only what changed and removes what is gone', async () => {
    const site = mkdtempSync(join(tmpdir(), 'databank-site-'));
    try {
      cpSync(SITE, site, { recursive: true });
      // This test's starting point, whatever ran before it: the bundled site deployed, as a first
      // start leaves it.
      const bundled = await runCli(['site', 'deploy', SITE, '--json'], env);
      expect(bundled.code, bundled.stderr).toBe(0);
      const same = await runCli(['site', 'deploy', site, '--json'], env);
      expect(same.code).toBe(0);
      expect(JSON.parse(same.stdout)).toMatchObject({ files: 4, uploaded: [], deleted: [], bytesUploaded: 0 });
      writeFileSync(join(site, 'index.html'), '<!doctype html><title>new</title><p>changed</p>\n');
      unlinkSync(join(site, '404.html'));
      const changed = await runCli(['site', 'deploy', site, '--json'], env);
      expect(changed.code).toBe(0);
      const report = JSON.parse(changed.stdout) as { uploaded: string[]; deleted: string[]; objectsRemoved: number };
      // The new index.html is too small to be worth compressing: its old copies go, with 404.html's.
      expect([report.uploaded, report.deleted, report.objectsRemoved]).toEqual([['index.html'], ['404.html'], 6]);
      const s = await serve(env);
      try {
        const page = await curl([`${s.base}/`]);
        expect(page.body.toString()).toBe('<!doctype html><title>new</title><p>changed</p>\n');
        const missing = await curl([`${s.base}/nothing-here`]);
        expect(missing.status).toBe(404);
        expect(JSON.parse(missing.body.toString())).toMatchObject({ code: 'DATABANK_ERR_ROUTE_NOT_FOUND' });
      } finally {
        expect(await s.stop()).toBe(0);
      }
    } finally {
      rmSync(site, { recursive: true, force: true });
    }
  });
});
