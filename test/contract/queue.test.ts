import { randomUUID } from 'node:crypto';
import { createServer, connect as tcpConnect, type Socket } from 'node:net';
import { basename } from 'node:path';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { isDeepStrictEqual } from 'node:util';
import { connect as amqpConnect, type ChannelModel } from 'amqplib';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openJobQueue } from '../../src/stores/queue/index.ts';
import type { Job, JobHandler, JobQueue, QueueStats } from '../../src/stores/queue/port.ts';
import { openSqlStore, type SqlStore } from '../../src/stores/sql/index.ts';
import { createMigrator, unwrap } from '../../src/stores/sql/migrator.ts';
import { AMQP_UP, AMQP_URL } from '../support/brokers.ts';
import { createTestDatabase, ENGINES, POSTGRES_UP, REQUIRE_SERVICES, type EngineName, type TestDatabase } from '../support/engines.ts';

/**
 * One contract over every JobQueue: pg-boss on PGlite always, pg-boss on PostgreSQL when
 * DATABASE_URL answers, RabbitMQ when AMQP_URL answers. With REQUIRE_SERVICES=1 an unreachable
 * server fails the run instead of skipping. Every test has a prefix of its own (file name, pid,
 * counter), so parallel runs on one broker never meet, and deletes its RabbitMQ queues after.
 */
if (!AMQP_UP) {
  console.warn(
    AMQP_URL
      ? 'RabbitMQ queue suites skipped: AMQP_URL does not answer'
      : 'RabbitMQ queue suites skipped: set AMQP_URL (e.g. amqp://guest:guest@127.0.0.1:5672) to run them',
  );
}

const FILE = basename(fileURLToPath(import.meta.url), '.test.ts');
let tests = 0;
/** A prefix no other test, file or parallel run uses. */
const nextPrefix = () => `test-${FILE}.p${process.pid}.t${++tests}`;

/** Every delay this file uses (retries and delayed sends): the RabbitMQ delay queues to delete. */
const DELAYS = [100, 200, 300, 400];
const QUEUES = ['jobs'];

/** Settings for one queue instance: pg-boss takes them, RabbitMQ ignores them. */
interface Tuning {
  readonly expireInSeconds?: number;
  readonly heartbeatMs?: number;
  readonly maintenanceIntervalSeconds?: number;
  readonly onError?: (err: Error) => void;
}

interface Backend {
  open(prefix: string, tuning?: Tuning): Promise<JobQueue>;
  /**
   * A queue whose consumer can die without answering: `crash()` is what kills it. On RabbitMQ its
   * connection goes through a proxy that is cut; on pg-boss its heartbeat is off and the expiry
   * is 1 s, so it has died as far as the database can tell once it stops answering.
   */
  openMortal(prefix: string): Promise<{ queue: JobQueue; crash(): void }>;
  /** The tuning of the survivor in the crash test: a maintenance quick enough to see the expiry. */
  readonly survivor: Tuning;
  /** The SQL store of a pg-boss backend (null on RabbitMQ). */
  readonly store: SqlStore | null;
  /** RabbitMQ only: a proxy to the broker, to cut the network between a queue and it. */
  readonly proxy?: () => Promise<Proxy>;
  cleanup(prefix: string): Promise<void>;
  stop(): Promise<void>;
}

interface Target {
  readonly title: string;
  readonly kind: JobQueue['kind'];
  /** Why it does not run here, or null when it does. */
  readonly skip: string | null;
  start(): Promise<Backend>;
}

const QUICK_EXPIRY: Tuning = { expireInSeconds: 1, heartbeatMs: 200, maintenanceIntervalSeconds: 1 };

function pgBossTarget(engine: EngineName): Target {
  const title = `pg-boss on ${engine === 'pglite' ? 'PGlite' : 'PostgreSQL'}`;
  const needs = 'set DATABASE_URL (e.g. postgres://postgres@127.0.0.1:5432/test) to run it';
  const up = engine === 'pglite' || POSTGRES_UP;
  return {
    title,
    kind: 'postgres',
    skip: (up ? ENGINES.includes(engine) : REQUIRE_SERVICES) ? null : up ? 'left out by DATABANK_ENGINES' : needs,
    async start() {
      if (!up) throw new Error(`REQUIRE_SERVICES=1 but no PostgreSQL answers (${needs})`);
      const db: TestDatabase = await createTestDatabase(engine, `queue-contract-${engine}`);
      const store = await openSqlStore(db.sql);
      unwrap(await createMigrator(store.db).migrateToLatest());
      const open = (prefix: string, tuning: Tuning = {}) => openJobQueue({ kind: 'postgres', store, prefix, ...tuning });
      return {
        open,
        async openMortal(prefix) {
          return { queue: await open(prefix, { ...QUICK_EXPIRY, heartbeatMs: 0 }), crash: () => undefined };
        },
        survivor: QUICK_EXPIRY,
        store,
        cleanup: async () => undefined,
        async stop() {
          await store.close();
          await db.drop();
        },
      };
    },
  };
}

/**
 * A TCP proxy to the broker, as a network between the queue and RabbitMQ: `block()` cuts every
 * connection and refuses new ones (counted in `refused`) until `unblock()`; `cut()` ends it all,
 * as a killed worker's connections end.
 */
interface Proxy {
  readonly url: string;
  readonly refused: number;
  block(): void;
  unblock(): void;
  cut(): void;
}

async function proxyTo(url: URL): Promise<Proxy> {
  const sockets = new Set<Socket>();
  let blocked = false;
  let refused = 0;
  const track = (socket: Socket) => {
    sockets.add(socket);
    socket.on('error', () => undefined);
    socket.on('close', () => sockets.delete(socket));
  };
  const server = createServer((client) => {
    track(client);
    if (blocked) {
      refused++;
      return void client.destroy();
    }
    const upstream = tcpConnect(Number(url.port || 5672), url.hostname);
    track(upstream);
    client.pipe(upstream).pipe(client);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  const proxied = new URL(url);
  proxied.hostname = '127.0.0.1';
  proxied.port = String(typeof address === 'object' && address ? address.port : 0);
  const dropAll = () => {
    for (const socket of sockets) socket.destroy();
  };
  return {
    url: proxied.toString(),
    get refused() {
      return refused;
    },
    block() {
      blocked = true;
      dropAll();
    },
    unblock() {
      blocked = false;
    },
    cut() {
      server.close();
      dropAll();
    },
  };
}

const rabbitTarget: Target = {
  title: 'RabbitMQ',
  kind: 'rabbitmq',
  skip: AMQP_UP || REQUIRE_SERVICES ? null : 'set AMQP_URL (e.g. amqp://guest:guest@127.0.0.1:5672) to run it',
  async start() {
    if (!AMQP_UP || !AMQP_URL) throw new Error('REQUIRE_SERVICES=1 but no RabbitMQ answers (set AMQP_URL, e.g. amqp://guest:guest@127.0.0.1:5672)');
    const url = AMQP_URL;
    const admin: ChannelModel = await amqpConnect(url);
    admin.on('error', () => undefined);
    const proxies: Proxy[] = [];
    const proxy = async () => {
      const made = await proxyTo(new URL(url));
      proxies.push(made);
      return made;
    };
    return {
      open: (prefix, tuning = {}) => openJobQueue({ kind: 'rabbitmq', url, prefix, sendTimeoutMs: 5_000, onError: tuning.onError }),
      async openMortal(prefix) {
        const { url: proxied, cut } = await proxy();
        return { queue: await openJobQueue({ kind: 'rabbitmq', url: proxied, prefix }), crash: cut };
      },
      proxy,
      survivor: {},
      store: null,
      async cleanup(prefix) {
        const channel = await admin.createChannel();
        for (const queue of QUEUES) {
          const main = `${prefix}.${queue}`;
          for (const name of [main, `${main}.dlq`, ...DELAYS.map((ms) => `${main}.delay.${ms}`)]) await channel.deleteQueue(name);
        }
        await channel.close();
      },
      async stop() {
        for (const made of proxies) made.cut();
        await admin.close();
      },
    };
  },
};

const TARGETS: readonly Target[] = [pgBossTarget('pglite'), pgBossTarget('postgres'), rabbitTarget];

function deferred<T = void>() {
  let resolve!: (value: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

/** Waits for `promise`, failing with `what` if it takes longer than a loaded machine ever should. */
async function within<T>(promise: Promise<T>, what: string, ms = 20_000): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms)));
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Polls `read` until it answers `expected` (the broker's counts lag a little), then asserts it. */
async function eventually<T>(read: () => Promise<T>, expected: T, what: string, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  let last = await read();
  while (!isDeepStrictEqual(last, expected) && Date.now() < deadline) {
    await sleep(25);
    last = await read();
  }
  expect(last, what).toEqual(expected);
}

const counts = (stats: QueueStats) => ({ waiting: stats.waiting, delayed: stats.delayed, active: stats.active, deadLetters: stats.deadLetters });
const EMPTY = { waiting: 0, delayed: 0, active: 0, deadLetters: 0 };

/** A running consumer and the way to stop it. */
function consumer<T>(queue: JobQueue, name: string, handler: JobHandler<T>, prefetch = 1) {
  const controller = new AbortController();
  const done = queue.consume(name, handler, { prefetch, signal: controller.signal });
  return {
    controller,
    done,
    async stop() {
      controller.abort();
      await within(done, 'the consumer to stop');
    },
  };
}

describe.each(TARGETS)('job queue contract: $title', (target) => {
  const test = target.skip ? it.skip : it;
  let backend: Backend;

  beforeAll(async () => {
    if (!target.skip) backend = await target.start();
  });
  afterAll(async () => {
    await backend?.stop();
  });

  /** Runs `body` with a queue of its own, closed and cleaned up after. */
  async function withQueue(body: (queue: JobQueue, prefix: string) => Promise<void>): Promise<void> {
    const prefix = nextPrefix();
    const errors: Error[] = [];
    const queue = await backend.open(prefix, { onError: (err) => errors.push(err) });
    try {
      await body(queue, prefix);
    } finally {
      await queue.close();
      await backend.cleanup(prefix);
    }
    // Background work (maintenance, heartbeats, acknowledgements, connections) went without a fault.
    expect(errors.map((e) => e.message)).toEqual([]);
  }

  if (target.skip) test(`(skipped: ${target.skip})`, () => undefined);

  test('delivers a job once, with its payload, id and attempt 1, and acknowledges it', async () => {
    await withQueue(async (queue) => {
      await queue.declare('jobs');
      const payload = { transferId: 42, note: 'é €' };
      const id = await queue.send('jobs', payload, { priority: 3 });
      expect(id).toMatch(/^[0-9a-f-]{36}$/);
      expect(counts(await queue.stats('jobs'))).toEqual({ ...EMPTY, waiting: 1 });
      const seen: Job[] = [];
      const first = deferred();
      const c = consumer(queue, 'jobs', async (job) => {
        seen.push(job);
        first.resolve();
      });
      await within(first.promise, 'the delivery');
      await c.stop();
      expect(seen).toEqual([{ id, queue: 'jobs', payload, attempt: 1, priority: 3 }]);
      await eventually(async () => counts(await queue.stats('jobs')), EMPTY, 'stats after the acknowledgement');
    });
  });

  test('a send with an id the queue holds adds nothing on PostgreSQL; RabbitMQ delivers both', async () => {
    await withQueue(async (queue) => {
      const id = randomUUID();
      expect(await queue.send('jobs', { n: 1 }, { id })).toBe(id);
      expect(await queue.send('jobs', { n: 2 }, { id })).toBe(id);
      const expected = target.kind === 'postgres' ? [{ id, n: 1 }] : [{ id, n: 1 }, { id, n: 2 }];
      const seen: Array<{ id: string; n: number }> = [];
      const all = deferred();
      const c = consumer<{ n: number }>(queue, 'jobs', async (job) => {
        seen.push({ id: job.id, n: job.payload.n });
        if (seen.length === expected.length) all.resolve();
      });
      await within(all.promise, 'the deliveries');
      await c.stop();
      // Sent after the duplicates: a duplicate still in the queue would come before it.
      const markerId = await queue.send('jobs', { n: 0 });
      const marker = deferred<string>();
      const c2 = consumer(queue, 'jobs', async (job) => marker.resolve(job.id));
      expect(await within(marker.promise, 'the marker job')).toBe(markerId);
      await c2.stop();
      expect(seen).toEqual(expected);
    });
  });

  test('two processes consuming one queue never run a job twice: each of 60 jobs once', async () => {
    await withQueue(async (queue, prefix) => {
      // A second instance on the same queue names stands for a second worker process.
      const other = await backend.open(prefix);
      try {
        await queue.declare('jobs');
        const ids: string[] = [];
        for (let i = 0; i < 60; i++) ids.push(await queue.send('jobs', { i }));
        const runs = new Map<string, number>();
        let running = 0;
        const all = deferred();
        const handler: JobHandler = async (job) => {
          runs.set(job.id, (runs.get(job.id) ?? 0) + 1);
          running++;
          await new Promise((resolve) => setImmediate(resolve));
          running--;
          if (runs.size === ids.length) all.resolve();
        };
        const consumers = [consumer(queue, 'jobs', handler, 4), consumer(other, 'jobs', handler, 4)];
        await within(all.promise, 'every job');
        await Promise.all(consumers.map((c) => c.stop()));
        expect([...runs.keys()].sort()).toEqual([...ids].sort());
        expect([...runs.values()].every((n) => n === 1)).toBe(true);
        expect(running).toBe(0);
      } finally {
        await other.close();
      }
    });
  });

  test('refuses bad names and options before sending anything', async () => {
    await withQueue(async (queue) => {
      await expect(queue.send('jobs', {}, { priority: 10 })).rejects.toThrow('priority must be an integer from 0 to 9, got 10');
      await expect(queue.send('jobs', {}, { id: 'job-1' })).rejects.toThrow('job id must be a UUID, got "job-1"');
      await expect(queue.send('jobs', {}, { delayMs: -1 })).rejects.toThrow('delayMs must be a number ≥ 0, got -1');
      await expect(queue.send('jobs.dlq', {})).rejects.toThrow('may not contain the segments "dlq" or "delay"');
      await expect(queue.send('bad name', {})).rejects.toThrow('must be dot-separated words');
      await expect(queue.declare('jobs', { maxAttempts: 0 })).rejects.toThrow('maxAttempts must be an integer from 1 to 1000, got 0');
      await expect(queue.consume('jobs', async () => undefined, { prefetch: 0, signal: AbortSignal.abort() })).rejects.toThrow(
        'prefetch must be an integer from 1 to 1000, got 0',
      );
      await expect(queue.deadLetters('jobs', -1)).rejects.toThrow('limit must be an integer ≥ 0, got -1');
      expect(counts(await queue.stats('jobs'))).toEqual(EMPTY);
    });
  });

  test('never runs more handlers at once than the prefetch, and reaches it', async () => {
    await withQueue(async (queue) => {
      const prefetch = 3;
      const sent = await Promise.all(Array.from({ length: 10 }, (_, n) => queue.send('jobs', { n })));
      let running = 0;
      let most = 0;
      const full = deferred();
      const handled: number[] = [];
      const all = deferred();
      const c = consumer<{ n: number }>(
        queue,
        'jobs',
        async (job) => {
          running++;
          most = Math.max(most, running);
          if (running === prefetch) full.resolve();
          // The first handlers wait for each other, so the consumer must fill every slot.
          await full.promise;
          await sleep(5);
          running--;
          handled.push(job.payload.n);
          if (handled.length === sent.length) all.resolve();
        },
        prefetch,
      );
      await within(all.promise, 'ten jobs');
      await c.stop();
      expect(most).toBe(prefetch);
      expect(handled.sort((a, b) => a - b)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    });
  });

  test('delivers higher priorities first, and one priority in the order sent', async () => {
    await withQueue(async (queue) => {
      await queue.declare('jobs');
      const sends: Array<[string, number]> = [
        ['a', 0],
        ['b', 5],
        ['c', 0],
        ['d', 9],
        ['e', 5],
        ['f', 1],
        ['g', 9],
        ['h', 0],
      ];
      for (const [name, priority] of sends) await queue.send('jobs', { name }, { priority });
      const order: string[] = [];
      const all = deferred();
      const c = consumer<{ name: string }>(queue, 'jobs', async (job) => {
        order.push(job.payload.name);
        if (order.length === sends.length) all.resolve();
      });
      await within(all.promise, 'eight jobs');
      await c.stop();
      expect(order).toEqual(['d', 'g', 'b', 'e', 'f', 'a', 'c', 'h']);
    });
  });

  test('holds a delayed job until its time', async () => {
    await withQueue(async (queue) => {
      const delayMs = 400;
      const sentAt = performance.now();
      const id = await queue.send('jobs', { late: true }, { delayMs });
      expect(counts(await queue.stats('jobs'))).toEqual({ ...EMPTY, delayed: 1 });
      const delivered = deferred<{ job: Job; at: number }>();
      const c = consumer(queue, 'jobs', async (job) => delivered.resolve({ job, at: performance.now() }));
      const { job, at } = await within(delivered.promise, 'the delayed job');
      await c.stop();
      expect(job.id).toBe(id);
      // A few ms for timer granularity; no upper bound (a loaded machine is slow, never early).
      expect(at - sentAt).toBeGreaterThanOrEqual(delayMs - 5);
      await eventually(async () => counts(await queue.stats('jobs')), EMPTY, 'stats after the delayed job');
    });
  });

  test('retries a failing job with growing delays, then dead-letters it; the others complete once', async () => {
    await withQueue(async (queue) => {
      await queue.declare('jobs', { maxAttempts: 3, retryDelayMs: 100, retryMaxDelayMs: 1_000 });
      const poison = await queue.send('jobs', { poison: true, n: -1 });
      const good = await Promise.all(Array.from({ length: 6 }, (_, n) => queue.send('jobs', { poison: false, n })));
      const attempts: Array<{ attempt: number; at: number }> = [];
      const done = new Map<string, number>();
      const c = consumer<{ poison: boolean }>(
        queue,
        'jobs',
        async (job) => {
          if (job.payload.poison) {
            attempts.push({ attempt: job.attempt, at: performance.now() });
            throw new Error(`poisoned payload, attempt ${job.attempt}`);
          }
          done.set(job.id, (done.get(job.id) ?? 0) + 1);
        },
        2,
      );
      await eventually(async () => (await queue.stats('jobs')).deadLetters, 1, 'the poison job in the dead-letter queue');
      await eventually(async () => done.size, good.length, 'the good jobs');
      await c.stop();
      expect(attempts.map((a) => a.attempt)).toEqual([1, 2, 3]);
      const [one, two, three] = attempts.map((a) => a.at) as [number, number, number];
      expect(two - one).toBeGreaterThanOrEqual(100 - 5);
      expect(three - two).toBeGreaterThanOrEqual(200 - 5);
      expect([...done.values()]).toEqual(good.map(() => 1));
      expect(new Set(done.keys())).toEqual(new Set(good));
      const dead = await queue.deadLetters('jobs', 10);
      expect(dead.map((d) => ({ id: d.id, queue: d.queue, payload: d.payload, attempts: d.attempts, error: d.error }))).toEqual([
        { id: poison, queue: 'jobs', payload: { poison: true, n: -1 }, attempts: 3, error: 'poisoned payload, attempt 3' },
      ]);
      expect(Number.isNaN(Date.parse(dead[0]?.failedAt ?? ''))).toBe(false);
      expect(counts(await queue.stats('jobs'))).toEqual({ ...EMPTY, deadLetters: 1 });
    });
  });

  test('lists, retries and purges dead letters with exact counts', async () => {
    await withQueue(async (queue) => {
      await queue.declare('jobs', { maxAttempts: 1, retryDelayMs: 100, retryMaxDelayMs: 100 });
      const ids = [];
      for (const n of [1, 2, 3]) ids.push(await queue.send('jobs', { n }));
      const failing = new Set(ids);
      const completed: Job[] = [];
      const c = consumer<{ n: number }>(queue, 'jobs', async (job) => {
        if (failing.has(job.id)) throw new Error(`job ${job.payload.n} failed`);
        completed.push(job);
      });
      await eventually(async () => (await queue.stats('jobs')).deadLetters, 3, 'three dead letters');
      const listed = await queue.deadLetters('jobs', 10);
      expect(listed.map((d) => [d.id, d.payload, d.attempts, d.error])).toEqual([
        [ids[0], { n: 1 }, 1, 'job 1 failed'],
        [ids[1], { n: 2 }, 1, 'job 2 failed'],
        [ids[2], { n: 3 }, 1, 'job 3 failed'],
      ]);
      // Listing takes nothing away, and a limit keeps the oldest.
      expect((await queue.deadLetters('jobs', 2)).map((d) => d.id)).toEqual(ids.slice(0, 2));
      expect((await queue.stats('jobs')).deadLetters).toBe(3);

      const second = ids[1] as string;
      failing.delete(second);
      expect(await queue.retryDeadLetters('jobs', [second])).toBe(1);
      await eventually(async () => completed.length, 1, 'the retried job');
      expect(completed.map((j) => [j.id, j.payload, j.attempt])).toEqual([[second, { n: 2 }, 1]]);
      expect(await queue.retryDeadLetters('jobs', [randomUUID()])).toBe(0);
      expect((await queue.deadLetters('jobs', 10)).map((d) => d.id)).toEqual([ids[0], ids[2]]);

      expect(await queue.purgeDeadLetters('jobs')).toBe(2);
      expect(await queue.deadLetters('jobs', 10)).toEqual([]);
      expect(await queue.purgeDeadLetters('jobs')).toBe(0);
      await c.stop();
      await eventually(async () => counts(await queue.stats('jobs')), EMPTY, 'stats after the purge');
    });
  });

  test('retrying every dead letter sends them all back with fresh attempts', async () => {
    await withQueue(async (queue) => {
      await queue.declare('jobs', { maxAttempts: 2, retryDelayMs: 100, retryMaxDelayMs: 100 });
      let failing = true;
      const completed: Job[] = [];
      const c = consumer<{ n: number }>(queue, 'jobs', async (job) => {
        if (failing) throw new Error('down');
        completed.push(job);
      });
      const ids = [await queue.send('jobs', { n: 1 }), await queue.send('jobs', { n: 2 })];
      await eventually(async () => (await queue.stats('jobs')).deadLetters, 2, 'two dead letters');
      failing = false;
      expect(await queue.retryDeadLetters('jobs')).toBe(2);
      await eventually(async () => completed.length, 2, 'the retried jobs');
      await c.stop();
      expect(completed.map((j) => [j.id, j.attempt]).sort()).toEqual(ids.map((id) => [id, 1]).sort());
      await eventually(async () => counts(await queue.stats('jobs')), EMPTY, 'stats after the retry');
    });
  });

  test('a job in hand when the consumer stops is finished and acknowledged, not delivered again', async () => {
    await withQueue(async (queue) => {
      const id = await queue.send('jobs', { n: 1 });
      const started = deferred<AbortSignal>();
      const finish = deferred();
      const events: string[] = [];
      const c = consumer(queue, 'jobs', async (_job, signal) => {
        started.resolve(signal);
        await finish.promise;
        events.push('handler finished');
      });
      const signal = await within(started.promise, 'the delivery');
      c.controller.abort();
      const stopped = c.done.then(() => events.push('consume resolved'));
      // The handler is told, and consume waits for it.
      expect(signal.aborted).toBe(true);
      finish.resolve();
      await within(stopped, 'consume to resolve');
      expect(events).toEqual(['handler finished', 'consume resolved']);
      await eventually(async () => counts(await queue.stats('jobs')), EMPTY, 'stats after the stop');
      // A new consumer gets nothing: only the marker sent after.
      const marker = await queue.send('jobs', { n: 2 });
      const next = deferred<string>();
      const c2 = consumer(queue, 'jobs', async (job) => next.resolve(job.id));
      expect(await within(next.promise, 'the marker')).toBe(marker);
      await c2.stop();
      expect(marker).not.toBe(id);
    });
  });

  test('a job whose worker died is delivered again, as attempt 2', async () => {
    const prefix = nextPrefix();
    const mortal = await backend.openMortal(prefix);
    const errors: Error[] = [];
    const survivor = await backend.open(prefix, { ...backend.survivor, onError: (err) => errors.push(err) });
    try {
      await mortal.queue.declare('jobs', { maxAttempts: 3, retryDelayMs: 100, retryMaxDelayMs: 100 });
      const id = await survivor.send('jobs', { n: 7 });
      const taken = deferred<Job>();
      // The dead worker's handler never answers (it is let go when the test ends).
      const dying = consumer(mortal.queue, 'jobs', async (job, signal) => {
        taken.resolve(job);
        await new Promise((resolve) => signal.addEventListener('abort', resolve, { once: true }));
      });
      expect((await within(taken.promise, 'the first delivery')).attempt).toBe(1);
      mortal.crash();
      const again = deferred<Job>();
      const c = consumer(survivor, 'jobs', async (job) => again.resolve(job));
      const job = await within(again.promise, 'the second delivery', 30_000);
      await c.stop();
      dying.controller.abort();
      await within(dying.done, 'the dead consumer to let go');
      expect({ id: job.id, payload: job.payload, attempt: job.attempt }).toEqual({ id, payload: { n: 7 }, attempt: 2 });
      await eventually(async () => counts(await survivor.stats('jobs')), EMPTY, 'stats after the redelivery');
      expect(errors.map((e) => e.message)).toEqual([]);
    } finally {
      await mortal.queue.close();
      await survivor.close();
      await backend.cleanup(prefix);
    }
  });

  if (target.kind === 'rabbitmq') {
    test('a consumer reconnects, and a send waits, while the network to the broker is down', async () => {
      const prefix = nextPrefix();
      const proxy = await (backend.proxy as () => Promise<Proxy>)();
      const errors: Error[] = [];
      const queue = await openJobQueue({ kind: 'rabbitmq', url: proxy.url, prefix, reconnectMaxDelayMs: 200, onError: (err) => errors.push(err) });
      try {
        const seen: Job[] = [];
        const first = deferred();
        const second = deferred();
        const handler = async (job: Job) => {
          seen.push(job);
          (seen.length === 1 ? first : second).resolve();
        };
        await queue.send('jobs', { n: 1 });
        const before = consumer(queue, 'jobs', handler);
        await within(first.promise, 'the job sent before the outage');
        // Stopped, so that its acknowledgement has reached the broker before the network goes.
        await before.stop();
        const c = consumer(queue, 'jobs', handler);
        proxy.block();
        await eventually(async () => errors.some((e) => /lost its channel/.test(e.message)), true, 'the consumer to notice');
        let settled = false;
        const sending = queue.send('jobs', { n: 2 }).finally(() => (settled = true));
        // Refused connections (the consumer's and the sender's) show the broker is out of reach.
        const refusedBefore = proxy.refused;
        await eventually(async () => proxy.refused >= refusedBefore + 3, true, 'reconnection attempts');
        expect(settled).toBe(false);
        proxy.unblock();
        const id = await within(sending, 'the send to go through');
        await within(second.promise, 'the job sent during the outage');
        await c.stop();
        expect(seen.map((j) => [j.payload, j.attempt])).toEqual([
          [{ n: 1 }, 1],
          [{ n: 2 }, 1],
        ]);
        expect(seen[1]?.id).toBe(id);
        await eventually(async () => counts(await queue.stats('jobs')), EMPTY, 'stats after the outage');
      } finally {
        await queue.close();
        proxy.cut();
        await backend.cleanup(prefix);
      }
    });

    test('a send rejects once the broker stays away longer than sendTimeoutMs', async () => {
      const prefix = nextPrefix();
      const proxy = await (backend.proxy as () => Promise<Proxy>)();
      const queue = await openJobQueue({ kind: 'rabbitmq', url: proxy.url, prefix, sendTimeoutMs: 300, onError: () => undefined });
      try {
        await queue.declare('jobs');
        proxy.block();
        await expect(queue.send('jobs', { n: 1 })).rejects.toThrow(/RabbitMQ did not store the job for queue jobs within 300 ms/);
      } finally {
        await queue.close();
        proxy.cut();
        await backend.cleanup(prefix);
      }
    });
  }

  if (target.kind === 'postgres') {
    test('a handler slower than the expiry keeps its job while it sends heartbeats', async () => {
      const prefix = nextPrefix();
      const errors: Error[] = [];
      const tuning = { ...QUICK_EXPIRY, onError: (err: Error) => errors.push(err) };
      const [one, two] = [await backend.open(prefix, tuning), await backend.open(prefix, tuning)];
      const store = backend.store as SqlStore;
      const maintained = async () =>
        (await sql<{ at: Date | null }>`select maintained_on as at from pgboss.version`.execute(store.db)).rows[0]?.at?.getTime() ?? 0;
      try {
        await one.declare('jobs');
        await one.send('jobs', { slow: true });
        const deliveries: Job[] = [];
        let maintenanceRuns = 0;
        const taken = deferred();
        const finished = deferred();
        const slow = consumer(one, 'jobs', async (job) => {
          deliveries.push(job);
          taken.resolve();
          // Works until the maintenance, which fails jobs 1 s after their last heartbeat, has run
          // twice since it started: without heartbeats the job would have gone to the other consumer.
          let last = await maintained();
          const deadline = Date.now() + 20_000;
          while (maintenanceRuns < 2 && Date.now() < deadline) {
            await sleep(50);
            const now = await maintained();
            if (now !== last) [maintenanceRuns, last] = [maintenanceRuns + 1, now];
          }
          finished.resolve();
        });
        await within(taken.promise, 'the slow job to start');
        // Ready to take the job the moment the maintenance would fail it.
        const other = consumer(two, 'jobs', async (job) => void deliveries.push(job));
        await within(finished.promise, 'the slow job');
        await slow.stop();
        await other.stop();
        expect(maintenanceRuns).toBe(2);
        expect(deliveries.map((j) => j.attempt)).toEqual([1]);
        expect(counts(await one.stats('jobs'))).toEqual(EMPTY);
        expect(errors.map((e) => e.message)).toEqual([]);
      } finally {
        await one.close();
        await two.close();
      }
    });
  }
});
