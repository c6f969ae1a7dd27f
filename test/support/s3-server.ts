/**
 * An s3rver (S3-protocol server on local disk) for tests, run as its own process by
 * test/support/s3.ts: `node --openssl-legacy-provider --import tsx test/support/s3-server.ts DIRECTORY BUCKET [PORT]`.
 * Listens on PORT (default: a free port) of 127.0.0.1, prints `{"port":N}` on one line once it listens, and exits
 * when its stdin closes (the test process ended) or on SIGTERM / SIGINT, removing DIRECTORY.
 *
 * Three gaps between s3rver 3.7 and S3 are closed here:
 * - its continuation tokens are DES-encrypted, which OpenSSL 3 offers only with the legacy
 *   provider (hence the flag); without it every listing past 1,000 keys is an InternalError;
 * - it lists keys in the order its directory walk meets the files, which is the file system's
 *   order and, even when sorted by name, not S3's key order (`a/x`, `a-b` and `a` are stored as
 *   `a/`, `a-b._S3rver_object` and `a._S3rver_object`). The walk below visits entries in the
 *   UTF-8 byte order of the key segment each one holds, which is S3's order;
 * - it answers `Range: bytes=0-0` with the whole object (it reads the end 0 as "no end").
 */
import { createReadStream, readdirSync, rmSync, statSync, type ReadStream } from 'node:fs';
import { createRequire } from 'node:module';
import { posix } from 'node:path';

interface S3rverOptions {
  readonly address: string;
  readonly port: number;
  readonly silent: boolean;
  readonly directory: string;
  readonly configureBuckets: ReadonlyArray<{ readonly name: string }>;
}

interface S3rver {
  run(): Promise<{ port: number }>;
}

interface StoredObject {
  content: ReadStream | null;
  range?: { start: number; end: number };
}

interface FilesystemStore {
  getResourcePath(bucket: string, key: string, resource: string): string;
  getObject(bucket: string, key: string, options?: { start?: number; end?: number }): Promise<StoredObject | null>;
}

type Walk = (dir: string, recurseFilter?: (dirPath: string) => boolean) => Generator<string>;

const require = createRequire(import.meta.url);

const SUFFIX = '._S3rver_';

/** The key segment a directory entry stands for: `name/…` for a folder, `name` for a file. */
function segmentOf(name: string, isDirectory: boolean): Buffer {
  if (isDirectory) return Buffer.from(`${name}/`);
  const at = name.lastIndexOf(SUFFIX);
  return Buffer.from(at === -1 ? name : name.slice(0, at));
}

const walk: Walk = function* walk(dir: string, recurseFilter?: (dirPath: string) => boolean): Generator<string> {
  const entries = readdirSync(dir).map((name) => {
    const path = posix.join(dir, name);
    const isDirectory = statSync(path).isDirectory();
    return { path, isDirectory, order: segmentOf(name, isDirectory) };
  });
  entries.sort((a, b) => Buffer.compare(a.order, b.order));
  for (const entry of entries) {
    if (!entry.isDirectory) yield entry.path;
    else if (!recurseFilter || recurseFilter(entry.path)) yield* walk(entry.path, recurseFilter);
  }
};

// The store module takes `walk` from utils when it loads, so the replacement goes in first.
(require('s3rver/lib/utils') as { walk: Walk }).walk = walk;
const { prototype: store } = require('s3rver/lib/stores/filesystem') as { prototype: FilesystemStore };
const getObject = store.getObject;
store.getObject = async function (this: FilesystemStore, bucket, key, options) {
  const object = await getObject.call(this, bucket, key, options);
  if (object?.content && options?.start === 0 && options.end === 0) {
    object.content.destroy();
    object.content = createReadStream(this.getResourcePath(bucket, key, 'object'), { start: 0, end: 0 });
    object.range = { start: 0, end: 0 };
  }
  return object;
};

const S3rver = require('s3rver') as new (options: S3rverOptions) => S3rver;

const [directory, bucket, portArg] = process.argv.slice(2);
if (!directory || !bucket) {
  process.stderr.write('usage: s3-server.ts DIRECTORY BUCKET [PORT]\n');
  process.exit(2);
}

const server = new S3rver({
  address: '127.0.0.1',
  port: portArg ? Number(portArg) : 0,
  silent: true,
  directory,
  configureBuckets: [{ name: bucket }],
});
const { port } = await server.run();

// Open connections would keep the process alive after the server closes: exit outright, and
// take the directory along, since a test process that died will not remove it.
const exit = () => {
  rmSync(directory, { recursive: true, force: true });
  process.exit(0);
};
process.once('SIGTERM', exit);
process.once('SIGINT', exit);
process.stdin.once('end', exit);
process.stdin.once('close', exit);
process.stdin.resume();

process.stdout.write(`${JSON.stringify({ port })}\n`);
