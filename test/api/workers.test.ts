import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ENGINES } from '../support/engines.ts';
import { startTestApp, type TestApp } from '../support/app.ts';
import { until } from '../support/until.ts';

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
    const names = withWorker.app.workers.states().map((s) => s.name);
    // The process's own cache group is named after the host, the process and a random part.
    expect(names.map((n) => n.replace(/^events:cache-.+$/, 'events:cache-…'))).toEqual([
      'site-refresh',
      'idempotency-purge',
      'ledger-partitions',
      'events:cache-…',
      'outbox-relay',
      'job-dispatcher',
      'jobs:image.variants',
      'jobs:statement.monthly',
      'events:audit',
      'events:analytics',
      'analytics-refresh',
      'events:search',
    ]);
    // The partition upkeep runs once as it starts (then daily): nothing to make, the migration did.
    await until(
      async () => withWorker.app.workers.states().find((s) => s.name === 'ledger-partitions')?.runs ?? 0,
      (runs) => runs >= 1,
      { what: 'the ledger partition upkeep run at start' },
    );
    const body = await metrics(withWorker);
    expect(body).toContain('databank_worker_up{worker="site-refresh"} 1');
    expect(body).toContain('databank_worker_up{worker="idempotency-purge"} 1');
    expect(body).toMatch(/^databank_worker_runs_total\{worker="idempotency-purge"\} 0$/m);
    expect(body).toMatch(/^databank_worker_failures_total\{worker="site-refresh"\} 0$/m);
    expect(body).toMatch(/^databank_worker_runs_total\{worker="ledger-partitions"\} 1$/m);
    expect(body).toMatch(/^databank_worker_failures_total\{worker="ledger-partitions"\} 0$/m);
  });

  it('leaves the shared schedules to `databank worker` with worker: false (serve --no-worker)', async () => {
    // What keeps this process's own state fresh stays: the site's manifest and its cache.
    expect(without.app.workers.states().map((s) => s.name.replace(/^events:cache-.+$/, 'events:cache-…'))).toEqual([
      'site-refresh',
      'events:cache-…',
    ]);
    const body = await metrics(without);
    expect(body).toContain('databank_worker_up{worker="site-refresh"} 1');
    expect(body).not.toContain('worker="idempotency-purge"');
    expect(body).not.toContain('worker="ledger-partitions"');
  });

  it('stops the workers when the app closes', async () => {
    const t = await startTestApp(engine, `workers-close-${engine}`);
    await t.close();
    expect(t.app.workers.states().map((s) => s.status)).toEqual(Array(12).fill('stopped'));
  });
});
