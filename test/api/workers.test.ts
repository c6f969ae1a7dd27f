import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ENGINES } from '../support/engines.ts';
import { startTestApp, type TestApp } from '../support/app.ts';

/** The worker host inside `databank serve`: its workers and their metrics on /metrics. */
describe.each(ENGINES.map((engine) => ({ engine })))('worker host in the app on $engine', ({ engine }) => {
  let withWorker: TestApp;
  let without: TestApp;

  beforeAll(async () => {
    withWorker = await startTestApp(engine, `workers-on-${engine}`);
    without = await startTestApp(engine, `workers-off-${engine}`, {}, undefined, { worker: false });
  });
  afterAll(async () => {
    await withWorker?.close();
    await without?.close();
  });

  const metrics = async (t: TestApp) => {
    const res = await t.app.http.inject({ method: 'GET', url: '/metrics', headers: t.admin });
    expect(res.statusCode).toBe(200);
    return res.body;
  };

  it('runs the site refresh and the shared schedules, each up', async () => {
    expect(withWorker.app.workers.states().map((s) => s.name)).toEqual(['site-refresh', 'idempotency-purge']);
    const body = await metrics(withWorker);
    expect(body).toContain('databank_worker_up{worker="site-refresh"} 1');
    expect(body).toContain('databank_worker_up{worker="idempotency-purge"} 1');
    expect(body).toMatch(/^databank_worker_runs_total\{worker="idempotency-purge"\} 0$/m);
    expect(body).toMatch(/^databank_worker_failures_total\{worker="site-refresh"\} 0$/m);
  });

  it('leaves the shared schedules to `databank worker` with worker: false (serve --no-worker)', async () => {
    expect(without.app.workers.states().map((s) => s.name)).toEqual(['site-refresh']);
    const body = await metrics(without);
    expect(body).toContain('databank_worker_up{worker="site-refresh"} 1');
    expect(body).not.toContain('worker="idempotency-purge"');
  });

  it('stops the workers when the app closes', async () => {
    const t = await startTestApp(engine, `workers-close-${engine}`);
    await t.close();
    expect(t.app.workers.states().map((s) => s.status)).toEqual(['stopped', 'stopped']);
  });
});
