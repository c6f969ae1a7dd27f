import { randomUUID } from 'node:crypto';
import { sql } from 'kysely';
import { connect } from 'nats';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { openSqlStore, type SqlStore } from '../../src/stores/sql/index.ts';
import { createMigrator, unwrap } from '../../src/stores/sql/migrator.ts';
import { openEventStream, type Delivery, type EventStream, type StreamEvent, type Subscription } from '../../src/stores/stream/index.ts';
import { NATS_UP, NATS_URL } from '../support/brokers.ts';
import { createTestDatabase, DATABASE_URL, ENGINES, POSTGRES_UP, REQUIRE_SERVICES, type TestDatabase } from '../support/engines.ts';

/**
 * One contract over every EventStream: the log table on PGlite always and on PostgreSQL when
 * DATABASE_URL answers (DATABANK_ENGINES narrows these two, as everywhere); NATS JetStream when
 * NATS_URL answers. With REQUIRE_SERVICES=1 an unreachable server fails the run instead of skipping.
 */
const NEEDS_NATS = NATS_URL ? 'NATS_URL does not answer' : 'set NATS_URL (e.g. nats://127.0.0.1:4222, JetStream enabled) to run it';
const WANTS_POSTGRES = !process.env.DATABANK_ENGINES || process.env.DATABANK_ENGINES.split(',').some((e) => e.trim() === 'postgres');
const NEEDS_POSTGRES = !WANTS_POSTGRES
  ? 'DATABANK_ENGINES leaves it out'
  : DATABASE_URL
    ? 'DATABASE_URL does not answer'
    : 'set DATABASE_URL (e.g. postgres://postgres@127.0.0.1:5432/test) to run it';

/** What one test gets: a stream with nothing in it, made with the test's own options. */
interface Harness {
  open(options?: { readonly ackWaitMs?: number }): Promise<EventStream>;
  /** Removes what `open` made (the caller has closed the stream). */
  discard(): Promise<void>;
  close(): Promise<void>;
}

/** A suite's title says why it does not run: skipped, or failing because REQUIRE_SERVICES=1. */
function titled(name: string, available: boolean, runs: boolean, reason: string): string {
  return available ? name : `${name} (${runs ? 'required, failing' : 'skipped'}: ${reason})`;
}

interface Target {
  readonly title: string;
  readonly runs: boolean;
  start(): Promise<Harness>;
}

/** The log in a migrated database; each test starts from empty tables. */
async function sqlHarness(store: SqlStore, drop: () => Promise<void>): Promise<Harness> {
  unwrap(await createMigrator(store.db).migrateToLatest());
  return {
    open: (options = {}) => openEventStream({ kind: 'postgres', store, ...options }),
    async discard() {
      await sql`truncate event_log, stream_groups`.execute(store.db);
    },
    async close() {
      await store.close();
      await drop();
    },
  };
}

/** Each test its own stream, named from this file, the process and a counter, deleted after. */
async function natsHarness(): Promise<Harness> {
  if (!NATS_URL || !NATS_UP) throw new Error(`REQUIRE_SERVICES=1 but NATS at NATS_URL does not answer (${NEEDS_NATS})`);
  const admin = await connect({ servers: NATS_URL });
  const jsm = await admin.jetstreamManager();
  let tests = 0;
  let prefix = '';
  return {
    open(options = {}) {
      prefix = `stream_contract_${process.pid}_${++tests}`;
      return openEventStream({ kind: 'nats', url: NATS_URL as string, prefix, ...options });
    },
    async discard() {
      if (!prefix) return;
      const name = `${prefix}_events`;
      prefix = '';
      await jsm.streams.delete(name);
    },
    close: () => admin.close(),
  };
}

const POSTGRES_RUNS = WANTS_POSTGRES && (POSTGRES_UP || REQUIRE_SERVICES);
const NATS_RUNS = NATS_UP || REQUIRE_SERVICES;

const TARGETS: readonly Target[] = [
  {
    title: titled('postgres log on PGlite', ENGINES.includes('pglite'), false, 'DATABANK_ENGINES leaves it out'),
    runs: ENGINES.includes('pglite'),
    start: async () => sqlHarness(await openSqlStore({ kind: 'pglite', dataDir: null }), async () => undefined),
  },
  {
    title: titled('postgres log on PostgreSQL', ENGINES.includes('postgres'), POSTGRES_RUNS, NEEDS_POSTGRES),
    runs: POSTGRES_RUNS,
    async start() {
      if (!POSTGRES_UP) throw new Error(`REQUIRE_SERVICES=1 but no PostgreSQL answers (${NEEDS_POSTGRES})`);
      const db: TestDatabase = await createTestDatabase('postgres', 'stream-contract');
      return sqlHarness(await openSqlStore(db.sql), () => db.drop());
    },
  },
  {
    title: titled('NATS JetStream', NATS_UP, NATS_RUNS, NEEDS_NATS),
    runs: NATS_RUNS,
    start: natsHarness,
  },
];

let made = 0;

/** `n` events of the shape the outbox writes, with payloads that JSON must carry unchanged. */
function events(n: number, type = 'transfer.completed'): StreamEvent[] {
  return Array.from({ length: n }, () => {
    const i = ++made;
    return {
      id: randomUUID(),
      type,
      version: 1,
      occurred_at: new Date(Date.UTC(2026, 11, 1, 12, 0, i % 60)).toISOString(),
      aggregate_id: `transfer-${i}`,
      customer_ids: [i, i + 1],
      payload: { amount: '12.50', currency: 'EUR', note: `café ✓ ${i}`, nested: { ok: true, list: [1, 'two', null] } },
    };
  });
}

const seqs = (deliveries: readonly { seq: number }[]) => deliveries.map((d) => d.seq);
const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

/** Fetches until `count` deliveries came (acking each fetch's last one when `ack`), or fails after 20 s. */
async function collect(sub: Subscription, count: number, options: { max?: number; ack?: boolean } = {}): Promise<Delivery[]> {
  const got: Delivery[] = [];
  const deadline = Date.now() + 20_000;
  while (got.length < count) {
    if (Date.now() > deadline) throw new Error(`got ${got.length} of ${count} deliveries: ${seqs(got).join(',')}`);
    const batch = await sub.fetch(options.max ?? 100, 1_000);
    expect(batch.length).toBeLessThanOrEqual(options.max ?? 100);
    if (options.ack && batch.length > 0) await batch.at(-1)?.ack();
    got.push(...batch);
  }
  return got;
}

describe.each(TARGETS.map((t) => [t.title, t] as const))('event stream contract: %s', (_title, target) => {
  const test = target.runs ? it : it.skip;
  let harness: Harness;
  let stream: EventStream | undefined;

  beforeAll(async () => {
    if (target.runs) harness = await target.start();
  });
  afterEach(async () => {
    await stream?.close();
    stream = undefined;
    await harness?.discard();
  });
  afterAll(async () => {
    await harness?.close();
  });

  async function open(options?: { ackWaitMs?: number }): Promise<EventStream> {
    stream = await harness.open(options);
    return stream;
  }

  test('a group from the start gets the published events in order, exactly as they were published', async () => {
    const s = await open();
    const published = events(5);
    await s.publish(published);
    expect(await s.head()).toBe(5);
    const sub = await s.subscribe('projector', 'start');
    const got = await sub.fetch(10, 5_000);
    expect(seqs(got)).toEqual([1, 2, 3, 4, 5]);
    expect(got.map((d) => d.event)).toEqual(published);
    await got[4]?.ack();
    expect(await s.groups()).toEqual([{ group: 'projector', position: 5, lag: 0 }]);
    expect(await sub.fetch(10, 50)).toEqual([]);
  });

  test('an event id published again is not appended, in a later batch or in the same one', async () => {
    const s = await open();
    const [a, b, c, d, e] = events(5) as [StreamEvent, StreamEvent, StreamEvent, StreamEvent, StreamEvent];
    await s.publish([a, b, c]);
    await s.publish([b]);
    expect(await s.head()).toBe(3);
    await s.publish([c, d, d]);
    await s.publish([e, a]);
    expect(await s.head()).toBe(5);
    const got = await collect(await s.subscribe('dedup', 'start'), 5);
    expect(got.map((x) => x.event.id)).toEqual([a.id, b.id, c.id, d.id, e.id]);
    expect(seqs(got)).toEqual([1, 2, 3, 4, 5]);
    expect(await s.read(0, 100)).toHaveLength(5);
  });

  test('two groups keep their own positions; ack covers the earlier events of the same fetch', async () => {
    const s = await open();
    await s.publish(events(4));
    const alpha = await s.subscribe('alpha', 'start');
    const beta = await s.subscribe('beta', 'start');
    const a = await alpha.fetch(10, 5_000);
    expect(seqs(a)).toEqual([1, 2, 3, 4]);
    await a[2]?.ack();
    expect(await s.groups()).toEqual([
      { group: 'alpha', position: 3, lag: 1 },
      { group: 'beta', position: 0, lag: 4 },
    ]);
    const b = await beta.fetch(10, 5_000);
    expect(seqs(b)).toEqual([1, 2, 3, 4]);
    await b[3]?.ack();
    await s.publish(events(2));
    expect(await s.groups()).toEqual([
      { group: 'alpha', position: 3, lag: 3 },
      { group: 'beta', position: 4, lag: 2 },
    ]);
    expect(seqs(await collect(beta, 2))).toEqual([5, 6]);
  });

  test("a group created at 'end' sees only what is published after it", async () => {
    const s = await open();
    await s.publish(events(3));
    const sub = await s.subscribe('late', 'end');
    expect(await s.groups()).toEqual([{ group: 'late', position: 3, lag: 0 }]);
    expect(await sub.fetch(10, 50)).toEqual([]);
    const after = events(2);
    await s.publish(after);
    const got = await collect(sub, 2);
    expect(seqs(got)).toEqual([4, 5]);
    expect(got.map((d) => d.event)).toEqual(after);
    // Subscribing again resumes the group: 'end' only places a group seen for the first time.
    await got[1]?.ack();
    await s.publish(events(1));
    expect(seqs(await collect(await s.subscribe('late', 'end'), 1))).toEqual([6]);
  });

  test('in flight: a second fetch goes on; after a crash the next subscription gets what was not acked', async () => {
    const s = await open();
    const published = events(4);
    await s.publish(published);
    const first = await s.subscribe('worker', 'start');
    const got = await first.fetch(2, 5_000);
    expect(seqs(got)).toEqual([1, 2]);
    expect(seqs(await first.fetch(10, 5_000))).toEqual([3, 4]);
    expect(await first.fetch(10, 50)).toEqual([]);
    await got[1]?.ack();
    await first.close();
    const second = await s.subscribe('worker', 'start');
    const again = await collect(second, 2);
    expect(seqs(again)).toEqual([3, 4]);
    expect(again.map((d) => d.event)).toEqual(published.slice(2));
    await again[1]?.ack();
    expect(await s.groups()).toEqual([{ group: 'worker', position: 4, lag: 0 }]);
  });

  test('an event not acked within the ack wait is delivered again to the same subscription', async () => {
    const s = await open({ ackWaitMs: 1_000 });
    await s.publish(events(3));
    const sub = await s.subscribe('slow', 'start');
    expect(seqs(await sub.fetch(10, 5_000))).toEqual([1, 2, 3]);
    // JetStream redelivers each event when its own ack wait ends: not necessarily in stream order,
    // and one may come twice before the others come once.
    const again: Delivery[] = [];
    const deadline = Date.now() + 20_000;
    while (new Set(seqs(again)).size < 3 && Date.now() < deadline) again.push(...(await sub.fetch(10, 1_000)));
    expect([...new Set(seqs(again))].sort((x, y) => x - y)).toEqual([1, 2, 3]);
    await Promise.all(again.map((d) => d.ack()));
    expect(await s.groups()).toEqual([{ group: 'slow', position: 3, lag: 0 }]);
  });

  test('resetGroup goes back in time to the start, and forward to the end', async () => {
    const s = await open();
    const published = events(3);
    await s.publish(published);
    const sub = await s.subscribe('replay', 'start');
    const got = await sub.fetch(10, 5_000);
    await got[2]?.ack();
    expect(await s.groups()).toEqual([{ group: 'replay', position: 3, lag: 0 }]);
    await s.resetGroup('replay', 'start');
    expect(await s.groups()).toEqual([{ group: 'replay', position: 0, lag: 3 }]);
    // The open subscription follows the reset.
    const replayed = await collect(sub, 3);
    expect(seqs(replayed)).toEqual([1, 2, 3]);
    expect(replayed.map((d) => d.event)).toEqual(published);
    await s.resetGroup('replay', 'end');
    expect(await s.groups()).toEqual([{ group: 'replay', position: 3, lag: 0 }]);
    await s.publish(events(1));
    expect(seqs(await collect(await s.subscribe('replay', 'start'), 1))).toEqual([4]);
  });

  test('deleteGroup forgets a group; a subscription of the deleted group is told so', async () => {
    const s = await open();
    await s.publish(events(2));
    const sub = await s.subscribe('gone', 'start');
    await (await sub.fetch(10, 5_000))[1]?.ack();
    await s.subscribe('kept', 'end');
    expect(await s.deleteGroup('gone')).toBe(true);
    expect(await s.deleteGroup('gone')).toBe(false);
    expect((await s.groups()).map((g) => g.group)).toEqual(['kept']);
    await expect(sub.fetch(10, 500)).rejects.toThrow('consumer group "gone" does not exist');
    // Subscribing again makes a new group, at the start.
    expect(seqs(await collect(await s.subscribe('gone', 'start'), 2))).toEqual([1, 2]);
  });

  test('read returns exact slices without any group', async () => {
    const s = await open();
    const published = events(7);
    await s.publish(published);
    expect(await s.read(1, 3)).toEqual(published.slice(0, 3).map((event, i) => ({ seq: i + 1, event })));
    expect(seqs(await s.read(5, 10))).toEqual([5, 6, 7]);
    expect(seqs(await s.read(0, 2))).toEqual([1, 2]);
    expect(await s.read(8, 5)).toEqual([]);
    expect(await s.read(3, 0)).toEqual([]);
    expect(await s.groups()).toEqual([]);
  });

  test('fetch with nothing there resolves empty after the wait, or when aborted', async () => {
    const s = await open();
    const sub = await s.subscribe('idle', 'start');
    const started = Date.now();
    expect(await sub.fetch(10, 300)).toEqual([]);
    expect(Date.now() - started).toBeGreaterThanOrEqual(280);
    const controller = new AbortController();
    const waiting = sub.fetch(10, 600_000, controller.signal);
    controller.abort();
    expect(await waiting).toEqual([]);
  });

  test('a waiting fetch resolves as soon as an event is published', async () => {
    const s = await open();
    const sub = await s.subscribe('eager', 'start');
    const [event] = events(1) as [StreamEvent];
    // Longer than the test's timeout: only an early answer lets this test pass.
    const [got] = await Promise.all([sub.fetch(10, 600_000), s.publish([event])]);
    expect(seqs(got)).toEqual([1]);
    expect(got[0]?.event).toEqual(event);
  });

  test('500 events published in batches of 50 while a group consumes them: in order, no gap, no duplicate', async () => {
    const s = await open();
    const published = events(500);
    const sub = await s.subscribe('bulk', 'start');
    const publishing = async () => {
      for (let i = 0; i < 500; i += 50) await s.publish(published.slice(i, i + 50));
    };
    const [got] = await Promise.all([collect(sub, 500, { max: 100, ack: true }), publishing()]);
    expect(seqs(got)).toEqual(range(1, 500));
    expect(got.map((d) => d.event.id)).toEqual(published.map((e) => e.id));
    expect(await s.groups()).toEqual([{ group: 'bulk', position: 500, lag: 0 }]);
  });

  test('publishers racing each other never make a consumer skip an event', async () => {
    const s = await open();
    const batches = Array.from({ length: 8 }, () => events(25));
    const sub = await s.subscribe('race', 'start');
    const [got] = await Promise.all([collect(sub, 200, { max: 100, ack: true }), ...batches.map((batch) => s.publish(batch))]);
    expect(seqs(got)).toEqual(range(1, 200));
    const order = new Map(got.map((d) => [d.event.id, d.seq]));
    expect(order.size).toBe(200);
    for (const batch of batches) {
      const positions = batch.map((e) => order.get(e.id) ?? -1);
      expect(positions).toEqual([...positions].sort((x, y) => x - y));
    }
  });
});

describe.skipIf(!ENGINES.includes('pglite'))('the PostgreSQL log and its store', () => {
  it('closing the log leaves the SqlStore it was given open', async () => {
    const store = await openSqlStore({ kind: 'pglite', dataDir: null });
    try {
      unwrap(await createMigrator(store.db).migrateToLatest());
      const log = await openEventStream({ kind: 'postgres', store });
      await log.publish(events(1));
      await log.close();
      await expect(log.head()).rejects.toThrow('the event stream is closed');
      await store.ping(5_000);
      const reopened = await openEventStream({ kind: 'postgres', store });
      expect(await reopened.head()).toBe(1);
      await reopened.close();
    } finally {
      await store.close();
    }
  });
});
