import { Readable } from 'node:stream';
import multipart from '@fastify/multipart';
import { Type } from 'typebox';
import { DatabankError } from '../../domain/errors.ts';
import { STORED_TYPES } from '../../domain/file-types.ts';
import { invisibleRule, withoutInvisible } from '../../domain/invisible-characters.ts';
import { principalOf } from '../auth.ts';
import type { HttpDeps } from '../deps.ts';
import { COMMON_ERRORS, Cursor, ErrorBody, IdParams, Limit, limitOf, OneOf, PageOf, Timestamp } from '../schemas.ts';
import { GONE, sendObject } from '../send-object.ts';
import type { TypedApp } from '../typed-app.ts';

const FileMeta = Type.Object({
  file_id: Type.Integer(),
  customer_id: Type.Integer(),
  filename: Type.String(),
  content_type: OneOf(STORED_TYPES),
  size: Type.Integer(),
  sha256: Type.String({ description: 'hex SHA-256 of the bytes; also the ETag of the content' }),
  created_at: Timestamp,
  variants: Type.Immutable(Type.Array(
    Type.Object({
      name: OneOf(['web', 'mobile', 'thumbnail'] as const),
      status: OneOf(['pending', 'ready', 'failed'] as const),
      content_type: Type.String(),
      width: Type.Union([Type.Integer(), Type.Null()]),
      height: Type.Union([Type.Integer(), Type.Null()]),
      size: Type.Union([Type.Integer(), Type.Null()]),
    }),
    { description: "an image's WebP copies (web ≤ 1280 px, mobile ≤ 640 px, thumbnail ≤ 160 px), made after the upload; [] for other files" },
  )),
});

const VariantParams = Type.Object(
  { id: IdParams.properties.id, name: OneOf(['web', 'mobile', 'thumbnail'] as const) },
  { additionalProperties: false },
);

const UploadQuery = Type.Object(
  { filename: Type.Optional(Type.String({ minLength: 1, maxLength: 255, description: 'required for a raw body' })) },
  { additionalProperties: false },
);
const ListQuery = Type.Object(
  {
    content_type: Type.Optional(OneOf(STORED_TYPES)),
    limit: Type.Optional(Limit),
    cursor: Type.Optional(Cursor),
  },
  { additionalProperties: false },
);

/** Room for the multipart boundaries and part headers around the file itself. */
const MULTIPART_OVERHEAD = 64 * 1024;

/**
 * User content is served so that a browser can never run it as a page of this site: always a
 * download, never sniffed, in a sandbox with nothing allowed, and never stored by shared caches.
 */
const USER_CONTENT_HEADERS = {
  'cache-control': 'private, no-cache',
  'x-content-type-options': 'nosniff',
  'content-security-policy': "default-src 'none'; sandbox",
  'cross-origin-resource-policy': 'same-origin',
} as const;

/** Customer files: upload, list, describe, download and delete. */
export async function fileRoutes(app: TypedApp, deps: HttpDeps): Promise<void> {
  const maxBytes = deps.files.maxUploadBytes;
  // Upload bodies are streamed to the store as they arrive, whatever their Content-Type: no parser
  // buffers them, and the type is told from the bytes.
  app.removeAllContentTypeParsers();
  await app.register(multipart, {
    limits: { fileSize: maxBytes + 1, files: 1, parts: 4, fields: 2, fieldSize: 1024 },
    throwFileSizeLimit: true,
  });
  app.addContentTypeParser('*', (_request, payload, done) => done(null, payload));

  app.post(
    '/customers/:id/files',
    {
      schema: {
        tags: ['files'],
        description:
          'Upload one file: multipart/form-data with one file part, or the raw bytes with ?filename=. ' +
          'The type is told from the bytes (PNG, JPEG, WebP, GIF, PDF or plain UTF-8 text).',
        params: IdParams,
        querystring: UploadQuery,
        response: { 201: FileMeta, ...COMMON_ERRORS, 413: ErrorBody, 415: ErrorBody },
      },
    },
    async (request, reply) => {
      const principal = principalOf(request);
      const customerId = request.params.id;
      const { query } = request;
      const isMultipart = request.isMultipart();
      const declared = request.headers['content-length'] === undefined ? null : Number(request.headers['content-length']);
      try {
        const declaredFile = declared === null ? null : declared - (isMultipart ? MULTIPART_OVERHEAD : 0);
        const meta = await deps.files.upload(principal, customerId, declaredFile, async () => {
          if (isMultipart) {
            const part = await request.file().catch((err: unknown) => {
              // A size limit of the form keeps its 413; anything else is a broken form.
              if ((err as { statusCode?: unknown }).statusCode === 413) throw err;
              throw new DatabankError('DATABANK_ERR_BAD_UPLOAD', undefined, { cause: err });
            });
            if (!part) throw new DatabankError('DATABANK_ERR_VALIDATION', 'the form has no file part');
            return { filename: visibleName(query.filename ?? part.filename ?? ''), body: part.file };
          }
          if (query.filename === undefined) {
            throw new DatabankError('DATABANK_ERR_VALIDATION', 'a raw upload needs ?filename= (or send multipart/form-data)');
          }
          // The catch-all parser hands the request stream over as the body; a request without a
          // body has none, and its (empty) raw stream is read instead.
          const body = request.body instanceof Readable ? request.body : request.raw;
          return { filename: visibleName(query.filename), body };
        });
        return await reply.code(201).header('location', `/files/${meta.file_id}`).send(meta);
      } catch (err) {
        // The rest of the body was not read: do not keep the connection for another request.
        if (!request.raw.readableEnded) reply.header('connection', 'close');
        throw err;
      }
    },
  );

  app.get(
    '/customers/:id/files',
    {
      schema: {
        tags: ['files'],
        description: "The customer's files, newest first",
        params: IdParams,
        querystring: ListQuery,
        response: { 200: PageOf(FileMeta), ...COMMON_ERRORS },
      },
    },
    async (request) => {
      const { query } = request;
      return deps.files.list(principalOf(request), request.params.id, {
        contentType: query.content_type,
        limit: limitOf(query),
        cursor: query.cursor,
      });
    },
  );

  app.get(
    '/files/:id',
    { schema: { tags: ['files'], params: IdParams, response: { 200: FileMeta, ...COMMON_ERRORS } } },
    async (request) => deps.files.get(principalOf(request), request.params.id),
  );

  // GET and HEAD share the handler; HEAD is declared on its own so that it answers the GET's
  // Content-Length without reading the object.
  for (const method of ['GET', 'HEAD'] as const) {
    app.route({
      method,
      url: '/files/:id/variants/:name',
      exposeHeadRoute: false,
      schema: {
        tags: ['files'],
        ...(method === 'HEAD' ? { hide: true } : {}),
        description: "One of an image's WebP variants, served like the original; 404 until it is ready.",
        params: VariantParams,
        response: { ...COMMON_ERRORS, 416: ErrorBody },
      },
      handler: async (request, reply) => {
        const variant = await deps.files.variant(principalOf(request), request.params.id, request.params.name);
        const sent = await sendObject(request, reply, {
          etag: variant.meta.sha256,
          lastModified: variant.lastModified,
          size: variant.meta.size,
          contentType: variant.meta.content_type,
          headers: { ...USER_CONTENT_HEADERS, 'content-disposition': attachment(variant.meta.filename) },
          open: variant.open,
        });
        if (sent === GONE) throw new DatabankError('DATABANK_ERR_NOT_FOUND', 'the variant content is missing');
        return reply;
      },
    });

    app.route({
      method,
      url: '/files/:id/content',
      exposeHeadRoute: false,
      schema: {
        tags: ['files'],
        ...(method === 'HEAD' ? { hide: true } : {}),
        description:
          'The bytes, as an attachment. ETag is the SHA-256; If-None-Match / If-Modified-Since give 304; ' +
          'one Range gives 206 (416 outside the file). HEAD gives the headers only.',
        params: IdParams,
        response: { ...COMMON_ERRORS, 416: ErrorBody },
      },
      handler: async (request, reply) => {
        const file = await deps.files.content(principalOf(request), request.params.id);
        const sent = await sendObject(request, reply, {
          etag: file.meta.sha256,
          lastModified: file.lastModified,
          size: file.meta.size,
          contentType: file.meta.content_type === 'text/plain' ? 'text/plain; charset=utf-8' : file.meta.content_type,
          headers: { ...USER_CONTENT_HEADERS, 'content-disposition': attachment(file.meta.filename) },
          open: file.open,
        });
        // The row is there but not its bytes: `databank files sweep` reports such rows.
        if (sent === GONE) throw new DatabankError('DATABANK_ERR_NOT_FOUND', 'the file content is missing');
        return reply;
      },
    });
  }

  app.delete(
    '/files/:id',
    { schema: { tags: ['files'], params: IdParams, response: { 204: Type.Null(), ...COMMON_ERRORS } } },
    async (request, reply) => {
      await deps.files.delete(principalOf(request), request.params.id);
      // The schema's 204 is null; Fastify sends a 204 without a body, Content-Type or Content-Length.
      return reply.code(204).send(null);
    },
  );
}

/**
 * A file name without bidirectional or zero-width characters (`invisible-characters.ts`), which
 * would make it show as another name; the service checks the rest.
 */
function visibleName(filename: string): string {
  const rule = invisibleRule(filename);
  if (rule) throw new DatabankError('DATABANK_ERR_VALIDATION', `filename: ${rule}`);
  return filename;
}

/**
 * RFC 6266: an ASCII fallback name and the exact name in RFC 5987 encoding. Invisible characters,
 * which names stored before they were refused may hold, are left out of both.
 */
export function attachment(stored: string): string {
  const filename = withoutInvisible(stored) || 'download';
  const fallback = filename.replace(/[^\x20-\x7e]|["\\%]/g, '_');
  const exact = encodeURIComponent(filename).replace(/['()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
  return `attachment; filename="${fallback}"; filename*=UTF-8''${exact}`;
}
