import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestApp, type TestApp } from '../support/app.ts';
import { ENGINES } from '../support/engines.ts';

/**
 * Bidirectional controls and zero-width characters make a name show as another (`invoice\u202Egpj.exe`
 * shows as `invoiceexe.jpg`): customer names and uploaded file names refuse them, and a file name
 * stored before the rule loses them in the download's Content-Disposition.
 */

const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => from + i);
const INVISIBLE = [0x061c, ...range(0x200b, 0x200f), ...range(0x202a, 0x202e), ...range(0x2060, 0x2064), ...range(0x2066, 0x2069), 0xfeff];
const hex = (cp: number) => `U+${cp.toString(16).toUpperCase().padStart(4, '0')}`;
const rule = (field: string, cp: number) => `${field}: must not contain ${hex(cp)} (an invisible bidirectional or zero-width character)`;
const BOUNDARY = 'names-test-boundary';

for (const engine of ENGINES) {
  describe(`invisible characters in names (${engine})`, () => {
    let t: TestApp;
    beforeAll(async () => {
      t = await startTestApp(engine, 'names');
    });
    afterAll(async () => {
      await t?.close();
    });

    const json = (method: 'POST' | 'PATCH', url: string, body: unknown) =>
      t.app.http.inject({ method, url, headers: { ...t.admin, 'content-type': 'application/json' }, payload: JSON.stringify(body) });
    const storedFiles = async () => (await t.app.sql.db.selectFrom('files').select('id').execute()).length;

    it('customer names refuse each of them, naming it, on create and on rename', async () => {
      for (const cp of INVISIBLE) {
        const name = `Eve${String.fromCodePoint(cp)}lyn`;
        const created = await json('POST', '/customers', { name, date_of_birth: '1990-01-01' });
        expect([hex(cp), created.statusCode, created.json()]).toEqual([
          hex(cp),
          400,
          { statusCode: 400, code: 'DATABANK_ERR_VALIDATION', message: rule('name', cp) },
        ]);
        const renamed = await json('PATCH', '/customers/1', { name });
        expect([hex(cp), renamed.statusCode, renamed.json().message]).toEqual([hex(cp), 400, rule('name', cp)]);
      }
      const customer = await t.app.http.inject({ method: 'GET', url: '/customers/1', headers: t.admin });
      expect(customer.json().name).toBe('Brian Kim');
    });

    it('customer names keep other scripts, right-to-left letters and emoji', async () => {
      for (const name of ['Zoë Ørsted', 'عمر خيّام', 'אבי כהן', '李小龍', 'Ana 💰', 'e\u0301']) {
        const res = await json('POST', '/customers', { name, date_of_birth: '1990-01-01' });
        expect([name, res.statusCode]).toEqual([name, 201]);
        expect(res.json().name).toBe(name);
      }
    });

    it('uploaded file names refuse them, raw or multipart, and nothing is stored', async () => {
      const before = await storedFiles();
      for (const cp of [0x202e, 0x200b, 0x2066, 0xfeff]) {
        const filename = `invoice${String.fromCodePoint(cp)}gpj.exe`;
        const raw = await t.app.http.inject({
          method: 'POST',
          url: `/customers/1/files?filename=${encodeURIComponent(filename)}`,
          headers: { ...t.admin, 'content-type': 'application/octet-stream' },
          payload: 'hello\n',
        });
        expect([hex(cp), raw.statusCode, raw.json()]).toEqual([
          hex(cp),
          400,
          { statusCode: 400, code: 'DATABANK_ERR_VALIDATION', message: rule('filename', cp) },
        ]);
        const form = Buffer.from(
          `--${BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename*=UTF-8''${encodeURIComponent(filename)}\r\n` +
            `Content-Type: text/plain\r\n\r\nhello\n\r\n--${BOUNDARY}--\r\n`,
        );
        const multipart = await t.app.http.inject({
          method: 'POST',
          url: '/customers/1/files',
          headers: { ...t.admin, 'content-type': `multipart/form-data; boundary=${BOUNDARY}` },
          payload: form,
        });
        expect([hex(cp), multipart.statusCode, multipart.json().message]).toEqual([hex(cp), 400, rule('filename', cp)]);
      }
      expect(await storedFiles()).toBe(before);
    });

    it('a file name stored before the rule is sent without them in Content-Disposition', async () => {
      const cases: Array<[string, string]> = [
        ['invoice\u202Egpj.exe', `attachment; filename="invoicegpj.exe"; filename*=UTF-8''invoicegpj.exe`],
        ['re\u200Bport\u2066.pdf\u2069', `attachment; filename="report.pdf"; filename*=UTF-8''report.pdf`],
        ['\u200B\u200D', `attachment; filename="download"; filename*=UTF-8''download`],
      ];
      for (const [stored, disposition] of cases) {
        const created = await t.app.http.inject({
          method: 'POST',
          url: '/customers/1/files?filename=plain.txt',
          headers: { ...t.admin, 'content-type': 'application/octet-stream' },
          payload: 'hello\n',
        });
        expect(created.statusCode, created.body).toBe(201);
        const id = created.json<{ file_id: number }>().file_id;
        // As an older release stored it.
        await t.app.sql.db.updateTable('files').set({ filename: stored }).where('id', '=', id).execute();
        for (const method of ['GET', 'HEAD'] as const) {
          const res = await t.app.http.inject({ method, url: `/files/${id}/content`, headers: t.admin });
          expect([JSON.stringify(stored), method, res.statusCode, res.headers['content-disposition']]).toEqual([
            JSON.stringify(stored),
            method,
            200,
            disposition,
          ]);
        }
      }
    });
  });
}
