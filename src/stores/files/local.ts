import { randomUUID } from 'node:crypto';
import { mkdir, open, readdir, rename, stat, unlink, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { checkKey, checkPrefix, type ByteRange, type FileStore, type ListedObject, type ObjectInfo, type PutOptions } from './port.ts';

/**
 * Each object is one file: a short header (magic, length, JSON with the content type and
 * metadata) followed by the bytes. One file per object makes a write atomic: the new file is
 * written and flushed under `tmp/`, then renamed over the old one, so a reader holding the old
 * file keeps reading the old bytes and a crash leaves either object whole.
 */
const MAGIC = Buffer.from('DBKOBJ1\n');
const HEADER_MAX = 64 * 1024;
/** Temporary files older than this are leftovers of a crashed write. */
const STALE_TMP_MS = 60 * 60 * 1000;

interface Header {
  readonly contentType: string;
  readonly metadata: Readonly<Record<string, string>>;
}

/** A folder on local disk (the default, under DATABANK_DATA_DIR). */
export class LocalFileStore implements FileStore {
  readonly kind = 'local';
  private readonly objects: string;
  private readonly tmp: string;

  private constructor(root: string) {
    this.objects = join(root, 'objects');
    this.tmp = join(root, 'tmp');
  }

  static async open(root: string): Promise<LocalFileStore> {
    const store = new LocalFileStore(root);
    await mkdir(store.objects, { recursive: true, mode: 0o700 });
    await mkdir(store.tmp, { recursive: true, mode: 0o700 });
    await store.removeStaleTemporaries();
    return store;
  }

  async put(key: string, body: Readable | Buffer, options: PutOptions): Promise<{ size: number }> {
    const target = this.pathOf(key);
    const header = encodeHeader({ contentType: options.contentType, metadata: { ...options.metadata } });
    const tmp = join(this.tmp, randomUUID());
    let size = 0;
    const handle = await open(tmp, 'wx', 0o600);
    try {
      await pipeline(
        Buffer.isBuffer(body) ? Readable.from([body]) : body,
        async function* (source: AsyncIterable<Buffer>) {
          yield header;
          for await (const chunk of source) {
            size += chunk.length;
            yield chunk;
          }
        },
        // flush: fsync before close, so the rename below never publishes bytes still in the page cache.
        handle.createWriteStream({ flush: true }),
      );
      await rename(tmp, target);
      await syncDir(this.objects);
      return { size };
    } catch (err) {
      await handle.close().catch(() => undefined);
      await unlink(tmp).catch(() => undefined);
      throw err;
    }
  }

  async head(key: string): Promise<ObjectInfo | null> {
    const opened = await this.openObject(key);
    if (!opened) return null;
    await opened.handle.close();
    return opened.info;
  }

  async get(key: string, range?: ByteRange): Promise<{ info: ObjectInfo; body: Readable } | null> {
    const opened = await this.openObject(key);
    if (!opened) return null;
    const { handle, info, offset } = opened;
    if (info.size === 0 && !range) {
      await handle.close();
      return { info, body: Readable.from([]) };
    }
    const body = handle.createReadStream({
      start: offset + (range?.start ?? 0),
      end: offset + (range?.end ?? info.size - 1),
      autoClose: true,
    });
    return { info, body };
  }

  async delete(key: string): Promise<void> {
    await unlink(this.pathOf(key)).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err;
    });
  }

  async *list(prefix: string): AsyncIterable<ListedObject> {
    checkPrefix(prefix);
    const keys = (await readdir(this.objects))
      .map((name) => decodeURIComponent(name))
      .filter((key) => key.startsWith(prefix))
      .sort();
    for (const key of keys) {
      const opened = await this.openObject(key);
      if (!opened) continue; // deleted since the listing
      await opened.handle.close();
      yield { key, size: opened.info.size, lastModified: opened.info.lastModified };
    }
  }

  async close(): Promise<void> {}

  /** One flat folder: the key with `/` percent-encoded is the file name. */
  private pathOf(key: string): string {
    return join(this.objects, encodeURIComponent(checkKey(key)));
  }

  private async openObject(key: string): Promise<{ handle: FileHandle; info: ObjectInfo; offset: number } | null> {
    let handle: FileHandle;
    try {
      handle = await open(this.pathOf(key), 'r');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw err;
    }
    try {
      const { header, offset } = await readHeader(handle, key);
      const stats = await handle.stat();
      const info: ObjectInfo = {
        key,
        size: stats.size - offset,
        contentType: header.contentType,
        lastModified: stats.mtime,
        metadata: header.metadata,
      };
      return { handle, info, offset };
    } catch (err) {
      await handle.close();
      throw err;
    }
  }

  private async removeStaleTemporaries(): Promise<void> {
    for (const name of await readdir(this.tmp)) {
      const path = join(this.tmp, name);
      const stats = await stat(path).catch(() => null);
      if (stats && Date.now() - stats.mtimeMs > STALE_TMP_MS) await unlink(path).catch(() => undefined);
    }
  }
}

function encodeHeader(header: Header): Buffer {
  const json = Buffer.from(JSON.stringify(header));
  if (json.length > HEADER_MAX) throw new Error('object metadata too large');
  const length = Buffer.alloc(4);
  length.writeUInt32BE(json.length);
  return Buffer.concat([MAGIC, length, json]);
}

async function readHeader(handle: FileHandle, key: string): Promise<{ header: Header; offset: number }> {
  const fixed = Buffer.alloc(MAGIC.length + 4);
  const { bytesRead } = await handle.read(fixed, 0, fixed.length, 0);
  const length = bytesRead === fixed.length ? fixed.readUInt32BE(MAGIC.length) : -1;
  if (!fixed.subarray(0, MAGIC.length).equals(MAGIC) || length < 0 || length > HEADER_MAX) {
    throw new Error(`object ${key} is not in the local store's format`);
  }
  const json = Buffer.alloc(length);
  await handle.read(json, 0, length, fixed.length);
  return { header: JSON.parse(json.toString()) as Header, offset: fixed.length + length };
}

async function syncDir(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
