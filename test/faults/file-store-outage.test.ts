import { createHash } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestApp, type TestApp } from '../support/app.ts';
import { rng } from '../support/random.ts';
import { startS3Server, type S3Server } from '../support/s3.ts';

const KiB = 1024;
const CLIENTS = 4;

interface Attempt {
  readonly status: number;
  readonly code: string | null;
  readonly fileId: number | null;
  readonly sha256: string;
}

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/**
 * The S3 server crashes (SIGKILL) while four clients upload, stays down for a while, and comes back
 * on the same port with its data. Every answer is 201 or 503 with the file-store code, never a
 * 500; every 201 is a file whose bytes come back identical after the restart; there is no file
 * row without its object; and the store works again without restarting the app.
 */
describe('the S3 file store crashes and restarts under uploads', () => {
  let server: S3Server;
  let t: TestApp;
  let base: string;
  beforeAll(async () => {
    server = await startS3Server('databank-outage');
    t = await startTestApp('pglite', 'file-store-outage', {
      files: { store: server.config, maxUploadBytes: 25 * 1024 * KiB, siteDir: null },
    });
    await t.app.http.listen({ host: '127.0.0.1', port: 0 });
    base = `http://127.0.0.1:${(t.app.http.server.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    await t?.close();
    await server?.stop();
  });

  it('answers 201 or 503 only, and loses no answered file', async () => {
    const attempts: Attempt[] = [];
    const random = rng(7);
    let phase: 'before' | 'down' | 'after' = 'before';
    const counts = { before: 0, down: 0, after: 0 };
    // Each phase ends on an event (enough answers of the kind it waits for), not after a time.
    let advance: () => void = () => undefined;
    const waitFor = (check: () => boolean) =>
      new Promise<void>((resolve) => {
        advance = () => {
          if (check()) resolve();
        };
      });

    let n = 0;
    let stopping = false;
    const client = async () => {
      while (!stopping) {
        const size = 1 + Math.floor(random() * 600 * KiB);
        const body = Buffer.alloc(size, `file ${n++} of the outage test\n`);
        const res = await fetch(`${base}/customers/1/files?filename=f${n}.txt`, { method: 'POST', headers: t.admin, body });
        const json = (await res.json()) as { file_id?: number; code?: string };
        attempts.push({ status: res.status, code: json.code ?? null, fileId: json.file_id ?? null, sha256: sha256(body) });
        if (res.status === 201 && phase !== 'down') counts[phase]++;
        if (res.status === 503 && phase === 'down') counts.down++;
        advance();
      }
    };
    const clients = Array.from({ length: CLIENTS }, client);

    await waitFor(() => counts.before >= 20);
    await server.crash();
    phase = 'down';
    await waitFor(() => counts.down >= 20);
    // Reading a file while the store is down is a 503 too.
    const firstId = attempts.find((a) => a.status === 201)?.fileId;
    const during = await fetch(`${base}/files/${firstId}/content`, { headers: t.admin });
    expect([during.status, ((await during.json()) as { code: string }).code]).toEqual([503, 'DATABANK_ERR_FILE_STORE_UNAVAILABLE']);
    await server.restart();
    phase = 'after';
    await waitFor(() => counts.after >= 20);
    stopping = true;
    await Promise.all(clients);

    const statuses = new Map<string, number>();
    for (const a of attempts) statuses.set(`${a.status} ${a.code ?? ''}`.trim(), (statuses.get(`${a.status} ${a.code ?? ''}`.trim()) ?? 0) + 1);
    console.log(`file-store-outage: ${attempts.length} uploads: ${JSON.stringify(Object.fromEntries(statuses))}`);
    expect([...statuses.keys()].sort()).toEqual(['201', '503 DATABANK_ERR_FILE_STORE_UNAVAILABLE']);

    // Every answered file is there, byte for byte, and nothing else is.
    const answered = attempts.filter((a) => a.status === 201);
    const rows = await t.app.sql.db.selectFrom('files').select(['id', 'sha256']).orderBy('id').execute();
    expect(rows.map((r) => [r.id, r.sha256])).toEqual(
      answered.map((a) => [a.fileId, a.sha256]).sort((x, y) => (x[0] as number) - (y[0] as number)),
    );
    for (const a of answered) {
      const res = await fetch(`${base}/files/${a.fileId}/content`, { headers: t.admin });
      expect([res.status, sha256(Buffer.from(await res.arrayBuffer()))], `file ${a.fileId}`).toEqual([200, a.sha256]);
    }
    const report = await t.app.deps.files.sweep({ graceMs: 0, dryRun: true });
    expect(report.missingObjects).toEqual([]);
    expect(report.rowsSeen).toBe(answered.length);
  }, 180_000);
});
