import { Readable } from 'node:stream';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { DatabankError } from '../domain/errors.ts';
import type { ByteRange } from '../stores/files/port.ts';
import { errorBody } from './error-handler.ts';

/** One representation of a file, ready to be sent. */
export interface Servable {
  /** Strong validator, without quotes. */
  readonly etag: string;
  readonly lastModified: Date;
  readonly size: number;
  readonly contentType: string;
  /** Extra response headers (Cache-Control, Content-Disposition, Vary…). */
  readonly headers: Readonly<Record<string, string>>;
  /** The bytes, or the range of them; null when they have gone since the description was read. */
  open(range?: ByteRange): Promise<Readable | Buffer | null>;
}

/** What `sendObject` answers, without sending anything, when the bytes are gone. */
export const GONE = Symbol('gone');

/**
 * Answers a GET or HEAD the way a file server does: validators (ETag, Last-Modified), conditional
 * requests (If-None-Match, If-Modified-Since → 304), one byte range (Range, If-Range → 206, or
 * 416 when it is outside the file), and HEAD with the headers of the GET. The bytes are opened
 * before any header is set, so that an error answer never carries the file's validators or
 * caching headers; when they are gone, nothing is sent and GONE is returned. A HEAD opens (its
 * first byte of) them too and closes them unread, so that it answers what the GET would.
 */
export async function sendObject(
  request: FastifyRequest,
  reply: FastifyReply,
  object: Servable,
): Promise<FastifyReply | typeof GONE> {
  const etag = `"${object.etag}"`;
  const lastModified = new Date(Math.floor(object.lastModified.getTime() / 1000) * 1000);
  const validators = () => {
    // One header at a time: spreading them into a new object costs more than serving a small file.
    for (const name in object.headers) reply.header(name, object.headers[name]);
    reply.header('etag', etag).header('last-modified', lastModified.toUTCString()).header('accept-ranges', 'bytes');
  };
  if (notModified(request, etag, lastModified)) {
    validators();
    return reply.code(304).send();
  }
  const range = rangeOf(request, etag, lastModified, object.size);
  if (range === 'unsatisfiable') {
    reply.header('content-range', `bytes */${object.size}`);
    return reply.code(416).send(errorBody(new DatabankError('DATABANK_ERR_RANGE_NOT_SATISFIABLE')));
  }
  let body: Readable | Buffer | null = null;
  if (request.method === 'HEAD') {
    if (!(await exists(object))) return GONE;
  } else {
    body = await object.open(range ?? undefined);
    if (body === null) return GONE;
  }
  validators();
  reply.header('content-type', object.contentType);
  if (range) reply.code(206).header('content-range', `bytes ${range.start}-${range.end}/${object.size}`);
  reply.header('content-length', String(range ? range.end - range.start + 1 : object.size));
  return body === null ? reply.send() : reply.send(body);
}

/** Whether the bytes are there, reading at most the first of them. */
async function exists(object: Servable): Promise<boolean> {
  const probe = await object.open(object.size > 0 ? { start: 0, end: 0 } : undefined);
  if (probe instanceof Readable) probe.destroy();
  return probe !== null;
}

/** RFC 9110 §13.2.2: If-None-Match wins over If-Modified-Since; only GET and HEAD get 304. */
function notModified(request: FastifyRequest, etag: string, lastModified: Date): boolean {
  const inm = request.headers['if-none-match'];
  if (inm !== undefined) {
    return inm
      .split(',')
      .map((t) => t.trim().replace(/^W\//, ''))
      .some((t) => t === '*' || t === etag);
  }
  const ims = request.headers['if-modified-since'];
  if (ims === undefined) return false;
  const since = Date.parse(ims);
  return !Number.isNaN(since) && lastModified.getTime() <= since;
}

/**
 * One `bytes=` range, or null to send the whole file: when there is no Range header, when it is
 * not one well-formed byte range (several ranges are answered whole, as RFC 9110 allows), or when
 * If-Range names another version.
 */
function rangeOf(
  request: FastifyRequest,
  etag: string,
  lastModified: Date,
  size: number,
): ByteRange | 'unsatisfiable' | null {
  const header = request.headers.range;
  if (header === undefined) return null;
  const ifRange = request.headers['if-range'] as string | undefined;
  if (ifRange !== undefined && ifRange !== etag && Date.parse(ifRange) !== lastModified.getTime()) return null;
  const match = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!match || (match[1] === '' && match[2] === '')) return null;
  const [, first = '', last = ''] = match;
  if (first === '') {
    // A suffix: the last N bytes.
    const n = Number(last);
    if (n === 0 || size === 0) return 'unsatisfiable';
    return { start: Math.max(0, size - n), end: size - 1 };
  }
  const start = Number(first);
  const end = last === '' ? size - 1 : Math.min(Number(last), size - 1);
  if (last !== '' && Number(last) < start) return null;
  if (start >= size) return 'unsatisfiable';
  return { start, end };
}
