import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Refusals } from '../support/attack-checks.ts';
import { Bank, json, rawRequest, startAttackServer, type AttackServer, type Client, type RawAnswer } from '../support/attack-server.ts';
import { ENGINES } from '../support/engines.ts';

/**
 * Path traversal on the public site, sent over raw sockets (no client normalises the path), and
 * header injection through the names of uploaded files, against a real `databank serve`.
 */

const BAD_PATH = { statusCode: 400, code: 'DATABANK_ERR_BAD_PATH', message: 'The path is not a valid site path' };

/** Bidirectional controls and zero-width characters (src/domain/invisible-characters.ts). */
const INVISIBLE = /[\u061c\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]/u;

/** What no answer may ever carry: the system's files, the deployment's secrets, the package's own. */
function leakedFrom(server: AttackServer): (text: string) => string | null {
  const passwd = readFileSync('/etc/passwd', 'utf8').split('\n')[0] ?? 'root:x:0:0';
  const pkg = readFileSync(join(import.meta.dirname, '../../package.json'), 'utf8');
  const deployment = readFileSync(join(server.dataDir, 'deployment.json'), 'utf8');
  const markers: Array<[string, string]> = [
    ['/etc/passwd', passwd],
    ['the admin key', server.adminKey],
    ['package.json', pkg.slice(0, 60)],
    ['deployment.json', deployment.slice(0, 40)],
    ['the site manifest', '"objects/'],
  ];
  return (text) => markers.find(([, marker]) => marker.length > 8 && text.includes(marker))?.[0] ?? null;
}

describe.each(ENGINES)('traversal and header injection on databank serve (%s)', (engine) => {
  let server: AttackServer;
  let bank: Bank;

  beforeAll(async () => {
    server = await startAttackServer(engine, 'paths', {
      DATABANK_AUTH_FAILURE_LIMIT_PER_MINUTE: '100000',
      DATABANK_RATE_LIMIT_PER_MINUTE: '100000',
    });
    bank = new Bank(server);
  });

  afterAll(async () => {
    if (server) expect(await server.close()).toBe(0);
  });

  const get = (target: string | Buffer, method = 'GET'): Promise<RawAnswer> =>
    rawRequest(
      server.port,
      Buffer.concat([Buffer.from(`${method} `), Buffer.isBuffer(target) ? target : Buffer.from(target, 'latin1'), Buffer.from(' HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n')]),
    );
  const header = (answer: RawAnswer, name: string) => answer.headers.find(([n]) => n === name)?.[1];

  it('the site itself answers over the same raw requests (the baseline)', async () => {
    const index = await get('/');
    expect(index.status).toBe(200);
    expect(index.body.toString()).toContain('<html');
  });

  it('traversal on the public site: 400 DATABANK_ERR_BAD_PATH, never a file, never cacheable', async () => {
    const leaked = leakedFrom(server);
    const wrong: string[] = [];
    const bad = [
      '/../etc/passwd',
      '/../../../../../../etc/passwd',
      '/..',
      '/%2e%2e/',
      '/%2e%2e/%2e%2e/etc/passwd',
      '/%2E%2E/etc/passwd',
      '/.%2e/etc/passwd',
      '/%2e/index.html',
      '/./index.html',
      '/a/../index.html',
      '/%2f',
      '/%2fetc%2fpasswd',
      '/a%2fb',
      '/%5c',
      '/..%5c..%5cetc%5cpasswd',
      '/a//b',
      '//etc/passwd',
      '/%00',
      '/index.html%00',
      '/index.html%00.png',
      '/%0d%0aSet-Cookie:%20injected=1',
      '/a\\b',
      '/..\\..\\etc\\passwd',
    ];
    for (const path of bad) {
      for (const method of ['GET', 'HEAD']) {
        const answer = await get(path, method);
        const body = answer.body.toString();
        const problem =
          answer.status !== 400
            ? `status ${answer.status}`
            : method === 'GET' && JSON.stringify(JSON.parse(body || 'null')) !== JSON.stringify(BAD_PATH)
              ? `body ${body}`
              : (header(answer, 'cache-control') ?? '').includes('public')
                ? `cacheable: ${header(answer, 'cache-control')}`
                : answer.headers.some(([n]) => n === 'set-cookie')
                  ? 'a Set-Cookie header'
                  : leaked(answer.raw.toString('latin1'));
        if (problem) wrong.push(`${method} ${path}: ${problem}\n${answer.raw.toString('latin1').slice(0, 400)}`);
      }
    }
    expect(wrong).toEqual([]);
  });

  it('paths that are not valid percent-encoding, or a raw NUL in the request line: 400 before any route, never a file', async () => {
    const leaked = leakedFrom(server);
    const cases: Array<[Buffer, string]> = [
      // Refused by the router before the site sees them (`frameworkErrors` in src/http/server.ts).
      [Buffer.from('/%c0%ae%c0%ae/etc/passwd'), 'the path is not valid percent-encoded UTF-8'],
      [Buffer.from('/%'), 'the path is not valid percent-encoded UTF-8'],
      [Buffer.from('/..%c0%af..%c0%afetc/passwd'), 'the path is not valid percent-encoded UTF-8'],
      // Refused by Node's HTTP parser (src/http/client-errors.ts).
      [Buffer.from('/\x00/etc/passwd', 'latin1'), 'the request is not valid HTTP/1.1'],
      [Buffer.from('/index.html\x00', 'latin1'), 'the request is not valid HTTP/1.1'],
    ];
    for (const [target, message] of cases) {
      const answer = await get(target);
      const what = JSON.stringify(target.toString('latin1'));
      expect(answer.status, what).toBe(400);
      expect(JSON.parse(answer.body.toString()), what).toEqual({ statusCode: 400, code: 'DATABANK_ERR_VALIDATION', message });
      expect(leaked(answer.raw.toString('latin1'))).toBeNull();
      if (message.startsWith('the path')) {
        expect(answer.raw.toString('latin1').toLowerCase(), what).toMatch(/cache-control: no-store[\s\S]*x-content-type-options: nosniff|x-content-type-options: nosniff[\s\S]*cache-control: no-store/);
      }
    }
  });

  it('a line break in the request line injects no header into the answer', async () => {
    const leaked = leakedFrom(server);
    for (const target of ['/\r\nX-Injected: 1', '/%0d%0aX-Injected:%201', '/\nX-Injected: 1']) {
      const answer = await get(target);
      expect(answer.headers.map(([n]) => n), JSON.stringify(target)).not.toContain('x-injected');
      expect(answer.raw.toString('latin1')).not.toMatch(/\r\nx-injected/i);
      expect(leaked(answer.raw.toString('latin1'))).toBeNull();
      expect(answer.status === 200 || answer.status === 400, `${JSON.stringify(target)}: ${answer.status}`).toBe(true);
    }
  });

  it('ambiguous framing (request smuggling) and oversized headers are refused with the catalog, and the connection closed', async () => {
    const key = server.adminKey;
    const body = '{"amount":1}';
    const head = (extra: string) =>
      `POST /accounts/1/deposits HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${key}\r\nContent-Type: application/json\r\n${extra}\r\n`;
    const balance = await bank.balance(1);
    const cases: Array<[string, string, number, string]> = [
      ['Content-Length and Transfer-Encoding', head(`Content-Length: ${body.length}\r\nTransfer-Encoding: chunked\r\n`) + `c\r\n${body}\r\n0\r\n\r\n`, 400, 'DATABANK_ERR_VALIDATION'],
      ['two different Content-Lengths', head(`Content-Length: ${body.length}\r\nContent-Length: 3\r\n`) + body, 400, 'DATABANK_ERR_VALIDATION'],
      ['a negative Content-Length', head('Content-Length: -1\r\n') + body, 400, 'DATABANK_ERR_VALIDATION'],
      ['an obfuscated Transfer-Encoding', head(`Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n`) + `c\r\n${body}\r\n0\r\n\r\n`, 400, 'DATABANK_ERR_VALIDATION'],
      ['a header line folded onto the next', head(`X-Folded: a\r\n b\r\nContent-Length: ${body.length}\r\n`) + body, 400, 'DATABANK_ERR_VALIDATION'],
      ['a space before the colon', head(`Content-Length : ${body.length}\r\n`) + body, 400, 'DATABANK_ERR_VALIDATION'],
      ['headers over 16 KiB', head(`X-Big: ${'a'.repeat(17 * 1024)}\r\nContent-Length: ${body.length}\r\n`) + body, 431, 'DATABANK_ERR_HEADERS_TOO_LARGE'],
    ];
    const wrong: string[] = [];
    for (const [what, request, status, code] of cases) {
      const answer = await rawRequest(server.port, request);
      let actual: unknown = null;
      try {
        actual = (JSON.parse(answer.body.toString()) as { code?: unknown }).code;
      } catch {
        // not JSON
      }
      if (answer.status !== status || actual !== code || !answer.closed) {
        wrong.push(`${what}: expected ${status} ${code} and a closed connection, got ${answer.status} ${String(actual)} closed=${answer.closed}\n${answer.raw.toString().slice(0, 300)}`);
      }
    }
    expect(wrong).toEqual([]);
    expect(await bank.balance(1)).toBe(balance);
  });

  it('a request id from the client is echoed only when it is harmless', async () => {
    const uuid = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
    for (const [given, echoed] of [
      ['trace-1.2:3_ok', true],
      ['<script>alert(1)</script>', false],
      ['a"; x="b', false],
      ['a'.repeat(65), false],
      ['id with spaces', false],
      ['caf\u00e9', false],
    ] as const) {
      const answer = await rawRequest(
        server.port,
        Buffer.from(`GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Request-Id: ${given}\r\nConnection: close\r\n\r\n`, 'latin1'),
      );
      const ids = answer.headers.filter(([n]) => n === 'x-request-id').map(([, v]) => v);
      expect(ids).toHaveLength(1);
      if (echoed) expect(ids[0]).toBe(given);
      else expect(ids[0], given).toMatch(uuid);
    }
  });

  it('names of internal files are not site paths: 404 with the site page, never their bytes', async () => {
    const leaked = leakedFrom(server);
    const wrong: string[] = [];
    for (const path of ['/admin-key', '/deployment.json', '/manifest.json', '/site/manifest.json', '/site/objects/', '/objects/', '/pglite/PG_VERSION', '/package.json', '/etc/passwd', '/%252e%252e/%252e%252e/etc/passwd']) {
      const answer = await get(path);
      const problem = answer.status !== 404 ? `status ${answer.status}` : leaked(answer.raw.toString('latin1'));
      if (problem) wrong.push(`GET ${path}: ${problem}\n${answer.raw.toString('latin1').slice(0, 300)}`);
    }
    expect(wrong).toEqual([]);
  });

  describe('header injection through file names', () => {
    let customer: number;
    let asF: Client;
    /** The header names of a download of a plainly named file. */
    let baseline: string[];

    beforeAll(async () => {
      customer = await bank.customer('Nina Names');
      asF = bank.as((await bank.key(customer)).key);
      const plain = await upload('raw', 'plain.txt');
      expect(plain.status).toBe(201);
      baseline = (await download(json<{ file_id: number }>(plain).file_id)).headers.map(([n]) => n);
      expect(baseline).toContain('content-disposition');
    });

    const CONTENT = 'names test\n';
    const upload = (how: 'raw' | 'multipart' | 'multipart-ext', name: string) => {
      if (how === 'raw') {
        return asF.post(`/customers/${customer}/files?filename=${encodeURIComponent(name)}`, CONTENT, { headers: { 'content-type': 'text/plain' } });
      }
      const boundary = 'attack-boundary-7f3a';
      const disposition =
        how === 'multipart'
          ? `form-data; name="file"; filename="${name.replace(/["\\]/g, (c) => `\\${c}`)}"`
          : `form-data; name="file"; filename*=UTF-8''${encodeURIComponent(name)}`;
      const body = Buffer.concat([
        Buffer.from(`--${boundary}\r\nContent-Disposition: ${disposition}\r\nContent-Type: text/plain\r\n\r\n`, 'utf8'),
        Buffer.from(CONTENT),
        Buffer.from(`\r\n--${boundary}--\r\n`),
      ]);
      return asF.post(`/customers/${customer}/files`, body, { headers: { 'content-type': `multipart/form-data; boundary=${boundary}` } });
    };
    const download = (fileId: number, method = 'GET') =>
      rawRequest(
        server.port,
        `${method} /files/${fileId}/content HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${asF.key}\r\nConnection: close\r\n\r\n`,
      );

    const NAMES = [
      'evil\r\nX-Injected: 1.txt',
      'evil\nX-Injected: 1.txt',
      'evil\r\n\r\n<script>alert(1)</script>.txt',
      'a"; filename="evil.exe',
      'a";x="y.txt',
      'semi;colon; filename=evil.exe',
      "quote'single.txt",
      'back\\slash.txt',
      'résumé.txt',
      '報告書.txt',
      'invoice\u202Egpj.exe',
      'zero\u200Bwidth.txt',
      '\uFEFFbom.txt',
      'rtl\u2067isolate\u2069.txt',
      'emoji😀.txt',
      'percent%0d%0a.txt',
      'tab\tname.txt',
      "it's (a) *test*.txt",
      'line\u2028separator.txt',
      '=?utf-8?b?ZXZpbC5leGU=?=',
      '../../etc/passwd',
      'x'.repeat(256),
    ];

    it('every hostile name is refused 400 or served as a safe attachment header, with no extra header', async () => {
      const wrong: string[] = [];
      const checks = new Refusals();
      let accepted = 0;
      for (const name of NAMES) {
        for (const how of ['raw', 'multipart', 'multipart-ext'] as const) {
          // A raw line break inside a part's header ends that header: the client's own form, not a
          // name (the rest becomes the part's bytes). Such names go in the query and in filename*.
          if (how === 'multipart' && /[\r\n]/.test(name)) continue;
          const what = `${how} ${JSON.stringify(name)}`;
          const before = json<{ result: unknown[] }>(await asF.get(`/customers/${customer}/files`)).result.length;
          const res = await upload(how, name);
          if (res.status !== 201) {
            checks.expect(res, 400, 'DATABANK_ERR_VALIDATION', what);
            const after = json<{ result: unknown[] }>(await asF.get(`/customers/${customer}/files`)).result.length;
            if (after !== before) wrong.push(`${what}: refused, but the file list went from ${before} to ${after}`);
            continue;
          }
          accepted += 1;
          const meta = json<{ file_id: number; filename: string }>(res);
          for (const method of ['GET', 'HEAD']) {
            const answer = await download(meta.file_id, method);
            const head = answer.raw.subarray(0, answer.raw.indexOf('\r\n\r\n')).toString('latin1');
            const problems: string[] = [];
            if (answer.status !== 200) problems.push(`status ${answer.status}`);
            // Every header line ends in CRLF and holds no other CR, LF or non-ASCII byte.
            for (const line of head.split('\r\n')) {
              // eslint-disable-next-line no-control-regex -- finding control characters is the point
              if (/[\r\n\u0000-\u0008\u000a-\u001f\u007f-\uffff]/.test(line)) problems.push(`header line with raw control or non-ASCII bytes: ${JSON.stringify(line)}`);
            }
            const names = answer.headers.map(([n]) => n);
            if (JSON.stringify(names) !== JSON.stringify(baseline)) problems.push(`headers ${names.join(',')} differ from a plain download's ${baseline.join(',')}`);
            const dispositions = answer.headers.filter(([n]) => n === 'content-disposition');
            const value = dispositions[0]?.[1] ?? '';
            const parsed = /^attachment; filename="([\x20-\x7e]*)"; filename\*=UTF-8''([A-Za-z0-9!#$&+\-.^_`|~%]*)$/.exec(value);
            if (dispositions.length !== 1 || !parsed) {
              problems.push(`Content-Disposition ${JSON.stringify(value)}`);
            } else {
              const [, fallback = '', encoded = ''] = parsed;
              if (/["\\]/.test(fallback)) problems.push(`a quote or backslash in the quoted name: ${fallback}`);
              const exact = decodeURIComponent(encoded);
              if (INVISIBLE.test(exact) || INVISIBLE.test(fallback)) problems.push(`an invisible character in ${JSON.stringify(exact)}`);
              // eslint-disable-next-line no-control-regex -- finding control characters is the point
              if (/[\u0000-\u001f\u007f]/.test(exact)) problems.push(`a control character in the name ${JSON.stringify(exact)}`);
              if (exact !== meta.filename.replace(new RegExp(INVISIBLE.source, 'gu'), '')) {
                problems.push(`the name ${JSON.stringify(exact)} is not the stored ${JSON.stringify(meta.filename)}`);
              }
            }
            if (method === 'GET' && answer.body.toString() !== CONTENT) problems.push('the bytes changed');
            if (problems.length > 0) wrong.push(`${what} → file ${meta.file_id}, ${method}: ${problems.join('; ')}\n${head}`);
          }
          await asF.call('DELETE', `/files/${meta.file_id}`);
        }
      }
      expect(checks.wrong).toEqual([]);
      expect(wrong).toEqual([]);
      // Some of the names are ordinary enough to be kept (non-ASCII, quotes, semicolons).
      expect(accepted).toBeGreaterThan(0);
    });
  });
});
