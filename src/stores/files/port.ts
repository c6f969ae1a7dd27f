import type { Readable } from 'node:stream';

/** What the store knows about one object. */
export interface ObjectInfo {
  readonly key: string;
  readonly size: number;
  readonly contentType: string;
  /** Set by the store when the object was written. */
  readonly lastModified: Date;
  /** Small string pairs given at `put` (S3 user metadata: lower-case names, ASCII values). */
  readonly metadata: Readonly<Record<string, string>>;
}

/** Inclusive byte offsets, already checked against the object's size by the caller. */
export interface ByteRange {
  readonly start: number;
  readonly end: number;
}

export interface PutOptions {
  readonly contentType: string;
  readonly metadata?: Readonly<Record<string, string>>;
}

export interface ListedObject {
  readonly key: string;
  readonly size: number;
  readonly lastModified: Date;
}

/**
 * Bytes by key: a local folder or an S3 bucket. Bodies stream in and out, so an object of any size
 * passes through in bounded memory. Writes are atomic: a reader sees the old object or the new
 * one, never a part. Keys are made by databank (see `checkKey`), never taken from a request.
 */
export interface FileStore {
  readonly kind: 'local' | 's3';
  /** Writes the whole stream under `key`, replacing any object there. Rejects if the stream fails. */
  put(key: string, body: Readable | Buffer, options: PutOptions): Promise<{ size: number }>;
  /** The object's description, or null when there is none. */
  head(key: string): Promise<ObjectInfo | null>;
  /** The object's bytes (or the range of them) and description, or null when there is none. */
  get(key: string, range?: ByteRange): Promise<{ info: ObjectInfo; body: Readable } | null>;
  /** Removes the object; removing a missing object is not an error. */
  delete(key: string): Promise<void>;
  /** Every object whose key starts with `prefix`, in key order. */
  list(prefix: string): AsyncIterable<ListedObject>;
  close(): Promise<void>;
}

const KEY = /^[A-Za-z0-9!_.*'()-]+(\/[A-Za-z0-9!_.*'()-]+)*$/;

/** Longest key, counting each `/` as three characters: the local store's file name is the key with `/` as `%2F`. */
const KEY_MAX = 250;

/**
 * Keys are slash-separated segments of the characters S3 calls safe, with no `.` or `..` segment,
 * so no key can name a place outside the store's root, and at most KEY_MAX long with each `/`
 * counted as three, so every store takes every valid key. Throws on anything else.
 */
export function checkKey(key: string): string {
  const length = key.length + 2 * (key.split('/').length - 1);
  if (length > KEY_MAX || !KEY.test(key) || key.split('/').some((s) => s === '.' || s === '..')) {
    throw new Error(`not a valid object key: ${JSON.stringify(key.slice(0, 80))}`);
  }
  return key;
}

/** Same rule for a prefix of keys; the empty prefix lists everything. */
export function checkPrefix(prefix: string): string {
  if (prefix === '') return prefix;
  checkKey(prefix.endsWith('/') ? prefix.slice(0, -1) : prefix);
  return prefix;
}
