import { createHash } from 'node:crypto';
import { existsSync, rmdirSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FileStore, ObjectInfo } from '../../src/stores/files/port.ts';
import { chunkSource, pseudoRandomBytes } from '../support/random.ts';
import { FILE_STORE_KINDS, openTestFileStore } from '../support/file-stores.ts';

/**
 * One contract over every FileStore: the local folder, and S3 through an s3rver child process
 * (test/support/s3.ts), which needs no outside service, so both always run.
 */

const MiB = 1024 * 1024;
/** The S3 store's multipart part size: a stream longer than this goes up in parts. */
const PART = 8 * MiB;

interface Opened {
  readonly store: FileStore;
  /** Entries next to the store's own data that should not be there (escaped or leftover files). */
  stray(): Promise<string[]>;
  /** Where s3rver keeps multipart uploads in progress; null for the local store. */
  readonly uploadsDir: string | null;
  close(): Promise<void>;
}

interface Implementation {
  readonly kind: FileStore['kind'];
  open(): Promise<Opened>;
}

const IMPLEMENTATIONS: readonly Implementation[] = FILE_STORE_KINDS.map((kind) => ({
  kind,
  async open() {
    const opened = await openTestFileStore(kind);
    const { root, server } = opened;
    return {
      store: opened.store,
      uploadsDir: server ? join(server.directory, server.bucket, '._S3rver_uploads') : null,
      async stray() {
        if (server) return (await readdir(server.directory)).filter((name) => name !== server.bucket);
        const top = (await readdir(root as string)).filter((name) => name !== 'objects' && name !== 'tmp');
        const tmp = (await readdir(join(root as string, 'tmp'))).map((name) => `tmp/${name}`);
        return [...top, ...tmp];
      },
      close: () => opened.close(),
    };
  },
}));


async function bytesOf(body: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of body) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

async function sha256Of(body: Readable): Promise<{ sha256: string; size: number }> {
  const hash = createHash('sha256');
  let size = 0;
  for await (const chunk of body) {
    hash.update(chunk as Buffer);
    size += (chunk as Buffer).length;
  }
  return { sha256: hash.digest('hex'), size };
}

/** Sends `chunks` chunks of `chunkSize` bytes, then fails with `message`. */
function failingBody(chunks: number, chunkSize: number, message = 'body failed'): Readable {
  let sent = 0;
  return new Readable({
    read() {
      if (sent < chunks) this.push(Buffer.alloc(chunkSize, sent++ % 256));
      else this.destroy(new Error(message));
    },
  });
}

/** Chunk `i` (1 MiB) of a long deterministic stream. */
const chunkAt = chunkSource(7);

/**
 * S3 dates have whole seconds, and a file's mtime comes from the kernel's coarse clock, which can
 * trail Date.now() by a tick: the window opens at the whole second before `startMs`.
 */
function expectWithin(date: Date, startMs: number, endMs: number): void {
  expect(date).toBeInstanceOf(Date);
  expect(date.getTime()).toBeGreaterThanOrEqual(Math.floor(startMs / 1000) * 1000);
  expect(date.getTime()).toBeLessThanOrEqual(endMs);
}

async function keysUnder(store: FileStore, prefix: string): Promise<string[]> {
  const keys: string[] = [];
  for await (const o of store.list(prefix)) keys.push(o.key);
  return keys;
}

/**
 * 250 characters with each `/` counted as three is the longest key every store takes (in short
 * segments: s3rver keeps each segment as a file name of its own).
 */
const LONGEST_KEY = ['long', ...Array.from({ length: 5 }, () => 'k'.repeat(40)), 'k'.repeat(28)].join('/');
const INVALID_KEYS = [
  '../x', 'a/../b', '/abs', 'a//b', 'a\\b', 'a\u0000b', '%2e%2e/x', '.', '..', '', 'a/', 'a/./b', ' a', 'é',
  `${LONGEST_KEY}k`,
];

describe.each(IMPLEMENTATIONS)('file store contract on $kind', (impl) => {
  let opened: Opened;
  let store: FileStore;

  beforeAll(async () => {
    opened = await impl.open();
    store = opened.store;
  });
  afterAll(async () => {
    await opened?.close();
  });

  it('names its kind', () => {
    expect(store.kind).toBe(impl.kind);
  });

  it('put of a Buffer: head and get return the bytes, size, content type, metadata and write time', async () => {
    const bytes = pseudoRandomBytes(5_000, 1);
    const metadata = { origin: 'upload', 'customer-id': '42', empty: '' };
    const t0 = Date.now();
    expect(await store.put('rt/buffer.bin', bytes, { contentType: 'application/pdf', metadata })).toEqual({ size: 5_000 });
    const head = await store.head('rt/buffer.bin');
    const got = await store.get('rt/buffer.bin');
    const t1 = Date.now();
    expect(head).toEqual({ key: 'rt/buffer.bin', size: 5_000, contentType: 'application/pdf', metadata, lastModified: expect.any(Date) });
    expectWithin((head as ObjectInfo).lastModified, t0, t1);
    expect(got?.info).toEqual(head);
    expect((await bytesOf(got?.body as Readable)).equals(bytes)).toBe(true);
  });

  it('put of a Readable: the size is counted from the stream, and the bytes come back in order', async () => {
    const chunks = [Buffer.from('a'), Buffer.alloc(0), pseudoRandomBytes(65_536, 2), Buffer.from('xyz'), pseudoRandomBytes(100_001, 3)];
    const whole = Buffer.concat(chunks);
    const t0 = Date.now();
    expect(await store.put('rt/stream.bin', Readable.from(chunks), { contentType: 'application/octet-stream' })).toEqual({
      size: whole.length,
    });
    const head = await store.head('rt/stream.bin');
    const t1 = Date.now();
    expect(head).toEqual({ key: 'rt/stream.bin', size: 165_541, contentType: 'application/octet-stream', metadata: {}, lastModified: expect.any(Date) });
    expectWithin((head as ObjectInfo).lastModified, t0, t1);
    const got = await store.get('rt/stream.bin');
    expect(got?.info).toEqual(head);
    expect((await bytesOf(got?.body as Readable)).equals(whole)).toBe(true);
  });

  it('put over an existing key replaces bytes, size, content type and metadata', async () => {
    await store.put('ow/doc', pseudoRandomBytes(10_000, 4), { contentType: 'image/png', metadata: { first: '1', shared: 'old' } });
    const replacement = Buffer.from('the new, shorter object');
    expect(await store.put('ow/doc', Readable.from([replacement]), { contentType: 'text/plain', metadata: { shared: 'new' } })).toEqual({
      size: replacement.length,
    });
    const head = await store.head('ow/doc');
    expect(head).toEqual({ key: 'ow/doc', size: 23, contentType: 'text/plain', metadata: { shared: 'new' }, lastModified: expect.any(Date) });
    const got = await store.get('ow/doc');
    expect(got?.info).toEqual(head);
    expect((await bytesOf(got?.body as Readable)).toString()).toBe('the new, shorter object');
    expect(await keysUnder(store, 'ow/')).toEqual(['ow/doc']);
  });

  it('get with a range returns exactly those bytes and the whole object in info', async () => {
    const bytes = pseudoRandomBytes(1_000, 5);
    await store.put('range/obj', bytes, { contentType: 'application/x-test', metadata: { k: 'v' } });
    const head = await store.head('range/obj');
    const ranges = [
      { start: 0, end: 0 },
      { start: 100, end: 199 },
      { start: 500, end: 500 },
      { start: 999, end: 999 },
      { start: 998, end: 999 },
      { start: 0, end: 999 },
    ];
    for (const range of ranges) {
      const got = await store.get('range/obj', range);
      expect(got?.info, JSON.stringify(range)).toEqual(head);
      expect(got?.info.size).toBe(1_000);
      const part = await bytesOf(got?.body as Readable);
      expect(part.length, JSON.stringify(range)).toBe(range.end - range.start + 1);
      expect(part.equals(bytes.subarray(range.start, range.end + 1)), JSON.stringify(range)).toBe(true);
    }
  });

  it('a missing key: head and get return null, delete succeeds', async () => {
    expect(await store.head('missing/never-written')).toBeNull();
    expect(await store.get('missing/never-written')).toBeNull();
    expect(await store.get('missing/never-written', { start: 0, end: 9 })).toBeNull();
    await expect(store.delete('missing/never-written')).resolves.toBeUndefined();
    expect(await keysUnder(store, 'missing/')).toEqual([]);
  });

  it('delete removes the object and only that object', async () => {
    await store.put('del/a', Buffer.from('aaa'), { contentType: 'text/plain' });
    await store.put('del/ab', Buffer.from('ab'), { contentType: 'text/plain' });
    await store.delete('del/a');
    expect(await store.head('del/a')).toBeNull();
    expect(await store.get('del/a')).toBeNull();
    expect(await store.head('del/ab')).toEqual({ key: 'del/ab', size: 2, contentType: 'text/plain', metadata: {}, lastModified: expect.any(Date) });
    expect(await keysUnder(store, 'del/')).toEqual(['del/ab']);
    await expect(store.delete('del/a')).resolves.toBeUndefined();
    await store.delete('del/ab');
    expect(await keysUnder(store, 'del/')).toEqual([]);
  });

  it('list(prefix) yields the keys under the prefix in key order with their sizes', async () => {
    const inside = ['ls/a', 'ls/a-b', 'ls/a.b', 'ls/a/x', 'ls/a_c', 'ls/B', 'ls/m/n/o', 'ls/z', 'ls/0'];
    const outside = ['l', 'ls', 'lsx/a', 'lr/a', 'lt', 'other/ls/a', 'LS/a'];
    const t0 = Date.now();
    // Written out of order, so that an order of writing cannot pass for key order.
    for (const key of [...inside, ...outside].reverse()) await store.put(key, Buffer.from(`body of ${key}`), { contentType: 'text/plain' });
    const t1 = Date.now();
    const listed: Array<{ key: string; size: number; lastModified: Date }> = [];
    for await (const o of store.list('ls/')) listed.push(o);
    // Byte order: digits < upper case < lower case; '-' < '.' < '/' < '_'.
    const expected = ['ls/0', 'ls/B', 'ls/a', 'ls/a-b', 'ls/a.b', 'ls/a/x', 'ls/a_c', 'ls/m/n/o', 'ls/z'];
    expect(listed.map((o) => ({ key: o.key, size: o.size }))).toEqual(expected.map((key) => ({ key, size: `body of ${key}`.length })));
    for (const o of listed) expectWithin(o.lastModified, t0, t1);
    expect(await keysUnder(store, 'ls/a')).toEqual(['ls/a', 'ls/a-b', 'ls/a.b', 'ls/a/x', 'ls/a_c']);
    expect(await keysUnder(store, 'ls/a/')).toEqual(['ls/a/x']);
    expect(await keysUnder(store, 'ls')).toEqual(['ls', ...expected, 'lsx/a']);
    expect(await keysUnder(store, 'ls/nothing/')).toEqual([]);
    expect(await keysUnder(store, 'ls/m/n/o')).toEqual(['ls/m/n/o']);
    for (const key of [...inside, ...outside]) await store.delete(key);
    expect(await keysUnder(store, 'l')).toEqual([]);
  });

  it('list reads past one page of results (S3 answers 1,000 keys a page)', async () => {
    const keys = Array.from({ length: 1_100 }, (_, i) => `page/${String(i).padStart(4, '0')}`);
    for (let i = 0; i < keys.length; i += 50) {
      await Promise.all(keys.slice(i, i + 50).map((key) => store.put(key, Buffer.from(key.slice(5)), { contentType: 'text/plain' })));
    }
    const listed: Array<{ key: string; size: number }> = [];
    for await (const o of store.list('page/')) listed.push({ key: o.key, size: o.size });
    expect(listed).toEqual(keys.map((key) => ({ key, size: 4 })));
    // The first key goes last: s3rver removes a folder its last delete empties, and two deletes
    // emptying it at once fail with an InternalError there.
    for (let i = 1; i < keys.length; i += 50) await Promise.all(keys.slice(i, i + 50).map((key) => store.delete(key)));
    await store.delete(keys[0] as string);
    expect(await keysUnder(store, 'page/')).toEqual([]);
  });

  it('stores zero-byte objects from a Buffer and from an empty stream', async () => {
    expect(await store.put('empty/buffer', Buffer.alloc(0), { contentType: 'text/plain', metadata: { a: 'b' } })).toEqual({ size: 0 });
    expect(await store.put('empty/stream', Readable.from([]), { contentType: 'application/json' })).toEqual({ size: 0 });
    for (const [key, contentType, metadata] of [
      ['empty/buffer', 'text/plain', { a: 'b' }],
      ['empty/stream', 'application/json', {}],
    ] as const) {
      const head = await store.head(key);
      expect(head).toEqual({ key, size: 0, contentType, metadata, lastModified: expect.any(Date) });
      const got = await store.get(key);
      expect(got?.info).toEqual(head);
      expect((await bytesOf(got?.body as Readable)).length).toBe(0);
    }
    const listed: Array<{ key: string; size: number }> = [];
    for await (const o of store.list('empty/')) listed.push({ key: o.key, size: o.size });
    expect(listed).toEqual([
      { key: 'empty/buffer', size: 0 },
      { key: 'empty/stream', size: 0 },
    ]);
  });

  it('refuses invalid keys in put, head, get and delete, and writes nothing', async () => {
    const before = await keysUnder(store, '');
    for (const key of INVALID_KEYS) {
      const message = `not a valid object key: ${JSON.stringify(key.slice(0, 80))}`;
      await expect(store.put(key, Buffer.from('x'), { contentType: 'text/plain' }), `put ${JSON.stringify(key)}`).rejects.toThrow(message);
      await expect(store.put(key, Readable.from([Buffer.from('x')]), { contentType: 'text/plain' }), `put ${JSON.stringify(key)}`).rejects.toThrow(
        message,
      );
      await expect(store.head(key), `head ${JSON.stringify(key)}`).rejects.toThrow(message);
      await expect(store.get(key), `get ${JSON.stringify(key)}`).rejects.toThrow(message);
      await expect(store.get(key, { start: 0, end: 0 }), `get ${JSON.stringify(key)}`).rejects.toThrow(message);
      await expect(store.delete(key), `delete ${JSON.stringify(key)}`).rejects.toThrow(message);
    }
    for (const prefix of ['../', '/', 'a//', '..', 'a/../', '%2e%2e/']) {
      await expect(keysUnder(store, prefix), `list ${JSON.stringify(prefix)}`).rejects.toThrow('not a valid object key');
    }
    expect(await keysUnder(store, '')).toEqual(before);
    // Nor under what a lenient normaliser would have made of them.
    for (const key of ['x', 'b', 'a/b', 'abs', 'ab', 'a', 'a/x']) expect(await store.head(key), key).toBeNull();
    expect(await opened.stray()).toEqual([]);
  });

  it('takes the longest valid key like any other', async () => {
    expect(LONGEST_KEY.length + 2 * (LONGEST_KEY.split('/').length - 1)).toBe(250);
    await store.put(LONGEST_KEY, Buffer.from('long'), { contentType: 'text/plain' });
    expect((await store.head(LONGEST_KEY))?.size).toBe(4);
    await store.delete(LONGEST_KEY);
    expect(await store.head(LONGEST_KEY)).toBeNull();
  });

  it('writes a stream of more than one S3 part and reads it back byte-identical', async () => {
    const chunks = 20; // 20 MiB: parts of 8, 8 and 4 MiB
    const hashIn = createHash('sha256');
    function* body() {
      for (let i = 0; i < chunks; i++) {
        const chunk = chunkAt(i);
        hashIn.update(chunk);
        yield chunk;
      }
    }
    // On S3 the uploads folder appears with a multipart upload: this test starts without one (an
    // earlier test's upload leaves it empty), so that its reappearing proves this put went in parts.
    if (opened.uploadsDir && existsSync(opened.uploadsDir)) {
      expect(await readdir(opened.uploadsDir)).toEqual([]);
      rmdirSync(opened.uploadsDir);
    }
    if (opened.uploadsDir) expect(existsSync(opened.uploadsDir)).toBe(false);
    expect(await store.put('multi/20mib', Readable.from(body()), { contentType: 'application/octet-stream', metadata: { parts: '3' } })).toEqual({
      size: chunks * MiB,
    });
    if (opened.uploadsDir) expect(await readdir(opened.uploadsDir)).toEqual([]);
    const sha256 = hashIn.digest('hex');
    expect(await store.head('multi/20mib')).toEqual({
      key: 'multi/20mib',
      size: chunks * MiB,
      contentType: 'application/octet-stream',
      metadata: { parts: '3' },
      lastModified: expect.any(Date),
    });
    const got = await store.get('multi/20mib');
    expect(got?.info.size).toBe(chunks * MiB);
    expect(await sha256Of(got?.body as Readable)).toEqual({ sha256, size: chunks * MiB });
    // Across the first part boundary: the last 3 bytes of part 1 and the first 2 of part 2.
    const across = await store.get('multi/20mib', { start: PART - 3, end: PART + 1 });
    expect(across?.info.size).toBe(chunks * MiB);
    const expected = Buffer.concat([chunkAt(7).subarray(MiB - 3), chunkAt(8).subarray(0, 2)]);
    expect((await bytesOf(across?.body as Readable)).equals(expected)).toBe(true);
    await store.delete('multi/20mib');
  });

  it('a failing body stream rejects put and leaves no object', async () => {
    await expect(store.put('fail/new', failingBody(3, 1_000), { contentType: 'text/plain' })).rejects.toThrow('body failed');
    expect(await store.head('fail/new')).toBeNull();
    expect(await store.get('fail/new')).toBeNull();
    expect(await keysUnder(store, 'fail/')).toEqual([]);
    expect(await opened.stray()).toEqual([]);
  });

  it('a failing body stream leaves the old object under the key intact', async () => {
    const old = pseudoRandomBytes(3_333, 6);
    await store.put('fail/old', old, { contentType: 'image/jpeg', metadata: { version: '1' } });
    const before = await store.head('fail/old');
    await expect(store.put('fail/old', failingBody(5, 1_000), { contentType: 'text/plain', metadata: { version: '2' } })).rejects.toThrow(
      'body failed',
    );
    expect(await store.head('fail/old')).toEqual(before);
    const got = await store.get('fail/old');
    expect(got?.info).toEqual(before);
    expect((await bytesOf(got?.body as Readable)).equals(old)).toBe(true);
    expect(await keysUnder(store, 'fail/')).toEqual(['fail/old']);
    await store.delete('fail/old');
  });

  it('a body that fails after more than one S3 part rejects put, leaves no new object and the old one intact', async () => {
    await store.put('fail/big-old', Buffer.from('old bytes'), { contentType: 'text/plain' });
    const before = await store.head('fail/big-old');
    for (const key of ['fail/big-new', 'fail/big-old']) {
      const err = await store.put(key, failingBody(17, MiB), { contentType: 'application/octet-stream' }).then(
        () => null,
        (e: unknown) => e,
      );
      expect(err, key).toBeInstanceOf(Error);
      // S3 aborts the multipart upload and the body's error comes back. s3rver has no
      // AbortMultipartUpload (405), and lib-storage then rejects with the failed abort instead.
      expect(['body failed', 'The specified method is not allowed against this resource.'], key).toContain((err as Error).message);
      if (impl.kind === 'local') expect((err as Error).message).toBe('body failed');
    }
    expect(await store.head('fail/big-new')).toBeNull();
    expect(await store.head('fail/big-old')).toEqual(before);
    expect((await bytesOf((await store.get('fail/big-old'))?.body as Readable)).toString()).toBe('old bytes');
    expect(await keysUnder(store, 'fail/')).toEqual(['fail/big-old']);
    expect(await opened.stray()).toEqual([]);
    await store.delete('fail/big-old');
  });
});
