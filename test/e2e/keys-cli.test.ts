import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApp, type App } from '../../src/app.ts';
import { testConfig, testDataDir } from '../support/app.ts';
import { freePort, runCli, serve, type Served } from '../support/cli.ts';
import { createTestDatabase, ENGINES, type TestDatabase } from '../support/engines.ts';
import { cacheSettings, REDIS_UP, REDIS_URL } from '../support/redis.ts';

/**
 * `databank keys list|revoke|rotate`: through the running server when one answers (`--url`, or
 * HOST:PORT), on the database itself when none does; `keys create` as before. A key revoked or
 * rotated by the CLI is refused by the server on its very next request.
 */

const SLOW = { timeout: 180_000 } as const;

interface Created {
  key: string;
  id: number;
  role: string;
  customer_id: number | null;
  expires_at: string | null;
}

interface Listed {
  id: number;
  role: string;
  customer_id: number | null;
  revoked_at: string | null;
}

async function status(base: string, key: string, path = '/customers/2'): Promise<number> {
  return (await fetch(`${base}${path}`, { headers: { authorization: `Bearer ${key}` } })).status;
}

/** Runs `databank keys ARGS --json` and parses what it printed; fails with its stderr otherwise. */
async function keysJson<T>(args: readonly string[], env: Record<string, string>): Promise<T> {
  const r = await runCli(['keys', ...args, '--json'], env);
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout) as T;
}

describe('databank keys on the embedded engine', () => {
  const dir = testDataDir();
  let s: Served;
  /** Finds the server at HOST:PORT, as an operator's shell would. */
  let env: Record<string, string>;
  let adminKey: string;
  let customer: Created;

  beforeAll(async () => {
    s = await serve({ DATABANK_DATA_DIR: dir });
    env = { DATABANK_DATA_DIR: dir, PORT: new URL(s.base).port };
    adminKey = readFileSync(join(dir, 'admin-key'), 'utf8').trim();
    const res = await fetch(`${s.base}/api-keys`, {
      method: 'POST',
      headers: { authorization: `Bearer ${adminKey}`, 'content-type': 'application/json' },
      body: JSON.stringify({ role: 'customer', customer_id: 2 }),
    });
    expect(res.status).toBe(201);
    customer = (await res.json()) as Created;
  }, 120_000);
  afterAll(async () => {
    await s?.stop();
  });

  it('has --help for keys and each subcommand', SLOW, async () => {
    for (const sub of [[], ['list'], ['revoke'], ['rotate'], ['create']]) {
      const r = await runCli(['keys', ...sub, '--help'], env);
      expect([sub, r.code]).toEqual([sub, 0]);
      expect(r.stdout).toMatch(new RegExp(`^Usage: databank keys${sub.length ? ` ${sub[0]}` : ''}\\b`));
    }
    const help = (await runCli(['keys', 'rotate', '--help'], env)).stdout;
    for (const option of ['<id>', '--url', '--key-file', '--json']) expect(help).toContain(option);
  });

  it('lists the keys through the running server (found at HOST:PORT, or named with --url), without secrets', SLOW, async () => {
    const { result } = await keysJson<{ result: Listed[] }>(['list'], env);
    expect(result.map((k) => [k.id, k.role, k.customer_id, k.revoked_at])).toEqual([
      [1, 'admin', null, null],
      [customer.id, 'customer', 2, null],
    ]);
    // The secret is everything after the prefix; it may hold '_' itself (base64url).
    expect(JSON.stringify(result)).not.toContain(customer.key.split('_').slice(2).join('_'));
    const viaUrl = await keysJson<{ result: Listed[] }>(['list', '--url', s.base], { DATABANK_DATA_DIR: dir });
    expect(viaUrl.result.map((k) => k.id)).toEqual(result.map((k) => k.id));
    const text = await runCli(['keys', 'list'], env);
    expect(text.stdout).toMatch(/^id\s+role\s+customer\s+status\s+last used\s+expires\s+key$/m);
    expect(text.stdout).toMatch(new RegExp(`^${customer.id}\\s+customer\\s+2\\s+active\\s`, 'm'));
  });

  it('rotates and revokes through the server: the old key is refused on its very next request', SLOW, async () => {
    expect(await status(s.base, customer.key)).toBe(200);
    const fresh = await keysJson<Created>(['rotate', String(customer.id)], env);
    expect(fresh).toEqual({ key: expect.stringMatching(/^dbk_/), id: expect.any(Number), role: 'customer', customer_id: 2, expires_at: null });
    expect(await status(s.base, customer.key)).toBe(401);
    expect(await status(s.base, fresh.key)).toBe(200);
    expect(await keysJson(['revoke', String(fresh.id)], env)).toEqual({ revoked: fresh.id });
    expect(await status(s.base, fresh.key)).toBe(401);
    const text = await runCli(['keys', 'revoke', String(fresh.id)], env);
    expect([text.code, text.stdout]).toEqual([0, `revoked key ${fresh.id}\n`]);
    for (const sub of ['revoke', 'rotate']) {
      const r = await runCli(['keys', sub, '999999'], env);
      expect([sub, r.code]).toEqual([sub, 1]);
      expect(r.stderr).toContain('404 DATABANK_ERR_NOT_FOUND');
    }
    const bad = await runCli(['keys', 'revoke', 'x'], env);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toContain('expected a positive integer');
  });

  it('with no server, works on the database itself; the server then refuses what it revoked', SLOW, async () => {
    expect(await s.stop()).toBe(0);
    const listed = await keysJson<{ result: Listed[] }>(['list'], env);
    expect(listed.result.filter((k) => k.revoked_at !== null).map((k) => k.role)).toEqual(['customer', 'customer']);
    const made = await keysJson<Created>(['create', '--role', 'customer', '--customer', '3'], env);
    expect(made).toMatchObject({ role: 'customer', customer_id: 3, expires_at: null });
    const rotated = await keysJson<Created>(['rotate', String(made.id)], env);
    const spare = await keysJson<Created>(['create', '--role', 'customer', '--customer', '3'], env);
    expect(await keysJson(['revoke', String(spare.id)], env)).toEqual({ revoked: spare.id });
    s = await serve({ DATABANK_DATA_DIR: dir });
    expect(await status(s.base, made.key, '/customers/3')).toBe(401);
    expect(await status(s.base, spare.key, '/customers/3')).toBe(401);
    expect(await status(s.base, rotated.key, '/customers/3')).toBe(200);
  });
});

const POSTGRES = ENGINES.includes('postgres');
describe.skipIf(!REDIS_UP || !POSTGRES)('databank keys without a server, beside instances on PostgreSQL and Redis', () => {
  let db: TestDatabase;
  let app: App;
  let base: string;
  let env: Record<string, string>;

  beforeAll(async () => {
    db = await createTestDatabase('postgres', 'e2e-keys-cli');
    const cache = cacheSettings('redis', 'keys-cli');
    app = await createApp(testConfig(db, { cache }), { logger: pino({ level: 'silent' }), defaultMetrics: false });
    base = await app.http.listen({ host: '127.0.0.1', port: 0 });
    // Nothing listens at the CLI's HOST:PORT: it opens the database, and Redis to invalidate.
    env = {
      DATABASE_URL: db.url as string,
      REDIS_URL: REDIS_URL as string,
      DATABANK_CACHE_PREFIX: cache.prefix,
      DATABANK_DATA_DIR: testDataDir(),
      PORT: String(await freePort()),
    };
  }, 120_000);
  afterAll(async () => {
    await app?.close();
    await db?.drop();
  });

  it('a key revoked or rotated by the CLI is refused by a running instance on its very next request', SLOW, async () => {
    const admin = app.bootstrapped?.adminKey as string;
    const make = async () => {
      const res = await fetch(`${base}/api-keys`, {
        method: 'POST',
        headers: { authorization: `Bearer ${admin}`, 'content-type': 'application/json' },
        body: JSON.stringify({ role: 'customer', customer_id: 2 }),
      });
      return (await res.json()) as Created;
    };
    const [doomed, rotating] = [await make(), await make()];
    // Used, so that the shared cache holds both.
    for (const k of [doomed, rotating]) expect(await status(base, k.key)).toBe(200);
    expect(await keysJson(['revoke', String(doomed.id)], env)).toEqual({ revoked: doomed.id });
    expect(await status(base, doomed.key)).toBe(401);
    const fresh = await keysJson<Created>(['rotate', String(rotating.id)], env);
    expect(await status(base, rotating.key)).toBe(401);
    expect(await status(base, fresh.key)).toBe(200);
    const { result } = await keysJson<{ result: Listed[] }>(['list'], env);
    expect(result.filter((k) => k.revoked_at !== null).map((k) => k.id)).toEqual([doomed.id, rotating.id]);
  });
});
