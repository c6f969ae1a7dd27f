import { createHash, randomUUID } from 'node:crypto';
import { Readable } from 'node:stream';
import { sql, type Kysely } from 'kysely';
import { DatabankError, fileStoreCall } from '../domain/errors.ts';
import { IMAGE_TYPES, SNIFF_BYTES, sniff, TextChecker, type StoredType } from '../domain/file-types.ts';
import type { Page, Principal } from '../domain/types.ts';
import type { ByteRange, FileStore } from '../stores/files/port.ts';
import type { Db } from '../stores/sql/port.ts';
import type { Database, VariantName } from '../stores/sql/schema.ts';
import { assertOwns } from './access.ts';
import type { JobsService } from './jobs.ts';
import { appendEvents } from './outbox.ts';
import { decodeCursor, toPage } from './paging.ts';
import { inTransaction, read } from './transaction.ts';
import { backupHeld } from './backup/hold.ts';

/** A customer file as the API shows it. */
export interface FileMeta {
  readonly file_id: number;
  readonly customer_id: number;
  readonly filename: string;
  readonly content_type: StoredType;
  readonly size: number;
  readonly sha256: string;
  readonly created_at: string;
  /** An image's web, mobile and thumbnail copies (made by the `image.variants` job); [] for other files. */
  readonly variants: readonly VariantMeta[];
}

/** One image variant as the API shows it; width, height and size are null until it is ready. */
export interface VariantMeta {
  readonly name: VariantName;
  readonly status: 'pending' | 'ready' | 'failed';
  readonly content_type: string;
  readonly width: number | null;
  readonly height: number | null;
  readonly size: number | null;
}

/** The variants every image gets, in the order the API lists them. */
export const VARIANT_ORDER: readonly VariantName[] = ['web', 'mobile', 'thumbnail'];

/** Where a file's variant lives in the file store: fixed, so a delete finds it whether or not its row says so. */
export function variantKey(fileId: number, name: VariantName): string {
  return `variants/${fileId}/${name}.webp`;
}

export interface FileQuota {
  readonly maxFiles: number;
  readonly maxBytes: number;
}

export interface UploadInput {
  readonly filename: string;
  readonly body: Readable;
}

export interface SweepReport {
  /** Objects under `files/` with no row, older than the grace period: removed (or, dry run, to remove). */
  readonly orphanObjects: readonly string[];
  /** Rows whose object is missing: files that cannot be served. */
  readonly missingObjects: ReadonlyArray<{ file_id: number; object_key: string }>;
  readonly objectsSeen: number;
  readonly rowsSeen: number;
}

const PREFIX = 'files/';
const VARIANTS_PREFIX = 'variants/';
/** Printable text without path separators: the name is shown and sent back, never used as a path. */
// eslint-disable-next-line no-control-regex -- refusing control characters is the point
const FILENAME = /^[^\u0000-\u001f\u007f/\\]{1,255}$/u;

/**
 * Customer files: bytes in the file store under a generated key, the row in PostgreSQL. An upload
 * writes the object first and the row after, so a visible row always has its bytes; a delete
 * removes the row first and the object after the commit. Either way a crash can leave only an
 * object without a row, which `sweep` removes.
 *
 * Listing and serving read `reader`; an upload, a delete and the sweep read `writer`, because what
 * they read decides what they write or remove.
 */
export class FilesService {
  constructor(
    private readonly db: Db,
    private readonly store: FileStore,
    private readonly maxBytes: number,
    private readonly onOrphan: (key: string, err: unknown) => void = () => undefined,
    /** What one customer may keep: `DATABANK_MAX_FILES_PER_CUSTOMER`, `DATABANK_MAX_FILE_BYTES_PER_CUSTOMER`. */
    private readonly quota: FileQuota = { maxFiles: Number.MAX_SAFE_INTEGER, maxBytes: Number.MAX_SAFE_INTEGER },
    /** Where an image's `image.variants` job is written; null: no variants (tools that only sweep). */
    private readonly jobs: JobsService | null = null,
  ) {}

  get maxUploadBytes(): number {
    return this.maxBytes;
  }

  /**
   * Stores one file. The caller may upload to this customer and the declared size (the body's
   * Content-Length, when there is one) is within the limit before `open` is asked for the body, so
   * a refused upload reads none of it.
   */
  async upload(
    principal: Principal,
    customerId: number,
    declaredBytes: number | null,
    open: () => Promise<UploadInput>,
  ): Promise<FileMeta> {
    await this.assertCustomer(principal, customerId, this.db.writer);
    if (declaredBytes !== null && declaredBytes > this.maxBytes) throw this.tooLarge();
    // Refused before a byte is read when the customer is already at a quota, or the declared
    // size would pass it; the bytes left under the quota bound the body like the upload limit.
    const used = await this.usage(this.db.writer, customerId);
    this.assertQuota(customerId, used, declaredBytes ?? 0);
    const room = this.quota.maxBytes - used.bytes;
    const input = await open();
    checkFilename(input.filename);
    const source = input.body[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
    // The first error of the body's own checks; a store may wrap what the stream throws.
    let refused: DatabankError | null = null;
    const refuse = (err: DatabankError) => {
      refused ??= err;
      return err;
    };
    /** The next chunk; a failing body (the client gone, a broken form) is the client's error, not the store's. */
    const next = async () => {
      try {
        return await source.next();
      } catch (err) {
        throw refuse(this.bodyError(err));
      }
    };
    const first: Buffer[] = [];
    let firstBytes = 0;
    let ended = false;
    while (firstBytes < SNIFF_BYTES) {
      const chunk = await next();
      if (chunk.done) {
        ended = true;
        break;
      }
      first.push(chunk.value);
      firstBytes += chunk.value.length;
    }
    const head = Buffer.concat(first);
    if (head.length > this.maxBytes) throw this.tooLarge();
    const checker = new TextChecker();
    const type = sniff(head, ended, checker);
    if (!type) throw new DatabankError('DATABANK_ERR_UNSUPPORTED_FILE_TYPE');

    const hash = createHash('sha256').update(head);
    // The checker has seen the first bytes (and, for a short file, its end) while sniffing.
    const text = type === 'text/plain' ? checker : null;
    const maxBytes = Math.min(this.maxBytes, room);
    let size = head.length;
    const tooLarge = () => (room < this.maxBytes ? this.bytesQuota(customerId) : this.tooLarge());
    if (size > maxBytes) throw tooLarge();
    async function* rest(): AsyncGenerator<Buffer> {
      yield head;
      if (ended) return;
      for (let got = await next(); !got.done; got = await next()) {
        const chunk = got.value;
        size += chunk.length;
        if (size > maxBytes) throw refuse(tooLarge());
        if (text && !text.push(chunk)) {
          throw refuse(new DatabankError('DATABANK_ERR_UNSUPPORTED_FILE_TYPE', 'the file is not plain UTF-8 text'));
        }
        hash.update(chunk);
        yield chunk;
      }
      if (text && !text.end()) throw refuse(new DatabankError('DATABANK_ERR_UNSUPPORTED_FILE_TYPE', 'the text is not valid UTF-8'));
    }

    const key = `${PREFIX}${randomUUID()}`;
    try {
      await fileStoreCall(() => this.store.put(key, Readable.from(rest()), { contentType: type }));
    } catch (err) {
      await this.store.delete(key).catch(() => undefined);
      // The body's own refusal (too large, not text) is the answer, whatever the store made of it.
      throw refused ?? err;
    }
    const sha256 = hash.digest('hex');
    try {
      const row = await inTransaction(this.db.writer, async (trx) => {
        // The customer's row lock queues this customer's uploads here, so the quota holds for
        // concurrent ones; the count is taken again under it.
        await trx.selectFrom('customers').select('id').where('id', '=', customerId).forUpdate().executeTakeFirst();
        this.assertQuota(customerId, await this.usage(trx, customerId), size);
        const file = await trx
          .insertInto('files')
          .values({ customer_id: customerId, filename: input.filename, content_type: type, size, sha256, object_key: key })
          .returningAll()
          .executeTakeFirstOrThrow();
        const meta = toMeta(file, []);
        let variants: VariantMeta[] = [];
        // The job commits with the file: a crash after the commit still makes the variants.
        if (this.jobs && IMAGE_TYPES.has(type)) {
          await trx
            .insertInto('file_variants')
            .values(VARIANT_ORDER.map((name) => ({ file_id: file.id, name })))
            .execute();
          variants = VARIANT_ORDER.map((name) => ({ name, status: 'pending', content_type: 'image/webp', width: null, height: null, size: null }));
          await this.jobs.create(trx, 'image.variants', customerId, { file_id: file.id });
        }
        await appendEvents(trx, [{ type: 'file.uploaded', aggregate_id: file.id, customer_ids: [customerId], payload: filePayload(meta) }]);
        return { ...meta, variants };
      });
      return row;
    } catch (err) {
      await this.store.delete(key).catch((e: unknown) => this.onOrphan(key, e));
      throw err;
    }
  }

  /** A customer's files, newest first, optionally of one content type. */
  async list(
    principal: Principal,
    customerId: number,
    query: { contentType?: string; limit: number; cursor?: string },
  ): Promise<Page<FileMeta>> {
    await this.assertCustomer(principal, customerId, this.db.reader);
    const before = decodeCursor(query.cursor);
    const rows = await read(() =>
      this.db.reader
        .selectFrom('files')
        .selectAll()
        .where('customer_id', '=', customerId)
        .$if(before !== null, (q) => q.where('id', '<', before as number))
        .$if(query.contentType !== undefined, (q) => q.where('content_type', '=', query.contentType as string))
        .orderBy('id', 'desc')
        .limit(query.limit + 1)
        .execute(),
    );
    const variants = await this.variantsOf(rows.slice(0, query.limit).map((r) => r.id));
    return toPage(
      rows.map((r) => toMeta(r, variants.get(r.id) ?? [])),
      query.limit,
      (f) => f.file_id,
    );
  }

  async get(principal: Principal, fileId: number): Promise<FileMeta> {
    const row = await this.row(principal, fileId);
    return toMeta(row, (await this.variantsOf([row.id])).get(row.id) ?? []);
  }

  /**
   * A ready variant of the file and a way to read its bytes; 404 while it is pending or failed,
   * for a file without variants, and for another customer's file.
   */
  async variant(principal: Principal, fileId: number, name: VariantName) {
    const file = await this.row(principal, fileId);
    const v = await read(() =>
      this.db.reader
        .selectFrom('file_variants')
        .selectAll()
        .where('file_id', '=', file.id)
        .where('name', '=', name)
        .where('status', '=', 'ready')
        .executeTakeFirst(),
    );
    if (!v || v.object_key === null) {
      throw new DatabankError('DATABANK_ERR_NOT_FOUND', `file ${fileId} has no ready ${name} variant`);
    }
    const objectKey = v.object_key;
    const base = file.filename.replace(/\.[^.]*$/u, '');
    return {
      meta: {
        file_id: file.id,
        customer_id: file.customer_id,
        filename: `${base}.${name}.webp`,
        content_type: v.content_type,
        size: Number(v.size),
        sha256: v.sha256 ?? '',
      },
      lastModified: v.updated_at,
      open: async (range?: ByteRange) => (await fileStoreCall(() => this.store.get(objectKey, range)))?.body ?? null,
    };
  }

  /** The variants of these files, in the API's order. */
  private async variantsOf(fileIds: readonly number[]): Promise<Map<number, VariantMeta[]>> {
    const byFile = new Map<number, VariantMeta[]>();
    if (fileIds.length === 0) return byFile;
    const rows = await read(() =>
      this.db.reader
        .selectFrom('file_variants')
        .select(['file_id', 'name', 'status', 'content_type', 'width', 'height', 'size'])
        .where('file_id', 'in', fileIds)
        .execute(),
    );
    rows.sort((a, b) => VARIANT_ORDER.indexOf(a.name) - VARIANT_ORDER.indexOf(b.name));
    for (const r of rows) {
      const list = byFile.get(r.file_id) ?? [];
      list.push({
        name: r.name,
        status: r.status,
        content_type: r.content_type,
        width: r.width,
        height: r.height,
        size: r.size === null ? null : Number(r.size),
      });
      byFile.set(r.file_id, list);
    }
    return byFile;
  }

  /**
   * The file's description and a way to read its bytes. `open` resolves null when the object is
   * gone although the row is there (reported by `sweep`).
   */
  async content(principal: Principal, fileId: number) {
    const row = await this.row(principal, fileId);
    return {
      meta: toMeta(row, []),
      lastModified: row.created_at,
      open: async (range?: ByteRange) => (await fileStoreCall(() => this.store.get(row.object_key, range)))?.body ?? null,
    };
  }

  /**
   * Removes the row (its variants' rows with it) and writes `file.deleted`, then, after the commit,
   * the object and its variants' objects; a failure there leaves an orphan for `sweep`. A variant
   * job still under way finds the file gone when it commits and removes what it wrote.
   */
  async delete(principal: Principal, fileId: number): Promise<void> {
    const row = await this.row(principal, fileId, this.db.writer);
    const deleted = await inTransaction(this.db.writer, async (trx) => {
      const gone = await trx.deleteFrom('files').where('id', '=', row.id).returning(['object_key', 'customer_id']).executeTakeFirst();
      if (!gone) return null;
      await appendEvents(trx, [
        { type: 'file.deleted', aggregate_id: row.id, customer_ids: [gone.customer_id], payload: { file_id: row.id, customer_id: gone.customer_id } },
      ]);
      return gone;
    });
    if (!deleted) throw new DatabankError('DATABANK_ERR_NOT_FOUND');
    const keys = [deleted.object_key, ...(IMAGE_TYPES.has(row.content_type) ? VARIANT_ORDER.map((n) => variantKey(row.id, n)) : [])];
    // A running backup may still copy these objects: the sweeper removes them after it.
    if (await backupHeld(this.db.writer)) return;
    for (const key of keys) await this.store.delete(key).catch((err: unknown) => this.onOrphan(key, err));
  }

  /**
   * Compares the store with the table: removes objects under `files/` that have no row and are
   * older than `graceMs` (a younger one may be an upload whose row is not yet written), and reports
   * rows whose object is missing.
   */
  async sweep(options: { graceMs: number; dryRun: boolean; onProgress?: (seen: number) => void }): Promise<SweepReport> {
    // The primary: a replica that has not yet seen a new row would make its object look orphaned.
    const rows = await this.db.writer.selectFrom('files').select(['id', 'object_key']).execute();
    const byKey = new Map(rows.map((r) => [r.object_key, r.id]));
    const seen = new Set<string>();
    const orphanObjects: string[] = [];
    const cutoff = Date.now() - options.graceMs;
    let objectsSeen = 0;
    // While a backup copies objects, none is removed (the next sweep will).
    const held = await backupHeld(this.db.writer);
    for await (const object of this.store.list(PREFIX)) {
      objectsSeen++;
      options.onProgress?.(objectsSeen);
      if (byKey.has(object.key)) {
        seen.add(object.key);
        continue;
      }
      if (object.lastModified.getTime() > cutoff) continue;
      // Checked again one by one: the row may have been written since the table was read.
      const row = await this.db.writer.selectFrom('files').select('id').where('object_key', '=', object.key).executeTakeFirst();
      if (row) continue;
      orphanObjects.push(object.key);
      if (!options.dryRun && !held) await this.store.delete(object.key);
    }
    // Variants of files that are gone (a delete during a backup leaves them here).
    for await (const object of this.store.list(VARIANTS_PREFIX)) {
      objectsSeen++;
      options.onProgress?.(objectsSeen);
      const fileId = Number(object.key.split('/')[1]);
      if (object.lastModified.getTime() > cutoff || !Number.isSafeInteger(fileId)) continue;
      const row = await this.db.writer.selectFrom('files').select('id').where('id', '=', fileId).executeTakeFirst();
      if (row) continue;
      orphanObjects.push(object.key);
      if (!options.dryRun && !held) await this.store.delete(object.key);
    }
    const missingObjects = rows
      .filter((r) => !seen.has(r.object_key))
      .map((r) => ({ file_id: r.id, object_key: r.object_key }));
    return { orphanObjects, missingObjects, objectsSeen, rowsSeen: rows.length };
  }

  /** The customer exists and the caller may see it; otherwise the same 404 either way. */
  private async assertCustomer(principal: Principal, customerId: number, db: Kysely<Database>): Promise<void> {
    assertOwns(principal, customerId);
    const customer = await read(() =>
      db.selectFrom('customers').select('id').where('id', '=', customerId).executeTakeFirst(),
    );
    if (!customer) throw new DatabankError('DATABANK_ERR_NOT_FOUND', `customer ${customerId} does not exist`);
  }

  /** The file's row, if the caller may see it; `writer` when the answer decides a delete. */
  private async row(principal: Principal, fileId: number, db: Kysely<Database> = this.db.reader) {
    const row = await read(() => db.selectFrom('files').selectAll().where('id', '=', fileId).executeTakeFirst());
    // The same answer as for another customer's file (assertOwns), so ids do not leak.
    if (!row) throw new DatabankError('DATABANK_ERR_NOT_FOUND');
    assertOwns(principal, row.customer_id);
    return row;
  }

  /** What a failing upload body means for the client. */
  private bodyError(err: unknown): DatabankError {
    if (err instanceof DatabankError) return err;
    if ((err as { statusCode?: unknown }).statusCode === 413) return this.tooLarge();
    return new DatabankError('DATABANK_ERR_BAD_UPLOAD', undefined, { cause: err });
  }

  /** The customer's files now: how many, and their bytes. */
  private async usage(db: Kysely<Database>, customerId: number): Promise<{ files: number; bytes: number }> {
    const row = await read(() =>
      db
        .selectFrom('files')
        .select((eb) => [eb.fn.countAll<number>().as('files'), sql<number>`coalesce(sum(size), 0)::bigint`.as('bytes')])
        .where('customer_id', '=', customerId)
        .executeTakeFirstOrThrow(),
    );
    return { files: Number(row.files), bytes: Number(row.bytes) };
  }

  /** Refuses a new file of `bytes` bytes when it would pass one of the customer's quotas. */
  private assertQuota(customerId: number, used: { files: number; bytes: number }, bytes: number): void {
    if (used.files >= this.quota.maxFiles) {
      throw new DatabankError(
        'DATABANK_ERR_QUOTA_EXCEEDED',
        `files: customer ${customerId} already holds ${this.quota.maxFiles} files (DATABANK_MAX_FILES_PER_CUSTOMER)`,
      );
    }
    if (used.bytes + bytes > this.quota.maxBytes) throw this.bytesQuota(customerId);
  }

  private bytesQuota(customerId: number): DatabankError {
    return new DatabankError(
      'DATABANK_ERR_QUOTA_EXCEEDED',
      `file bytes: customer ${customerId} would hold more than ${this.quota.maxBytes} bytes of files (DATABANK_MAX_FILE_BYTES_PER_CUSTOMER)`,
    );
  }

  private tooLarge(): DatabankError {
    return new DatabankError('DATABANK_ERR_PAYLOAD_TOO_LARGE', `files may be at most ${this.maxBytes} bytes`);
  }
}

export function checkFilename(filename: string): void {
  if (!FILENAME.test(filename) || filename.trim() === '' || filename === '.' || filename === '..') {
    throw new DatabankError(
      'DATABANK_ERR_VALIDATION',
      'filename must be 1 to 255 characters, without control characters, / or \\',
    );
  }
}

function toMeta(
  row: { id: number; customer_id: number; filename: string; content_type: string; size: number; sha256: string; created_at: Date },
  variants: readonly VariantMeta[],
): FileMeta {
  return {
    file_id: row.id,
    customer_id: row.customer_id,
    filename: row.filename,
    content_type: row.content_type as StoredType,
    size: row.size,
    sha256: row.sha256,
    created_at: row.created_at.toISOString(),
    variants,
  };
}

/** A file's event payload (`file.uploaded`): its description, not its bytes. */
export function filePayload(f: Omit<FileMeta, 'variants'>) {
  return {
    file_id: f.file_id,
    customer_id: f.customer_id,
    filename: f.filename,
    content_type: f.content_type,
    size: f.size,
    sha256: f.sha256,
    created_at: f.created_at,
  };
}
