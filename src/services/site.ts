import { createHash } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import { extname, join, relative, sep } from 'node:path';
import { promisify } from 'node:util';
import { brotliCompress, constants as zlib, gzip } from 'node:zlib';
import { LRUCache } from 'lru-cache';
import { fileStoreCall } from '../domain/errors.ts';
import type { ByteRange, FileStore } from '../stores/files/port.ts';

/**
 * The public website, kept in the file store under `site/`: every file, and the gzip and brotli
 * copies of text files, as an object named by the MD5 of its bytes (`site/objects/<md5>`, which
 * is also its ETag), and a manifest (`site/manifest.json`) that maps each path to its objects.
 * Objects never change once written; a deploy writes the new ones, then the manifest, then removes
 * the objects no path uses any more. So a reader always gets bytes that match the manifest it
 * read, and a deploy becomes visible all at once.
 */
export const SITE_PREFIX = 'site/';
const MANIFEST_KEY = 'site/manifest.json';
const OBJECTS = 'site/objects/';
const objectKey = (md5: string) => `${OBJECTS}${md5}`;

export type Encoding = 'br' | 'gzip';

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
  /** What was written: paths, and `path (br)` / `path (gzip)` for compressed copies. */
  readonly uploaded: readonly string[];
  /** Files and copies whose bytes the store already held. */
  readonly unchanged: number;
  /** Paths of the previous deploy that are not in the folder any more. */
  readonly deleted: readonly string[];
  /** Objects removed because no path uses them now. */
  readonly objectsRemoved: number;
  readonly bytesUploaded: number;
}

/** The manifest's entry for a path, if the path is a file of the site (never a property of Object). */
export function entryOf(manifest: Manifest, path: string): SiteEntry | undefined {
  return Object.hasOwn(manifest.files, path) ? manifest.files[path] : undefined;
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

/** Characters no request path can name once decoded (see http/site.ts). */
// eslint-disable-next-line no-control-regex -- refusing control characters is the point
const UNSERVABLE = /[\\\u0000-\u001f\u007f]/;

/**
 * Uploads the folder into the store: the files whose bytes the store does not hold yet (compared
 * by MD5), then the manifest, then removes the objects no path uses any more. Running it twice
 * uploads nothing the second time.
 */
export async function deploySite(
  store: FileStore,
  dir: string,
  options: { dryRun?: boolean; onProgress?: (done: number, total: number, path: string) => void } = {},
): Promise<DeployReport> {
  const paths = await walk(dir);
  const bad = paths.filter((p) => UNSERVABLE.test(p));
  if (bad.length > 0) throw new Error(`these file names hold characters no URL can name: ${bad.map((p) => JSON.stringify(p)).join(', ')}`);
  const previous = await readManifest(store);
  const now = new Date().toISOString();
  const files: Record<string, SiteEntry> = {};
  const used = new Set<string>([MANIFEST_KEY]);
  const uploaded: string[] = [];
  let unchanged = 0;
  let bytesUploaded = 0;

  /** Writes the bytes as their object unless the store holds it already. */
  const upload = async (label: string, bytes: Buffer, hash: string, type: string) => {
    const key = objectKey(hash);
    if (used.has(key) || (await store.head(key))?.size === bytes.length) {
      used.add(key);
      unchanged++;
      return;
    }
    used.add(key);
    uploaded.push(label);
    bytesUploaded += bytes.length;
    if (!options.dryRun) await store.put(key, bytes, { contentType: type, metadata: { md5: hash } });
  };

  for (const [i, path] of paths.entries()) {
    const bytes = await readFile(join(dir, ...path.split('/')));
    const type = contentTypeOf(path);
    const hash = md5(bytes);
    const before = previous ? entryOf(previous, path) : undefined;
    const same = before?.md5 === hash;
    const entry = {
      md5: hash,
      modified_at: same && before ? before.modified_at : now,
      size: bytes.length,
      type,
      variants: {} as Partial<Record<Encoding, Variant>>,
    };
    await upload(path, bytes, hash, type);
    if (COMPRESSIBLE.test(type) && bytes.length >= MIN_COMPRESS_BYTES) {
      for (const encoding of ['br', 'gzip'] as const) {
        // Compressing is the slow part: reuse the copy the last deploy made of the same bytes.
        const known = same ? before?.variants[encoding] : undefined;
        const knownKey = known ? objectKey(known.md5) : null;
        if (known && knownKey && (used.has(knownKey) || (await store.head(knownKey))?.size === known.size)) {
          used.add(knownKey);
          unchanged++;
          entry.variants[encoding] = known;
          continue;
        }
        const packed = await compress(encoding, bytes);
        if (packed.length >= bytes.length * 0.95) continue;
        const variant = { md5: md5(packed), size: packed.length };
        await upload(`${path} (${encoding})`, packed, variant.md5, type);
        entry.variants[encoding] = variant;
      }
    }
    files[path] = entry;
    options.onProgress?.(i + 1, paths.length, path);
  }

  const manifest: Manifest = { version: 1, deployed_at: now, files };
  if (!options.dryRun) {
    await store.put(MANIFEST_KEY, Buffer.from(JSON.stringify(manifest)), { contentType: 'application/json' });
  }
  const deleted = previous ? Object.keys(previous.files).filter((p) => !Object.hasOwn(files, p)) : [];
  let objectsRemoved = 0;
  for await (const object of store.list(SITE_PREFIX)) {
    if (used.has(object.key)) continue;
    objectsRemoved++;
    if (!options.dryRun) await store.delete(object.key);
  }
  return { files: paths.length, uploaded, unchanged, deleted, objectsRemoved, bytesUploaded };
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

  /**
   * Reads the manifest from the store now (the site-refresh worker calls this every 2 s). On
   * failure the last one read stays in use and the error is thrown, for the worker to count.
   */
  async refresh(): Promise<void> {
    const manifest = await fileStoreCall(() => readManifest(this.store));
    this.manifestCache = { manifest, at: Date.now() };
  }

  /** Forgets the manifest so the next request reads it again (after a deploy in this process). */
  invalidate(): void {
    this.manifestCache = null;
  }

  /**
   * The bytes of a file or of one of its compressed copies; null when the object is gone (a
   * deploy removed it after this manifest was read: read the manifest again).
   */
  async open(variant: Variant, range?: ByteRange) {
    const key = objectKey(variant.md5);
    if (variant.size > this.options.maxCachedFileBytes) {
      return (await fileStoreCall(() => this.store.get(key, range)))?.body ?? null;
    }
    let bytes = this.bodies.get(variant.md5);
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
      this.bodies.set(variant.md5, bytes);
    }
    return range ? bytes.subarray(range.start, range.end + 1) : bytes;
  }
}
