import { createCipheriv, createDecipheriv, createHmac, hkdfSync, randomBytes, timingSafeEqual } from 'node:crypto';
import { constants, openSync, closeSync, writeSync } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { Transform, type TransformCallback } from 'node:stream';

/**
 * Backup encryption: AES-256-GCM in fixed-size chunks, each with its own tag, so every byte a
 * restore hands on has been authenticated first, and a cut-short, reordered or altered backup
 * fails at the first bad chunk (the STREAM construction that age uses).
 *
 *   header   MAGIC (18 bytes) | key id (8) | salt (16)
 *   chunks   ciphertext (CHUNK bytes, the last one 0..CHUNK) + tag (16)
 *
 * Each backup has a key of its own, derived from the backup key and the salt with HKDF-SHA256;
 * a chunk's nonce is its number and whether it is the last, so no nonce repeats under one key and
 * a truncation at a chunk boundary is still found. The header is the chunks' associated data.
 */

const MAGIC = Buffer.from('DATABANK-BACKUP-1\n', 'latin1');
const KEY_ID_BYTES = 8;
const SALT_BYTES = 16;
const TAG_BYTES = 16;
export const HEADER_BYTES = MAGIC.length + KEY_ID_BYTES + SALT_BYTES;
/** Plaintext bytes per chunk. */
export const CHUNK_BYTES = 1024 * 1024;

/** A backup key: 32 bytes, and the short id that names it in manifests and error messages. */
export interface BackupKey {
  readonly id: string;
  readonly bytes: Buffer;
}

/** A wrong, missing or unreadable key, a damaged backup: said to the user as it is. */
export class BackupKeyError extends Error {}
export class BackupIntegrityError extends Error {}

/** The id of a key: the first 8 bytes of an HMAC under it, so the id tells nothing of the key. */
export function keyId(bytes: Buffer): string {
  return createHmac('sha256', bytes).update('databank backup key id').digest().subarray(0, KEY_ID_BYTES).toString('hex');
}

/**
 * Reads a key file: 32 random bytes as base64 (what `openssl rand -base64 32` or `databank backup
 * keygen` writes), readable by its owner only.
 */
export async function readBackupKey(file: string): Promise<BackupKey> {
  let text: string;
  try {
    const info = await stat(file);
    if ((info.mode & 0o077) !== 0) {
      throw new BackupKeyError(`the backup key file ${file} is readable by others (mode ${(info.mode & 0o777).toString(8)}): run chmod 600 ${file}`);
    }
    text = await readFile(file, 'utf8');
  } catch (err) {
    if (err instanceof BackupKeyError) throw err;
    throw new BackupKeyError(`cannot read the backup key file ${file} (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
  }
  const trimmed = text.trim();
  const bytes = Buffer.from(trimmed, 'base64');
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(trimmed) || bytes.length !== 32) {
    throw new BackupKeyError(`the backup key file ${file} must hold 32 random bytes as base64 (openssl rand -base64 32, or databank backup keygen FILE)`);
  }
  return { id: keyId(bytes), bytes };
}

/** Writes a new key file (mode 0600); never replaces an existing file. */
export function writeNewBackupKey(file: string): BackupKey {
  const bytes = randomBytes(32);
  let fd: number;
  try {
    fd = openSync(file, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new BackupKeyError(code === 'EEXIST' ? `${file} exists: a key file is never overwritten` : `cannot create ${file} (${code})`);
  }
  try {
    writeSync(fd, `${bytes.toString('base64')}\n`);
  } finally {
    closeSync(fd);
  }
  return { id: keyId(bytes), bytes };
}

function subkey(key: BackupKey, salt: Buffer, purpose: string): Buffer {
  return Buffer.from(hkdfSync('sha256', key.bytes, salt, `databank backup ${purpose} v1`, 32));
}

function nonce(counter: number, last: boolean): Buffer {
  const n = Buffer.alloc(12);
  n.writeUIntBE(counter, 4, 6);
  n[11] = last ? 1 : 0;
  return n;
}

/** Encrypts a stream into the format above. */
export function encryptStream(key: BackupKey): Transform {
  const salt = randomBytes(SALT_BYTES);
  const header = Buffer.concat([MAGIC, Buffer.from(key.id, 'hex'), salt]);
  const k = subkey(key, salt, 'data');
  let pending: Buffer[] = [];
  let pendingBytes = 0;
  let counter = 0;
  let headerSent = false;
  const seal = (plain: Buffer, last: boolean): Buffer => {
    const cipher = createCipheriv('aes-256-gcm', k, nonce(counter++, last));
    cipher.setAAD(header);
    const body = Buffer.concat([cipher.update(plain), cipher.final(), cipher.getAuthTag()]);
    return headerSent ? body : ((headerSent = true), Buffer.concat([header, body]));
  };
  return new Transform({
    transform(chunk: Buffer, _enc, done: TransformCallback) {
      pending.push(chunk);
      pendingBytes += chunk.length;
      // Keep at least one byte back: the last chunk is sealed as last in flush.
      while (pendingBytes > CHUNK_BYTES) {
        const all = Buffer.concat(pending);
        this.push(seal(all.subarray(0, CHUNK_BYTES), false));
        const rest = all.subarray(CHUNK_BYTES);
        pending = [rest];
        pendingBytes = rest.length;
      }
      done();
    },
    flush(done: TransformCallback) {
      this.push(seal(Buffer.concat(pending), true));
      done();
    },
  });
}

/** Reads the key id a backup was encrypted with from its first bytes. */
export function headerKeyId(header: Buffer): string {
  if (header.length < HEADER_BYTES || !header.subarray(0, MAGIC.length).equals(MAGIC)) {
    throw new BackupIntegrityError('not a databank backup (the header is wrong): damaged or not a backup file');
  }
  return header.subarray(MAGIC.length, MAGIC.length + KEY_ID_BYTES).toString('hex');
}

/**
 * Decrypts the format above; fails (the stream errors) on a wrong key, a damaged or truncated
 * backup, before handing on any byte of a chunk that did not authenticate.
 */
export function decryptStream(key: BackupKey): Transform {
  let parts: Buffer[] = [];
  let partsBytes = 0;
  let header: Buffer | null = null;
  let k: Buffer | null = null;
  let counter = 0;
  const open = (sealed: Buffer, last: boolean): Buffer => {
    if (sealed.length < TAG_BYTES) throw new BackupIntegrityError('the backup is cut short: damaged or truncated');
    const decipher = createDecipheriv('aes-256-gcm', k as Buffer, nonce(counter, last));
    decipher.setAAD(header as Buffer);
    decipher.setAuthTag(sealed.subarray(sealed.length - TAG_BYTES));
    try {
      const plain = Buffer.concat([decipher.update(sealed.subarray(0, sealed.length - TAG_BYTES)), decipher.final()]);
      counter++;
      return plain;
    } catch {
      throw new BackupIntegrityError(`the backup failed authentication at chunk ${counter}: it is damaged, truncated or was altered`);
    }
  };
  const take = (): Buffer => {
    const all = parts.length === 1 ? (parts[0] as Buffer) : Buffer.concat(parts);
    parts = [];
    partsBytes = 0;
    return all;
  };
  const keep = (rest: Buffer) => {
    if (rest.length > 0) {
      parts = [rest];
      partsBytes = rest.length;
    }
  };
  const sealedChunk = CHUNK_BYTES + TAG_BYTES;
  return new Transform({
    transform(chunk: Buffer, _enc, done: TransformCallback) {
      try {
        parts.push(chunk);
        partsBytes += chunk.length;
        if (!header) {
          if (partsBytes < HEADER_BYTES) return done();
          const all = take();
          header = all.subarray(0, HEADER_BYTES);
          const id = headerKeyId(header);
          if (id !== key.id) {
            throw new BackupKeyError(`this backup was encrypted with backup key ${id}; the key given is ${key.id}: use the key file it was made with`);
          }
          k = subkey(key, header.subarray(MAGIC.length + KEY_ID_BYTES), 'data');
          keep(all.subarray(HEADER_BYTES));
        }
        // A full chunk with more behind it is not the last.
        if (partsBytes > sealedChunk) {
          let all = take();
          while (all.length > sealedChunk) {
            this.push(open(all.subarray(0, sealedChunk), false));
            all = all.subarray(sealedChunk);
          }
          keep(all);
        }
        done();
      } catch (err) {
        done(err as Error);
      }
    },
    flush(done: TransformCallback) {
      try {
        if (!header) throw new BackupIntegrityError('the backup is cut short: damaged or truncated');
        this.push(open(take(), true));
        done();
      } catch (err) {
        done(err as Error);
      }
    },
  });
}

/** An HMAC over a manifest's canonical JSON, under a key of its own derived from the backup key. */
export function manifestMac(key: BackupKey, canonical: string): string {
  return createHmac('sha256', subkey(key, Buffer.alloc(0), 'manifest')).update(canonical).digest('hex');
}

export function sameMac(a: string, b: string): boolean {
  const x = Buffer.from(a, 'hex');
  const y = Buffer.from(b, 'hex');
  return x.length === y.length && x.length > 0 && timingSafeEqual(x, y);
}
