import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Refusals } from '../support/attack-checks.ts';
import { Bank, expectOk, json, RawConnection, startAttackServer, type Answer, type AttackServer, type RawAnswer } from '../support/attack-server.ts';
import { ENGINES } from '../support/engines.ts';
import { waitFor } from '../support/processes.ts';

/**
 * Abuse of a real `databank serve`: key guessing and floods (rate limits), revoked and expired
 * keys, and slow clients (bodies that stall or trickle, headers that never end). The server is
 * configured by its environment with small limits. Guessing comes from its own client address
 * (127.0.0.2; Linux routes all of 127/8 to the loopback), so its budget is not shared with the
 * other tests' requests from 127.0.0.1.
 */

const AUTH_FAILURES = 20;
const PER_KEY = 60;
const BODY_TIMEOUT_MS = 500;
const HEADER_TIMEOUT_MS = 2_000;
const REQUEST_TIMEOUT_MS = 4_000;
/** Every bound on a timeout allows this much for a loaded two-core machine. */
const SLACK_MS = 10_000;

const GUESSER = '127.0.0.2';
const FLOODER = '127.0.0.3';

const UNAUTHORIZED = { statusCode: 401, code: 'DATABANK_ERR_UNAUTHORIZED', message: 'A valid API key is required' };
const RATE_LIMITED = { statusCode: 429, code: 'DATABANK_ERR_RATE_LIMITED', message: 'Too many requests; retry after the time in Retry-After' };
const TIMEOUT_CODE = 'DATABANK_ERR_REQUEST_TIMEOUT';

/** A whole number of seconds within a one-minute window. */
const seconds = (value: string | string[] | undefined) => {
  expect(typeof value).toBe('string');
  const n = Number(value);
  expect(Number.isInteger(n) && n >= 0 && n <= 60, `"${String(value)}" is a number of seconds within the window`).toBe(true);
  return n;
};

describe.each(ENGINES)('abuse of databank serve (%s)', (engine) => {
  let server: AttackServer;
  let bank: Bank;

  beforeAll(async () => {
    server = await startAttackServer(engine, 'abuse', {
      DATABANK_AUTH_FAILURE_LIMIT_PER_MINUTE: String(AUTH_FAILURES),
      DATABANK_RATE_LIMIT_PER_MINUTE: String(PER_KEY),
      DATABANK_BODY_TIMEOUT_MS: String(BODY_TIMEOUT_MS),
      DATABANK_HEADER_TIMEOUT_MS: String(HEADER_TIMEOUT_MS),
      DATABANK_REQUEST_TIMEOUT_MS: String(REQUEST_TIMEOUT_MS),
    });
    bank = new Bank(server);
  });

  afterAll(async () => {
    if (server) expect(await server.close()).toBe(0);
  });

  describe('revocation and expiry', () => {
    it('a used customer key revoked through DELETE /api-keys/:id is refused with 401 on its very next request', async () => {
      const id = await bank.customer('Rex Revoked');
      const made = await bank.key(id);
      const asR = bank.as(made.key);
      for (let i = 0; i < 3; i++) expect((await asR.get(`/customers/${id}`)).status).toBe(200);
      const revoked = await bank.admin.call('DELETE', `/api-keys/${made.id}`);
      expect([revoked.status, revoked.text]).toEqual([204, '']);
      const next = await asR.get(`/customers/${id}`);
      expect([next.status, json(next), next.headers['www-authenticate']]).toEqual([401, UNAUTHORIZED, 'Bearer realm="databank"']);
      const transfer = await asR.post('/transfers', { from_account_id: 1, to_account_id: 2, amount: 1 });
      expect([transfer.status, json(transfer)]).toEqual([401, UNAUTHORIZED]);
      // Revoking again is fine; a revoked key cannot be rotated back to life; the list says when.
      expect((await bank.admin.call('DELETE', `/api-keys/${made.id}`)).status).toBe(204);
      expect((await bank.admin.call('POST', `/api-keys/${made.id}/rotate`)).status).toBe(404);
      const listed = (await bank.all<{ id: number; revoked_at: string | null }>('/api-keys')).find((k) => k.id === made.id);
      expect(listed?.revoked_at).toEqual(expect.any(String));
      expect((await asR.get(`/customers/${id}`)).status).toBe(401);
    });

    it('a rotated key is refused on its very next request; the new one works', async () => {
      const id = await bank.customer('Rosa Rotated');
      const old = await bank.key(id);
      expect((await bank.as(old.key).get(`/customers/${id}`)).status).toBe(200);
      const fresh = expectOk<{ key: string; id: number }>(await bank.admin.call('POST', `/api-keys/${old.id}/rotate`), 201);
      expect(json(await bank.as(old.key).get(`/customers/${id}`))).toEqual(UNAUTHORIZED);
      expect((await bank.as(fresh.key).get(`/customers/${id}`)).status).toBe(200);
    });

    it('a key whose expires_at has passed is refused', async () => {
      const id = await bank.customer('Emil Expiring');
      const expiresAt = new Date(Date.now() + 3_000).toISOString();
      const made = expectOk<{ key: string; expires_at: string }>(
        await bank.admin.post('/api-keys', { role: 'customer', customer_id: id, expires_at: expiresAt }),
        201,
      );
      expect(made.expires_at).toBe(expiresAt);
      const asE = bank.as(made.key);
      expect((await asE.get(`/customers/${id}`)).status).toBe(200);
      // The wait is for the clock (the server's is the same machine's), not a fixed sleep.
      await waitFor('the key has expired by the clock', () => Date.now() > Date.parse(expiresAt), { timeoutMs: 30_000, everyMs: 25 });
      const after = await asE.get(`/customers/${id}`);
      expect([after.status, json(after)]).toEqual([401, UNAUTHORIZED]);
      // Expiry dates that are past, impossible or not timestamps are refused when a key is made.
      const checks = new Refusals();
      for (const bad of [new Date(Date.now() - 1_000).toISOString(), '2027-02-30T00:00:00Z', 'tomorrow', '2999-01-01', '2999-01-01T00:00:00', 1_900_000_000_000]) {
        checks.expect(await bank.admin.post('/api-keys', { role: 'customer', customer_id: id, expires_at: bad }), 400, 'DATABANK_ERR_VALIDATION', String(bad));
      }
      expect(checks.wrong).toEqual([]);
    });
  });

  describe('slow clients', () => {
    it('a body that stalls half-way is cut (408 or closed) within the body timeout; other clients are served meanwhile', async () => {
      const id = await bank.customer('Sam Slow');
      const key = (await bank.key(id)).key;
      const account = await bank.account(id);
      await bank.deposit(account, 1_000);
      const body = JSON.stringify({ from_account_id: account, to_account_id: 1, amount: 1 }).padEnd(120, ' ');
      const head = (path: string, length: number, type = 'application/json') =>
        `POST ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${key}\r\nContent-Type: ${type}\r\nContent-Length: ${length}\r\n\r\n`;

      // A JSON body and an upload, each stalled after half of its Content-Length.
      const stalled = await RawConnection.open(server.port);
      await stalled.write(head('/transfers', body.length) + body.slice(0, body.length / 2));
      const stalledAt = Date.now();
      const upload = await RawConnection.open(server.port);
      await upload.write(head(`/customers/${id}/files?filename=stalled.txt`, 2_000, 'text/plain') + 'x'.repeat(1_000));
      const uploadAt = Date.now();
      // A body that keeps trickling (a byte every 100 ms, well inside the idle timeout): only the
      // whole-request timeout may cut it, and it stays open while the other clients are served.
      const trickle = await RawConnection.open(server.port);
      await trickle.write(head('/transfers', 10_000));
      const trickleAt = Date.now();
      const dripper = setInterval(() => {
        if (!trickle.isClosed()) trickle.socket.write(' ');
      }, 100);
      try {
        const asS = bank.as(key);
        const answers: Answer[] = [
          await bank.as(null).get('/healthz'),
          await asS.get(`/customers/${id}`),
          await asS.post('/transfers', { from_account_id: account, to_account_id: 1, amount: 1 }),
        ];
        expect(answers.map((a) => a.status)).toEqual([200, 200, 201]);
        expect(trickle.isClosed(), 'the trickling client is still connected while the others are served').toBe(false);

        const cut = async (conn: RawConnection, since: number, limit: number, what: string) => {
          const answer: RawAnswer = await conn.answer(limit + SLACK_MS);
          const elapsed = Date.now() - since;
          expect(answer.closed, `${what}: the server closed the connection`).toBe(true);
          expect(elapsed, `${what}: cut within ${limit} ms + ${SLACK_MS} ms`).toBeLessThan(limit + SLACK_MS);
          if (answer.raw.length > 0) {
            expect(answer.status, `${what}: ${answer.raw.toString()}`).toBe(408);
            expect(JSON.parse(answer.body.toString())).toMatchObject({ statusCode: 408, code: TIMEOUT_CODE });
            expect(answer.headers).toContainEqual(['connection', 'close']);
          }
        };
        await cut(stalled, stalledAt, BODY_TIMEOUT_MS, 'stalled JSON body');
        await cut(upload, uploadAt, BODY_TIMEOUT_MS, 'stalled upload');
        await cut(trickle, trickleAt, REQUEST_TIMEOUT_MS, 'trickling body');
      } finally {
        clearInterval(dripper);
        for (const conn of [stalled, upload, trickle]) conn.destroy();
      }
      // Nothing of the cut requests happened: one transfer (the served one) and no file.
      expect(await bank.balance(account)).toBe(999);
      expect(json<{ result: unknown[] }>(await bank.admin.get(`/customers/${id}/files`)).result).toEqual([]);
      expect((await bank.as(null).get('/healthz')).status).toBe(200);
    });

    it('headers that never end are cut (408 or closed) within the header timeout', async () => {
      const conn = await RawConnection.open(server.port);
      await conn.write('GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n');
      const since = Date.now();
      const dripper = setInterval(() => {
        if (!conn.isClosed()) conn.socket.write('X-Slow: 1\r\n');
      }, 200);
      try {
        const answer = await conn.answer(HEADER_TIMEOUT_MS + SLACK_MS);
        expect(answer.closed).toBe(true);
        expect(Date.now() - since).toBeLessThan(HEADER_TIMEOUT_MS + SLACK_MS);
        if (answer.raw.length > 0) {
          expect(answer.status).toBe(408);
          expect(JSON.parse(answer.body.toString())).toMatchObject({ code: TIMEOUT_CODE });
        }
      } finally {
        clearInterval(dripper);
        conn.destroy();
      }
      expect((await bank.as(null).get('/healthz')).status).toBe(200);
    });
  });

  describe('rate limits', () => {
    it('100 requests with wrong keys from one address: 429 with Retry-After and RateLimit-* right after the budget; health, the site and valid keys still work there', async () => {
      const id = await bank.customer('Vera Valid');
      const valid = await bank.key(id);
      const uncached = await bank.key(id);
      // The valid key is used from the guessing address before the attack (it is then in the cache).
      expect((await bank.as(valid.key).get(`/customers/${id}`, { localAddress: GUESSER })).status).toBe(200);
      const [, adminPrefix] = /^dbk_([0-9a-f]{16})_/.exec(server.adminKey) ?? [];
      const wrong = [
        `Bearer dbk_${'0123456789abcdef'}_${'A'.repeat(43)}`,
        `Bearer dbk_${adminPrefix}_${'B'.repeat(43)}`,
        'Bearer not-a-key',
        'Basic YWRtaW46cGFzc3dvcmQ=',
        null,
      ];
      const answers: Answer[] = [];
      for (let i = 0; i < 100; i++) {
        const authorization = wrong[i % wrong.length];
        answers.push(
          await bank.as(null).get(i % 2 === 0 ? `/customers/${id}` : '/accounts/1', {
            localAddress: GUESSER,
            // Claimed client addresses change nothing: the server trusts no proxy header.
            headers: {
              ...(authorization ? { authorization } : {}),
              'x-forwarded-for': `10.0.${i}.1`,
              'x-real-ip': `10.1.${i}.1`,
              forwarded: `for=10.2.${i}.1`,
            },
          }),
        );
      }
      const statuses = answers.map((a) => a.status);
      expect(statuses).toEqual([...Array<number>(AUTH_FAILURES).fill(401), ...Array<number>(100 - AUTH_FAILURES).fill(429)]);
      answers.slice(0, AUTH_FAILURES).forEach((a, i) => {
        expect(json(a)).toEqual(UNAUTHORIZED);
        expect(a.headers['ratelimit-limit']).toBe(String(AUTH_FAILURES));
        expect(a.headers['ratelimit-remaining']).toBe(String(AUTH_FAILURES - 1 - i));
      });
      for (const a of answers.slice(AUTH_FAILURES)) {
        expect(json(a)).toEqual(RATE_LIMITED);
        expect(a.headers['ratelimit-limit']).toBe(String(AUTH_FAILURES));
        expect(a.headers['ratelimit-remaining']).toBe('0');
        const retry = seconds(a.headers['retry-after']);
        expect(retry).toBeGreaterThanOrEqual(1);
        seconds(a.headers['ratelimit-reset']);
      }

      // From the same address: the health checks and the public site, a key it used, the admin key.
      const fromGuesser = { localAddress: GUESSER };
      expect((await bank.as(null).get('/healthz', fromGuesser)).text).toBe('{"status":"ok"}');
      expect((await bank.as(null).get('/readyz', fromGuesser)).status).toBe(200);
      const site = await bank.as(null).get('/', fromGuesser);
      expect([site.status, site.headers['content-type']]).toEqual([200, 'text/html; charset=utf-8']);
      expect((await bank.as(null).get('/styles.css', fromGuesser)).status).toBe(200);
      const still = await bank.as(valid.key).get(`/customers/${id}`, fromGuesser);
      expect([still.status, json(still).id]).toEqual([200, id]);
      expect((await bank.admin.get('/customers/1', fromGuesser)).status).toBe(200);
      // By design (src/http/rate-limit.ts) a blocked address's keys are checked against the cache
      // only: a valid key never used anywhere is refused there until the window ends.
      const cold = await bank.as(uncached.key).get(`/customers/${id}`, fromGuesser);
      expect([cold.status, json(cold)]).toEqual([429, RATE_LIMITED]);
      // Another address is not blocked: its wrong key is a 401, and the other key works there.
      const other = await bank.as(null).get(`/customers/${id}`, { headers: { authorization: wrong[0] as string } });
      expect([other.status, json(other)]).toEqual([401, UNAUTHORIZED]);
      expect((await bank.as(uncached.key).get(`/customers/${id}`)).status).toBe(200);
    });

    it(`more than ${PER_KEY} requests a minute with one key: 429 with Retry-After; other keys are not affected`, async () => {
      const id = await bank.customer('Flo Flooder');
      const flood = bank.as((await bank.key(id)).key);
      const calm = bank.as((await bank.key(id)).key);
      const statuses: number[] = [];
      let first429: Answer | null = null;
      for (let i = 0; i < PER_KEY + 10; i++) {
        const res = await flood.get(`/customers/${id}`, { localAddress: FLOODER });
        statuses.push(res.status);
        first429 ??= res.status === 429 ? res : null;
      }
      expect(statuses).toEqual([...Array<number>(PER_KEY).fill(200), ...Array<number>(10).fill(429)]);
      expect(json(first429 as Answer)).toEqual(RATE_LIMITED);
      expect(first429?.headers['ratelimit-limit']).toBe(String(PER_KEY));
      expect(first429?.headers['ratelimit-remaining']).toBe('0');
      expect(seconds(first429?.headers['retry-after'])).toBeGreaterThanOrEqual(1);
      expect((await calm.get(`/customers/${id}`, { localAddress: FLOODER })).status).toBe(200);
      expect((await bank.as(null).get('/healthz', { localAddress: FLOODER })).status).toBe(200);
      expect(server.running()).toBe(true);
    });
  });
});
