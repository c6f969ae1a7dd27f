import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BIN, cleanEnv, freePort, runCli } from '../support/cli.ts';
import { createTestDatabase, POSTGRES_UP, type TestDatabase } from '../support/engines.ts';
import { testDataDir } from '../support/app.ts';
import { spawnTracked, waitFor, type Spawned } from '../support/processes.ts';

const SLOW = { timeout: 180_000 } as const;

/**
 * `databank worker` on a PostgreSQL server, as a deployment runs it: two copies beside nothing
 * else, each with its metrics listener, each stopping cleanly on SIGTERM. (The schedules' advisory
 * lock itself is proven in test/workers/ by counting runs.)
 */
describe.skipIf(!POSTGRES_UP)('databank worker on PostgreSQL', () => {
  let db: TestDatabase;
  let env: Record<string, string>;
  let adminKey: string;

  beforeAll(async () => {
    db = await createTestDatabase('postgres', 'e2e-worker');
    env = { DATABASE_URL: db.url as string, DATABANK_DATA_DIR: testDataDir() };
    expect((await runCli(['migrate', 'latest', '--json'], env)).code).toBe(0);
    const created = await runCli(['keys', 'create', '--role', 'admin', '--json'], env);
    adminKey = (JSON.parse(created.stdout) as { key: string }).key;
  }, 180_000);
  afterAll(async () => db?.drop());

  const start = async (): Promise<{ proc: Spawned; base: string }> => {
    const port = await freePort();
    const proc = spawnTracked(process.execPath, [BIN, 'worker', '--metrics-port', String(port)], {
      env: cleanEnv({ ...env, LOG_LEVEL: 'info' }),
      what: 'databank worker',
    });
    await waitFor('the worker host has started', () => proc.output().includes('worker host started') || !proc.running(), {
      timeoutMs: 60_000,
    });
    expect(proc.running()).toBe(true);
    return { proc, base: `http://127.0.0.1:${port}` };
  };

  it('two copies run side by side, show their workers on /metrics (admin key only) and stop on SIGTERM', SLOW, async () => {
    const copies = [await start(), await start()];
    for (const { base } of copies) {
      expect((await fetch(`${base}/healthz`)).status).toBe(200);
      const anonymous = await fetch(`${base}/metrics`);
      expect(anonymous.status).toBe(401);
      expect(((await anonymous.json()) as { code: string }).code).toBe('DATABANK_ERR_UNAUTHORIZED');
      const metrics = await fetch(`${base}/metrics`, { headers: { authorization: `Bearer ${adminKey}` } });
      expect(metrics.status).toBe(200);
      const body = await metrics.text();
      expect(body).toContain('databank_worker_up{worker="idempotency-purge"} 1');
      // No HTTP server here, so no site to refresh.
      expect(body).not.toContain('worker="site-refresh"');
      expect((await fetch(`${base}/customers`)).status).toBe(404);
    }
    for (const { proc } of copies) {
      proc.child.kill('SIGTERM');
      expect(await proc.exited).toEqual({ code: 0, signal: null });
      expect(proc.output()).toContain('stopping the workers');
    }
  });

  it('refuses to run on a schema that is behind', SLOW, async () => {
    expect((await runCli(['migrate', 'rollback', '--json'], env)).code).toBe(0);
    try {
      const r = await runCli(['worker'], env);
      expect(r.code).toBe(1);
      expect(r.stderr).toContain('the database schema is behind by 1 migration(s)');
    } finally {
      expect((await runCli(['migrate', 'latest', '--json'], env)).code).toBe(0);
    }
  });
});
