import { createHash } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import { extname, join, relative, sep } from 'node:path';
import { promisify } from 'node:util';
import { brotliCompress, constants as zlib, gzip } from 'node:zlib';
import { LRUCache } from 'lru-cache';
import { fileStoreCall } from '../domain/errors.ts';
import type { ByteRange, FileStore } from '../stores/files/port.ts';
import { checkKey } from '../stores/files/port.ts';

/**
 * The public website, kept in the file store under `site/`: one object per file (ETag = MD5 of
 * its bytes), precompressed variants of text files under `site/.gz/` and `site/.br/`, and a
 * manifest written last, so that a deploy becomes visible all at once.
 */
export const SITE_PREFIX = 'site/';
const MANIFEST_KEY = 'site/.manifest.json';

export type Encoding = 'br' | 'gzip';
const VARIANT_PREFIX: Record<Encoding, string> = { br: 'site/.br/', gzip: 'site/.gz/' };

export interface Variant {
  readonly md5: string;
  readonly size: number;
}

export interface SiteEntry {
  readonly md5: string;
  /** When these bytes were first deployed: the Last-Modified of the file. */
  readonly modified_at: string;
  readonly size: number;
  readonly type: string;
  readonly variants: Partial<Record<Encoding, Variant>>;
}

export interface Manifest {
  readonly version: 1;
  readonly deployed_at: string;
  readonly files: Readonly<Record<string, SiteEntry>>;
}

export interface DeployReport {
  readonly files: number;
  /** Objects written (files and variants), by key. */
  readonly uploaded: readonly string[];
  readonly unchanged: number;
  /** Objects removed because their file is no longer in the folder. */
  readonly deleted: readonly string[];
  readonly bytesUploaded: number;
}

const TYPES: Readonly<Record<string, string>> = {
  '.html': 'text/html; charset=utf-8',
  '.htm': 'text/html; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.json': 'application/json',
  '.map': 'application/json',
  '.webmanifest': 'application/manifest+json',
  '.txt': 'text/plain; charset=utf-8',
  '.xml': 'application/xml',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.jpg': 'image/jpeg',
  '.jpeg': 'image/jpeg',
  '.gif': 'image/gif',
  '.webp': 'image/webp',
  '.avif': 'image/avif',
  '.ico': 'image/x-icon',
  '.woff': 'font/woff',
  '.woff2': 'font/woff2',
  '.pdf': 'application/pdf',
};

/** The Content-Type a site file is served with, by its extension. */
export function contentTypeOf(path: string): string {
  return TYPES[extname(path).toLowerCase()] ?? 'application/octet-stream';
}

const COMPRESSIBLE = /^(text\/|application\/(json|xml|manifest\+json)|image\/svg\+xml)/;
/** Smaller files gain nothing from compression that pays for the extra header. */
const MIN_COMPRESS_BYTES = 256;

const md5 = (bytes: Buffer) => createHash('md5').update(bytes).digest('hex');

async function compress(encoding: Encoding, bytes: Buffer): Promise<Buffer> {
  return encoding === 'br'
    ? promisify(brotliCompress)(bytes, {
        params: { [zlib.BROTLI_PARAM_QUALITY]: 11, [zlib.BROTLI_PARAM_SIZE_HINT]: bytes.length },
      })
    : promisify(gzip)(bytes, { level: 9 });
}

/** Every file under `dir` by its `/`-separated relative path; names starting with `.` are skipped. */
async function walk(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true, recursive: true })) {
    if (!entry.isFile()) continue;
    const rel = relative(dir, join(entry.parentPath, entry.name)).split(sep);
    if (rel.some((s) => s.startsWith('.'))) continue;
    out.push(rel.join('/'));
  }
  return out.sort();
}

/**
 * Uploads the folder into the store: only files whose MD5 differs from the stored object's, then
 * the manifest, then removes objects of files no longer in the folder. Running it twice uploads
 * nothing the second time.
 */
export async function deploySite(
  store: FileStore,
  dir: string,
  options: { dryRun?: boolean; onProgress?: (done: number, total: number, path: string) => void } = {},
): Promise<DeployReport> {
  const paths = await walk(dir);
  const bad = paths.filter((p) => {
    try {
      checkKey(SITE_PREFIX + p);
      return false;
    } catch {
      return true;
    }
  });
  if (bad.length > 0) {
    throw new Error(`these file names cannot be site paths (use A-Z a-z 0-9 ! _ . * ' ( ) -): ${bad.join(', ')}`);
  }
  const previous = await readManifest(store);
  const now = new Date().toISOString();
  const files: Record<string, SiteEntry> = {};
  const keep = new Set<string>([MANIFEST_KEY]);
  const uploaded: string[] = [];
  let unchanged = 0;
  let bytesUploaded = 0;

  /** Writes one object unless the store already holds these bytes under the key. */
  const upload = async (key: string, bytes: Buffer, hash: string, type: string, encoding: string | null) => {
    keep.add(key);
    const current = await store.head(key);
    if (current?.metadata.md5 === hash && current.size === bytes.length) {
      unchanged++;
      return;
    }
    uploaded.push(key);
    bytesUploaded += bytes.length;
    if (options.dryRun) return;
    await store.put(key, bytes, { contentType: type, metadata: { md5: hash, ...(encoding ? { encoding } : {}) } });
  };

  for (const [i, path] of paths.entries()) {
    const bytes = await readFile(join(dir, ...path.split('/')));
    const type = contentTypeOf(path);
    const hash = md5(bytes);
    const before = previous?.files[path];
    const entry = {
      md5: hash,
      modified_at: before?.md5 === hash ? before.modified_at : now,
      size: bytes.length,
      type,
      variants: {} as Partial<Record<Encoding, Variant>>,
    };
    await upload(SITE_PREFIX + path, bytes, entry.md5, type, null);
    if (COMPRESSIBLE.test(type) && bytes.length >= MIN_COMPRESS_BYTES) {
      for (const encoding of ['br', 'gzip'] as const) {
        const known = before?.md5 === hash ? before.variants[encoding] : undefined;
        const key = VARIANT_PREFIX[encoding] + path;
        if (known) {
          const current = await store.head(key);
          if (current?.metadata.md5 === known.md5) {
            keep.add(key);
            unchanged++;
            entry.variants[encoding] = known;
            continue;
          }
        }
        const packed = await compress(encoding, bytes);
        if (packed.length >= bytes.length * 0.95) continue;
        const variant = { md5: md5(packed), size: packed.length };
        await upload(key, packed, variant.md5, type, encoding);
        entry.variants[encoding] = variant;
      }
    }
    files[path] = entry;
    options.onProgress?.(i + 1, paths.length, path);
  }

  const manifest: Manifest = { version: 1, deployed_at: now, files };
  const deleted: string[] = [];
  if (!options.dryRun) {
    await store.put(MANIFEST_KEY, Buffer.from(JSON.stringify(manifest)), { contentType: 'application/json' });
  }
  for await (const object of store.list(SITE_PREFIX)) {
    if (keep.has(object.key)) continue;
    deleted.push(object.key);
    if (!options.dryRun) await store.delete(object.key);
  }
  return { files: paths.length, uploaded, unchanged, deleted, bytesUploaded };
}

export async function readManifest(store: FileStore): Promise<Manifest | null> {
  const got = await store.get(MANIFEST_KEY);
  if (!got) return null;
  const chunks: Buffer[] = [];
  for await (const chunk of got.body) chunks.push(chunk as Buffer);
  const manifest = JSON.parse(Buffer.concat(chunks).toString()) as Manifest;
  if (manifest.version !== 1) throw new Error(`site manifest version ${String(manifest.version)} is not supported`);
  return manifest;
}

/** Fingerprinted names (`app.3f2a9c1b.js`) never change content, so caches may keep them for a year. */
const FINGERPRINT = /\.[0-9a-f]{8,64}\.[A-Za-z0-9]+$/;

export function cacheControlOf(path: string): string {
  return FINGERPRINT.test(path) ? 'public, max-age=31536000, immutable' : 'public, max-age=300';
}

export interface SiteOptions {
  /** How long a read manifest is trusted before the store is asked again. */
  readonly refreshMs: number;
  /** Files up to this size are kept in memory, by MD5 (content-addressed, so never stale). */
  readonly maxCachedFileBytes: number;
  readonly maxCachedBytes: number;
}

export const DEFAULT_SITE_OPTIONS: SiteOptions = {
  refreshMs: 2_000,
  maxCachedFileBytes: 1024 * 1024,
  maxCachedBytes: 32 * 1024 * 1024,
};

/**
 * Reads the site for serving: the manifest (asked for again every `refreshMs`, so a deploy from
 * another process shows within that time) and the bytes, small files from memory.
 */
export class Site {
  private manifestCache: { manifest: Manifest | null; at: number } | null = null;
  private loading: Promise<Manifest | null> | null = null;
  private readonly bodies: LRUCache<string, Buffer>;

  constructor(
    private readonly store: FileStore,
    private readonly options: SiteOptions = DEFAULT_SITE_OPTIONS,
    private readonly onError: (err: unknown) => void = () => undefined,
  ) {
    this.bodies = new LRUCache({ maxSize: options.maxCachedBytes, sizeCalculation: (b) => Math.max(1, b.length) });
  }

  /** The current manifest; when the store cannot be read, the last one read. */
  async manifest(): Promise<Manifest | null> {
    const cached = this.manifestCache;
    if (cached && Date.now() - cached.at < this.options.refreshMs) return cached.manifest;
    this.loading ??= fileStoreCall(() => readManifest(this.store))
      .then((manifest) => {
        this.manifestCache = { manifest, at: Date.now() };
        return manifest;
      })
      .catch((err: unknown) => {
        if (!cached) throw err;
        this.onError(err);
        return cached.manifest;
      })
      .finally(() => {
        this.loading = null;
      });
    return this.loading;
  }

  /** Forgets the manifest so the next request reads it again (after a deploy in this process). */
  invalidate(): void {
    this.manifestCache = null;
  }

  /** The bytes of a file or of one of its variants. */
  async open(path: string, encoding: Encoding | null, variant: Variant, range?: ByteRange) {
    const key = (encoding ? VARIANT_PREFIX[encoding] : SITE_PREFIX) + path;
    if (variant.size > this.options.maxCachedFileBytes) {
      return (await fileStoreCall(() => this.store.get(key, range)))?.body ?? null;
    }
    const id = `${encoding ?? 'identity'}:${variant.md5}`;
    let bytes = this.bodies.get(id);
    if (!bytes) {
      const read = await fileStoreCall(async () => {
        const got = await this.store.get(key);
        if (!got) return null;
        const chunks: Buffer[] = [];
        for await (const chunk of got.body) chunks.push(chunk as Buffer);
        return Buffer.concat(chunks);
      });
      if (!read) return null;
      bytes = read;
      // Only bytes that match the manifest are kept: a deploy may have replaced them meanwhile.
      if (md5(bytes) === variant.md5) this.bodies.set(id, bytes);
    }
    return range ? bytes.subarray(range.start, range.end + 1) : bytes;
  }
}
