import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { request as httpRequest, type IncomingHttpHeaders } from 'node:http';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { serve, type Served } from './cli.ts';
import { createTestDatabase, type EngineName, type TestDatabase } from './engines.ts';
import { REDIS_UP, REDIS_URL } from './redis.ts';

/**
 * The security suite's harness: a real `databank serve` process per engine, configured by its
 * environment only, and clients that speak HTTP over real sockets (node:http for well-formed
 * requests, raw `net` sockets for the malformed or slow ones). On PostgreSQL the server also gets
 * the Redis cache when REDIS_URL answers, so request limits and key revocation go through Redis.
 */

export interface AttackServer {
  readonly engine: EngineName;
  readonly base: string;
  readonly port: number;
  /** The admin key the first start wrote to `$DATABANK_DATA_DIR/admin-key`. */
  readonly adminKey: string;
  readonly dataDir: string;
  readonly served: Served;
  /** True when the server keeps its cache and request counters in Redis. */
  readonly redis: boolean;
  /** Whether the process is still running (a crash shows here). */
  running(): boolean;
  /** SIGTERM, then the database, the Redis keys and the data dir are removed. Resolves with the exit code. */
  close(): Promise<number | null>;
}

/**
 * Starts `databank serve` on `engine` with `env` added to what the engine needs (a data dir of its
 * own; on PostgreSQL a fresh database, migrated at start, and Redis when it answers).
 */
export async function startAttackServer(engine: EngineName, label: string, env: Record<string, string> = {}): Promise<AttackServer> {
  const dataDir = mkdtempSync(join(tmpdir(), `databank-security-${label}-`));
  let db: TestDatabase | null = null;
  const prefix = `sec-${label}-${engine}-${process.pid}`;
  const serverEnv: Record<string, string> = { DATABANK_DATA_DIR: dataDir, ...env };
  const redis = engine === 'postgres' && REDIS_UP;
  if (engine === 'postgres') {
    db = await createTestDatabase('postgres', `security-${label}`);
    serverEnv.DATABASE_URL = db.url as string;
    serverEnv.MIGRATE_ON_BOOT = 'true';
    if (redis) {
      serverEnv.REDIS_URL = REDIS_URL as string;
      serverEnv.DATABANK_CACHE_PREFIX = prefix;
      // The attacks count exact answers: on a loaded machine a Redis reply past the default 50 ms
      // would leave a request uncounted (served, by design), so give Redis time to answer.
      serverEnv.DATABANK_CACHE_TIMEOUT_MS = '2000';
    }
  }
  let served: Served;
  try {
    served = await serve(serverEnv);
  } catch (err) {
    await db?.drop();
    rmSync(dataDir, { recursive: true, force: true });
    throw err;
  }
  const base = served.base;
  const adminKey = readFileSync(join(dataDir, 'admin-key'), 'utf8').trim();
  let exited = false;
  served.child.once('exit', () => (exited = true));
  return {
    engine,
    base,
    port: Number(new URL(base).port),
    adminKey,
    dataDir,
    served,
    redis,
    running: () => !exited,
    async close() {
      let code: number | null = null;
      try {
        code = await served.stop();
      } finally {
        await db?.drop();
        if (redis) await deleteRedisKeys(`${prefix}*`);
        rmSync(dataDir, { recursive: true, force: true });
      }
      return code;
    },
  };
}

async function deleteRedisKeys(pattern: string): Promise<void> {
  const client = new Redis(REDIS_URL as string, { lazyConnect: true, maxRetriesPerRequest: 0 });
  client.on('error', () => undefined);
  try {
    await client.connect();
    let cursor = '0';
    do {
      const [next, keys] = await client.scan(cursor, 'MATCH', pattern, 'COUNT', 1000);
      if (keys.length > 0) await client.del(...keys);
      cursor = next;
    } while (cursor !== '0');
  } catch {
    // Counters and cache entries expire by themselves; removing them is only tidiness.
  } finally {
    client.disconnect();
  }
}

export interface Answer {
  readonly method: string;
  readonly path: string;
  readonly status: number;
  readonly headers: IncomingHttpHeaders;
  /** The header lines as sent, names lower-cased, in order (repeated headers stay repeated). */
  readonly rawHeaders: ReadonlyArray<readonly [string, string]>;
  readonly body: Buffer;
  readonly text: string;
}

export interface CallOptions {
  /** Sent as `Authorization: Bearer <key>`; null or absent: no Authorization header. */
  readonly key?: string | null;
  readonly headers?: Record<string, string>;
  /**
   * A string or Buffer is sent as is (as `application/json` unless `headers` names a type); an
   * object is sent as JSON.
   */
  readonly body?: string | Buffer | object;
  /** The client address the request comes from (any 127.x.y.z works on Linux). */
  readonly localAddress?: string;
  readonly timeoutMs?: number;
}

/** One request over a new connection, answered in full (status, raw headers, bytes). */
export function call(base: string, method: string, path: string, options: CallOptions = {}): Promise<Answer> {
  // The path goes out exactly as given: WHATWG URL parsing would resolve `%2e%2e` and `..` first.
  const url = new URL(base);
  if (!path.startsWith('/')) throw new Error(`a request path starts with /: ${path}`);
  const headers: Record<string, string> = {};
  let payload: Buffer | null = null;
  if (options.body !== undefined) {
    payload =
      typeof options.body === 'string'
        ? Buffer.from(options.body)
        : Buffer.isBuffer(options.body)
          ? options.body
          : Buffer.from(JSON.stringify(options.body));
    headers['content-type'] = 'application/json';
    headers['content-length'] = String(payload.length);
  }
  if (options.key) headers.authorization = `Bearer ${options.key}`;
  Object.assign(headers, options.headers ?? {});
  const timeoutMs = options.timeoutMs ?? 30_000;
  return new Promise<Answer>((resolve, reject) => {
    const req = httpRequest(
      {
        host: url.hostname,
        port: url.port,
        method,
        path,
        headers,
        agent: false,
        localAddress: options.localAddress,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', reject);
        res.on('end', () => {
          const body = Buffer.concat(chunks);
          const raw: Array<readonly [string, string]> = [];
          for (let i = 0; i < res.rawHeaders.length; i += 2) {
            raw.push([(res.rawHeaders[i] as string).toLowerCase(), res.rawHeaders[i + 1] as string]);
          }
          resolve({ method, path, status: res.statusCode ?? 0, headers: res.headers, rawHeaders: raw, body, text: body.toString('utf8') });
        });
      },
    );
    req.setTimeout(timeoutMs, () => req.destroy(new Error(`${method} ${path}: no answer within ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end(payload ?? undefined);
  });
}

/** The parsed JSON body of an answer; throws naming the request when it is not JSON. */
export function json<T = Record<string, unknown>>(answer: Answer): T {
  try {
    return JSON.parse(answer.text) as T;
  } catch {
    throw new Error(`${answer.method} ${answer.path} answered ${answer.status} with a body that is not JSON: ${answer.text.slice(0, 500)}`);
  }
}

/** Throws with the whole answer unless its status is `status`; returns the parsed body. */
export function expectOk<T = Record<string, unknown>>(answer: Answer, status: number): T {
  if (answer.status !== status) {
    throw new Error(`${answer.method} ${answer.path}: expected ${status}, got ${answer.status}: ${answer.text.slice(0, 500)}`);
  }
  return answer.text === '' ? (null as T) : json<T>(answer);
}

/** A client bound to one server and one key. */
export class Client {
  constructor(
    readonly base: string,
    readonly key: string | null,
  ) {}

  call(method: string, path: string, options: Omit<CallOptions, 'key'> = {}): Promise<Answer> {
    return call(this.base, method, path, { ...options, key: this.key });
  }

  get(path: string, options: Omit<CallOptions, 'key'> = {}): Promise<Answer> {
    return this.call('GET', path, options);
  }

  post(path: string, body: string | Buffer | object, options: Omit<CallOptions, 'key' | 'body'> = {}): Promise<Answer> {
    return this.call('POST', path, { ...options, body });
  }

  /** A GET expected to answer 200; its parsed body. */
  async read<T = Record<string, unknown>>(path: string): Promise<T> {
    return expectOk<T>(await this.get(path), 200);
  }
}

export interface Created {
  readonly key: string;
  readonly id: number;
}

/** Admin helpers used to set up an attack. */
export class Bank {
  readonly admin: Client;

  constructor(readonly server: AttackServer) {
    this.admin = new Client(server.base, server.adminKey);
  }

  as(key: string | null): Client {
    return new Client(this.server.base, key);
  }

  async customer(name: string, dateOfBirth = '1990-01-01'): Promise<number> {
    return expectOk<{ id: number }>(await this.admin.post('/customers', { name, date_of_birth: dateOfBirth }), 201).id;
  }

  /** A customer key (or an admin key with `customerId` null) through `POST /api-keys`. */
  async key(customerId: number | null, extra: Record<string, unknown> = {}): Promise<Created> {
    const body = customerId === null ? { role: 'admin', ...extra } : { role: 'customer', customer_id: customerId, ...extra };
    return expectOk<Created>(await this.admin.post('/api-keys', body), 201);
  }

  async account(customerId: number, currency = 'USD', type = 'checking'): Promise<number> {
    const res = await this.admin.post(`/customers/${customerId}/accounts`, { account_type: type, currency });
    return expectOk<{ account_id: number }>(res, 201).account_id;
  }

  async deposit(accountId: number, amount: number): Promise<void> {
    expectOk(await this.admin.post(`/accounts/${accountId}/deposits`, { amount }), 201);
  }

  async balance(accountId: number): Promise<number> {
    return (await this.admin.read<{ balance: number }>(`/accounts/${accountId}`)).balance;
  }

  /** The number of ledger entries of an account (all pages). */
  async entryCount(accountId: number): Promise<number> {
    let count = 0;
    let cursor: string | undefined;
    do {
      const page = await this.admin.read<{ result: unknown[]; next_cursor?: string }>(
        `/accounts/${accountId}/entries?limit=100${cursor ? `&cursor=${cursor}` : ''}`,
      );
      count += page.result.length;
      cursor = page.next_cursor;
    } while (cursor);
    return count;
  }

  /** Every item of a paged list, read as admin. */
  async all<T>(path: string): Promise<T[]> {
    const items: T[] = [];
    let cursor: string | undefined;
    const sep = path.includes('?') ? '&' : '?';
    do {
      const page = await this.admin.read<{ result: T[]; next_cursor?: string }>(`${path}${sep}limit=100${cursor ? `&cursor=${cursor}` : ''}`);
      items.push(...page.result);
      cursor = page.next_cursor;
    } while (cursor);
    return items;
  }
}

/** Headers whose value differs between any two answers: the clock, the request id, rate counters. */
const VOLATILE = new Set(['date', 'x-request-id', 'ratelimit-limit', 'ratelimit-remaining', 'ratelimit-reset']);

/**
 * What of an answer must be identical between "not yours" and "does not exist": the status, every
 * header but the volatile ones (in order), and the body with only a 500's `request_id` left out.
 */
export function comparable(answer: Answer): { status: number; headers: string[]; body: unknown } {
  let body: unknown = answer.text;
  try {
    const parsed = JSON.parse(answer.text) as unknown;
    if (parsed && typeof parsed === 'object' && !Array.isArray(parsed)) {
      const rest: Record<string, unknown> = { ...(parsed as Record<string, unknown>) };
      delete rest.request_id;
      body = rest;
    } else {
      body = parsed;
    }
  } catch {
    // not JSON: compared as text
  }
  return {
    status: answer.status,
    headers: answer.rawHeaders.filter(([name]) => !VOLATILE.has(name)).map(([name, value]) => `${name}: ${value}`),
    body,
  };
}

export interface RawAnswer {
  /** Everything the server sent before it closed the connection (or before the deadline). */
  readonly raw: Buffer;
  /** The status of the first answer, or null when nothing (or no status line) came. */
  readonly status: number | null;
  /** The first answer's header lines, names lower-cased. */
  readonly headers: ReadonlyArray<readonly [string, string]>;
  readonly body: Buffer;
  /** True when the server closed the connection; false when the deadline came first. */
  readonly closed: boolean;
}

/** Splits what a server sent into the first answer's status, headers and the rest. */
export function parseRaw(raw: Buffer, closed: boolean): RawAnswer {
  const end = raw.indexOf('\r\n\r\n');
  if (end < 0) return { raw, status: null, headers: [], body: Buffer.alloc(0), closed };
  const lines = raw.subarray(0, end).toString('latin1').split('\r\n');
  const status = /^HTTP\/1\.[01] (\d{3})/.exec(lines[0] ?? '');
  const headers = lines.slice(1).map((line): readonly [string, string] => {
    const i = line.indexOf(':');
    return [line.slice(0, i).trim().toLowerCase(), line.slice(i + 1).trim()];
  });
  return { raw, status: status ? Number(status[1]) : null, headers, body: raw.subarray(end + 4), closed };
}

/** A raw TCP connection to the server: what it received, and when the server closed it. */
export class RawConnection {
  readonly socket: Socket;
  private readonly chunks: Buffer[] = [];
  private closedFlag = false;
  /** Resolves when the connection is closed by either side (never rejects). */
  readonly closed: Promise<void>;

  private constructor(socket: Socket) {
    this.socket = socket;
    socket.on('data', (c: Buffer) => this.chunks.push(c));
    socket.on('error', () => undefined);
    this.closed = new Promise((resolve) =>
      socket.once('close', () => {
        this.closedFlag = true;
        resolve();
      }),
    );
  }

  static open(port: number, localAddress?: string): Promise<RawConnection> {
    return new Promise((resolve, reject) => {
      const socket = connect({ host: '127.0.0.1', port, localAddress });
      socket.once('connect', () => resolve(new RawConnection(socket)));
      socket.once('error', reject);
    });
  }

  isClosed(): boolean {
    return this.closedFlag;
  }

  write(data: string | Buffer): Promise<void> {
    return new Promise((resolve, reject) => this.socket.write(data, (err) => (err ? reject(err) : resolve())));
  }

  received(): Buffer {
    return Buffer.concat(this.chunks);
  }

  /** Waits until the server closes the connection (at most `timeoutMs`), then parses what it sent. */
  async answer(timeoutMs = 30_000): Promise<RawAnswer> {
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([this.closed, new Promise<void>((resolve) => (timer = setTimeout(resolve, timeoutMs)))]);
    clearTimeout(timer);
    const closed = this.closedFlag;
    if (!closed) this.socket.destroy();
    return parseRaw(this.received(), closed);
  }

  destroy(): void {
    this.socket.destroy();
  }
}

/** Sends `data` on a new connection and returns what came back once the server closed it (send `Connection: close`). */
export async function rawRequest(port: number, data: string | Buffer, options: { localAddress?: string; timeoutMs?: number } = {}): Promise<RawAnswer> {
  const conn = await RawConnection.open(port, options.localAddress);
  // No half-close: Node's server would drop an answer still being made. `Connection: close` in
  // the request (or the server's own refusal) closes the connection after the answer.
  // A server may answer and close before it has read everything (a body over a limit): what it
  // answered is what counts, so a write cut short is not an error here.
  await conn.write(data).catch(() => undefined);
  return conn.answer(options.timeoutMs);
}
