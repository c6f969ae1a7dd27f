import { createHash } from 'node:crypto';
import { request, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import { pipeline } from 'node:stream/promises';
import { Readable, Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { localFiles, startTestApp, type TestApp } from '../support/app.ts';
import { STREAM_BYTES, STREAM_LABEL } from '../support/large.ts';

const MiB = 1024 * 1024;
const TOTAL = STREAM_BYTES;
const LIMIT = 100 * MiB;

/** TOTAL bytes of text (256 MiB, or 1 GiB with DATABANK_TEST_LARGE=1), one deterministic 1 MiB chunk at a time (text, so the whole stream is checked). */
function* chunks(): Generator<Buffer> {
  const line = Buffer.from('databank streams this file through in bounded memory.\n'.padEnd(64, '.'));
  for (let i = 0; i < TOTAL / MiB; i++) {
    const chunk = Buffer.alloc(MiB, line);
    chunk.write(String(i).padStart(8, '0'), 0); // each chunk differs, so a mixed-up order changes the hash
    yield chunk;
  }
}

/** The highest RSS seen while `work` runs, sampled every 20 ms and at every call of `sample`. */
async function peakRss<T>(work: (sample: () => void) => Promise<T>): Promise<{ result: T; peak: number }> {
  let peak = process.memoryUsage().rss;
  const sample = () => {
    peak = Math.max(peak, process.memoryUsage().rss);
  };
  const timer = setInterval(sample, 20);
  try {
    const result = await work(sample);
    sample();
    return { result, peak };
  } finally {
    clearInterval(timer);
  }
}

/**
 * A 256 MiB (1 GiB with DATABANK_TEST_LARGE=1) upload and download through the whole HTTP path (socket → Fastify → type check and
 * hashing → the local store, and back) grow the process (client and server both) by less than
 * 100 MiB.
 */
describe(`a ${STREAM_LABEL} file through the HTTP API`, () => {
  let t: TestApp;
  let base: string;
  beforeAll(async () => {
    t = await startTestApp('pglite', 'large-upload', {
      files: localFiles({ maxUploadBytes: 2 * TOTAL }),
    });
    await t.app.http.listen({ host: '127.0.0.1', port: 0 });
    base = `http://127.0.0.1:${(t.app.http.server.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    await t?.close();
  });

  it(`uploads and downloads ${STREAM_LABEL} with peak RSS growth under 100 MiB`, async () => {
    const expected = createHash('sha256');
    for (const c of chunks()) expected.update(c);
    const digest = expected.digest('hex');

    const baseline = process.memoryUsage().rss;
    const up = await peakRss(
      (sample) =>
        new Promise<{ status: number; body: string }>((resolve, reject) => {
          const req = request(
            `${base}/customers/1/files?filename=big.txt`,
            { method: 'POST', headers: { ...t.admin, 'content-type': 'application/octet-stream', 'content-length': TOTAL } },
            (res) => {
              let body = '';
              res.on('data', (d: Buffer) => (body += d.toString()));
              res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
            },
          );
          req.on('error', reject);
          const source = Readable.from(chunks());
          source.on('data', sample);
          source.pipe(req);
        }),
    );
    expect(up.result.status).toBe(201);
    const meta = JSON.parse(up.result.body) as { file_id: number; size: number; sha256: string; content_type: string };
    expect([meta.size, meta.sha256, meta.content_type]).toEqual([TOTAL, digest, 'text/plain']);
    const upGrowth = up.peak - baseline;

    const downBaseline = process.memoryUsage().rss;
    const down = await peakRss(async (sample) => {
      const res = await new Promise<IncomingMessage>((resolve, reject) => {
        request(`${base}/files/${meta.file_id}/content`, { headers: t.admin }, resolve).on('error', reject).end();
      });
      const hash = createHash('sha256');
      let size = 0;
      await pipeline(
        res,
        new Writable({
          write(chunk: Buffer, _encoding, callback) {
            hash.update(chunk);
            size += chunk.length;
            sample();
            callback();
          },
        }),
      );
      return { status: res.statusCode, size, sha256: hash.digest('hex') };
    });
    expect(down.result).toEqual({ status: 200, size: TOTAL, sha256: digest });
    const downGrowth = down.peak - downBaseline;

    console.log(
      `large-upload: ${STREAM_LABEL} up, peak RSS growth ${(upGrowth / MiB).toFixed(1)} MiB; ` +
        `down, ${(downGrowth / MiB).toFixed(1)} MiB`,
    );
    expect(upGrowth).toBeLessThan(LIMIT);
    expect(downGrowth).toBeLessThan(LIMIT);
  }, 300_000);
});
