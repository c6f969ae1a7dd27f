import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import pg from 'pg';
import sharp from 'sharp';
import { describe, expect, it } from 'vitest';
import { JOB_KINDS } from '../../src/services/async-ops.ts';
import { openFileStore } from '../../src/stores/files/index.ts';
import { testDataDir } from '../support/app.ts';
import { AMQP_UP, AMQP_URL, cleanBrokers } from '../support/brokers.ts';
import { BIN, cleanEnv, freePort } from '../support/cli.ts';
import { createTestDatabase, DATABASE_URL, POSTGRES_UP, REQUIRE_SERVICES } from '../support/engines.ts';
import { spawnTracked, waitFor, type Spawned } from '../support/processes.ts';

/**
 * `kill -9` of the `databank worker` while it runs jobs, on a PostgreSQL server: a `databank serve
 * --no-worker` takes the requests (statements and image uploads, each a job written with its
 * request), one worker runs them and is killed with SIGKILL (its process group) while some jobs
 * are done, some in its hands and some still waiting; a new worker finishes them. Counted after:
 * every job completed once, one statement file per statement job, one `processed_messages` row
 * per job and consumer, three ready variants per image and no other variant object.
 *
 * Runs on pg-boss (the default queue, whose jobs of a dead worker come back after their expiry)
 * and, when AMQP_URL answers, on RabbitMQ (which hands them back as soon as the connection drops).
 */

const CUSTOMERS = 4;
const ACCOUNTS_PER_CUSTOMER = 10;
const ACCOUNTS = CUSTOMERS * ACCOUNTS_PER_CUSTOMER;
/** Each account's statements of this month and of the previous one: two jobs per account. */
const MONTHS = 2;
const STATEMENT_JOBS = ACCOUNTS * MONTHS;
const IMAGES = 6;
const VARIANTS = ['web', 'mobile', 'thumbnail'] as const;
/** Requests in flight at once while the jobs are asked for. */
const CLIENTS = 8;
/** Jobs completed before the kill, at least: the kill comes in the middle of the work, not at its start. */
const MIN_DONE_BEFORE_KILL = 8;
const SLOW = { timeout: 240_000 } as const;

type Backend = { readonly name: 'pg-boss' | 'RabbitMQ'; readonly amqpUrl: string | null };

const BACKENDS: Backend[] = [{ name: 'pg-boss', amqpUrl: null }];
if (AMQP_UP || REQUIRE_SERVICES) BACKENDS.push({ name: 'RabbitMQ', amqpUrl: AMQP_URL });

/** A 2000×1500 PNG with a pattern of its own per seed, so that every upload is a distinct image of realistic cost. */
async function png(seed: number, width = 2000, height = 1500): Promise<Buffer> {
  const raw = Buffer.alloc(width * height * 3);
  for (let i = 0; i < raw.length; i++) raw[i] = (i * (7 + seed) + (i >> 11) * 13) & 0xff;
  return sharp(raw, { raw: { width, height, channels: 3 } }).png().toBuffer();
}

/** YYYY-MM of this month (UTC) and of the `MONTHS - 1` before it. */
function months(): string[] {
  const now = new Date();
  return Array.from({ length: MONTHS }, (_, i) => new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() - i, 1)).toISOString().slice(0, 7));
}

/** Runs the tasks with at most `limit` at a time; resolves with their results in order. */
async function pooled<T>(tasks: ReadonlyArray<() => Promise<T>>, limit: number): Promise<T[]> {
  const results: T[] = new Array<T>(tasks.length);
  let next = 0;
  const lane = async () => {
    while (next < tasks.length) {
      const i = next++;
      results[i] = await (tasks[i] as () => Promise<T>)();
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, tasks.length) }, lane));
  return results;
}

interface Answer {
  readonly status: number;
  readonly body: Record<string, unknown>;
}

/** A client of the serve process, with the admin key. */
function client(base: string, adminKey: string) {
  const call = async (method: string, path: string, body?: unknown, raw?: Buffer): Promise<Answer> => {
    const res = await fetch(`${base}${path}`, {
      method,
      headers: {
        authorization: `Bearer ${adminKey}`,
        ...(raw ? { 'content-type': 'application/octet-stream' } : body === undefined ? {} : { 'content-type': 'application/json' }),
      },
      body: raw ? new Uint8Array(raw) : body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(60_000),
    });
    const text = await res.text();
    return { status: res.status, body: text ? (JSON.parse(text) as Record<string, unknown>) : {} };
  };
  /** The request's answer, which must have the given status. */
  const expectStatus = async (status: number, method: string, path: string, body?: unknown, raw?: Buffer) => {
    const answer = await call(method, path, body, raw);
    expect(answer.status, `${method} ${path}: ${JSON.stringify(answer.body)}`).toBe(status);
    return answer.body;
  };
  return { call, expectStatus };
}

/** `databank serve --no-worker`, up once /healthz answers. */
async function startServe(env: Record<string, string>): Promise<{ proc: Spawned; base: string }> {
  const port = await freePort();
  const proc = spawnTracked(process.execPath, [BIN, 'serve', '--no-worker'], {
    env: cleanEnv({ ...env, PORT: String(port) }),
    what: `databank serve --no-worker on port ${port}`,
  });
  const base = `http://127.0.0.1:${port}`;
  await waitFor(
    `databank serve answers /healthz on port ${port}`,
    async () => {
      if (!proc.running()) throw new Error(`databank serve exited before answering /healthz:\n${proc.output()}`);
      try {
        const res = await fetch(`${base}/healthz`);
        await res.arrayBuffer();
        return res.ok;
      } catch {
        return false;
      }
    },
    { timeoutMs: 90_000, everyMs: 50 },
  );
  return { proc, base };
}

/** `databank worker`, up once it logged that its workers started. */
async function startWorker(env: Record<string, string>): Promise<Spawned> {
  const proc = spawnTracked(process.execPath, [BIN, 'worker'], { env: cleanEnv({ ...env, LOG_LEVEL: 'info' }), what: 'databank worker' });
  await waitFor(
    'databank worker has started its workers',
    () => {
      if (!proc.running()) throw new Error(`databank worker exited at start:\n${proc.output()}`);
      return proc.output().includes('worker host started');
    },
    { timeoutMs: 90_000, everyMs: 25 },
  );
  return proc;
}

/** SIGTERM, and the orderly exit it must lead to. */
async function stop(proc: Spawned): Promise<void> {
  proc.child.kill('SIGTERM');
  const exit = await proc.exited;
  expect(exit, proc.output()).toEqual({ code: 0, signal: null });
}

interface JobRow {
  id: string;
  kind: string;
  state: string;
  attempts: number;
  payload: { account_id?: number; month?: string; file_id?: number };
  result: { file_id?: number } | null;
  updated_at: Date;
}

const title = (backend: Backend) =>
  `kill -9 of databank worker mid-jobs on ${backend.name}: ${STATEMENT_JOBS} statement jobs and ${IMAGES} image jobs, each completed once by the next worker`;

if (!POSTGRES_UP) {
  // Nothing to connect to: say why, or fail when the servers are required.
  describe('kill -9 of databank worker mid-jobs', () => {
    if (REQUIRE_SERVICES) {
      it('needs PostgreSQL: REQUIRE_SERVICES=1 but DATABASE_URL is not set', () => {
        expect.fail(`REQUIRE_SERVICES=1 but PostgreSQL is not available (DATABASE_URL=${DATABASE_URL ?? 'unset'})`);
      });
    } else {
      it.skip('skipped: needs PostgreSQL, set DATABASE_URL (e.g. postgres://postgres@127.0.0.1:5432/test) to run it', () => undefined);
    }
  });
} else {
  describe('kill -9 of databank worker mid-jobs', () => {
    if (!BACKENDS.some((b) => b.name === 'RabbitMQ')) {
      it.skip('on RabbitMQ skipped: set AMQP_URL (e.g. amqp://guest:guest@127.0.0.1:5672) to run it', () => undefined);
    }
    for (const backend of BACKENDS) {
      it(title(backend), SLOW, async ({ annotate }) => {
        if (backend.name === 'RabbitMQ' && !AMQP_UP) {
          expect.fail(`REQUIRE_SERVICES=1 but RabbitMQ does not answer (AMQP_URL=${AMQP_URL ?? 'unset'})`);
        }
        await killAndRecover(backend, annotate);
      });
    }
  });
}

async function killAndRecover(backend: Backend, annotate: (message: string) => Promise<unknown>): Promise<void> {
  const started = Date.now();
  const dataDir = testDataDir();
  const prefix = `wk${backend.name === 'pg-boss' ? 'p' : 'r'}${process.pid}`;
  const db = await createTestDatabase('postgres', `worker-kill-${backend.name}`);
  const pool = new pg.Pool({ connectionString: db.url as string, max: 2 });
  const procs: Spawned[] = [];
  try {
    const env: Record<string, string> = {
      DATABASE_URL: db.url as string,
      MIGRATE_ON_BOOT: 'true',
      DATABANK_DATA_DIR: dataDir,
      DATABANK_DEMO_DATA: 'false',
      DATABANK_SITE_DIR: 'none',
      DATABANK_RATE_LIMIT_PER_MINUTE: '10000000',
      DATABANK_BROKER_PREFIX: prefix,
      ...(backend.amqpUrl ? { AMQP_URL: backend.amqpUrl } : {}),
    };
    const server = await startServe(env);
    procs.push(server.proc);
    const api = client(server.base, readFileSync(join(dataDir, 'admin-key'), 'utf8').trim());
    const first = await startWorker(env);
    procs.push(first);

    // Customers and accounts with a few entries each, so that the statements have lines.
    const accounts: Array<{ customer: number; account: number }> = [];
    for (let c = 0; c < CUSTOMERS; c++) {
      const customer = (await api.expectStatus(201, 'POST', '/customers', { name: `Worker Kill ${c}`, date_of_birth: '1980-01-01' })).id as number;
      const opened = await pooled(
        Array.from({ length: ACCOUNTS_PER_CUSTOMER }, () => async () => {
          const account = (await api.expectStatus(201, 'POST', `/customers/${customer}/accounts`, { account_type: 'checking' })).account_id as number;
          await api.expectStatus(201, 'POST', `/accounts/${account}/deposits`, { amount: 10_000 });
          await api.expectStatus(201, 'POST', `/accounts/${account}/withdrawals`, { amount: 2_500 });
          return { customer, account };
        }),
        CLIENTS,
      );
      accounts.push(...opened);
    }
    const images = await Promise.all(Array.from({ length: IMAGES }, (_, i) => png(i)));

    // The jobs, asked for with the worker running; the kill waits until some are done, some are
    // in the worker's hands and some still wait.
    const wanted = months();
    type Asked = { kind: string; id: string; fileId?: number };
    const statementAsks = accounts.flatMap(({ account }) =>
      wanted.map((month) => async (): Promise<Asked> => {
        const asked = await api.expectStatus(202, 'POST', `/accounts/${account}/statements`, { month });
        expect(asked.state).toBe('queued');
        return { kind: 'statement.monthly', id: asked.job_id as string };
      }),
    );
    const imageAsks = images.map((image, i) => async (): Promise<Asked> => {
      const { customer } = accounts[i % accounts.length] as { customer: number };
      const file = await api.expectStatus(201, 'POST', `/customers/${customer}/files?filename=photo-${i}.png`, undefined, image);
      return { kind: 'image.variants', id: '', fileId: file.file_id as number };
    });
    // The uploads spread among the statements, the last one after them: when everything has been
    // asked for, an image job (the slow kind) has just been written and waits.
    const imageAfter = new Map(imageAsks.map((ask, k) => [Math.round(((k + 1) * STATEMENT_JOBS) / IMAGES) - 1, ask]));
    const asks = statementAsks.flatMap((ask, i) => [ask, ...(imageAfter.has(i) ? [imageAfter.get(i) as () => Promise<Asked>] : [])]);
    expect(asks.length).toBe(STATEMENT_JOBS + IMAGES);
    const asking = pooled(asks, CLIENTS);
    let allAsked = false;
    let askFailed: unknown = null;
    asking.then(
      () => (allAsked = true),
      (err: unknown) => (askFailed = err ?? new Error('a request failed')),
    );
    const counts = async () => {
      const { rows } = await pool.query<{ state: string; n: number }>('select state, count(*)::int as n from jobs group by state');
      return Object.fromEntries(rows.map((r) => [r.state, r.n])) as Record<string, number>;
    };
    let beforeKill: Record<string, number> = {};
    await waitFor(
      'some jobs are completed, some running in the worker and some still queued',
      async () => {
        if (askFailed) throw askFailed;
        if (!first.running()) throw new Error(`the first worker exited on its own:\n${first.output()}`);
        beforeKill = await counts();
        return allAsked && (beforeKill.completed ?? 0) >= MIN_DONE_BEFORE_KILL && (beforeKill.running ?? 0) >= 1 && (beforeKill.queued ?? 0) >= 1;
      },
      { timeoutMs: 90_000, everyMs: 10 },
    );
    const exit = await first.kill('SIGKILL');
    const killedAt = Date.now();
    expect(exit.signal).toBe('SIGKILL');
    const asked = await asking;

    // What the dead worker left: the jobs it had started and not finished stay `running`.
    const snapshot = (await pool.query<JobRow>('select * from jobs order by created_at, id')).rows;
    const runningAtKill = snapshot.filter((j) => j.state === 'running');
    const completedAtKill = new Set(snapshot.filter((j) => j.state === 'completed').map((j) => j.id));
    const atKill = { completed: completedAtKill.size, running: runningAtKill.length, queued: snapshot.filter((j) => j.state === 'queued').length };
    expect(runningAtKill.length, 'jobs in the killed worker’s hands').toBeGreaterThanOrEqual(1);
    const bossActive =
      backend.name === 'pg-boss'
        ? (await pool.query<{ n: number }>(`select count(*)::int as n from pgboss.job where name like $1 and state = 'active'`, [`${prefix}.%`]))
            .rows[0]?.n
        : null;

    // A new worker takes over; every job completes.
    const second = await startWorker(env);
    procs.push(second);
    const finalJobs = await (async () => {
      let jobs: JobRow[] = [];
      await waitFor(
        'every job is completed after the kill',
        async () => {
          if (!second.running()) throw new Error(`the second worker exited on its own:\n${second.output()}`);
          jobs = (await pool.query<JobRow>('select * from jobs order by created_at, id')).rows;
          return jobs.length === STATEMENT_JOBS + IMAGES && jobs.every((j) => j.state === 'completed' || j.state === 'failed');
        },
        { timeoutMs: 150_000, everyMs: 100 },
      );
      return jobs;
    })();
    const recoveredAt = Date.now();

    // Every job completed, none failed, none lost.
    expect(finalJobs.filter((j) => j.state !== 'completed').map((j) => [j.id, j.kind, j.state])).toEqual([]);
    const statementJobs = finalJobs.filter((j) => j.kind === 'statement.monthly');
    const imageJobs = finalJobs.filter((j) => j.kind === 'image.variants');
    expect([statementJobs.length, imageJobs.length]).toEqual([STATEMENT_JOBS, IMAGES]);
    expect(new Set(statementJobs.map((j) => j.id))).toEqual(new Set(asked.filter((a) => a.kind === 'statement.monthly').map((a) => a.id)));
    // Deliveries: a job done before the kill once; a job the dead worker had started exactly twice.
    const attempts = new Map(finalJobs.map((j) => [j.id, j.attempts]));
    expect(
      runningAtKill.map((j) => [j.id, attempts.get(j.id)]),
      'a started job is delivered once more',
    ).toEqual(runningAtKill.map((j) => [j.id, 2]));
    expect([...completedAtKill].map((id) => [id, attempts.get(id)])).toEqual([...completedAtKill].map((id) => [id, 1]));
    expect(finalJobs.filter((j) => j.attempts < 1 || j.attempts > 2).map((j) => [j.id, j.attempts])).toEqual([]);

    // Exactly one statement file per statement job: its result names it, and nothing else is there.
    const files = (
      await pool.query<{ id: number; filename: string; object_key: string }>('select id::int as id, filename, object_key from files order by id')
    ).rows;
    const statementFiles = files.filter((f) => f.filename.startsWith('statement-'));
    expect(statementFiles.length).toBe(STATEMENT_JOBS);
    const byId = new Map(files.map((f) => [f.id, f]));
    const resultFiles = statementJobs.map((j) => j.result?.file_id);
    expect(new Set(resultFiles).size, 'distinct result.file_id').toBe(STATEMENT_JOBS);
    for (const job of statementJobs) {
      const file = byId.get(job.result?.file_id as number);
      expect(file?.filename, `job ${job.id}`).toBe(`statement-${job.payload.account_id}-${job.payload.month}.csv`);
    }
    const statementNames = statementFiles.map((f) => f.filename).sort();
    expect(new Set(statementNames).size, 'one file per account and month').toBe(STATEMENT_JOBS);
    const uploadedEvents = (
      await pool.query<{ n: number }>(`select count(*)::int as n from outbox where type = 'file.uploaded' and payload ->> 'filename' like 'statement-%'`)
    ).rows[0]?.n;
    expect(uploadedEvents, 'one file.uploaded event per statement').toBe(STATEMENT_JOBS);

    // One processed_messages row per job and consumer: each job's effect applied once.
    const processed = (
      await pool.query<{ consumer: string; message_id: string }>(`select consumer, message_id from processed_messages where consumer <> 'audit'`)
    ).rows;
    const processedBy = (consumer: string) => processed.filter((p) => p.consumer === consumer).map((p) => p.message_id);
    expect(processedBy('statement.monthly').length).toBe(STATEMENT_JOBS);
    expect(processedBy('image.variants').length).toBe(IMAGES);
    expect(new Set(processedBy('statement.monthly'))).toEqual(new Set(statementJobs.map((j) => j.id)));
    expect(new Set(processedBy('image.variants'))).toEqual(new Set(imageJobs.map((j) => j.id)));
    expect(new Set(processed.map((p) => p.consumer))).toEqual(new Set(['statement.monthly', 'image.variants']));

    // Three ready variants per image, and in the store exactly those objects under variants/.
    const imageFileIds = asked.filter((a) => a.kind === 'image.variants').map((a) => a.fileId as number).sort((a, b) => a - b);
    const variants = (
      await pool.query<{ file_id: number; name: string; status: string; object_key: string | null }>(
        'select file_id::int as file_id, name, status, object_key from file_variants order by file_id, name',
      )
    ).rows;
    expect(variants.length).toBe(IMAGES * VARIANTS.length);
    expect(variants.filter((v) => v.status !== 'ready' || v.object_key !== `variants/${v.file_id}/${v.name}.webp`)).toEqual([]);
    expect([...new Set(variants.map((v) => v.file_id))].sort((a, b) => a - b)).toEqual(imageFileIds);
    const store = await openFileStore({ kind: 'local', dir: join(dataDir, 'files') });
    const objects: string[] = [];
    try {
      for await (const o of store.list('')) objects.push(o.key);
    } finally {
      await store.close();
    }
    const variantObjects = objects.filter((k) => k.startsWith('variants/')).sort();
    expect(variantObjects).toEqual(imageFileIds.flatMap((id) => VARIANTS.map((v) => `variants/${id}/${v}.webp`)).sort());
    // Every file row has its object. A statement killed between writing its CSV and committing
    // its row may leave that one object without a row (removed by the store's orphan sweep): at
    // most one per statement job the dead worker had started.
    const keys = new Set(objects);
    expect(files.filter((f) => !keys.has(f.object_key)).map((f) => f.id)).toEqual([]);
    const rowKeys = new Set(files.map((f) => f.object_key));
    const orphans = objects.filter((k) => !k.startsWith('variants/') && !rowKeys.has(k));
    expect(orphans.length).toBeLessThanOrEqual(runningAtKill.filter((j) => j.kind === 'statement.monthly').length);

    // The API says the same of the jobs the dead worker had in hand.
    for (const job of runningAtKill) {
      const view = await api.expectStatus(200, 'GET', `/jobs/${job.id}`);
      expect(view, job.id).toMatchObject({ job_id: job.id, kind: job.kind, state: 'completed', attempts: 2, error: null });
    }

    await stop(second);
    await stop(server.proc);

    const pickups = runningAtKill.map((j) => {
      const done = finalJobs.find((f) => f.id === j.id) as JobRow;
      return `${j.kind} …${j.id.slice(-6)} completed ${((done.updated_at.getTime() - killedAt) / 1000).toFixed(1)} s after the kill`;
    });
    const note =
      `${backend.name}: killed with ${JSON.stringify(atKill)} in the jobs table (${runningAtKill.length} running: ` +
      `${runningAtKill.filter((j) => j.kind === 'statement.monthly').length} statements, ${runningAtKill.filter((j) => j.kind === 'image.variants').length} images` +
      `${bossActive === null ? '' : `; pg-boss active ${bossActive}`}); ${pickups.join('; ')}; ` +
      `all ${finalJobs.length} completed ${((recoveredAt - killedAt) / 1000).toFixed(1)} s after the kill; ` +
      `${orphans.length} orphan statement object(s); whole test ${((Date.now() - started) / 1000).toFixed(1)} s`;
    console.log(`worker-kill: ${note}`);
    await annotate(note);
  } finally {
    for (const proc of procs) await proc.kill();
    await pool.end();
    await db.drop();
    if (backend.amqpUrl && AMQP_UP) await cleanBrokers(prefix, JOB_KINDS);
  }
}
