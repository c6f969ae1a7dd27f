import { createServer, STATUS_CODES, type Server, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { FastifyServerFactory } from 'fastify';
import type { HttpSettings } from '../config.ts';
import { DatabankError, type ErrorCode } from '../domain/errors.ts';
import { errorBody } from './error-handler.ts';

/**
 * The connection layer under Fastify: timeouts, the connection limit, and Node's own answers to
 * requests that never reach Fastify, in the catalog's shape.
 *
 * - Headers: Node's `headersTimeout` (DATABANK_HEADER_TIMEOUT_MS) → 408, counted as `header`.
 * - Whole request: Node's `requestTimeout` (DATABANK_REQUEST_TIMEOUT_MS), the time to receive the
 *   headers and the whole body → 408, counted as `request`. Once the body is in, the handler may
 *   take as long as it needs.
 * - Body idle: the socket's idle timeout (DATABANK_BODY_TIMEOUT_MS). When it fires, the socket is
 *   cut only if its request's body is still incomplete and the server is reading it, that is the
 *   client stopped sending → 408, counted as `body`. A request whose body is all in (its handler
 *   still working, its answer still being sent however slowly) is left alone; so is one the
 *   server has stopped reading (backpressure from the file store), which is checked again later.
 *   A connection still waiting for its first request's headers is the header timeout's; one idle
 *   after an answer is in its keep-alive time (Node gives it its own idle timeout then): closed,
 *   as Node does, and not counted.
 * - Keep-alive: `keepAliveTimeout` and `maxRequestsPerSocket`; connections: `maxConnections`,
 *   beyond which Node closes new connections at once (counted as dropped).
 *
 * A 408 goes out only when nothing of the answer has been sent yet; the connection is closed.
 */

/** Which limit cut a client. */
export type ClientTimeoutKind = 'header' | 'body' | 'request';

/** What the connection layer reports to the metrics. */
export interface ConnectionEvents {
  timedOut(kind: ClientTimeoutKind): void;
  dropped(): void;
}

/** Node's client error codes → the catalog. */
const NODE_CODES: Readonly<Record<string, ErrorCode>> = {
  ERR_HTTP_REQUEST_TIMEOUT: 'DATABANK_ERR_REQUEST_TIMEOUT',
  HPE_HEADER_OVERFLOW: 'DATABANK_ERR_HEADERS_TOO_LARGE',
  HPE_CHUNK_EXTENSIONS_OVERFLOW: 'DATABANK_ERR_PAYLOAD_TOO_LARGE',
};

/** The Fastify options that install the connection layer: a server factory and its client errors. */
export function connectionOptions(
  settings: HttpSettings | undefined,
  events: ConnectionEvents,
): { serverFactory: FastifyServerFactory; clientErrorHandler: () => void } {
  /** The answer in flight on each socket, from its request's headers until it is all sent. */
  const inFlight = new WeakMap<Socket, ServerResponse>();
  /** Sockets that have had an answer: without one in flight, they are between requests. */
  const answered = new WeakSet<Socket>();

  const onClientError = (err: Error & { code?: string }, socket: Socket) => {
    if (err.code === 'ECONNRESET' || socket.destroyed) return;
    const response = inFlight.get(socket);
    const known = err.code === undefined ? undefined : NODE_CODES[err.code];
    let answer: DatabankError;
    if (known === 'DATABANK_ERR_REQUEST_TIMEOUT') {
      // Before the headers are in, it is the header timeout (the shorter one) that expired.
      const kind = response ? 'request' : 'header';
      events.timedOut(kind);
      answer = new DatabankError(known, settings ? timeoutMessage(kind, settings) : undefined);
    } else if (known) {
      answer = new DatabankError(known);
    } else {
      // Anything else Node's parser refuses is a malformed request, or body once the headers are in.
      answer = response
        ? new DatabankError('DATABANK_ERR_MALFORMED_BODY', 'the request body is not valid HTTP/1.1 (its chunked encoding)')
        : new DatabankError('DATABANK_ERR_VALIDATION', 'the request is not valid HTTP/1.1');
    }
    answerAndClose(socket, response, answer);
  };

  const onTimeout = (limits: HttpSettings) => (socket: Socket) => {
    const response = inFlight.get(socket);
    if (!response) {
      // Idle past the keep-alive timeout: what Node does when nobody listens for the timeout.
      // Before the first request, the header timeout decides.
      if (answered.has(socket)) socket.destroy();
      return;
    }
    // The body is in: the handler is working, or the answer is on its way.
    if (response.req.complete) return;
    if (socket.isPaused()) {
      // The server is not reading (the store is slow): not the client's doing. Look again later.
      socket.setTimeout(limits.bodyTimeoutMs);
      return;
    }
    events.timedOut('body');
    answerAndClose(socket, response, new DatabankError('DATABANK_ERR_REQUEST_TIMEOUT', timeoutMessage('body', limits)));
  };

  const serverFactory: FastifyServerFactory = (handler) => {
    const server: Server = createServer(
      settings
        ? {
            headersTimeout: settings.headerTimeoutMs,
            requestTimeout: settings.requestTimeoutMs,
            keepAliveTimeout: settings.keepAliveTimeoutMs,
            // How often Node looks for expired headers and requests: a quarter of the shorter limit.
            connectionsCheckingInterval: Math.max(10, Math.min(1000, Math.floor(Math.min(settings.headerTimeoutMs, settings.requestTimeoutMs) / 4))),
          }
        : {},
      handler,
    );
    server.prependListener('request', (request, response) => {
      const socket = request.socket;
      inFlight.set(socket, response);
      response.once('finish', () => {
        answered.add(socket);
        if (inFlight.get(socket) === response) inFlight.delete(socket);
      });
    });
    // Fastify adds its own client error listener to its first server only (a `localhost` listen
    // makes more): this one answers on every server, and Fastify's is a no-op.
    server.on('clientError', onClientError);
    server.on('drop', () => events.dropped());
    if (settings) {
      server.maxRequestsPerSocket = settings.maxRequestsPerSocket;
      server.maxConnections = settings.maxConnections;
      server.setTimeout(settings.bodyTimeoutMs, onTimeout(settings));
    }
    return server;
  };
  return { serverFactory, clientErrorHandler: () => undefined };
}

/** What a 408 says: which limit, and how long it is. */
function timeoutMessage(kind: ClientTimeoutKind, settings: HttpSettings): string {
  switch (kind) {
    case 'header':
      return `the request headers did not arrive within ${settings.headerTimeoutMs} ms`;
    case 'body':
      return `no part of the request body arrived for ${settings.bodyTimeoutMs} ms`;
    case 'request':
      return `the whole request did not arrive within ${settings.requestTimeoutMs} ms`;
  }
}

/** Writes the catalog answer on the socket when nothing was sent on it yet, then closes it. */
function answerAndClose(socket: Socket, response: ServerResponse | undefined, err: DatabankError): void {
  if (socket.writable && !response?.headersSent) {
    const body = JSON.stringify(errorBody(err));
    socket.write(
      `HTTP/1.1 ${err.statusCode} ${STATUS_CODES[err.statusCode] ?? ''}\r\n` +
        'content-type: application/json; charset=utf-8\r\n' +
        `content-length: ${Buffer.byteLength(body)}\r\n` +
        'cache-control: no-store\r\n' +
        'x-content-type-options: nosniff\r\n' +
        'connection: close\r\n\r\n' +
        body,
    );
  }
  socket.destroy();
}
