import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { DatabankError } from '../domain/errors.ts';
import { cacheControlOf, entryOf, type Encoding, type Site, type SiteEntry } from '../services/site.ts';
import { errorBody } from './error-handler.ts';
import { GONE, sendObject } from './send-object.ts';

/** The site's own pages may load only the site's own styles, scripts and images. */
const HTML_CSP =
  "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";
const NOT_FOUND_PAGE = '404.html';

/**
 * Serves the public site for every GET or HEAD that no API route matches, without a key: the
 * index document for directories, `404.html` for missing paths. Paths under an API route's first
 * segment (`/customers/…`) and other methods keep the API's JSON 404.
 */
export function registerSite(app: FastifyInstance, site: Site): void {
  const apiSegments = new Set<string>();
  app.addHook('onRoute', (route) => {
    const first = route.url.split('/')[1];
    if (first) apiSegments.add(first);
  });

  app.setNotFoundHandler(async (request, reply) => {
    const rawPath = request.url.split('?')[0] ?? '/';
    const firstSegment = rawPath.split('/')[1] ?? '';
    if ((request.method !== 'GET' && request.method !== 'HEAD') || apiSegments.has(firstSegment)) {
      return routeNotFound(request, reply);
    }
    const path = sitePath(rawPath);
    // A deploy may remove an object after the manifest in hand was read: then read it again, once.
    for (let attempt = 0; attempt < 2; attempt++) {
      const manifest = await site.manifest();
      if (!manifest) return routeNotFound(request, reply);
      const wanted = path === '' || path.endsWith('/') ? `${path}index.html` : path;
      const entry = entryOf(manifest, wanted);
      if (!entry && entryOf(manifest, `${path}/index.html`)) {
        const query = request.url.slice(rawPath.length);
        return reply.code(301).header('cache-control', 'public, max-age=300').redirect(`${rawPath}/${query}`, 301);
      }
      const page = entry ? null : entryOf(manifest, NOT_FOUND_PAGE);
      const sent = entry
        ? await serveEntry(request, reply, site, wanted, entry, 200)
        : page
          ? await serveEntry(request, reply, site, NOT_FOUND_PAGE, page, 404)
          : routeNotFound(request, reply);
      if (sent !== GONE) return sent;
      site.invalidate();
    }
    throw new DatabankError('DATABANK_ERR_FILE_STORE_UNAVAILABLE', 'the site is being deployed; retry');
  });
}

export function routeNotFound(request: FastifyRequest, reply: FastifyReply) {
  const err = new DatabankError('DATABANK_ERR_ROUTE_NOT_FOUND', `no route ${request.method} ${request.url.split('?')[0]}`);
  return reply.code(404).send(errorBody(err));
}

/**
 * The site path of a request path: percent-decoded segment by segment, refusing `.` and `..`
 * segments, encoded separators (`%2f`, `%5c`), backslashes, NUL and other control characters and
 * empty segments. Leading `/` removed; a trailing `/` kept.
 */
export function sitePath(rawPath: string): string {
  const segments = rawPath.split('/').slice(1);
  const decoded = segments.map((segment, i) => {
    let s: string;
    try {
      s = decodeURIComponent(segment);
    } catch {
      throw new DatabankError('DATABANK_ERR_BAD_PATH', 'the path is not valid percent-encoding');
    }
    const last = i === segments.length - 1;
    // eslint-disable-next-line no-control-regex -- refusing control characters is the point
    if ((s === '' && !last) || s === '.' || s === '..' || /[/\\\u0000-\u001f\u007f]/.test(s)) {
      throw new DatabankError('DATABANK_ERR_BAD_PATH');
    }
    return s;
  });
  return decoded.join('/');
}

/** br, then gzip, when the client accepts it (q > 0) and the file has that variant. */
function negotiate(header: string | undefined, entry: SiteEntry): Encoding | null {
  if (!header) return null;
  const accepted = new Map<string, number>();
  for (const part of header.toLowerCase().split(',')) {
    const [name = '', ...params] = part.trim().split(';');
    const q = params.map((p) => /^\s*q=([0-9.]+)\s*$/.exec(p)?.[1]).find((v) => v !== undefined);
    accepted.set(name.trim(), q === undefined ? 1 : Number(q));
  }
  const ok = (name: string) => (accepted.get(name) ?? accepted.get('*') ?? 0) > 0;
  for (const encoding of ['br', 'gzip'] as const) {
    if (entry.variants[encoding] && ok(encoding)) return encoding;
  }
  return null;
}

async function serveEntry(
  request: FastifyRequest,
  reply: FastifyReply,
  site: Site,
  path: string,
  entry: SiteEntry,
  status: 200 | 404,
): Promise<FastifyReply | typeof GONE> {
  const encoding = negotiate(request.headers['accept-encoding'], entry);
  const variant = encoding ? (entry.variants[encoding] ?? entry) : entry;
  const headers: Record<string, string> = {
    'cache-control': status === 404 ? 'public, max-age=60' : cacheControlOf(path),
  };
  if (Object.keys(entry.variants).length > 0) headers.vary = 'Accept-Encoding';
  if (encoding) headers['content-encoding'] = encoding;
  if (entry.type.startsWith('text/html')) headers['content-security-policy'] = HTML_CSP;
  if (status === 404) {
    const body = request.method === 'HEAD' ? null : await site.open(variant);
    if (request.method !== 'HEAD' && body === null) return GONE;
    reply.code(404).headers(headers).type(entry.type).header('content-length', String(variant.size));
    return body === null ? reply.send() : reply.send(body);
  }
  return sendObject(request, reply, {
    etag: variant.md5,
    lastModified: new Date(entry.modified_at),
    size: variant.size,
    contentType: entry.type,
    headers,
    open: (range) => site.open(variant, range),
  });
}
