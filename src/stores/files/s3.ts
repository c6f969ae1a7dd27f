import {
  DeleteObjectCommand,
  GetObjectCommand,
  HeadBucketCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  S3ServiceException,
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { Transform, type Readable } from 'node:stream';
import type { FilesConfig } from '../../config.ts';
import { checkKey, checkPrefix, type ByteRange, type FileStore, type ListedObject, type ObjectInfo, type PutOptions } from './port.ts';

type S3Config = Extract<FilesConfig, { kind: 's3' }>;

/** Parts of a multipart upload; at most QUEUE of them are in memory at once. */
const PART_BYTES = 8 * 1024 * 1024;
const QUEUE = 2;

/**
 * Any S3-compatible store (AWS S3, MinIO, Ceph, R2, s3rver in tests) through the AWS SDK.
 * Credentials come from the SDK's standard chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY,
 * AWS_PROFILE, instance roles). Streams of unknown length go up as multipart uploads.
 */
export class S3FileStore implements FileStore {
  readonly kind = 's3';
  private readonly client: S3Client;
  private readonly bucket: string;

  private constructor(config: S3Config) {
    this.bucket = config.bucket;
    this.client = new S3Client({
      region: config.region,
      ...(config.endpoint ? { endpoint: config.endpoint } : {}),
      forcePathStyle: config.forcePathStyle,
      maxAttempts: 3,
      // A store that does not answer fails the request in seconds instead of holding it forever;
      // the idle limit leaves long transfers alone as long as bytes keep moving.
      requestHandler: { connectionTimeout: 5_000, socketTimeout: 30_000 },
      // Checksums only where S3 requires them: fewer copies of each part in memory, and the
      // S3-compatible servers that do not know the newer checksum headers keep working.
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
    });
  }

  /** Connects and checks that the bucket answers, so a wrong setting fails at start. */
  static async open(config: S3Config): Promise<S3FileStore> {
    const store = new S3FileStore(config);
    try {
      await store.client.send(new HeadBucketCommand({ Bucket: config.bucket }));
    } catch (err) {
      store.client.destroy();
      const where = config.endpoint ?? `the AWS endpoint of ${config.region}`;
      throw new Error(`S3 bucket "${config.bucket}" at ${where} is not usable: ${describe(err)}`, { cause: err });
    }
    return store;
  }

  async put(key: string, body: Readable | Buffer, options: PutOptions): Promise<{ size: number }> {
    const params = {
      Bucket: this.bucket,
      Key: checkKey(key),
      ContentType: options.contentType,
      Metadata: { ...options.metadata },
    };
    if (Buffer.isBuffer(body)) {
      await this.client.send(new PutObjectCommand({ ...params, Body: body }));
      return { size: body.length };
    }
    let size = 0;
    let streamError: unknown = null;
    const counted = body.pipe(
      new Transform({
        transform(chunk: Buffer, _encoding, callback) {
          size += chunk.length;
          callback(null, chunk);
        },
      }),
    );
    body.once('error', (err) => {
      streamError = err;
      counted.destroy(err);
    });
    const upload = new Upload({
      client: this.client,
      params: { ...params, Body: counted },
      partSize: PART_BYTES,
      queueSize: QUEUE,
      leavePartsOnError: false,
    });
    try {
      await upload.done();
    } catch (err) {
      // The caller's stream is not read further; and its own failure, not the clean-up's, is the cause.
      body.destroy();
      counted.destroy();
      throw streamError ?? err;
    }
    return { size };
  }

  async head(key: string): Promise<ObjectInfo | null> {
    try {
      const out = await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: checkKey(key) }));
      return infoOf(key, out.ContentLength ?? 0, out);
    } catch (err) {
      if (!isMissing(err)) throw err;
      // A HEAD answer has no body to say which is missing: the object, or the whole bucket.
      await this.client.send(new HeadBucketCommand({ Bucket: this.bucket }));
      return null;
    }
  }

  async get(key: string, range?: ByteRange): Promise<{ info: ObjectInfo; body: Readable } | null> {
    try {
      const out = await this.client.send(
        new GetObjectCommand({
          Bucket: this.bucket,
          Key: checkKey(key),
          ...(range ? { Range: `bytes=${range.start}-${range.end}` } : {}),
        }),
      );
      // A ranged answer's Content-Length is the range's; the object's size ends Content-Range.
      const total = out.ContentRange ? Number(/\/(\d+)$/.exec(out.ContentRange)?.[1]) : out.ContentLength ?? 0;
      return { info: infoOf(key, total, out), body: out.Body as Readable };
    } catch (err) {
      if (isMissing(err)) return null;
      throw err;
    }
  }

  async delete(key: string): Promise<void> {
    await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: checkKey(key) }));
  }

  async *list(prefix: string): AsyncIterable<ListedObject> {
    let token: string | undefined;
    do {
      const out = await this.client.send(
        new ListObjectsV2Command({ Bucket: this.bucket, Prefix: checkPrefix(prefix), ContinuationToken: token }),
      );
      for (const o of out.Contents ?? []) {
        if (o.Key === undefined) continue;
        yield { key: o.Key, size: o.Size ?? 0, lastModified: o.LastModified ?? new Date(0) };
      }
      token = out.IsTruncated ? out.NextContinuationToken : undefined;
    } while (token);
  }

  async close(): Promise<void> {
    this.client.destroy();
  }
}

function infoOf(
  key: string,
  size: number,
  out: { ContentType?: string; LastModified?: Date; Metadata?: Record<string, string> },
): ObjectInfo {
  return {
    key,
    size,
    contentType: out.ContentType ?? 'application/octet-stream',
    lastModified: out.LastModified ?? new Date(0),
    metadata: out.Metadata ?? {},
  };
}

/** The object is not there (a missing bucket is an error, not a missing object). */
function isMissing(err: unknown): boolean {
  return err instanceof S3ServiceException && (err.name === 'NoSuchKey' || err.name === 'NotFound');
}

function describe(err: unknown): string {
  if (err instanceof S3ServiceException) return `${err.name} (HTTP ${err.$metadata.httpStatusCode ?? '?'})`;
  return err instanceof Error ? err.message : String(err);
}
