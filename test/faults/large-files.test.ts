import { createHash, type Hash } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FileStore } from '../../src/stores/files/port.ts';
import { LARGE, STREAM_BYTES, STREAM_LABEL } from '../support/large.ts';
import { chunkSource } from '../support/random.ts';
import { FILE_STORE_KINDS, openTestFileStore, type TestFileStore } from '../support/file-stores.ts';

/**
 * A 256 MiB object (1 GiB with DATABANK_TEST_LARGE=1) goes into each FileStore from a generated stream and comes back as a stream,
 * and the test process's resident memory stays within a bound far below the object's size:
 * neither direction may hold the object (or a large part of it) in memory. S3 runs against an
 * s3rver child process, whose memory is its own.
 */

const MiB = 1024 * 1024;
const CHUNKS = STREAM_BYTES / MiB; // in 1 MiB chunks
const SIZE = CHUNKS * MiB;
const KEY = 'large/stream';
/**
 * Largest allowed growth of the resident set over its level before the transfer, counted from the
 * warm-up's peak when that is higher: the warm-up moved a smaller object through the same code, so
 * the working set it reached (client buffers, parts in flight, garbage not yet collected on a
 * loaded machine) is not growth with the object's size. A store that held the object would still
 * pass this bound by hundreds of MiB.
 */
const RSS_LIMIT = 100 * MiB;
/** The warm-up's object: a quarter of the test's at 256 MiB, 64 MiB at 1 GiB. */
const WARM_UP_CHUNKS = LARGE ? 64 : 32;
const TIMEOUT = 240_000;

/** Chunk `i` of the stream: 1 MiB, made on demand. */
const chunkAt = chunkSource(11);

/** Yields `chunks` chunks, one at a time, hashing each and sampling memory as it goes. */
function* generated(chunks: number, hash: Hash | null, peak: PeakRss | null): Generator<Buffer> {
  for (let i = 0; i < chunks; i++) {
    const chunk = chunkAt(i);
    hash?.update(chunk);
    peak?.sample();
    yield chunk;
  }
}

/** A byte stream (not object mode) over the generated chunks, as an upload's request body is. */
function body(chunks: number, hash: Hash | null, peak: PeakRss | null): Readable {
  return Readable.from(generated(chunks, hash, peak), { objectMode: false });
}

/** The highest resident set size seen from construction to `stop`, sampled on a timer and on `sample`. */
class PeakRss {
  /** The resident set when sampling began, after a full collection when the runtime offers one. */
  readonly base: number;
  private peak: number;
  private readonly timer: ReturnType<typeof setInterval>;

  constructor() {
    (globalThis as { gc?: () => void }).gc?.();
    this.base = process.memoryUsage.rss();
    this.peak = this.base;
    this.timer = setInterval(() => this.sample(), 5);
  }

  sample(): void {
    const rss = process.memoryUsage.rss();
    if (rss > this.peak) this.peak = rss;
  }

  /** Stops sampling and returns the peak. */
  stop(): number {
    clearInterval(this.timer);
    this.sample();
    return this.peak;
  }
}

const mib = (bytes: number) => `${(bytes / MiB).toFixed(1)} MiB`;

describe.each(FILE_STORE_KINDS.map((kind) => ({ kind })))(`${STREAM_LABEL} through the $kind file store`, (impl) => {
  let opened: TestFileStore;
  let store: FileStore;
  /** Peak resident set of the warm-up, for the report: growth past it is growth with the object's size. */
  let warmUpPeak = 0;

  beforeAll(async () => {
    opened = await openTestFileStore(impl.kind);
    store = opened.store;
    // Warm-up, the same transfers with a smaller object: loads the client, opens connections and lets the
    // allocator reach its working size, so that the baselines below do not count one-time costs.
    const peak = new PeakRss();
    try {
      for (let round = 0; round < 2; round++) {
        await store.put('warm-up', body(WARM_UP_CHUNKS, null, null), { contentType: 'application/octet-stream' });
        const got = await store.get('warm-up');
        for await (const chunk of got?.body ?? []) void chunk;
      }
      await store.delete('warm-up');
    } finally {
      warmUpPeak = peak.stop();
    }
  }, TIMEOUT);
  afterAll(async () => {
    if (!opened) return;
    try {
      await store.delete(KEY);
    } finally {
      await opened.close();
    }
  }, TIMEOUT);

  const report = (what: string, ms: number, base: number, peak: number) =>
    `${impl.kind} ${what}: ${(ms / 1000).toFixed(1)} s; peak RSS ${mib(peak)}, ${mib(peak - base)} over the ${mib(base)} baseline, ` +
    `${mib(peak - warmUpPeak)} over the warm-up's peak`;

  // One test, in this order: the download reads back the object the upload wrote.
  it(`uploads ${STREAM_LABEL} from a generated stream and downloads it as a stream, sha256 matching, the resident set growing by less than 100 MiB past the warm-up's each way`, { timeout: TIMEOUT }, async ({ annotate }) => {
    const sentHash = createHash('sha256');
    const upPeak = new PeakRss();
    const upStart = performance.now();
    let result: { size: number } | undefined;
    let upHighest: number;
    try {
      result = await store.put(KEY, body(CHUNKS, sentHash, upPeak), { contentType: 'application/octet-stream' });
    } finally {
      upHighest = upPeak.stop();
    }
    await annotate(report('upload', performance.now() - upStart, upPeak.base, upHighest));
    const sent = sentHash.digest('hex');
    expect(result).toEqual({ size: SIZE });
    expect((await store.head(KEY))?.size).toBe(SIZE);
    expect(upHighest - Math.max(upPeak.base, warmUpPeak)).toBeLessThan(RSS_LIMIT);

    const hash = createHash('sha256');
    let size = 0;
    const peak = new PeakRss();
    const t0 = performance.now();
    let highest: number;
    try {
      const got = await store.get(KEY);
      expect(got?.info.size).toBe(SIZE);
      for await (const chunk of got?.body ?? []) {
        hash.update(chunk as Buffer);
        size += (chunk as Buffer).length;
        peak.sample();
      }
    } finally {
      highest = peak.stop();
    }
    await annotate(report('download', performance.now() - t0, peak.base, highest));
    expect({ size, sha256: hash.digest('hex') }).toEqual({ size: SIZE, sha256: sent });
    expect(highest - Math.max(peak.base, warmUpPeak)).toBeLessThan(RSS_LIMIT);
  });
});
