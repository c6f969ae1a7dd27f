import { createHash } from 'node:crypto';
import { sql } from 'kysely';
import type { FileStore } from '../stores/files/port.ts';
import type { Db } from '../stores/sql/port.ts';
import { ImageError, makeVariants } from './image-variants.ts';
import { VARIANT_ORDER, variantKey } from './files.ts';
import type { JobsService } from './jobs.ts';
import { firstDeliveries } from './processed-messages.ts';
import { inTransaction } from './transaction.ts';
import { backupHeld } from './backup/hold.ts';

/** Larger originals are not read into memory for variants; their variants are marked failed. */
export const MAX_VARIANT_SOURCE_BYTES = 64 * 1024 * 1024;

/** What a job handler gets: the job's row. */
export interface JobRow {
  readonly id: string;
  readonly customer_id: number;
  readonly payload: unknown;
}

/** A job whose input can never succeed: no retry, the job ends `failed` with this message. */
export class PermanentJobError extends Error {
  override readonly name = 'PermanentJobError';
}

/**
 * The chapter's job: web, mobile and thumbnail WebP copies of an uploaded image. The copies go to
 * the file store under keys fixed by the file's id, then one transaction checks that the file is
 * still there (locking its row against a delete), records the variants, marks the job completed
 * and writes the `processed_messages` row; a redelivery finds that row and changes nothing. A file
 * deleted meanwhile gets its copies removed again, so nothing is left behind.
 */
export class VariantJob {
  static readonly KIND = 'image.variants';

  constructor(
    private readonly db: Db,
    private readonly store: FileStore,
    private readonly jobs: JobsService,
  ) {}

  async run(job: JobRow, signal: AbortSignal): Promise<void> {
    const fileId = Number((job.payload as { file_id?: unknown }).file_id);
    const file = await this.db.writer.selectFrom('files').select(['id', 'object_key', 'size']).where('id', '=', fileId).executeTakeFirst();
    if (!file) {
      await this.finish(job, { file_id: fileId, variants: [] });
      return;
    }
    if (file.size > MAX_VARIANT_SOURCE_BYTES) {
      throw new PermanentJobError(`the image is ${file.size} bytes; variants are made of images up to ${MAX_VARIANT_SOURCE_BYTES} bytes`);
    }
    const got = await this.store.get(file.object_key);
    if (!got) {
      // The row without its object: the file was deleted after the check above, or is broken.
      await this.finish(job, { file_id: fileId, variants: [] });
      return;
    }
    const chunks: Buffer[] = [];
    for await (const chunk of got.body) chunks.push(chunk as Buffer);
    let variants;
    try {
      variants = await makeVariants(Buffer.concat(chunks), { signal });
    } catch (err) {
      if (err instanceof ImageError) throw new PermanentJobError(`the image cannot be converted (${err.code}): ${err.message}`);
      throw err;
    }
    for (const v of variants) await this.store.put(variantKey(fileId, v.name), v.data, { contentType: v.content_type });
    const kept = await inTransaction(this.db.writer, async (trx) => {
      const still = await trx.selectFrom('files').select('id').where('id', '=', fileId).forUpdate().executeTakeFirst();
      if (!still) return false;
      if ((await firstDeliveries(trx, VariantJob.KIND, [job.id])).size === 0) return true;
      for (const v of variants) {
        await trx
          .updateTable('file_variants')
          .set({
            status: 'ready',
            width: v.width,
            height: v.height,
            size: v.size,
            object_key: variantKey(fileId, v.name),
            sha256: createHash('sha256').update(v.data).digest('hex'),
            updated_at: sql<Date>`now()`,
          })
          .where('file_id', '=', fileId)
          .where('name', '=', v.name)
          .execute();
      }
      await this.jobs.completed(trx, job.id, {
        file_id: fileId,
        variants: variants.map((v) => ({ name: v.name, width: v.width, height: v.height, size: v.size })),
      });
      return true;
    });
    if (!kept) await this.removeCopies(fileId);
  }

  /** After the last failed attempt: the variants show `failed`, so nobody waits for them. */
  async failed(job: JobRow): Promise<void> {
    const fileId = Number((job.payload as { file_id?: unknown }).file_id);
    await this.db.writer
      .updateTable('file_variants')
      .set({ status: 'failed', updated_at: sql<Date>`now()` })
      .where('file_id', '=', fileId)
      .where('status', '=', 'pending')
      .execute();
  }

  private async finish(job: JobRow, result: unknown): Promise<void> {
    await inTransaction(this.db.writer, async (trx) => {
      if ((await firstDeliveries(trx, VariantJob.KIND, [job.id])).size === 0) return;
      await this.jobs.completed(trx, job.id, result);
    });
  }

  private async removeCopies(fileId: number): Promise<void> {
    // A running backup may still copy them: the file is gone, so the sweeper removes them after it.
    if (await backupHeld(this.db.writer)) return;
    for (const name of VARIANT_ORDER) await this.store.delete(variantKey(fileId, name));
  }
}
