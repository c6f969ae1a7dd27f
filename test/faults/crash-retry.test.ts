import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { sql } from 'kysely';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.ts';
import { openSqlStore } from '../../src/stores/sql/index.ts';
import { testDataDir } from '../support/app.ts';
import { BIN, cleanEnv, freePort } from '../support/cli.ts';
import { createTestDatabase, ENGINES, type EngineName } from '../support/engines.ts';
import { balances, checkLedger } from '../support/invariants.ts';
import { spawnTracked, waitFor, type Spawned } from '../support/processes.ts';
import { rng } from '../support/random.ts';

const CLIENTS = 16;
const TRANSFERS_PER_CLIENT = 32;
const ACCOUNTS = 8;
/** Opening deposit of account i: enough for most transfers, not for all of them. */
const opening = (i: number) => 2_000 + 500 * i;
const MAX_AMOUNT = 1_500;
/** The server is killed (SIGKILL) once this many transfers have been answered 201, then restarted. */
const KILL_AFTER = [100, 250] as const;
/** What the issue allows a retry to wait past the restart it waited for. */
const MAX_WAIT_AFTER_RESTART_MS = 10_000;
const BACKOFF_MS = 50;
/** A transfer with no final answer after this long fails the test instead of hanging it. */
const GIVE_UP_MS = 60_000;
const SEED = 0x5eed;

const IN_FLIGHT = 'DATABANK_ERR_IDEMPOTENCY_IN_FLIGHT';
const INSUFFICIENT = 'DATABANK_ERR_INSUFFICIENT_FUNDS';

interface Planned {
  readonly key: string;
  readonly from: number;
  readonly to: number;
  readonly amount: number;
}

interface Answer {
  readonly status: number;
  readonly code: string | null;
  readonly transferId: number | null;
  readonly body: unknown;
  readonly replayed: boolean;
}

interface Outcome extends Answer {
  readonly planned: Planned;
  readonly attempts: number;
  /** When the last attempt that got no final answer ended; null when the first attempt was final. */
  readonly lastFailureAt: number | null;
  readonly answeredAt: number;
}

interface Kill {
  readonly killedAt: number;
  /** When /healthz answered again. */
  readonly restartedAt: number;
  readonly answeredBefore: number;
}

/**
 * A real `databank serve` on a fixed port, killed with SIGKILL and restarted on the same port and
 * database (same data dir for the embedded engine), as a crash and a supervisor's restart do.
 */
class CrashingServer {
  private proc: Spawned | null = null;

  constructor(
    private readonly env: Record<string, string>,
    private readonly port: number,
  ) {}

  get base(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Starts the server; resolves with the time /healthz first answered 200. */
  async start(): Promise<number> {
    const proc = spawnTracked(process.execPath, [BIN, 'serve'], {
      env: cleanEnv({ ...this.env, PORT: String(this.port) }),
      what: `databank serve on port ${this.port}`,
    });
    this.proc = proc;
    await waitFor(
      `databank serve answers /healthz on port ${this.port}`,
      async () => {
        if (!proc.running()) throw new Error(`databank serve exited before answering /healthz:\n${proc.output()}`);
        try {
          const res = await fetch(`${this.base}/healthz`);
          await res.arrayBuffer();
          return res.ok;
        } catch {
          return false;
        }
      },
      { timeoutMs: 60_000, everyMs: 20 },
    );
    return Date.now();
  }

  async kill(): Promise<void> {
    const exit = await this.running().kill('SIGKILL');
    expect(exit.signal).toBe('SIGKILL');
  }

  /** SIGTERM, and the orderly exit it must lead to. */
  async stop(): Promise<void> {
    const proc = this.running();
    proc.child.kill('SIGTERM');
    const exit = await proc.exited;
    expect(exit, proc.output()).toEqual({ code: 0, signal: null });
  }

  private running(): Spawned {
    if (!this.proc?.running()) throw new Error('databank serve is not running');
    return this.proc;
  }
}

/** Every client's transfers, the same on every run: pairs and amounts from a seeded generator. */
function plan(accounts: readonly number[]): Planned[][] {
  const random = rng(SEED);
  return Array.from({ length: CLIENTS }, (_, c) =>
    Array.from({ length: TRANSFERS_PER_CLIENT }, (_, i) => {
      const from = Math.floor(random() * ACCOUNTS);
      let to = Math.floor(random() * (ACCOUNTS - 1));
      if (to >= from) to++;
      return {
        key: `crash-retry-${c}-${i}`,
        from: accounts[from] as number,
        to: accounts[to] as number,
        amount: 1 + Math.floor(random() * MAX_AMOUNT),
      };
    }),
  );
}

async function post(url: string, headers: Record<string, string>, body: unknown): Promise<Answer> {
  const res = await fetch(url, {
    method: 'POST',
    headers: { ...headers, 'content-type': 'application/json' },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(30_000),
  });
  const text = await res.text();
  let json: { code?: string; transfer_id?: number } = {};
  try {
    json = JSON.parse(text) as typeof json;
  } catch {
    // Not JSON (a proxy's or a dying server's page): the status says enough.
  }
  return {
    status: res.status,
    code: json.code ?? null,
    transferId: json.transfer_id ?? null,
    body: json,
    replayed: res.headers.get('idempotent-replayed') === 'true',
  };
}

/** An answer after which the client must send the same request with the same key again. */
const mustRetry = (a: Answer) => a.status === 0 || a.status === 503 || (a.status === 409 && a.code === IN_FLIGHT);

describe.each(ENGINES)('SIGKILL twice during a transfer load with retries, on %s', (engine: EngineName) => {
  it(
    `${CLIENTS} clients, ${CLIENTS * TRANSFERS_PER_CLIENT} keyed transfers, killed after the ${KILL_AFTER.map((n) => `${n}th`).join(' and ')} 201: exact ledger, retries answered within ${MAX_WAIT_AFTER_RESTART_MS} ms of the restart`,
    { timeout: 240_000 },
    async () => {
      const started = Date.now();
      const dataDir = testDataDir();
      const db = await createTestDatabase(engine, `crash-retry-${engine}`);
      try {
        const env: Record<string, string> = {
          DATABANK_DATA_DIR: dataDir,
          DATABANK_DEMO_DATA: 'false',
          DATABANK_SITE_DIR: 'none',
          DATABANK_RATE_LIMIT_PER_MINUTE: '10000000',
          ...(db.url ? { DATABASE_URL: db.url, MIGRATE_ON_BOOT: 'true' } : {}),
        };
        const server = new CrashingServer(env, await freePort());
        await server.start();
        const admin = { authorization: `Bearer ${readFileSync(join(dataDir, 'admin-key'), 'utf8').trim()}` };

        // Accounts with known opening deposits.
        const customer = await post(`${server.base}/customers`, admin, { name: 'Crash Retry', date_of_birth: '1980-01-01' });
        expect(customer.status).toBe(201);
        const customerId = (customer.body as { id: number }).id;
        const accounts: number[] = [];
        const expected = new Map<number, number>();
        for (let i = 0; i < ACCOUNTS; i++) {
          const opened = await post(`${server.base}/customers/${customerId}/accounts`, admin, { account_type: 'checking' });
          expect(opened.status).toBe(201);
          const id = (opened.body as { account_id: number }).account_id;
          expect((await post(`${server.base}/accounts/${id}/deposits`, admin, { amount: opening(i) })).status).toBe(201);
          accounts.push(id);
          expected.set(id, opening(i));
        }
        const total = [...expected.values()].reduce((s, b) => s + b, 0);

        // The load: each logical transfer is sent until it has a final answer, with its own key.
        const plans = plan(accounts);
        const seen = new Map<string, number>();
        let created = 0;
        const milestones: Array<{ readonly n: number; readonly resolve: () => void }> = [];
        const createdAtLeast = (n: number) =>
          new Promise<void>((resolve) => (created >= n ? resolve() : milestones.push({ n, resolve })));

        const send = async (planned: Planned): Promise<Outcome> => {
          const first = Date.now();
          let attempts = 0;
          let lastFailureAt: number | null = null;
          for (;;) {
            attempts++;
            const answer = await post(`${server.base}/transfers`, { ...admin, 'idempotency-key': planned.key }, {
              from_account_id: planned.from,
              to_account_id: planned.to,
              amount: planned.amount,
            }).catch((): Answer => ({ status: 0, code: null, transferId: null, body: null, replayed: false }));
            const label = `${answer.status}${answer.code ? ` ${answer.code}` : ''}${answer.replayed ? ' (replay)' : ''}`;
            seen.set(label, (seen.get(label) ?? 0) + 1);
            if (!mustRetry(answer)) {
              if (answer.status === 201) {
                created++;
                for (const m of milestones.filter((m) => m.n <= created)) m.resolve();
              }
              return { ...answer, planned, attempts, lastFailureAt, answeredAt: Date.now() };
            }
            lastFailureAt = Date.now();
            if (lastFailureAt - first > GIVE_UP_MS) {
              throw new Error(`transfer ${planned.key} has no final answer after ${GIVE_UP_MS} ms; last: ${label}`);
            }
            // The retry's back-off.
            await new Promise((resolve) => setTimeout(resolve, BACKOFF_MS));
          }
        };
        const client = async (mine: readonly Planned[]) => {
          const outcomes: Outcome[] = [];
          for (const planned of mine) outcomes.push(await send(planned));
          return outcomes;
        };
        const loadStarted = Date.now();
        const load = Promise.all(plans.map(client));
        const loadDone = load.then(() => 'done' as const);

        const kills: Kill[] = [];
        for (const n of KILL_AFTER) {
          if ((await Promise.race([createdAtLeast(n).then(() => 'reached' as const), loadDone])) === 'done') break;
          const killedAt = Date.now();
          const answeredBefore = created;
          await server.kill();
          kills.push({ killedAt, restartedAt: await server.start(), answeredBefore });
        }
        const outcomes = (await load).flat();
        const loadMs = Date.now() - loadStarted;
        await server.stop();
        expect(kills, 'both kills happened while the load ran').toHaveLength(KILL_AFTER.length);

        // Every logical transfer got a final answer: done, or refused for want of money.
        const finals = new Map<string, number>();
        for (const o of outcomes) finals.set(`${o.status} ${o.code ?? ''}`.trim(), (finals.get(`${o.status} ${o.code ?? ''}`.trim()) ?? 0) + 1);
        expect([...finals.keys()].filter((k) => k !== '201' && k !== `409 ${INSUFFICIENT}`), JSON.stringify(Object.fromEntries(finals))).toEqual([]);
        const done = outcomes.filter((o) => o.status === 201);
        for (const o of done) {
          expect(o.body, o.planned.key).toMatchObject({
            transfer_id: o.transferId,
            from_account_id: o.planned.from,
            to_account_id: o.planned.to,
            amount: o.planned.amount,
          });
          expected.set(o.planned.from, (expected.get(o.planned.from) as number) - o.planned.amount);
          expected.set(o.planned.to, (expected.get(o.planned.to) as number) + o.planned.amount);
        }
        expect(new Set(done.map((o) => o.transferId)).size, 'one transfer id per logical transfer').toBe(done.length);

        // Each retry that waited for a restart got its final answer soon after that restart.
        const waits = outcomes
          .filter((o) => o.lastFailureAt !== null)
          .map((o) => {
            const kill = kills.filter((k) => k.killedAt <= (o.lastFailureAt as number)).pop();
            return { key: o.planned.key, kill, ms: kill ? o.answeredAt - kill.restartedAt : Number.NaN };
          });
        expect(waits.filter((w) => !w.kill).map((w) => w.key), 'retries with no kill to explain them').toEqual([]);
        const maxWait = Math.max(0, ...waits.map((w) => w.ms));
        const slowest = waits.find((w) => w.ms === maxWait);
        expect(
          maxWait,
          `a retry waited ${maxWait} ms past the restart for its final answer (${slowest?.key}); at most ${MAX_WAIT_AFTER_RESTART_MS} ms is allowed`,
        ).toBeLessThanOrEqual(MAX_WAIT_AFTER_RESTART_MS);

        // The database, read with the server stopped: exactly the answered transfers, nothing else.
        const store = await openSqlStore(loadConfig(env).sql);
        try {
          const rows = await sql<{ id: number; account_id: number; amount: number }>`
            select t.id, e.account_id, e.amount from ledger_transactions t join ledger_entries e on e.transaction_id = t.id
            where t.kind = 'transfer' order by t.id, e.amount`.execute(store.db);
          const ledger = new Map<number, { from: number; to: number; amount: number }>();
          for (let i = 0; i < rows.rows.length; i += 2) {
            const [out, into] = [rows.rows[i], rows.rows[i + 1]];
            expect(out?.id).toBe(into?.id);
            expect(out?.amount).toBe(-(into?.amount as number));
            ledger.set(out?.id as number, { from: out?.account_id as number, to: into?.account_id as number, amount: into?.amount as number });
          }
          expect(ledger).toEqual(
            new Map(done.map((o) => [o.transferId as number, { from: o.planned.from, to: o.planned.to, amount: o.planned.amount }])),
          );
          expect(await balances(store.db)).toEqual(Object.fromEntries(expected));
          const check = await checkLedger(store.db);
          expect(check).toMatchObject({ total, mismatched: [], negative: [], unbalanced: [], wrongCurrency: [] });
          const events = await sql<{ n: number }>`
            select count(*)::int as n from outbox where type = 'transfer.completed'`.execute(store.db);
          expect(events.rows[0]?.n).toBe(done.length);
          // Each key's stored answer is the one its client was given.
          const stored = await store.db
            .selectFrom('idempotency_keys')
            .select(['key', 'response_status', 'response_body'])
            .where('key', 'like', 'crash-retry-%')
            .execute();
          const storedAnswer = (r: (typeof stored)[number]) => {
            const body = (typeof r.response_body === 'string' ? JSON.parse(r.response_body) : r.response_body) as Record<string, unknown>;
            return [r.response_status, body.transfer_id ?? body.code];
          };
          expect(new Map(stored.map((r) => [r.key, storedAnswer(r)]))).toEqual(
            new Map(outcomes.map((o) => [o.planned.key, [o.status, o.transferId ?? o.code]])),
          );
        } finally {
          await store.close();
        }

        const retried = outcomes.filter((o) => o.lastFailureAt !== null);
        console.log(
          `crash-retry on ${engine}: ${outcomes.length} transfers (${done.length} done, ${outcomes.length - done.length} refused), ` +
            `${kills.length} kills after ${kills.map((k) => k.answeredBefore).join(' and ')} answers, ` +
            `restarts took ${kills.map((k) => k.restartedAt - k.killedAt).join(' and ')} ms, ` +
            `${retried.length} transfers retried (${outcomes.filter((o) => o.replayed).length} answered by a replay), ` +
            `max wait past a restart ${maxWait} ms (per restart: ${kills.map((k) => Math.max(0, ...waits.filter((w) => w.kill === k).map((w) => w.ms))).join(' and ')} ms), ` +
            `load ${loadMs} ms, whole test ${Date.now() - started} ms; ` +
            `attempts: ${JSON.stringify(Object.fromEntries(seen))}`,
        );
      } finally {
        await db.drop();
      }
    },
  );
});
