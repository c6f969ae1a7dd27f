import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MIGRATIONS } from '../../src/stores/sql/migrations/index.ts';
import { freePort, runCli, serve } from '../support/cli.ts';
import { createTestDatabase, ENGINES, type TestDatabase } from '../support/engines.ts';
import { until } from '../support/until.ts';

const NAMES = Object.keys(MIGRATIONS);
const NEWEST = NAMES[NAMES.length - 1] as string;

/**
 * Each test spawns few processes and gets its own generous deadline: a first PGlite start or a
 * migration is slow on a loaded machine, and a deadline is a ceiling, not a measurement.
 */
const SLOW = { timeout: 180_000 } as const;

const CHAPTER =
  '{"result":[{"id":2,"name":"Karen Johnson","date_of_birth":"1989-11-18","balance":4853,"balances":{"USD":4853}},' +
  '{"id":3,"name":"Wade Feinstein","date_of_birth":"1965-02-25","balance":2150,"balances":{"USD":2150}}]}';

describe('databank serve on the embedded engine, over a real socket', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'databank-serve-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('first start: migrates, loads the chapter data, makes an admin key (0600), answers the chapter query', SLOW, async () => {
    const s = await serve({ DATABANK_DATA_DIR: dir });
    try {
      const keyFile = join(dir, 'admin-key');
      expect(statSync(keyFile).mode & 0o777).toBe(0o600);
      const key = readFileSync(keyFile, 'utf8').trim();
      expect(key).toMatch(/^dbk_[0-9a-f]{16}_[A-Za-z0-9_-]{43}$/);
      expect(s.stderr.split(key).length - 1).toBe(1);
      expect(s.stdout).not.toContain(key);
      const res = await fetch(`${s.base}/customers?born_after=1950-12-31`, { headers: { authorization: `Bearer ${key}` } });
      expect(res.status).toBe(200);
      expect(await res.text()).toBe(CHAPTER);
      const unauth = await fetch(`${s.base}/customers`);
      expect(unauth.status).toBe(401);
      expect(unauth.headers.get('www-authenticate')).toBe('Bearer realm="databank"');
      const transfer = await fetch(`${s.base}/transfers`, {
        method: 'POST',
        headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
        body: JSON.stringify({ from_account_id: 1, to_account_id: 2, amount: 100 }),
      });
      expect(transfer.status).toBe(201);
    } finally {
      expect(await s.stop()).toBe(0);
    }
  });

  it('a second process on the same data dir is refused while the first runs', SLOW, async () => {
    const s = await serve({ DATABANK_DATA_DIR: dir });
    try {
      const second = await runCli(['migrate', 'status'], { DATABANK_DATA_DIR: dir });
      expect(second.code).toBe(1);
      expect(second.stderr).toContain(`is in use by process ${s.child.pid}`);
    } finally {
      expect(await s.stop()).toBe(0);
    }
  });

  it('second start: data persisted, no new key, nothing printed', SLOW, async () => {
    const key = readFileSync(join(dir, 'admin-key'), 'utf8').trim();
    const s = await serve({ DATABANK_DATA_DIR: dir });
    try {
      expect(s.stderr).not.toContain('admin API key was created');
      const res = await fetch(`${s.base}/customers`, { headers: { authorization: `Bearer ${key}` } });
      const body = (await res.json()) as { result: Array<{ balance: number }> };
      expect(body.result.map((c) => c.balance)).toEqual([1400, 4953, 2150]);
    } finally {
      await s.stop();
    }
    expect(readFileSync(join(dir, 'admin-key'), 'utf8').trim()).toBe(key);
  });

  // Set by the drain test, checked after a restart by the next one.
  let completed = -1;

  it('SIGTERM drains in-flight requests: answered transfers are 201, the rest refused or cut, exit 0', SLOW, async () => {
    const key = readFileSync(join(dir, 'admin-key'), 'utf8').trim();
    const s = await serve({ DATABANK_DATA_DIR: dir });
    const headers = { authorization: `Bearer ${key}`, 'content-type': 'application/json' };
    const sent = Array.from({ length: 40 }, (_, i) =>
      fetch(`${s.base}/transfers`, {
        method: 'POST',
        headers: { ...headers, 'idempotency-key': `drain-${i}` },
        body: JSON.stringify({ from_account_id: 2, to_account_id: 3, amount: 1 }),
      }).then(
        async (r) => ({ status: r.status, body: await r.text() }),
        (err: Error) => ({ status: 0, body: err.message }),
      ),
    );
    // Stop as soon as the first transfer has been answered, with the rest in flight or queued.
    await Promise.race(sent);
    const exitCode = await s.stop();
    const results = await Promise.all(sent);
    expect(exitCode).toBe(0);
    expect(s.stdout).toContain('draining in-flight requests');
    completed = results.filter((r) => r.status === 201).length;
    expect(results.filter((r) => ![201, 503, 0].includes(r.status))).toEqual([]);
    expect(completed).toBeGreaterThanOrEqual(1);
  });

  it('after the drain, exactly the answered transfers moved money, none half-done', SLOW, async () => {
    expect(completed, 'the drain test ran first').toBeGreaterThanOrEqual(1);
    const key = readFileSync(join(dir, 'admin-key'), 'utf8').trim();
    const again = await serve({ DATABANK_DATA_DIR: dir });
    try {
      const res = await fetch(`${again.base}/accounts/3`, { headers: { authorization: `Bearer ${key}` } });
      expect(((await res.json()) as { balance: number }).balance).toBe(2150 + completed);
    } finally {
      expect(await again.stop()).toBe(0);
    }
  });

  // Last in this block: the process exits without closing the embedded database.
  it('a stop that outlives DATABANK_SHUTDOWN_TIMEOUT_MS exits 1 naming what was still open', SLOW, async () => {
    const key = readFileSync(join(dir, 'admin-key'), 'utf8').trim();
    const s = await serve({ DATABANK_DATA_DIR: dir, DATABANK_SHUTDOWN_TIMEOUT_MS: '500' });
    // A request whose body never ends holds the HTTP server open. `Expect: 100-continue` makes the
    // server say when it has the request, so the signal cannot overtake it.
    const stuck = request(new URL('/transfers', s.base), {
      method: 'POST',
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json', 'content-length': '1000', expect: '100-continue' },
    });
    stuck.on('error', () => undefined);
    try {
      stuck.flushHeaders();
      await once(stuck, 'continue');
      stuck.write('{"from_account_id":');
      expect(await s.stop()).toBe(1);
      expect(s.stdout).toContain('shutdown did not finish within 500 ms; still open: http server');
    } finally {
      stuck.destroy();
    }
  });
});

describe('databank CLI', () => {
  let dir: string;
  const env = () => ({ DATABANK_DATA_DIR: dir });
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'databank-cli-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  // The help of every subcommand is checked in-process (test/e2e/cli.test.ts); these two run the real binary.
  it('--help answers with the usage and every command family', SLOW, async () => {
    const r = await runCli(['--help'], env());
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^Usage: databank/);
    for (const name of ['serve', 'worker', 'migrate', 'seed', 'keys', 'site', 'files', 'cache']) expect(r.stdout).toMatch(new RegExp(`^  ${name}\\b`, 'm'));
  });

  it('--version prints the package version', SLOW, async () => {
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
    const r = await runCli(['--version'], env());
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(`${pkg.version}\n`);
  });

  it('migrate latest applies every migration, then nothing', SLOW, async () => {
    expect(JSON.parse((await runCli(['migrate', 'latest', '--json'], env())).stdout)).toEqual({ applied: NAMES });
    expect(JSON.parse((await runCli(['migrate', 'latest', '--json'], env())).stdout)).toEqual({ applied: [] });
  });

  it('migrate status lists every migration as applied, with --json', SLOW, async () => {
    const status = JSON.parse((await runCli(['migrate', 'status', '--json'], env())).stdout) as Array<{ name: string; applied_at: string | null }>;
    expect(status.map((m) => m.name)).toEqual(NAMES);
    expect(status.every((m) => typeof m.applied_at === 'string')).toBe(true);
  });

  it('migrate rollback undoes the newest migration, status shows it pending, latest applies it again', SLOW, async () => {
    expect(JSON.parse((await runCli(['migrate', 'rollback', '--json'], env())).stdout)).toEqual({ reverted: [NEWEST] });
    expect((await runCli(['migrate', 'status'], env())).stdout.trim().split('\n').pop()).toBe(`pending  ${NEWEST}`);
    expect((await runCli(['migrate', 'latest'], env())).stdout.trim()).toBe(`applied ${NEWEST}`);
  });

  it('seeds once', SLOW, async () => {
    expect(JSON.parse((await runCli(['seed', '--json'], env())).stdout)).toEqual({ seeded: true });
    expect(JSON.parse((await runCli(['seed', '--json'], env())).stdout)).toEqual({ seeded: false });
  });

  // Made by the keys test, used against the server by the next one.
  let customerKey = '';

  it('makes a customer key, printed once with --json', SLOW, async () => {
    const created = JSON.parse((await runCli(['keys', 'create', '--role', 'customer', '--customer', '2', '--json'], env())).stdout);
    expect(created).toMatchObject({ role: 'customer', customer_id: 2 });
    expect(created.key).toMatch(/^dbk_/);
    customerKey = created.key as string;
  });

  it('the key works with the API, and the cache commands ask the running server', SLOW, async () => {
    expect(customerKey, 'the keys test ran first').toMatch(/^dbk_/);
    const s = await serve(env());
    try {
      // The cache commands ask the running server, so they work for the in-process cache too.
      const admin = { authorization: `Bearer ${readFileSync(join(dir, 'admin-key'), 'utf8').trim()}` };
      // The seed's events reach this process's cache group (which drops what they changed) once
      // relayed (the groups: audit, analytics, search and this cache); wait for that, then start
      // from an empty cache.
      await until(
        async () => (await (await fetch(`${s.base}/events/groups`, { headers: admin })).json()) as { head: number; groups: Array<{ lag: number }> },
        (g) => g.head > 0 && g.groups.length === 4 && g.groups.every((x) => x.lag === 0),
        { what: 'the seed events relayed and consumed' },
      );
      expect(JSON.parse((await runCli(['cache', 'flush', '--json', '--url', s.base], env())).stdout)).toMatchObject({ deleted: expect.any(Number) });
      await fetch(`${s.base}/accounts/1`, { headers: admin });
      const stats = JSON.parse((await runCli(['cache', 'stats', '--json', '--url', s.base], env())).stdout);
      expect(stats.cache).toMatchObject({ kind: 'memory', namespace: 'databank:v2:', entries: 2 });
      const flushed = JSON.parse((await runCli(['cache', 'flush', '--prefix', 'account:', '--json', '--url', s.base], env())).stdout);
      expect(flushed).toEqual({ deleted: 1 });
      const own = await fetch(`${s.base}/customers/2`, { headers: { authorization: `Bearer ${customerKey}` } });
      expect(await own.json()).toEqual({
        id: 2,
        name: 'Karen Johnson',
        date_of_birth: '1989-11-18',
        balance: 4853,
        balances: { USD: 4853 },
      });
      const other = await fetch(`${s.base}/customers/3`, { headers: { authorization: `Bearer ${customerKey}` } });
      expect(other.status).toBe(404);
    } finally {
      await s.stop();
    }
  });

  it('refuses a customer key without --customer, or for a customer that does not exist', SLOW, async () => {
    const noCustomer = await runCli(['keys', 'create', '--role', 'customer'], env());
    expect(noCustomer.code).toBe(1);
    expect(noCustomer.stderr).toContain('--customer is required with --role customer');
    const missing = await runCli(['keys', 'create', '--role', 'customer', '--customer', '999'], env());
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain('customer 999 does not exist');
  });

  it('refuses bad arguments with a message and a non-zero exit', SLOW, async () => {
    const badRole = await runCli(['keys', 'create', '--role', 'root'], env());
    expect(badRole.code).not.toBe(0);
    expect(badRole.stderr).toContain("argument 'root' is invalid");
    const badName = await runCli(['migrate', 'make', 'Bad Name'], env());
    expect(badName.code).toBe(1);
    expect(badName.stderr).toContain('a migration name is 1 to 64 of a-z, 0-9 and _');
  });

  it('cache commands say so when no server answers', SLOW, async () => {
    const keyFile = join(dir, 'some-admin-key');
    writeFileSync(keyFile, 'dbk_not_checked\n');
    const url = `http://127.0.0.1:${await freePort()}`;
    const r = await runCli(['cache', 'stats', '--url', url, '--key-file', keyFile], env());
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`databank: no databank server answers at ${url}`);
  });

  it('stops at start on bad configuration, listing every bad variable', SLOW, async () => {
    const r = await runCli(['serve'], { ...env(), PORT: 'x', LOG_LEVEL: 'loud' });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('PORT: "x" is not a whole number');
    expect(r.stderr).toContain('LOG_LEVEL: "loud" is not one of');
  });
});

describe.skipIf(!ENGINES.includes('postgres'))('databank serve against an empty PostgreSQL database', () => {
  let db: TestDatabase;
  let dir: string;
  beforeAll(async () => {
    db = await createTestDatabase('postgres', 'serve-postgres');
    dir = mkdtempSync(join(tmpdir(), 'databank-serve-pg-'));
  });
  afterAll(async () => {
    rmSync(dir, { recursive: true, force: true });
    await db?.drop();
  });

  it('does not migrate on boot by default, and says what to run', SLOW, async () => {
    await expect(serve({ DATABANK_DATA_DIR: dir, DATABASE_URL: db.url as string })).rejects.toThrow(
      `the database schema is behind by ${NAMES.length} migration(s) (${NAMES.join(', ')}): run \`databank migrate latest\`, or set MIGRATE_ON_BOOT=true`,
    );
  });

  it('after `migrate latest`, the first start seeds the chapter data and makes an admin key; the second does neither', SLOW, async () => {
    const env = { DATABANK_DATA_DIR: dir, DATABASE_URL: db.url as string };
    expect(JSON.parse((await runCli(['migrate', 'latest', '--json'], env)).stdout)).toEqual({ applied: NAMES });
    const first = await serve(env);
    const key = readFileSync(join(dir, 'admin-key'), 'utf8').trim();
    try {
      const res = await fetch(`${first.base}/customers?born_after=1950-12-31`, { headers: { authorization: `Bearer ${key}` } });
      expect(await res.text()).toBe(CHAPTER);
    } finally {
      expect(await first.stop()).toBe(0);
    }
    const second = await serve(env);
    await second.stop();
    expect(second.stderr).not.toContain('admin API key was created');
  });

  it('DATABANK_DEMO_DATA=false starts with no customers', SLOW, async () => {
    const empty = await createTestDatabase('postgres', 'serve-postgres-empty');
    const emptyDir = mkdtempSync(join(tmpdir(), 'databank-serve-empty-'));
    try {
      const s = await serve({ DATABANK_DATA_DIR: emptyDir, DATABASE_URL: empty.url as string, MIGRATE_ON_BOOT: 'true', DATABANK_DEMO_DATA: 'false' });
      try {
        const key = readFileSync(join(emptyDir, 'admin-key'), 'utf8').trim();
        const res = await fetch(`${s.base}/customers`, { headers: { authorization: `Bearer ${key}` } });
        expect(await res.json()).toEqual({ result: [] });
      } finally {
        await s.stop();
      }
    } finally {
      rmSync(emptyDir, { recursive: true, force: true });
      await empty.drop();
    }
  });
});
