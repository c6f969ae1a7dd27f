import { sql } from 'kysely';
import sharp from 'sharp';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WorkerHost } from '../../src/workers/host.ts';
import type { Config } from '../../src/config.ts';
import { JOB_KINDS } from '../../src/services/async-ops.ts';
import { startTestApp, customerKey, type TestApp } from '../support/app.ts';
import { AMQP_UP, AMQP_URL, cleanBrokers, NATS_UP, NATS_URL } from '../support/brokers.ts';
import { ENGINES, POSTGRES_UP, REQUIRE_SERVICES, type EngineName } from '../support/engines.ts';
import { until } from '../support/until.ts';

/** A 2000×1500 PNG with a pattern, so that its encodings are realistic. */
async function png(width = 2000, height = 1500): Promise<Buffer> {
  const raw = Buffer.alloc(width * height * 3);
  for (let i = 0; i < raw.length; i++) raw[i] = (i * 7 + (i >> 11) * 13) & 0xff;
  return sharp(raw, { raw: { width, height, channels: 3 } }).png().toBuffer();
}

const silent = pino({ level: 'silent' });

/**
 * The [async] roles end to end on each engine, with the default backends (pg-boss and the log
 * table on the app's database): image variants, monthly statements, the audit log and its rebuild.
 * The app runs with `worker: false` (as `serve --no-worker`) so that the tests see jobs waiting,
 * and start the background workers themselves when they want them to run.
 */
/** The default backends on each engine; RabbitMQ and NATS (on PostgreSQL when it answers) when their URLs answer. */
const PREFIX = `test-async-${process.pid}`;
const RUNS: Array<{ label: string; engine: EngineName; overrides: Partial<Config> }> = ENGINES.map((engine) => ({
  label: `${engine}, pg-boss and the event log`,
  engine,
  overrides: {},
}));
if ((AMQP_UP && NATS_UP) || REQUIRE_SERVICES) {
  const engine: EngineName = POSTGRES_UP ? 'postgres' : 'pglite';
  RUNS.push({
    label: `${engine}, RabbitMQ and NATS JetStream`,
    engine,
    overrides: {
      broker: {
        queue: { kind: 'rabbitmq', url: AMQP_URL ?? 'amqp://missing' },
        stream: { kind: 'nats', url: NATS_URL ?? 'nats://missing' },
        prefix: PREFIX,
        jobConcurrency: 2,
        jobMaxAttempts: 5,
      },
    },
  });
} else {
  console.warn('async suite on RabbitMQ and NATS skipped: set AMQP_URL and NATS_URL to run it');
}

for (const { label, engine, overrides } of RUNS) {
  describe(`background jobs and events (${label})`, () => {
    let t: TestApp;
    let workers: WorkerHost | null = null;
    let image: Buffer;
    beforeAll(async () => {
      image = await png();
      t = await startTestApp(engine, `async-${label}`, overrides, silent, { worker: false });
    });
    afterAll(async () => {
      await workers?.stop();
      await t?.close();
      if (overrides.broker) await cleanBrokers(PREFIX, JOB_KINDS);
    });
    /** Runs the shared workers (relay, dispatcher, job handlers, audit) as `databank worker` would. */
    const startWorkers = () => {
      if (workers) return;
      workers = new WorkerHost(t.app.background.workers({ shared: true }), { logger: silent });
      workers.start();
    };
    const upload = (customer: number, body: Buffer, name: string) =>
      t.app.http.inject({
        method: 'POST',
        url: `/customers/${customer}/files?filename=${name}`,
        headers: { ...t.admin, 'content-type': 'application/octet-stream' },
        payload: body,
      });
    const getFile = async (id: number) => (await t.app.http.inject({ method: 'GET', url: `/files/${id}`, headers: t.admin })).json();
    const jobOf = async (fileId: number) =>
      t.app.sql.db.selectFrom('jobs').selectAll().where(sql<boolean>`payload ->> 'file_id' = ${String(fileId)}`).executeTakeFirstOrThrow();

    it('an image upload answers at once with three pending variants; the job makes them, never larger than the original', async () => {
      const res = await upload(1, image, 'photo.png');
      expect(res.statusCode).toBe(201);
      const file = res.json();
      const pending = { status: 'pending', content_type: 'image/webp', width: null, height: null, size: null };
      expect(file.variants).toEqual([
        { name: 'web', ...pending },
        { name: 'mobile', ...pending },
        { name: 'thumbnail', ...pending },
      ]);
      // Nothing runs the job yet: the variant is not there, and the job waits.
      const early = await t.app.http.inject({ method: 'GET', url: `/files/${file.file_id}/variants/web`, headers: t.admin });
      expect(early.statusCode).toBe(404);
      expect(early.json().code).toBe('DATABANK_ERR_NOT_FOUND');
      const job = await jobOf(file.file_id);
      expect({ kind: job.kind, state: job.state, attempts: job.attempts }).toEqual({ kind: 'image.variants', state: 'queued', attempts: 0 });

      startWorkers();
      const ready = await until(() => getFile(file.file_id), (f) => f.variants.every((v: { status: string }) => v.status === 'ready'), {
        what: 'variants ready',
      });
      expect(ready.variants.map((v: { name: string; width: number; height: number }) => [v.name, v.width, v.height])).toEqual([
        ['web', 1280, 960],
        ['mobile', 640, 480],
        ['thumbnail', 160, 120],
      ]);
      const original = await t.app.http.inject({ method: 'GET', url: `/files/${file.file_id}/content`, headers: t.admin });
      for (const v of ready.variants as Array<{ name: string; width: number; height: number; size: number }>) {
        const got = await t.app.http.inject({ method: 'GET', url: `/files/${file.file_id}/variants/${v.name}`, headers: t.admin });
        expect(got.statusCode).toBe(200);
        expect(got.headers['content-type']).toBe('image/webp');
        expect(Number(got.headers['content-length'])).toBe(v.size);
        expect(got.rawPayload.length).toBe(v.size);
        for (const h of ['cache-control', 'x-content-type-options', 'content-security-policy', 'cross-origin-resource-policy', 'accept-ranges']) {
          expect([h, got.headers[h]]).toEqual([h, original.headers[h]]);
        }
        expect(got.headers['content-disposition']).toBe(`attachment; filename="photo.${v.name}.webp"; filename*=UTF-8''photo.${v.name}.webp`);
        const meta = await sharp(got.rawPayload).metadata();
        expect([meta.format, meta.width, meta.height]).toEqual(['webp', v.width, v.height]);
        // A conditional GET with the ETag is a 304, as for the original.
        const again = await t.app.http.inject({
          method: 'GET',
          url: `/files/${file.file_id}/variants/${v.name}`,
          headers: { ...t.admin, 'if-none-match': got.headers.etag as string },
        });
        expect(again.statusCode).toBe(304);
      }
      const done = await jobOf(file.file_id);
      expect({ state: done.state, attempts: done.attempts }).toEqual({ state: 'completed', attempts: 1 });
      // The handler's record of the job commits with the variants.
      const processed = await t.app.sql.db.selectFrom('processed_messages').selectAll().where('message_id', '=', done.id).execute();
      expect(processed.map((p) => p.consumer)).toEqual(['image.variants']);
    });

    it('a small image keeps its size in every variant but the thumbnail', async () => {
      const small = await sharp({ create: { width: 300, height: 200, channels: 3, background: '#3366cc' } }).gif().toBuffer();
      const file = (await upload(2, small, 'small.gif')).json();
      startWorkers();
      const ready = await until(() => getFile(file.file_id), (f) => f.variants.every((v: { status: string }) => v.status === 'ready'), {
        what: 'variants ready',
      });
      expect(ready.variants.map((v: { width: number; height: number }) => [v.width, v.height])).toEqual([
        [300, 200],
        [300, 200],
        [160, 107],
      ]);
    });

    it('a text file gets no variants and no job', async () => {
      const res = await upload(1, Buffer.from('hello\n'), 'note.txt');
      expect(res.json().variants).toEqual([]);
      const v = await t.app.http.inject({ method: 'GET', url: `/files/${res.json().file_id}/variants/web`, headers: t.admin });
      expect(v.statusCode).toBe(404);
      const bad = await t.app.http.inject({ method: 'GET', url: `/files/${res.json().file_id}/variants/huge`, headers: t.admin });
      expect([bad.statusCode, bad.json().code]).toEqual([400, 'DATABANK_ERR_VALIDATION']);
    });

    it('a file deleted while its job waits leaves no variant behind', async () => {
      await workers?.stop();
      workers = null;
      const file = (await upload(3, image, 'gone.png')).json();
      const del = await t.app.http.inject({ method: 'DELETE', url: `/files/${file.file_id}`, headers: t.admin });
      expect(del.statusCode).toBe(204);
      const job = await jobOf(file.file_id).catch(() => null);
      // The job row stays (it belongs to the customer, not the file) and completes with nothing made.
      expect(job?.state).toBe('queued');
      startWorkers();
      const done = await until(
        () => t.app.sql.db.selectFrom('jobs').select(['state', 'result']).where('id', '=', job?.id as string).executeTakeFirstOrThrow(),
        (j) => j.state === 'completed',
        { what: 'job completed' },
      );
      expect(done.result).toEqual({ file_id: file.file_id, variants: [] });
      const left = [];
      for await (const o of t.app.files.list(`variants/${file.file_id}/`)) left.push(o.key);
      expect(left).toEqual([]);
      expect(await t.app.sql.db.selectFrom('file_variants').selectAll().where('file_id', '=', file.file_id).execute()).toEqual([]);
    });

    it('a monthly statement is a job whose result names a CSV in the customer’s files', async () => {
      startWorkers();
      const key = await customerKey(t, 2);
      const opened = await t.app.http.inject({ method: 'POST', url: '/customers/2/accounts', headers: t.admin, payload: { account_type: 'savings' } });
      const account = opened.json().account_id as number;
      for (const [kind, amount] of [
        ['deposits', 1000],
        ['deposits', 250],
        ['withdrawals', 300],
      ] as const) {
        const r = await t.app.http.inject({ method: 'POST', url: `/accounts/${account}/${kind}`, headers: t.admin, payload: { amount } });
        expect(r.statusCode).toBe(201);
      }
      const month = new Date().toISOString().slice(0, 7);
      const asked = await t.app.http.inject({ method: 'POST', url: `/accounts/${account}/statements`, headers: key, payload: { month } });
      expect(asked.statusCode).toBe(202);
      const { job_id: jobId, state } = asked.json();
      expect(state).toBe('queued');
      expect(asked.headers.location).toBe(`/jobs/${jobId}`);
      const job = await until(
        async () => (await t.app.http.inject({ method: 'GET', url: `/jobs/${jobId}`, headers: key })).json(),
        (j) => j.state === 'completed',
        { what: 'statement job completed' },
      );
      expect(job).toMatchObject({ job_id: jobId, kind: 'statement.monthly', state: 'completed', attempts: 1, error: null });
      expect(job.result).toMatchObject({ account_id: account, month, entries: 3, opening_balance: 0, closing_balance: 950 });
      const csv = await t.app.http.inject({ method: 'GET', url: `/files/${job.result.file_id}/content`, headers: key });
      expect(csv.statusCode).toBe(200);
      expect(csv.headers['content-type']).toBe('text/csv');
      const lines = csv.body.trimEnd().split('\r\n');
      expect(lines[0]).toBe('entry_id,transaction_id,created_at,kind,reference,currency,amount,balance');
      expect(lines.slice(1).map((l) => l.split(',').slice(3))).toEqual([
        ['deposit', '', 'USD', '1000', '1000'],
        ['deposit', '', 'USD', '250', '1250'],
        ['withdrawal', '', 'USD', '-300', '950'],
      ]);
      const meta = (await t.app.http.inject({ method: 'GET', url: `/files/${job.result.file_id}`, headers: key })).json();
      expect(meta).toMatchObject({ customer_id: 2, filename: `statement-${account}-${month}.csv`, content_type: 'text/csv', variants: [] });
      // Another customer's job is a 404, like a missing one; a month not begun is a 400.
      const other = await customerKey(t, 3);
      const hidden = await t.app.http.inject({ method: 'GET', url: `/jobs/${jobId}`, headers: other });
      expect([hidden.statusCode, hidden.json().code]).toEqual([404, 'DATABANK_ERR_NOT_FOUND']);
      const notMine = await t.app.http.inject({ method: 'POST', url: `/accounts/${account}/statements`, headers: other, payload: { month } });
      expect([notMine.statusCode, notMine.json().code]).toEqual([404, 'DATABANK_ERR_NOT_FOUND']);
      const future = await t.app.http.inject({ method: 'POST', url: `/accounts/${account}/statements`, headers: key, payload: { month: '2999-01' } });
      expect([future.statusCode, future.json().code]).toEqual([400, 'DATABANK_ERR_VALIDATION']);
      const malformed = await t.app.http.inject({ method: 'POST', url: `/accounts/${account}/statements`, headers: key, payload: { month: '2026-13' } });
      expect([malformed.statusCode, malformed.json().code]).toEqual([400, 'DATABANK_ERR_VALIDATION']);
      const badId = await t.app.http.inject({ method: 'GET', url: '/jobs/not-a-uuid', headers: key });
      expect([badId.statusCode, badId.json().code]).toEqual([400, 'DATABANK_ERR_VALIDATION']);
    });

    it("the activity log holds a customer's own events, newest first, paged; a rebuild from the stream gives the same log", async () => {
      startWorkers();
      const reg = await t.app.http.inject({ method: 'POST', url: '/customers', headers: t.admin, payload: { name: 'Ada Activity', date_of_birth: '1990-01-01' } });
      const customer = reg.json().id as number;
      const acc = (await t.app.http.inject({ method: 'POST', url: `/customers/${customer}/accounts`, headers: t.admin, payload: { account_type: 'checking' } })).json()
        .account_id as number;
      await t.app.http.inject({ method: 'POST', url: `/accounts/${acc}/deposits`, headers: t.admin, payload: { amount: 500 } });
      const tr = await t.app.http.inject({ method: 'POST', url: '/transfers', headers: t.admin, payload: { from_account_id: acc, to_account_id: 1, amount: 200 } });
      expect(tr.statusCode).toBe(201);
      await t.app.http.inject({ method: 'POST', url: `/accounts/${acc}/withdrawals`, headers: t.admin, payload: { amount: 100 } });
      const fee = await t.app.http.inject({ method: 'POST', url: '/fees', headers: t.admin, payload: { amount: 1, reference: `fee-async-${engine}${overrides.broker ? '-brokers' : ''}` } });
      expect(fee.statusCode).toBe(200);
      const file = (await upload(customer, Buffer.from('x\n'), 'a.txt')).json();
      await t.app.http.inject({ method: 'DELETE', url: `/files/${file.file_id}`, headers: t.admin });
      const key = await customerKey(t, customer);
      const expected = ['file.deleted', 'file.uploaded', 'fee.charged', 'money.withdrawn', 'transfer.completed', 'money.deposited', 'account.opened', 'customer.registered'];
      const page = await until(
        async () => (await t.app.http.inject({ method: 'GET', url: `/customers/${customer}/activity`, headers: key })).json(),
        (p) => p.result.length === expected.length,
        { what: 'activity projected' },
      );
      expect(page.result.map((e: { type: string }) => e.type)).toEqual(expected);
      expect(page.next_cursor).toBeNull();
      const transfer = page.result.find((e: { type: string }) => e.type === 'transfer.completed');
      expect(transfer.payload).toMatchObject({ from_account_id: acc, to_account_id: 1, amount: 200, currency: 'USD' });
      const deposited = page.result.find((e: { type: string }) => e.type === 'money.deposited');
      expect(deposited.payload).toEqual({
        account_id: acc,
        customer_id: customer,
        amount: 500,
        currency: 'USD',
        transaction_id: expect.any(Number),
        created_at: expect.stringMatching(/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/),
      });
      const charged = page.result.find((e: { type: string }) => e.type === 'fee.charged');
      expect(charged.payload).toMatchObject({ account_id: acc, customer_id: customer, amount: 1, currency: 'USD' });
      // The other side of the transfer sees it too; nobody sees another customer's activity.
      const one = (await t.app.http.inject({ method: 'GET', url: '/customers/1/activity?limit=100', headers: t.admin })).json();
      expect(one.result.map((e: { event_id: string }) => e.event_id)).toContain(transfer.event_id);
      const peek = await t.app.http.inject({ method: 'GET', url: '/customers/1/activity', headers: key });
      expect([peek.statusCode, peek.json().code]).toEqual([404, 'DATABANK_ERR_NOT_FOUND']);
      // Pages of 3 walk the same list.
      const walked: string[] = [];
      let cursor: string | null = null;
      do {
        const p: { result: Array<{ type: string }>; next_cursor: string | null } = (
          await t.app.http.inject({ method: 'GET', url: `/customers/${customer}/activity?limit=3${cursor ? `&cursor=${cursor}` : ''}`, headers: key })
        ).json();
        walked.push(...p.result.map((e) => e.type));
        cursor = p.next_cursor;
      } while (cursor);
      expect(walked).toEqual(expected);
      const badCursor = await t.app.http.inject({ method: 'GET', url: `/customers/${customer}/activity?cursor=AAAA`, headers: key });
      expect([badCursor.statusCode, badCursor.json().code]).toEqual([400, 'DATABANK_ERR_INVALID_CURSOR']);

      // Going back in time: drop the projection and rebuild it from the stream's start.
      const projection = () =>
        t.app.sql.db.selectFrom('audit_events').selectAll().orderBy('customer_id').orderBy('event_id').execute();
      await until(
        async () => (await t.app.background.stream.groups()).find((g) => g.group === 'audit')?.lag,
        (lag) => lag === 0,
        { what: 'audit caught up' },
      );
      const before = await projection();
      expect(before.length).toBeGreaterThan(expected.length);
      const replay = await t.app.http.inject({ method: 'POST', url: '/events/replay', headers: t.admin, payload: { group: 'audit', from: 0 } });
      expect(replay.statusCode).toBe(202);
      const head = replay.json().head as number;
      expect(head).toBe(await t.app.background.stream.head());
      await until(
        async () => (await t.app.background.stream.groups()).find((g) => g.group === 'audit')?.position ?? 0,
        (position) => position >= head,
        { what: 'audit rebuilt' },
      );
      expect(await projection()).toEqual(before);
      const customerReplay = await t.app.http.inject({ method: 'POST', url: '/events/replay', headers: key, payload: { group: 'audit' } });
      expect(customerReplay.statusCode).toBe(403);
    });

    it('every outbox event is published once, in order, with a unique UUIDv7 id', async () => {
      startWorkers();
      await until(
        async () => Number((await t.app.sql.db.selectFrom('outbox').select((eb) => eb.fn.countAll<number>().as('n')).where('published_at', 'is', null).executeTakeFirstOrThrow()).n),
        (n) => n === 0,
        { what: 'outbox drained' },
      );
      const outbox = await t.app.sql.db.selectFrom('outbox').select(['event_id', 'type']).orderBy('id').execute();
      const stream = await t.app.background.stream.read(1, 100_000);
      expect(stream.map((s) => s.event.id)).toEqual(outbox.map((o) => o.event_id));
      expect(stream.map((s) => s.seq)).toEqual(stream.map((_, i) => i + 1));
      for (const o of outbox) expect(o.event_id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
      // The demo data's registration, account and opening deposit come first.
      expect(outbox.slice(0, 2).map((o) => o.type)).toEqual(['customer.registered', 'account.opened']);
    });
  });
}
