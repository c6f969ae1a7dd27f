import { sql, type Kysely } from 'kysely';
import { isObject, mergePatch, READERS, type JsonObject, type Problem } from '../domain/documents.ts';
import { DatabankError } from '../domain/errors.ts';
import type { Page, Principal } from '../domain/types.ts';
import type { Db } from '../stores/sql/port.ts';
import type { Database } from '../stores/sql/schema.ts';
import { assertAdmin, assertOwns } from './access.ts';
import { SchemaCompiler } from './collection-schemas.ts';
import { appendEvents, type EventType } from './outbox.ts';
import { decodeCursor, toPage } from './paging.ts';
import { inTransaction, read, type Tx } from './transaction.ts';

/** A document as the API answers it. */
export interface DocumentView {
  readonly document_id: number;
  readonly customer_id: number;
  readonly collection: string;
  readonly version: number;
  readonly body: JsonObject;
  readonly tags: readonly string[];
  /** What the collection's reader (and its schema, if it has one) found wrong; empty when nothing. */
  readonly problems: readonly Problem[];
  readonly created_at: string;
  readonly updated_at: string;
}

export interface NewDocument {
  readonly collection: string;
  readonly body: JsonObject;
  readonly tags?: readonly string[];
}

/** A JSON Merge Patch of the document's writable members. */
export interface DocumentPatch {
  readonly body?: unknown;
  readonly tags?: readonly string[] | null;
}

export interface ListDocumentsQuery {
  readonly customerId?: number;
  readonly collection?: string;
  readonly tag?: string;
  /** Body fields compared as text, by dotted path: `{"status": "open", "address.city": "Oslo"}`. */
  readonly where: Readonly<Record<string, string>>;
  readonly limit: number;
  readonly cursor?: string;
}

export interface CollectionSchemaView {
  readonly collection: string;
  readonly version: number;
  readonly schema: JsonObject;
  readonly updated_at: string;
}

interface DocumentRow {
  id: number;
  customer_id: number;
  collection: string;
  version: number;
  body: JsonObject;
  tags: string[];
  created_at: Date;
  updated_at: Date;
  schema: JsonObject | null;
  schema_version: number | null;
}

/**
 * Customers' semi-structured documents (KYC profiles, notes, preferences, tickets), JSONB in
 * PostgreSQL, in free-form collections. Schemaless by default and read through typed readers that
 * report what does not match (schema-on-read); a collection can opt into schema-on-write with a
 * JSON Schema. Every change raises the version (optimistic concurrency: `If-Match`) and writes an
 * event in its transaction, from which the search index follows.
 */
export class DocumentsService {
  private readonly schemas = new SchemaCompiler();

  constructor(
    private readonly db: Db,
    /** `DATABANK_MAX_DOCUMENT_BYTES`: the largest body, as compact JSON. */
    readonly maxBytes: number,
  ) {}

  async create(principal: Principal, customerId: number, input: NewDocument): Promise<DocumentView> {
    assertOwns(principal, customerId);
    this.assertSize(input.body);
    const row = await inTransaction(this.db.writer, async (trx) => {
      const customer = await trx.selectFrom('customers').select('id').where('id', '=', customerId).executeTakeFirst();
      if (!customer) throw new DatabankError('DATABANK_ERR_NOT_FOUND', `customer ${customerId} does not exist`);
      const schema = await schemaOf(trx, input.collection);
      this.assertMatches(schema, input.collection, input.body);
      const inserted = await trx
        .insertInto('documents')
        .values({ customer_id: customerId, collection: input.collection, body: JSON.stringify(input.body), tags: uniqueTags(input.tags) })
        .returningAll()
        .executeTakeFirstOrThrow();
      await this.event(trx, 'document.created', inserted);
      return { ...inserted, schema: schema?.schema ?? null, schema_version: schema?.version ?? null };
    });
    return this.view(row);
  }

  async get(principal: Principal, id: number): Promise<DocumentView> {
    const row = await read(() => selectDocuments(this.db.reader).where('d.id', '=', id).executeTakeFirst());
    if (!row) throw new DatabankError('DATABANK_ERR_NOT_FOUND');
    assertOwns(principal, row.customer_id);
    return this.view(row);
  }

  /**
   * Applies a merge patch to the body and tags if `ifMatch` is still the current version: the
   * new version is one more. A stale version is DATABANK_ERR_VERSION_MISMATCH and changes nothing.
   */
  async update(principal: Principal, id: number, ifMatch: number, patch: DocumentPatch): Promise<DocumentView> {
    const row = await inTransaction(this.db.writer, async (trx) => {
      const current = await trx.selectFrom('documents').selectAll().where('id', '=', id).forUpdate().executeTakeFirst();
      if (!current) throw new DatabankError('DATABANK_ERR_NOT_FOUND');
      assertOwns(principal, current.customer_id);
      if (current.version !== ifMatch) {
        throw new DatabankError('DATABANK_ERR_VERSION_MISMATCH', `document ${id} is at version ${current.version}, not ${ifMatch}: read it again and reapply the change`);
      }
      const body = patch.body === undefined ? current.body : mergePatch(current.body, patch.body);
      if (!isObject(body)) throw new DatabankError('DATABANK_ERR_VALIDATION', 'body: the patched body must be a JSON object');
      this.assertSize(body);
      const tags = patch.tags === undefined ? current.tags : uniqueTags(patch.tags ?? []);
      const schema = await schemaOf(trx, current.collection);
      this.assertMatches(schema, current.collection, body);
      const updated = await trx
        .updateTable('documents')
        .set({ body: JSON.stringify(body), tags, version: current.version + 1, updated_at: sql<Date>`now()` })
        .where('id', '=', id)
        .returningAll()
        .executeTakeFirstOrThrow();
      await this.event(trx, 'document.updated', updated);
      return { ...updated, schema: schema?.schema ?? null, schema_version: schema?.version ?? null };
    });
    return this.view(row);
  }

  /** Deletes the document; with `ifMatch`, only if that is still its version. */
  async delete(principal: Principal, id: number, ifMatch: number | undefined): Promise<void> {
    await inTransaction(this.db.writer, async (trx) => {
      const current = await trx.selectFrom('documents').selectAll().where('id', '=', id).forUpdate().executeTakeFirst();
      if (!current) throw new DatabankError('DATABANK_ERR_NOT_FOUND');
      assertOwns(principal, current.customer_id);
      if (ifMatch !== undefined && current.version !== ifMatch) {
        throw new DatabankError('DATABANK_ERR_VERSION_MISMATCH', `document ${id} is at version ${current.version}, not ${ifMatch}`);
      }
      await trx.deleteFrom('documents').where('id', '=', id).execute();
      await this.event(trx, 'document.deleted', current);
    });
  }

  /** Documents by id; a customer key sees only its own customer's. */
  async list(principal: Principal, query: ListDocumentsQuery): Promise<Page<DocumentView>> {
    if (query.customerId !== undefined) assertOwns(principal, query.customerId);
    const own = principal.role === 'customer' ? principal.customerId : query.customerId;
    const after = decodeCursor(query.cursor) ?? 0;
    const rows = await read(() => {
      let q = selectDocuments(this.db.reader).where('d.id', '>', after);
      if (own !== undefined) q = q.where('d.customer_id', '=', own);
      if (query.collection !== undefined) q = q.where('d.collection', '=', query.collection);
      if (query.tag !== undefined) q = q.where(sql<boolean>`d.tags @> array[${query.tag}]::text[]`);
      for (const [path, value] of Object.entries(query.where)) {
        q = q.where(sql<boolean>`d.body #>> ${path.split('.')}::text[] = ${value}`);
      }
      return q.orderBy('d.id').limit(query.limit + 1).execute();
    });
    const page = toPage(rows, query.limit, (r) => r.id);
    return { ...page, result: page.result.map((r) => this.view(r)) };
  }

  /** Opts a collection into schema-on-write; documents already stored are checked when read. */
  async putSchema(principal: Principal, collection: string, schema: JsonObject): Promise<CollectionSchemaView> {
    assertAdmin(principal);
    this.schemas.check(schema);
    const row = await inTransaction(this.db.writer, (trx) =>
      trx
        .insertInto('collection_schemas')
        .values({ collection, schema: JSON.stringify(schema) })
        .onConflict((oc) =>
          oc.column('collection').doUpdateSet({
            schema: JSON.stringify(schema),
            version: sql<number>`collection_schemas.version + 1`,
            updated_at: sql<Date>`now()`,
          }),
        )
        .returningAll()
        .executeTakeFirstOrThrow(),
    );
    return schemaView(row);
  }

  /** The collection's schema; any key may read it, to know what a write must look like. */
  async getSchema(collection: string): Promise<CollectionSchemaView> {
    const row = await read(() => this.db.reader.selectFrom('collection_schemas').selectAll().where('collection', '=', collection).executeTakeFirst());
    if (!row) throw new DatabankError('DATABANK_ERR_NOT_FOUND');
    return schemaView(row);
  }

  /** Back to schemaless: writes are no longer checked. */
  async deleteSchema(principal: Principal, collection: string): Promise<void> {
    assertAdmin(principal);
    const result = await inTransaction(this.db.writer, (trx) => trx.deleteFrom('collection_schemas').where('collection', '=', collection).executeTakeFirst());
    if (result.numDeletedRows === 0n) throw new DatabankError('DATABANK_ERR_NOT_FOUND');
  }

  private view(row: DocumentRow): DocumentView {
    const problems = [...(READERS[row.collection]?.(row.body) ?? [])];
    if (row.schema && row.schema_version !== null) {
      for (const p of this.schemas.problems(row.collection, row.schema_version, row.schema, row.body)) {
        if (!problems.some((q) => q.path === p.path)) problems.push(p);
      }
    }
    return {
      document_id: row.id,
      customer_id: row.customer_id,
      collection: row.collection,
      version: row.version,
      body: row.body,
      tags: row.tags,
      problems,
      created_at: row.created_at.toISOString(),
      updated_at: row.updated_at.toISOString(),
    };
  }

  private assertSize(body: unknown): void {
    const bytes = Buffer.byteLength(JSON.stringify(body));
    if (bytes > this.maxBytes) {
      throw new DatabankError(
        'DATABANK_ERR_PAYLOAD_TOO_LARGE',
        `the document body is ${bytes} bytes as JSON; the limit is ${this.maxBytes} (DATABANK_MAX_DOCUMENT_BYTES)`,
      );
    }
  }

  private assertMatches(schema: { schema: JsonObject; version: number } | undefined, collection: string, body: JsonObject): void {
    if (!schema) return;
    const problems = this.schemas.problems(collection, schema.version, schema.schema, body);
    if (problems.length > 0) {
      throw new DatabankError('DATABANK_ERR_SCHEMA_VIOLATION', `the document does not match the schema of ${collection}: ${problems.map((p) => `${p.path || '/'} ${p.message}`).join('; ')}`, { problems });
    }
  }

  private async event(trx: Tx, type: EventType, row: { id: number; customer_id: number; collection: string; version: number }): Promise<void> {
    await appendEvents(trx, [
      {
        type,
        aggregate_id: row.id,
        customer_ids: [row.customer_id],
        payload: { document_id: row.id, customer_id: row.customer_id, collection: row.collection, version: row.version },
      },
    ]);
  }
}

function selectDocuments(db: Kysely<Database>) {
  return db
    .selectFrom('documents as d')
    .leftJoin('collection_schemas as s', 's.collection', 'd.collection')
    .select(['d.id', 'd.customer_id', 'd.collection', 'd.version', 'd.body', 'd.tags', 'd.created_at', 'd.updated_at', 's.schema', 's.version as schema_version']);
}

async function schemaOf(trx: Tx, collection: string): Promise<{ schema: JsonObject; version: number } | undefined> {
  // Locked for share: a schema changed while this write runs waits for it. A schema put for the
  // first time meanwhile applies from the next write on; readers report any mismatch either way.
  return trx.selectFrom('collection_schemas').select(['schema', 'version']).where('collection', '=', collection).forShare().executeTakeFirst();
}

function uniqueTags(tags: readonly string[] | undefined): string[] {
  return [...new Set(tags ?? [])];
}

function schemaView(row: { collection: string; version: number; schema: JsonObject; updated_at: Date }): CollectionSchemaView {
  return { collection: row.collection, version: row.version, schema: row.schema, updated_at: row.updated_at.toISOString() };
}
