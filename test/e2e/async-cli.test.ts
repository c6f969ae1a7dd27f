import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { testDataDir } from '../support/app.ts';
import { runCli, serveDataDir, type Served } from '../support/cli.ts';
import { until } from '../support/until.ts';

/**
 * `databank queue …` and `databank events …` against a running `databank serve` on the embedded
 * engine (which holds the database, so the commands go through its admin routes), and on the
 * data dir itself once the server has stopped; and /metrics carrying the queue, stream and outbox
 * figures.
 */

const SLOW = { timeout: 180_000 } as const;

async function cliJson<T>(args: readonly string[], env: Record<string, string>): Promise<T> {
  const r = await runCli([...args, '--json'], env);
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout) as T;
}

interface Groups {
  head: number;
  groups: Array<{ group: string; position: number; lag: number }>;
}

describe('databank queue and events', () => {
  const dir = testDataDir();
  let s: Served;
  let env: Record<string, string>;
  let admin: { authorization: string };

  beforeAll(async () => {
    ({ s, env, admin } = await serveDataDir(dir));
  }, 60_000);
  afterAll(async () => {
    await s?.stop();
  });

  const post = (path: string, body: unknown) =>
    fetch(`${s.base}${path}`, { method: 'POST', headers: { ...admin, 'content-type': 'application/json' }, body: JSON.stringify(body) });

  it('queue stats and an empty dead-letter queue, through the server', SLOW, async () => {
    const job = (await (await post('/accounts/1/statements', { month: new Date().toISOString().slice(0, 7) })).json()) as { job_id: string };
    await until(
      async () => ((await (await fetch(`${s.base}/jobs/${job.job_id}`, { headers: admin })).json()) as { state: string }).state,
      (state) => state === 'completed',
      { what: 'statement job' },
    );
    const stats = await cliJson<{ backend: string; result: Array<Record<string, unknown>> }>(['queue', 'stats'], env);
    expect(stats).toEqual({
      backend: 'postgres',
      result: [
        { queue: 'image.variants', waiting: 0, delayed: 0, active: 0, deadLetters: 0 },
        { queue: 'statement.monthly', waiting: 0, delayed: 0, active: 0, deadLetters: 0 },
      ],
    });
    expect(await cliJson(['queue', 'dlq', 'list', 'statement.monthly'], env)).toEqual({ result: [] });
    expect(await cliJson(['queue', 'dlq', 'retry', 'statement.monthly'], env)).toEqual({ retried: 0 });
    expect(await cliJson(['queue', 'dlq', 'purge', 'image.variants'], env)).toEqual({ purged: 0 });
    const unknown = await runCli(['queue', 'dlq', 'list', 'emails'], env);
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toContain('expected one of image.variants, statement.monthly');
  });

  it('events tail prints the stream in order; groups shows the audit group caught up', SLOW, async () => {
    const groups = await until(
      () => cliJson<Groups>(['events', 'groups'], env),
      (g) => g.head > 0 && g.groups.some((x) => x.group === 'audit' && x.lag === 0),
      { what: 'the audit group caught up' },
    );
    const audit = groups.groups.find((g) => g.group === 'audit');
    expect(audit).toEqual({ group: 'audit', position: groups.head, lag: 0 });
    const r = await runCli(['events', 'tail', '--from', '1', '--limit', '100', '--json'], env);
    expect(r.code, r.stderr).toBe(0);
    const lines = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as { seq: number; event: { type: string; id: string } });
    expect(lines.map((l) => l.seq)).toEqual(lines.map((_, i) => i + 1));
    // The demo data: three customers registered with an account each, then their opening deposits.
    expect(lines.slice(0, 9).map((l) => l.event.type)).toEqual([
      ...Array(3).fill(['customer.registered', 'account.opened']).flat(),
      'money.deposited',
      'money.deposited',
      'money.deposited',
    ]);
    const text = await runCli(['events', 'tail', '--from', '1', '--limit', '1'], env);
    expect(text.stdout).toMatch(/^1 {2}\d{4}-\d{2}-\d{2}T[0-9:.]+Z {2}customer\.registered {2}1 {2}\{"name":"Brian Kim",/);
  });

  it('events replay rebuilds the audit log from the start and waits until it has', SLOW, async () => {
    const before = (await (await fetch(`${s.base}/customers/1/activity?limit=100`, { headers: admin })).json()) as { result: unknown[] };
    expect(before.result.length).toBeGreaterThan(0);
    const done = await cliJson<{ group: string; events: number; position: number }>(['events', 'replay', '--group', 'audit', '--from', '0'], env);
    expect(done.group).toBe('audit');
    expect(done.position).toBeGreaterThanOrEqual(done.events);
    const after = (await (await fetch(`${s.base}/customers/1/activity?limit=100`, { headers: admin })).json()) as { result: unknown[] };
    expect(after.result).toEqual(before.result);
    const wrong = await runCli(['events', 'replay', '--group', 'cache', '--from', '0'], env);
    expect(wrong.code).toBe(1);
    expect(wrong.stderr).toContain('group must be one of audit');
    const fromTen = await runCli(['events', 'replay', '--group', 'audit', '--from', '10'], env);
    expect(fromTen.code).toBe(1);
  });

  it('/metrics has the queue, stream and outbox figures', SLOW, async () => {
    const body = await (await fetch(`${s.base}/metrics`, { headers: admin })).text();
    for (const line of [
      'databank_queue_depth{queue="image.variants"} 0',
      'databank_queue_dead_letters{queue="statement.monthly"} 0',
      'databank_queue_in_flight{queue="statement.monthly"} 0',
      'databank_outbox_backlog 0',
      'databank_stream_consumer_lag{group="audit"} 0',
      'databank_jobs_total{queue="statement.monthly",outcome="completed"} 1',
      'databank_queue_retries_total{queue="statement.monthly"} 0',
    ]) {
      expect(body.split('\n')).toContain(line);
    }
    expect(body).toMatch(/^databank_outbox_published_total \d+$/m);
  });

  it('with the server stopped, the commands open the data dir themselves', SLOW, async () => {
    expect(await s.stop()).toBe(0);
    const stats = await cliJson<{ backend: string; result: unknown[] }>(['queue', 'stats'], env);
    expect(stats.result).toHaveLength(2);
    const groups = await cliJson<Groups>(['events', 'groups'], env);
    expect(groups.groups.map((g) => g.group)).toEqual(['analytics', 'audit', 'search']);
    const replayed = await cliJson<{ group: string; events: number; position: number }>(['events', 'replay', '--group', 'audit', '--from', '0'], env);
    expect(replayed).toEqual({ group: 'audit', events: groups.head, position: groups.head });
  });
});
