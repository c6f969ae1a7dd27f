import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { sql, type Kysely } from 'kysely';
import pg from 'pg';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApp, type App } from '../../src/app.ts';
import { openSqlStore } from '../../src/stores/sql/index.ts';
import { BALANCE_CEILING } from '../../src/config.ts';
import type { Principal } from '../../src/domain/types.ts';
import { MoneyWriter, type MoneyOutcome } from '../../src/services/money-writer.ts';
import type { Database } from '../../src/stores/sql/schema.ts';
import { startTestApp, testConfig, testDataDir, type TestApp } from '../support/app.ts';
import { BIN, cleanEnv, freePort } from '../support/cli.ts';
import { createTestDatabase, ENGINES } from '../support/engines.ts';
import { balances, checkLedger } from '../support/invariants.ts';
import { spawnTracked, waitFor, type Spawned } from '../support/processes.ts';
import { rng } from '../support/random.ts';

/**
 * The batching writer (`DATABANK_BATCH_MAX`, default 256) under load and faults on PostgreSQL:
 * every answer is exact against a model the clients keep, several writers share one database, a
 * failed batch fails only its own requests, and a process killed in the middle of a batch loses
 * or doubles nothing.
 */

const ADMIN: Principal = { role: 'admin', keyId: 0 };
const IN_FLIGHT = 'DATABANK_ERR_IDEMPOTENCY_IN_FLIGHT';
const INSUFFICIENT = 'DATABANK_ERR_INSUFFICIENT_FUNDS';
const UNAVAILABLE = 'DATABANK_ERR_UNAVAILABLE';
/** A client's pause before it sends a request again (its retry policy, not a synchronisation). */
const BACKOFF_MS = 10;
/** Transfers per client of each exact-model mix: 768 in all, enough for hundreds of batches. */
const PER_CLIENT = 48;

interface Answer {
  readonly status: number;
  readonly code: string | null;
  readonly body: Record<string, unknown> | null;
  readonly replayed: boolean;
}

interface Planned {
  readonly key: string;
  readonly from: number;
  readonly to: number;
  readonly amount: number;
  /** Sent a second time with the same key: at once beside the first, or after its answer. */
  readonly twice: 'no' | 'concurrently' | 'after';
}

async function post(url: string, headers: Record<string, string>, payload: unknown): Promise<Answer> {
  const res = await fetch(url, {
    method: 'POST',
    headers: { ...headers, 'content-type': 'application/json' },
    body: JSON.stringify(payload),
    signal: AbortSignal.timeout(30_000),
  });
  const text = await res.text();
  let body: Record<string, unknown> | null = null;
  try {
    body = JSON.parse(text) as Record<string, unknown>;
  } catch {
    // Not JSON: the status says enough.
  }
  return { status: res.status, code: (body?.code as string | undefined) ?? null, body, replayed: res.headers.get('idempotent-replayed') === 'true' };
}

const delay = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** New accounts, each opened with `opening(i)`, through the services. */
async function openAccounts(app: App, n: number, opening: (i: number) => number): Promise<number[]> {
  const ids: number[] = [];
  let customer = 0;
  for (let i = 0; i < n; i++) {
    // A new customer every 20 accounts (DATABANK_MAX_ACCOUNTS_PER_CUSTOMER).
    if (i % 20 === 0) customer = (await app.deps.customers.create(ADMIN, { name: 'Batch Load', date_of_birth: '1980-01-01' })).id;
    const account = await app.deps.accounts.open(ADMIN, customer, { account_type: 'checking' });
    if (opening(i) > 0) await app.deps.movements.deposit(ADMIN, account.account_id, opening(i), null);
    ids.push(account.account_id);
  }
  return ids;
}

/** The batch-size histogram's sum and count, to tell how many movements a batch carried on average. */
async function batchStats(app: App): Promise<{ sum: number; count: number }> {
  const values = (await app.deps.metrics.moneyBatchSize.get()).values;
  const pick = (name: string) => values.find((v) => v.metricName === name)?.value ?? 0;
  return { sum: pick('databank_money_batch_size_sum'), count: pick('databank_money_batch_size_count') };
}

/** Ledger transfers and `transfer.completed` events written after the ids in `since`. */
async function transfersSince(db: Kysely<Database>, since: { tx: number; outbox: number }) {
  const ledger = await sql<{ id: number; from: number; to: number; amount: number }>`
    select t.id, o.account_id as "from", i.account_id as "to", i.amount
    from ledger_transactions t
    join ledger_entries o on o.transaction_id = t.id and o.amount < 0
    join ledger_entries i on i.transaction_id = t.id and i.amount > 0
    where t.kind = 'transfer' and t.id > ${since.tx} order by t.id`.execute(db);
  const events = await sql<{ n: number }>`
    select count(*)::int as n from outbox where type = 'transfer.completed' and id > ${since.outbox}`.execute(db);
  return { ledger: ledger.rows, events: events.rows[0]?.n ?? 0 };
}

async function marks(db: Kysely<Database>): Promise<{ tx: number; outbox: number }> {
  const r = await sql<{ tx: number; outbox: number }>`
    select coalesce((select max(id) from ledger_transactions), 0)::bigint as tx,
      coalesce((select max(id) from outbox), 0)::bigint as outbox`.execute(db);
  return r.rows[0] as { tx: number; outbox: number };
}

/**
 * One client: sends its planned transfers one after the other, each with its key, again after
 * 409 in flight (and, with `retryUnavailable`, after no answer or a 503) until it has a final
 * answer; keeps the per-account deltas of its 201 answers. A transfer sent twice must get the
 * same final answer both times, the second (or whichever did not run it) as a replay.
 */
async function runClient(
  bases: () => readonly string[],
  headers: Record<string, string>,
  planned: readonly Planned[],
  options: { retryUnavailable?: boolean; onCreated?: () => void } = {},
) {
  const deltas = new Map<number, number>();
  const finals = new Map<string, Answer>();
  const problems: string[] = [];
  let refusedTwice = 0;
  let pick = 0;
  const final = async (p: Planned): Promise<Answer> => {
    const started = Date.now();
    for (;;) {
      const list = bases();
      const base = list[pick++ % list.length] as string;
      const answer = await post(`${base}/transfers`, { ...headers, 'idempotency-key': p.key }, {
        from_account_id: p.from,
        to_account_id: p.to,
        amount: p.amount,
      }).catch((): Answer => ({ status: 0, code: null, body: null, replayed: false }));
      const again = (answer.status === 409 && answer.code === IN_FLIGHT) || (options.retryUnavailable && (answer.status === 0 || answer.status === 503));
      if (!again) return answer;
      if (Date.now() - started > 30_000) throw new Error(`${p.key}: no final answer within 30 s; last ${answer.status} ${answer.code}`);
      await delay(BACKOFF_MS);
    }
  };
  for (const p of planned) {
    let answer: Answer;
    if (p.twice === 'no') {
      answer = await final(p);
    } else {
      const [x, y] = p.twice === 'concurrently' ? await Promise.all([final(p), final(p)]) : [await final(p), await final(p)];
      if (JSON.stringify(x.body) !== JSON.stringify(y.body) || x.status !== y.status) {
        problems.push(`${p.key} (${p.twice}): ${x.status} ${JSON.stringify(x.body)} then ${y.status} ${JSON.stringify(y.body)}`);
      }
      if (p.twice === 'after' && !y.replayed) problems.push(`${p.key}: the retry after the answer was not a replay`);
      const ran = [x, y].filter((a) => !a.replayed).length;
      // A refusal is stored after its batch (src/http/idempotent.ts), so a concurrent send queued
      // behind it may be checked again and refused again: the same answer, without the header.
      // A movement must run once and the other send replay it.
      if (p.twice === 'concurrently' && ran !== 1 && !(ran === 2 && x.status === 409 && x.code === INSUFFICIENT)) {
        problems.push(`${p.key}: ${ran} of two concurrent sends ran (${x.status} ${x.code})`);
      }
      if (p.twice === 'concurrently' && ran === 2) refusedTwice++;
      answer = y.replayed ? x : y;
    }
    finals.set(p.key, answer);
    if (answer.status === 201) {
      const b = answer.body as { from_account_id: number; to_account_id: number; amount: number; transfer_id: number };
      if (b.from_account_id !== p.from || b.to_account_id !== p.to || b.amount !== p.amount || !Number.isSafeInteger(b.transfer_id)) {
        problems.push(`${p.key}: 201 with ${JSON.stringify(b)}`);
      }
      deltas.set(p.from, (deltas.get(p.from) ?? 0) - p.amount);
      deltas.set(p.to, (deltas.get(p.to) ?? 0) + p.amount);
      options.onCreated?.();
    } else if (answer.status === 409 && answer.code === INSUFFICIENT) {
      if (answer.body?.message !== `account ${p.from} holds less than ${p.amount}`) problems.push(`${p.key}: ${JSON.stringify(answer.body)}`);
    } else {
      problems.push(`${p.key}: final ${answer.status} ${JSON.stringify(answer.body)}`);
    }
  }
  return { deltas, finals, problems, refusedTwice };
}

type Mix = 'hot' | 'uniform';

/**
 * `clients × perClient` transfers with fixed seeds. Hot: 40 payers pay one merchant, and one
 * transfer in six is a refund from the merchant to a payer. Uniform: random pairs among 40.
 * One transfer in ten is sent twice, alternately beside the first and after its answer.
 */
function plan(mix: Mix, accounts: readonly number[], clients: number, perClient: number, seed: number, prefix: string): Planned[][] {
  const [merchant, ...payers] = accounts as [number, ...number[]];
  return Array.from({ length: clients }, (_, c) => {
    const random = rng(seed + c);
    return Array.from({ length: perClient }, (_, i): Planned => {
      const twice = random() < 0.1 ? (i % 2 === 0 ? 'concurrently' : 'after') : 'no';
      const key = `${prefix}-${c}-${i}`;
      if (mix === 'hot') {
        const payer = payers[Math.floor(random() * payers.length)] as number;
        return random() < 1 / 6
          ? { key, from: merchant, to: payer, amount: 1 + Math.floor(random() * 2_000), twice }
          : { key, from: payer, to: merchant, amount: 1 + Math.floor(random() * 300), twice };
      }
      const from = Math.floor(random() * accounts.length);
      let to = Math.floor(random() * (accounts.length - 1));
      if (to >= from) to++;
      return { key, from: accounts[from] as number, to: accounts[to] as number, amount: 1 + Math.floor(random() * 600), twice };
    });
  });
}

/** The model: opening balances plus every client's deltas. */
function expectedBalances(opening: Record<number, number>, results: ReadonlyArray<{ deltas: Map<number, number> }>) {
  const expected = { ...opening };
  for (const r of results) for (const [id, d] of r.deltas) expected[id] = (expected[id] as number) + d;
  return expected;
}

/** The exact checks shared by the load tests: balances, one ledger transfer and event per 201. */
async function checkExact(
  db: Kysely<Database>,
  since: { tx: number; outbox: number },
  opening: Record<number, number>,
  results: ReadonlyArray<Awaited<ReturnType<typeof runClient>>>,
) {
  expect(results.flatMap((r) => r.problems)).toEqual([]);
  const all = await balances(db);
  const expected = expectedBalances(opening, results);
  expect(Object.fromEntries(Object.keys(expected).map((id) => [id, all[Number(id)]]))).toEqual(expected);
  const created = results.flatMap((r) => [...r.finals.values()].filter((a) => a.status === 201));
  const written = await transfersSince(db, since);
  expect(written.ledger).toEqual(
    created
      .map((a) => {
        const b = a.body as { transfer_id: number; from_account_id: number; to_account_id: number; amount: number };
        return { id: b.transfer_id, from: b.from_account_id, to: b.to_account_id, amount: b.amount };
      })
      .sort((x, y) => x.id - y.id),
  );
  expect(written.events).toBe(created.length);
  expect(await checkLedger(db)).toMatchObject({ mismatched: [], negative: [], unbalanced: [], wrongCurrency: [] });
  const refused = results.reduce((n, r) => n + [...r.finals.values()].filter((a) => a.status === 409).length, 0);
  return { created: created.length, refused };
}

describe.skipIf(!ENGINES.includes('postgres'))('the batching writer under load and faults on PostgreSQL', () => {
  let t: TestApp;
  let base: string;

  beforeAll(async () => {
    t = await startTestApp('postgres', 'money-batch-faults', { demoData: false });
    base = await t.app.http.listen({ host: '127.0.0.1', port: 0 });
  });
  afterAll(async () => t?.close());

  it.each([
    ['hot', 0x407],
    ['uniform', 0x0415],
  ] as const)('16 clients, 768 keyed transfers, %s mix, one in ten sent twice: exact model, batches of more than one', async (mix, seed) => {
    const opening = (i: number) => (mix === 'hot' ? (i === 0 ? 0 : 4_000) : 1_500);
    const accounts = await openAccounts(t.app, mix === 'hot' ? 41 : 40, opening);
    const open = Object.fromEntries(accounts.map((id, i) => [id, opening(i)]));
    const since = await marks(t.app.sql.db);
    const stats = await batchStats(t.app);
    const plans = plan(mix, accounts, 16, PER_CLIENT, seed, `load-${mix}`);

    const results = await Promise.all(plans.map((p) => runClient(() => [base], t.admin, p)));

    const { created, refused } = await checkExact(t.app.sql.db, since, open, results);
    expect(created + refused).toBe(16 * PER_CLIENT);
    expect(refused).toBeGreaterThan(0);
    expect(created).toBeGreaterThan((16 * PER_CLIENT) / 2);
    const after = await batchStats(t.app);
    const [movements, batches] = [after.sum - stats.sum, after.count - stats.count];
    expect(movements / batches, `${movements} movements in ${batches} batches`).toBeGreaterThan(1);
    const twice = results.reduce((n, r) => n + r.refusedTwice, 0);
    console.log(`${mix}: ${created} done, ${refused} refused, ${movements} movements in ${batches} batches, ${twice} refusals checked twice`);
  });

  it('two processes, each with its own batching writer, 8 clients each on the hot mix: exact model, no 5xx', async () => {
    const second = await createApp(testConfig(t.db, { demoData: false }), {
      logger: pino({ level: 'silent' }),
      defaultMetrics: false,
      bootstrap: false,
      worker: false,
    });
    try {
      const secondBase = await second.http.listen({ host: '127.0.0.1', port: 0 });
      const accounts = await openAccounts(t.app, 41, (i) => (i === 0 ? 0 : 4_000));
      const open = Object.fromEntries(accounts.map((id, i) => [id, i === 0 ? 0 : 4_000]));
      const since = await marks(t.app.sql.db);
      const stats = [await batchStats(t.app), await batchStats(second)];
      const plans = plan('hot', accounts, 16, 30, 0x2b, 'two');

      const results = await Promise.all(plans.map((p, c) => runClient(() => [c % 2 === 0 ? base : secondBase], t.admin, p)));

      // Each final answer is a 201 or an exact refusal (checkExact lists any other, a 5xx included).
      const { created, refused } = await checkExact(t.app.sql.db, since, open, results);
      expect(created + refused).toBe(16 * 30);
      const after = [await batchStats(t.app), await batchStats(second)];
      for (const [i, s] of after.entries()) expect(s.count - (stats[i]?.count as number), `process ${i + 1} batched`).toBeGreaterThan(0);
    } finally {
      await second.close();
    }
  });

  it('a batch whose connection is terminated answers 503 to its own requests only, applies nothing, and the next transfers pass', async () => {
    const db = t.app.sql.db;
    const [hot, ...payers] = await openAccounts(t.app, 7, (i) => (i === 0 ? 0 : 100)) as [number, ...number[]];
    const before = await balances(db);
    const since = await marks(db);
    const stats = await batchStats(t.app);
    const holder = new pg.Client({ connectionString: t.db.url as string });
    const watcher = new pg.Client({ connectionString: t.db.url as string });
    await Promise.all([holder.connect(), watcher.connect()]);
    try {
      await holder.query('begin');
      await holder.query('select balance from accounts where account_id = $1 for update', [hot]);

      const send = (from: number, key: string) =>
        post(`${base}/transfers`, { ...t.admin, 'idempotency-key': key }, { from_account_id: from, to_account_id: hot, amount: 10 });
      let answered = 0;
      const blocked = payers.slice(0, 5).map((from, i) =>
        send(from, `blocked-${i}`).finally(() => {
          answered++;
        }),
      );
      // Each batch that waits for the row lock is terminated, until all five have their answer.
      let terminated = 0;
      await waitFor(
        'every blocked transfer answered',
        async () => {
          const waiting = await watcher.query<{ pid: number }>(
            `select pid from pg_stat_activity
             where datname = current_database() and pid <> pg_backend_pid() and state = 'active'
               and wait_event_type = 'Lock' and query like '%databank_money_batch(%'`,
          );
          for (const { pid } of waiting.rows) {
            await watcher.query('select pg_terminate_backend($1)', [pid]);
            terminated++;
          }
          return answered === 5;
        },
        { timeoutMs: 20_000, everyMs: 10 },
      );
      const answers = await Promise.all(blocked);
      expect(answers.map((a) => [a.status, a.code])).toEqual(Array.from({ length: 5 }, () => [503, UNAVAILABLE]));
      const after = await batchStats(t.app);
      // The five left the writer (in one batch or more) and nothing else did meanwhile.
      expect(after.sum - stats.sum).toBe(5);
      expect(terminated).toBeGreaterThanOrEqual(1);
      await holder.query('rollback');

      expect(await balances(db)).toEqual(before);
      expect(await transfersSince(db, since)).toEqual({ ledger: [], events: 0 });
      const stored = await sql<{ n: number }>`select count(*)::int as n from idempotency_keys where key like 'blocked-%'`.execute(db);
      expect(stored.rows[0]?.n).toBe(0);

      // The same keys run now (nothing was stored for them), and so does a new transfer.
      const retried = await Promise.all([...payers.slice(0, 5).map((from, i) => send(from, `blocked-${i}`)), send(payers[5] as number, 'after')]);
      expect(retried.map((a) => [a.status, a.replayed])).toEqual(Array.from({ length: 6 }, () => [201, false]));
      expect((await balances(db))[hot]).toBe(60);
      console.log(`terminate: ${after.count - stats.count} batch(es) carried the five, ${terminated} terminated`);
    } finally {
      await holder.query('rollback').catch(() => undefined);
      await Promise.all([holder.end(), watcher.end()]);
    }
  });

  // Kysely releases a connection without the error that ended its statement: the pool wrapper
  // (src/stores/sql/postgres.ts) destroys a terminated one, so the next batch gets a live one.
  it('the batch queued behind a terminated one is not failed with it', async () => {
    const db = t.app.sql.db;
    const [hot, a, b] = (await openAccounts(t.app, 3, (i) => (i === 0 ? 0 : 100))) as [number, number, number];
    const before = await balances(db);
    const writer = new MoneyWriter(db, 256, BALANCE_CEILING);
    const holder = new pg.Client({ connectionString: t.db.url as string });
    const watcher = new pg.Client({ connectionString: t.db.url as string });
    await Promise.all([holder.connect(), watcher.connect()]);
    try {
      await holder.query('begin');
      await holder.query('select balance from accounts where account_id = $1 for update', [hot]);
      const settle = (p: Promise<MoneyOutcome>) => p.then((o) => o.outcome as string, (err: { code?: string }) => err.code ?? String(err));
      const blocked = settle(writer.submit({ kind: 'transfer', from: a, to: hot, amount: 10, owner: null, claim: null }));
      let pid = 0;
      await waitFor('the first batch waits for the row lock', async () => {
        const r = await watcher.query<{ pid: number }>(
          `select pid from pg_stat_activity where datname = current_database() and state = 'active'
             and wait_event_type = 'Lock' and query like '%databank_money_batch(%'`,
        );
        pid = r.rows[0]?.pid ?? 0;
        return pid !== 0;
      }, { timeoutMs: 10_000, everyMs: 5 });
      // Queued while the first batch is in flight: it leaves as the next batch, on other accounts.
      const queued = settle(writer.submit({ kind: 'transfer', from: a, to: b, amount: 7, owner: null, claim: null }));
      await watcher.query('select pg_terminate_backend($1)', [pid]);
      expect(await blocked).toBe(UNAVAILABLE);
      expect(await queued).toBe('completed');
      expect(await balances(db)).toEqual({ ...before, [a]: 93, [b]: 107 });
    } finally {
      await holder.query('rollback').catch(() => undefined);
      await Promise.all([holder.end(), watcher.end()]);
    }
  });

  it('SIGKILL of the server in the middle of a batch: every 201 applied once, no key applied twice, exact balances', { timeout: 60_000 }, async () => {
    const dataDir = testDataDir();
    const db = await createTestDatabase('postgres', 'money-batch-kill');
    const watcher = new pg.Client({ connectionString: db.url as string });
    const holder = new pg.Client({ connectionString: db.url as string });
    try {
      const env = cleanEnv({
        DATABANK_DATA_DIR: dataDir,
        DATABANK_DEMO_DATA: 'false',
        DATABANK_SITE_DIR: 'none',
        DATABANK_RATE_LIMIT_PER_MINUTE: '10000000',
        DATABASE_URL: db.url as string,
        MIGRATE_ON_BOOT: 'true',
        PORT: String(await freePort()),
      });
      const serverBase = `http://127.0.0.1:${env.PORT}`;
      let proc: Spawned | null = null;
      const start = async () => {
        const p = spawnTracked(process.execPath, [BIN, 'serve'], { env, what: 'databank serve' });
        proc = p;
        await waitFor('databank serve answers /healthz', async () => {
          if (!p.running()) throw new Error(`databank serve exited:\n${p.output()}`);
          return fetch(`${serverBase}/healthz`).then(
            async (r) => (await r.arrayBuffer(), r.ok),
            () => false,
          );
        }, { timeoutMs: 30_000, everyMs: 20 });
      };
      await start();
      await Promise.all([watcher.connect(), holder.connect()]);
      const admin = { authorization: `Bearer ${readFileSync(join(dataDir, 'admin-key'), 'utf8').trim()}` };

      const customer = await post(`${serverBase}/customers`, admin, { name: 'Kill', date_of_birth: '1980-01-01' });
      const accounts: number[] = [];
      const opening: Record<number, number> = {};
      for (let i = 0; i < 12; i++) {
        const opened = await post(`${serverBase}/customers/${String(customer.body?.id)}/accounts`, admin, { account_type: 'checking' });
        const id = opened.body?.account_id as number;
        expect((await post(`${serverBase}/accounts/${id}/deposits`, admin, { amount: 3_000 })).status).toBe(201);
        accounts.push(id);
        opening[id] = 3_000;
      }

      let created = 0;
      let killAt: () => void = () => undefined;
      const reached = new Promise<void>((resolve) => (killAt = resolve));
      const plans = plan('uniform', accounts, 16, 25, 0x61, 'kill').map((p) => p.map((x) => ({ ...x, twice: 'no' as const })));
      const load = Promise.all(
        plans.map((p) =>
          runClient(() => [serverBase], admin, p, {
            retryUnavailable: true,
            onCreated: () => {
              if (++created === 100) killAt();
            },
          }),
        ),
      );

      // Mid-batch, for certain: a batch waits for a row lock held here, in its transaction,
      // having claimed its keys; the server dies then, and the lock goes after it.
      await reached;
      await holder.query('begin');
      await holder.query('select balance from accounts where account_id = $1 for update', [accounts[0]]);
      await waitFor('a databank_money_batch call waits for the row lock', async () => {
        const r = await watcher.query(
          `select 1 from pg_stat_activity where datname = current_database() and state = 'active'
             and wait_event_type = 'Lock' and query like '%databank_money_batch(%'`,
        );
        return (r.rowCount ?? 0) > 0;
      }, { timeoutMs: 15_000, everyMs: 5 });
      const answeredBeforeKill = created;
      const exit = await (proc as Spawned | null)?.kill('SIGKILL');
      expect(exit?.signal).toBe('SIGKILL');
      await holder.query('rollback');
      await start();

      const results = await load;
      await (proc as Spawned | null)?.kill('SIGTERM');

      const store = await openSqlStore(db.sql);
      const read = store.db;
      try {
        const { created: done } = await checkExact(read, { tx: 0, outbox: 0 }, opening, results);
        expect(done).toBeGreaterThan(answeredBeforeKill);
        const keys = await sql<{ key: string; n: number }>`
          select key, count(*)::int as n from idempotency_keys where key like 'kill-%' group by key having count(*) > 1`.execute(read);
        expect(keys.rows).toEqual([]);
        const stored = await sql<{ n: number }>`
          select count(*)::int as n from idempotency_keys where key like 'kill-%' and response_status = 201`.execute(read);
        expect(stored.rows[0]?.n).toBe(done);
        const replays = results.reduce((n, r) => n + [...r.finals.values()].filter((a) => a.replayed).length, 0);
        console.log(`kill: ${answeredBeforeKill} answered 201 before the kill, ${done} in all, ${replays} answered by a replay after the restart`);
      } finally {
        await store.close();
      }
    } finally {
      await holder.query('rollback').catch(() => undefined);
      await Promise.all([watcher.end().catch(() => undefined), holder.end().catch(() => undefined)]);
      await db.drop();
    }
  });
});
