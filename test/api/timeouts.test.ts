import { createHash } from 'node:crypto';
import { once } from 'node:events';
import type { AddressInfo, Socket } from 'node:net';
import { connect } from 'node:net';
import { setTimeout as delay } from 'node:timers/promises';
import Fastify from 'fastify';
import type { KyselyPlugin } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { HttpSettings } from '../../src/config.ts';
import { connectionOptions, type ClientTimeoutKind } from '../../src/http/client-errors.ts';
import type { Db } from '../../src/stores/sql/port.ts';
import { startTestApp, type TestApp } from '../support/app.ts';
import { ENGINES } from '../support/engines.ts';

/**
 * Slow and broken clients over real sockets: a body that stalls is cut after the body timeout
 * with a 408 in the catalog's shape and counted; a slow but steady upload, a slow handler and a
 * slow download are not cut; headers that do not arrive in time answer 408, headers too large
 * 431, a request that is not HTTP 400; the whole-request timeout and the connection limit hold.
 *
 * Nothing here waits for time to pass in place of an event: the client paces its own chunks, and
 * where the test needs the server's idle timeout to have fired it waits for the server's
 * `timeout` event on that very connection.
 */

// Long enough that a process starved by a loaded machine (a second suite beside this one, at a load
// of 10 on 2 cores) still reads a request's headers, sent in one write, within the header timeout:
// 1 s was missed there once.
const SETTINGS: HttpSettings = {
  headerTimeoutMs: 3000,
  bodyTimeoutMs: 1500,
  requestTimeoutMs: 60_000,
  keepAliveTimeoutMs: 5_000,
  maxRequestsPerSocket: 1000,
  maxConnections: 1000,
};
/** The client's pause between two chunks of a steady upload: a fifth of the body timeout. */
const STEADY_MS = 300;

interface Answer {
  readonly status: number;
  readonly headers: Readonly<Record<string, string>>;
  readonly body: string;
}

/** Parses a whole HTTP/1.1 answer with a Content-Length body (what the raw requests here get). */
function parse(all: Buffer): Answer {
  const split = all.indexOf('\r\n\r\n');
  if (split < 0) throw new Error(`no HTTP answer in ${JSON.stringify(all.toString('latin1').slice(0, 200))}`);
  const head = all.subarray(0, split).toString('latin1').split('\r\n');
  const headers: Record<string, string> = {};
  for (const line of head.slice(1)) {
    const colon = line.indexOf(':');
    headers[line.slice(0, colon).toLowerCase()] = line.slice(colon + 1).trim();
  }
  return { status: Number(/^HTTP\/1\.1 (\d{3})/.exec(head[0] ?? '')?.[1]), headers, body: all.subarray(split + 4).toString('utf8') };
}

/** A connection whose every byte received is kept until it closes (a reset is a close too). */
function open(port: number): { socket: Socket; received: Promise<Buffer> } {
  const socket = connect(port, '127.0.0.1');
  const chunks: Buffer[] = [];
  socket.on('data', (c: Buffer) => chunks.push(c));
  socket.on('error', () => undefined);
  // On 'close', whatever came before it: a client still writing when the server closes gets a
  // reset (ECONNRESET) after the answer it has already read, and that is not a failure here.
  const received = new Promise<Buffer>((resolve) => socket.on('close', () => resolve(Buffer.concat(chunks))));
  return { socket, received };
}

const requestHead = (method: string, path: string, headers: Record<string, string | number>) =>
  `${method} ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n${Object.entries(headers)
    .map(([k, v]) => `${k}: ${v}\r\n`)
    .join('')}\r\n`;

/** Resolves when the server's idle timeout fires on the server side of `client`. */
function serverTimeoutOf(t: { app: { http: { server: TestApp['app']['http']['server'] } } }, client: Socket): Promise<void> {
  return new Promise((resolve) => {
    const server = t.app.http.server;
    const listener = (socket: Socket) => {
      if (socket.remotePort !== client.localPort) return;
      server.off('timeout', listener);
      resolve();
    };
    server.on('timeout', listener);
  });
}

const catalog = (statusCode: number, code: string, message: string) => ({ statusCode, code, message });

for (const engine of ENGINES) {
  describe(`client timeouts and limits (${engine})`, () => {
    let t: TestApp;
    let port: number;
    /** While set, every query's result waits for it: a handler as slow as the test wants. */
    let hold: Promise<void> | null = null;
    const gate: KyselyPlugin = {
      transformQuery: (args) => args.node,
      transformResult: async (args) => {
        if (hold) await hold;
        return args.result;
      },
    };

    beforeAll(async () => {
      t = await startTestApp(engine, 'timeouts', { http: SETTINGS }, undefined, {
        wrapDb: (db: Db) => ({ reader: db.reader.withPlugin(gate), writer: db.writer.withPlugin(gate) }),
      });
      await t.app.http.listen({ host: '127.0.0.1', port: 0 });
      port = (t.app.http.server.address() as AddressInfo).port;
    });
    afterAll(async () => {
      await t?.close();
    });

    /** The client timeouts counted so far, by kind. */
    const timeouts = async () => {
      const text = (await t.app.http.inject({ method: 'GET', url: '/metrics', headers: t.admin })).body;
      const count = (kind: string) => Number(new RegExp(`^databank_http_client_timeouts_total\\{kind="${kind}"\\} (\\d+)$`, 'm').exec(text)?.[1]);
      return { header: count('header'), body: count('body'), request: count('request') };
    };
    const balance = async () =>
      (await t.app.http.inject({ method: 'GET', url: '/accounts/1', headers: t.admin })).json<{ balance: number }>().balance;
    const fileRows = async () => (await t.app.sql.db.selectFrom('files').select('id').execute()).length;

    it('every kind is on /metrics from the start', async () => {
      expect(await timeouts()).toEqual({ header: 0, body: 0, request: 0 });
    });

    it('a JSON body that stalls half-way after a valid key is cut with a 408, counted once, and moves nothing', async () => {
      const before = { counts: await timeouts(), balance: await balance() };
      const body = '{"amount":100}';
      const { socket, received } = open(port);
      socket.write(
        requestHead('POST', '/accounts/1/deposits', {
          authorization: t.admin.authorization,
          'content-type': 'application/json',
          'content-length': body.length,
        }) + body.slice(0, 7),
      );
      const answer = parse(await received);
      expect([answer.status, JSON.parse(answer.body)]).toEqual([
        408,
        catalog(408, 'DATABANK_ERR_REQUEST_TIMEOUT', `no part of the request body arrived for ${SETTINGS.bodyTimeoutMs} ms`),
      ]);
      expect(answer.headers['content-type']).toBe('application/json; charset=utf-8');
      expect(answer.headers.connection).toBe('close');
      expect(await timeouts()).toEqual({ ...before.counts, body: before.counts.body + 1 });
      expect(await balance()).toBe(before.balance);
    });

    it('an upload that stalls is cut the same way, and stores nothing', async () => {
      const before = { counts: await timeouts(), rows: await fileRows() };
      const { socket, received } = open(port);
      socket.write(
        requestHead('POST', '/customers/1/files?filename=stalled.txt', {
          authorization: t.admin.authorization,
          'content-type': 'application/octet-stream',
          'content-length': 4096,
        }) + 'x'.repeat(1500),
      );
      const answer = parse(await received);
      expect([answer.status, JSON.parse(answer.body).code]).toEqual([408, 'DATABANK_ERR_REQUEST_TIMEOUT']);
      expect(await timeouts()).toEqual({ ...before.counts, body: before.counts.body + 1 });
      expect(await fileRows()).toBe(before.rows);
    });

    it('a slow but steady upload, much longer than the body timeout, is stored whole', async () => {
      const before = await timeouts();
      const chunks = Array.from({ length: 15 }, (_, i) => `line ${String(i).padStart(2, '0')} of a slow upload\n`);
      const content = chunks.join('');
      const { socket, received } = open(port);
      socket.write(
        requestHead('POST', '/customers/1/files?filename=steady.txt', {
          authorization: t.admin.authorization,
          'content-type': 'application/octet-stream',
          'content-length': Buffer.byteLength(content),
        }),
      );
      const started = Date.now();
      for (const chunk of chunks) {
        await delay(STEADY_MS);
        socket.write(chunk);
      }
      // The upload did outlast the body timeout several times over (a fact about the client, not the server).
      expect(Date.now() - started).toBeGreaterThan(2 * SETTINGS.bodyTimeoutMs);
      const answer = parse(await received);
      expect(answer.status, answer.body).toBe(201);
      const file = JSON.parse(answer.body) as { file_id: number; size: number; sha256: string };
      expect(file.size).toBe(Buffer.byteLength(content));
      expect(file.sha256).toBe(createHash('sha256').update(content).digest('hex'));
      expect(await timeouts()).toEqual(before);
    });

    it('a handler still working after the body is in is not cut when the connection goes idle', async () => {
      const before = { counts: await timeouts(), balance: await balance() };
      let release = () => undefined as void;
      hold = new Promise<void>((resolve) => {
        release = resolve;
      });
      const body = '{"amount":7}';
      const { socket, received } = open(port);
      const idle = serverTimeoutOf(t, socket);
      socket.write(
        requestHead('POST', '/accounts/1/deposits', {
          authorization: t.admin.authorization,
          'content-type': 'application/json',
          'content-length': body.length,
        }) + body,
      );
      try {
        // The request is in, the handler waits on the database, nothing moves on the connection:
        // the server's idle timeout fires, and must leave the connection alone.
        await idle;
      } finally {
        hold = null;
        release();
      }
      const answer = parse(await received);
      expect(answer.status, answer.body).toBe(201);
      expect(await timeouts()).toEqual(before.counts);
      expect(await balance()).toBe(before.balance + 7);
    });

    it('a download the client reads slowly is not cut', async () => {
      // Larger than what the kernel buffers of both ends hold, so that the server must wait.
      const bytes = Buffer.alloc(20 * 1024 * 1024, 'slow download\n');
      const created = await t.app.http.inject({
        method: 'POST',
        url: '/customers/1/files?filename=big.txt',
        headers: { ...t.admin, 'content-type': 'application/octet-stream' },
        payload: bytes,
      });
      expect(created.statusCode, created.body).toBe(201);
      const before = await timeouts();
      const { socket, received } = open(port);
      const idle = serverTimeoutOf(t, socket);
      socket.pause();
      socket.write(requestHead('GET', `/files/${created.json<{ file_id: number }>().file_id}/content`, { authorization: t.admin.authorization }));
      // The client reads nothing until the server has sat idle past the body timeout.
      await idle;
      socket.resume();
      const answer = await received;
      const split = answer.indexOf('\r\n\r\n');
      expect(parse(answer.subarray(0, split + 4)).status).toBe(200);
      expect(answer.length - split - 4).toBe(bytes.length);
      expect(answer.subarray(split + 4).equals(bytes)).toBe(true);
      expect(await timeouts()).toEqual(before);
    });

    it('headers that do not arrive in time answer 408 in the catalog shape, counted as header', async () => {
      const before = await timeouts();
      const { socket, received } = open(port);
      socket.write('GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n');
      const answer = parse(await received);
      expect([answer.status, JSON.parse(answer.body)]).toEqual([
        408,
        catalog(408, 'DATABANK_ERR_REQUEST_TIMEOUT', `the request headers did not arrive within ${SETTINGS.headerTimeoutMs} ms`),
      ]);
      expect(await timeouts()).toEqual({ ...before, header: before.header + 1 });
    });

    it("Node's own refusals use the catalog: headers too large 431, a request that is not HTTP 400", async () => {
      const before = await timeouts();
      const cases: Array<[string, number, string, string]> = [
        [
          requestHead('GET', '/healthz', { 'x-large': 'a'.repeat(20 * 1024) }),
          431,
          'DATABANK_ERR_HEADERS_TOO_LARGE',
          'The request headers are too large',
        ],
        ['NOT HTTP AT ALL\r\n\r\n', 400, 'DATABANK_ERR_VALIDATION', 'the request is not valid HTTP/1.1'],
        [
          requestHead('POST', '/accounts/1/deposits', {
            authorization: t.admin.authorization,
            'content-type': 'application/json',
            'transfer-encoding': 'chunked',
          }) + 'zz\r\n{"amount":1}\r\n0\r\n\r\n',
          400,
          'DATABANK_ERR_MALFORMED_BODY',
          'the request body is not valid HTTP/1.1 (its chunked encoding)',
        ],
      ];
      for (const [request, status, code, message] of cases) {
        const { socket, received } = open(port);
        socket.write(request);
        const answer = parse(await received);
        expect([code, answer.status, JSON.parse(answer.body)]).toEqual([code, status, catalog(status, code, message)]);
      }
      expect(await timeouts()).toEqual(before);
    });
  });

  describe(`the whole-request timeout and the connection limit (${engine})`, () => {
    const settings: HttpSettings = { ...SETTINGS, headerTimeoutMs: 1000, requestTimeoutMs: 1000, maxConnections: 1 };
    let t: TestApp;
    let port: number;
    beforeAll(async () => {
      t = await startTestApp(engine, 'timeouts-limits', { http: settings });
      await t.app.http.listen({ host: '127.0.0.1', port: 0 });
      port = (t.app.http.server.address() as AddressInfo).port;
    });
    afterAll(async () => {
      await t?.close();
    });

    const metric = async (line: string) => {
      const text = (await t.app.http.inject({ method: 'GET', url: '/metrics', headers: t.admin })).body;
      const escaped = line.replace(/[{}"]/g, (c) => `\\${c}`);
      return Number(new RegExp(`^${escaped} (\\d+)$`, 'm').exec(text)?.[1]);
    };

    it('a steady upload that takes longer than the whole-request timeout is cut with a 408, counted as request', async () => {
      const before = { request: await metric('databank_http_client_timeouts_total{kind="request"}'), body: await metric('databank_http_client_timeouts_total{kind="body"}') };
      const { socket, received } = open(port);
      socket.write(
        requestHead('POST', '/customers/1/files?filename=endless.txt', {
          authorization: t.admin.authorization,
          'content-type': 'application/octet-stream',
          'content-length': 1_000_000,
        }),
      );
      let closed = false;
      void received.then(() => {
        closed = true;
      });
      let answered = false;
      socket.once('data', () => {
        answered = true;
      });
      // Steady chunks, each well within the body timeout, until the server answers or closes.
      for (let i = 0; i < 600 && !closed && !answered; i++) {
        socket.write(`chunk ${i}\n`);
        await delay(STEADY_MS);
      }
      const answer = parse(await received);
      expect([answer.status, JSON.parse(answer.body)]).toEqual([
        408,
        catalog(408, 'DATABANK_ERR_REQUEST_TIMEOUT', `the whole request did not arrive within ${settings.requestTimeoutMs} ms`),
      ]);
      expect(await metric('databank_http_client_timeouts_total{kind="request"}')).toBe(before.request + 1);
      expect(await metric('databank_http_client_timeouts_total{kind="body"}')).toBe(before.body);
    });

    it('a connection over the limit is closed on arrival, and counted', async () => {
      const before = await metric('databank_http_connections_dropped_total');
      // The first connection is served (so the server holds it) and kept alive.
      const first = connect(port, '127.0.0.1');
      first.on('error', () => undefined);
      first.write('GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n');
      const [reply] = (await once(first, 'data')) as [Buffer];
      expect(reply.toString('latin1')).toMatch(/^HTTP\/1\.1 200 /);
      const second = open(port);
      second.socket.write('GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n');
      expect((await second.received).length).toBe(0);
      expect(await metric('databank_http_connections_dropped_total')).toBe(before + 1);
      first.destroy();
    });
  });
}

describe('the connection layer alone', () => {
  /** A bare Fastify on the connection layer, with the kinds it counted. */
  const bare = async (settings: HttpSettings) => {
    const counted: ClientTimeoutKind[] = [];
    const app = Fastify({ ...connectionOptions(settings, { timedOut: (kind) => counted.push(kind), dropped: () => undefined }) });
    app.get('/', async () => ({ ok: true }));
    await app.listen({ host: '127.0.0.1', port: 0 });
    return { app, counted, port: (app.server.address() as AddressInfo).port };
  };

  it('headers slower than the body timeout but within the header timeout are the header timeout\'s to cut', async () => {
    const { app, counted, port } = await bare({ ...SETTINGS, headerTimeoutMs: 900, bodyTimeoutMs: 200 });
    try {
      const { socket, received } = open(port);
      const idle = serverTimeoutOf({ app: { http: app } }, socket);
      socket.write('GET / HTTP/1.1\r\n');
      // The idle timeout fires first and leaves the connection to the header timeout.
      await Promise.race([idle, received]);
      const answer = parse(await received);
      expect([answer.status, JSON.parse(answer.body).message]).toEqual([408, 'the request headers did not arrive within 900 ms']);
      expect(counted).toEqual(['header']);
    } finally {
      await app.close();
    }
  });

  it('a kept-alive connection idle past the keep-alive timeout is closed without an answer, and not counted', async () => {
    const { app, counted, port } = await bare({ ...SETTINGS, keepAliveTimeoutMs: 200 });
    try {
      const socket = connect(port, '127.0.0.1');
      socket.on('error', () => undefined);
      const chunks: Buffer[] = [];
      socket.on('data', (c: Buffer) => chunks.push(c));
      socket.write('GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n');
      await once(socket, 'close');
      const all = Buffer.concat(chunks).toString('latin1');
      expect(all).toMatch(/^HTTP\/1\.1 200 /);
      expect(all.match(/HTTP\/1\.1/g)).toHaveLength(1);
      expect(counted).toEqual([]);
    } finally {
      await app.close();
    }
  });

  it('does not cut a body the server has stopped reading (backpressure), and reads it whole later', async () => {
    const counted: ClientTimeoutKind[] = [];
    const app = Fastify({ ...connectionOptions(SETTINGS, { timedOut: (kind) => counted.push(kind), dropped: () => undefined }) });
    let release = () => undefined as void;
    const released = new Promise<void>((resolve) => {
      release = resolve;
    });
    app.addContentTypeParser('application/octet-stream', (_request, payload, done) => done(null, payload));
    // A handler that reads its body only when the test says so, as an upload to a slow store does.
    app.post('/later', async (request) => {
      await released;
      let bytes = 0;
      for await (const chunk of request.body as AsyncIterable<Buffer>) bytes += chunk.length;
      return { bytes };
    });
    await app.listen({ host: '127.0.0.1', port: 0 });
    try {
      const port = (app.server.address() as AddressInfo).port;
      const body = Buffer.alloc(8 * 1024 * 1024, 'b');
      const { socket, received } = open(port);
      // The server's idle timeout fires while it is not reading; it looks again one body timeout later.
      const idle = serverTimeoutOf({ app: { http: app } }, socket);
      socket.write(requestHead('POST', '/later', { 'content-type': 'application/octet-stream', 'content-length': body.length }));
      socket.write(body);
      // (Were the connection cut instead, its answer would end the wait and fail the test.)
      await Promise.race([idle, received]);
      await Promise.race([serverTimeoutOf({ app: { http: app } }, socket), received]);
      release();
      const answer = parse(await received);
      expect([answer.status, JSON.parse(answer.body)]).toEqual([200, { bytes: body.length }]);
      expect(counted).toEqual([]);
    } finally {
      release();
      await app.close();
    }
  });
});
