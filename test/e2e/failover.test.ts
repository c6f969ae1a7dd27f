import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.ts';
import { openSqlStore } from '../../src/stores/sql/index.ts';
import { testDataDir } from '../support/app.ts';
import { serve } from '../support/cli.ts';
import { HaCluster, missingHaTools } from '../support/ha-cluster.ts';
import { balances, checkLedger } from '../support/invariants.ts';
import { waitFor } from '../support/processes.ts';
import { rng } from '../support/random.ts';

/**
 * Primary failover under load, end to end: the Patroni cluster of deploy/ha (two PostgreSQL 15
 * nodes in synchronous replication, etcd, HAProxy), a real `databank serve` whose DATABASE_URL is
 * HAProxy's primary port, and clients sending keyed transfers all along. The primary's node is
 * killed (SIGKILL to Patroni and every PostgreSQL process at once, as a host failure), and later
 * the cluster is switched over. Afterwards every transfer answered 201 is in the new primary's
 * ledger and nothing else is, the money adds up, and every other answer was a 503 with a catalog
 * code and Retry-After, given only while there was no primary: databank found the new primary by
 * itself, without a restart. The measured windows are printed; no duration is asserted.
 */

const CLIENTS = 8;
const ACCOUNTS = 8;
/** Each account's opening deposit: far more than all the transfers can take, so none is refused. */
const OPENING = 100_000_000;
const MAX_AMOUNT = 1_000;
/** 201s before the disruption, and after the new primary is in place, before the load stops. */
const BEFORE = 150;
const AFTER = 150;
/** A client's pause before it sends a transfer that got a 503 again (same Idempotency-Key). */
const BACKOFF_MS = 100;
/** A transfer with no 201 after this long fails the test instead of hanging it. */
const GIVE_UP_MS = 150_000;
/** The longest wait for the load to reach a milestone: a load that never does fails the test, naming what it got. */
const UNTIL_MS = 180_000;
const SEED = 0xfa11;
const CATALOG_CODE = /^DATABANK_ERR_[A-Z_]+$/;

interface Planned {
  readonly key: string;
  readonly from: number;
  readonly to: number;
  readonly amount: number;
}

/** One request and its answer; status 0 when no HTTP answer came (databank unreachable: the load stops). */
interface Attempt {
  readonly key: string;
  readonly sentAt: number;
  readonly answeredAt: number;
  readonly status: number;
  readonly code: string | null;
  readonly retryAfter: string | null;
  readonly transferId: number | null;
  readonly replayed: boolean;
}

async function post(url: string, headers: Record<string, string>, body: unknown): Promise<{ status: number; json: Record<string, unknown> }> {
  const res = await fetch(url, {
    method: 'POST',
    headers: { ...headers, 'content-type': 'application/json' },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(60_000),
  });
  return { status: res.status, json: (await res.json()) as Record<string, unknown> };
}

/**
 * CLIENTS concurrent clients, each sending one transfer at a time, every transfer with its own
 * Idempotency-Key and sent again with that key after a 503 until it gets its 201. Every attempt
 * is recorded. Any other answer ends that transfer (and fails the checks); no answer at all stops
 * the load with an error.
 */
class TransferLoad {
  readonly attempts: Attempt[] = [];
  /** The transfers answered 201, with the id of their answer. */
  readonly done: Array<Planned & { readonly transferId: number }> = [];
  private stopping = false;
  private running: Promise<void> | null = null;
  private readonly watchers = new Set<(a: Attempt) => void>();

  constructor(
    private readonly base: string,
    private readonly auth: Record<string, string>,
    private readonly accounts: readonly number[],
    private readonly label: string,
  ) {}

  /** Every read's status and code, in the order answered. */
  readonly reads: Array<Pick<Attempt, 'status' | 'code' | 'answeredAt'>> = [];

  start(): void {
    const clients = Array.from({ length: CLIENTS }, (_, c) => this.client(c));
    this.running = Promise.all([...clients, this.reader()]).then(() => undefined);
  }

  /**
   * Resolves once `count` attempts matching `test` (`what`) have been answered from now on;
   * rejects past `timeoutMs`, with what the clients were answered meanwhile.
   */
  until(what: string, count: number, test: (a: Attempt) => boolean, timeoutMs = UNTIL_MS): Promise<void> {
    const from = this.attempts.length;
    return new Promise((resolve, reject) => {
      let seen = 0;
      const finish = (err?: Error) => {
        this.watchers.delete(watch);
        clearTimeout(timer);
        if (err) reject(err);
        else resolve();
      };
      const watch = (a: Attempt) => {
        if (test(a) && ++seen >= count) finish();
      };
      const timer = setTimeout(
        () => finish(new Error(`timed out after ${timeoutMs} ms waiting for ${count} ${what} (${seen} so far); answers meanwhile: ${JSON.stringify(tally(this.attempts.slice(from)))}`)),
        timeoutMs,
      );
      this.watchers.add(watch);
      // A client that failed ends the wait with its error.
      this.running?.catch((err: Error) => finish(err));
    });
  }

  /** Lets every client finish the transfer it is sending, then resolves. */
  async stop(): Promise<void> {
    this.stopping = true;
    await this.running;
  }

  private async client(c: number): Promise<void> {
    const random = rng(SEED + c);
    for (let i = 0; !this.stopping; i++) {
      const from = Math.floor(random() * ACCOUNTS);
      let to = Math.floor(random() * (ACCOUNTS - 1));
      if (to >= from) to++;
      await this.send({
        key: `${this.label}-${c}-${i}`,
        from: this.accounts[from] as number,
        to: this.accounts[to] as number,
        amount: 1 + Math.floor(random() * MAX_AMOUNT),
      });
    }
  }

  /** One more client reading the accounts all along (through DATABASE_REPLICA_URLS when it can). */
  private async reader(): Promise<void> {
    for (let i = 0; !this.stopping; i++) {
      const res = await fetch(`${this.base}/accounts/${this.accounts[i % this.accounts.length] as number}`, {
        headers: this.auth,
        signal: AbortSignal.timeout(60_000),
      }).catch((err: unknown) => {
        throw new Error(`databank did not answer a read: ${String(err)}`);
      });
      const json = (await res.json().catch(() => ({}))) as { code?: string };
      this.reads.push({ status: res.status, code: json.code ?? null, answeredAt: Date.now() });
      if (res.status !== 200) await sleep(BACKOFF_MS);
    }
  }

  private async send(planned: Planned): Promise<void> {
    const first = Date.now();
    for (;;) {
      const sentAt = Date.now();
      let attempt: Attempt;
      try {
        const res = await fetch(`${this.base}/transfers`, {
          method: 'POST',
          headers: { ...this.auth, 'content-type': 'application/json', 'idempotency-key': planned.key },
          body: JSON.stringify({ from_account_id: planned.from, to_account_id: planned.to, amount: planned.amount }),
          signal: AbortSignal.timeout(60_000),
        });
        const text = await res.text();
        let json: { code?: string; transfer_id?: number } = {};
        try {
          json = JSON.parse(text) as typeof json;
        } catch {
          // Not JSON: the status says enough.
        }
        attempt = {
          key: planned.key,
          sentAt,
          answeredAt: Date.now(),
          status: res.status,
          code: json.code ?? null,
          retryAfter: res.headers.get('retry-after'),
          transferId: json.transfer_id ?? null,
          replayed: res.headers.get('idempotent-replayed') === 'true',
        };
      } catch (err) {
        attempt = { key: planned.key, sentAt, answeredAt: Date.now(), status: 0, code: String(err), retryAfter: null, transferId: null, replayed: false };
      }
      this.attempts.push(attempt);
      for (const watch of [...this.watchers]) watch(attempt);
      if (attempt.status === 201) {
        this.done.push({ ...planned, transferId: attempt.transferId as number });
        return;
      }
      // No answer at all: databank itself is gone, and every later request would fail the same way.
      if (attempt.status === 0) throw new Error(`databank did not answer transfer ${planned.key}: ${attempt.code}`);
      if (attempt.status !== 503) return;
      if (Date.now() - first > GIVE_UP_MS) throw new Error(`transfer ${planned.key} has no 201 after ${GIVE_UP_MS} ms of 503s`);
      await sleep(BACKOFF_MS);
    }
  }
}

/** What the clients saw around one disruption. */
interface Window {
  /** The first 503's answer: when clients first saw the primary gone. */
  readonly outageStart: number;
  /** The answer of the first 201 sent after `outageStart`: writes work again. */
  readonly resumedAt: number;
  readonly unavailable: number;
}

function windowOf(attempts: readonly Attempt[]): Window | null {
  const failed = attempts.filter((a) => a.status === 503);
  if (failed.length === 0) return null;
  const outageStart = Math.min(...failed.map((a) => a.answeredAt));
  const resumed = attempts.filter((a) => a.status === 201 && a.sentAt >= outageStart).map((a) => a.answeredAt);
  if (resumed.length === 0) return null;
  return { outageStart, resumedAt: Math.min(...resumed), unavailable: failed.length };
}

/**
 * Polls `check` until it returns true, at most 120 s, and resolves with the time it did; past
 * the deadline, fails with what `check` last returned instead of true.
 */
async function waitUntil(what: string, check: () => Promise<true | string>): Promise<number> {
  let last = '';
  try {
    await waitFor(what, async () => {
      const result = await check().catch((err: unknown) => String(err));
      if (result === true) return true;
      last = result;
      return false;
    }, { timeoutMs: 120_000, everyMs: 200 });
  } catch (err) {
    throw new Error(`${(err as Error).message}; last: ${last}`, { cause: err });
  }
  return Date.now();
}

function tally(attempts: ReadonlyArray<Pick<Attempt, 'status' | 'code'> & { readonly replayed?: boolean }>): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const a of attempts) {
    const label = `${a.status}${a.code ? ` ${a.code}` : ''}${a.replayed ? ' (replay)' : ''}`;
    counts[label] = (counts[label] ?? 0) + 1;
  }
  return counts;
}

// DATABANK_TEST_FAILOVER=0 leaves this suite out (`.ci/run` does on its second Node.js version:
// the suite proves Patroni, etcd and HAProxy, which do not change with the Node.js that runs it).
const wanted = process.env.DATABANK_TEST_FAILOVER !== '0';
if (!wanted) console.warn('failover suite skipped: DATABANK_TEST_FAILOVER=0');
const missing = wanted ? missingHaTools('failover suite (Patroni, etcd, HAProxy)') : [];

describe.skipIf(!wanted || missing.length > 0)('primary failover with Patroni + etcd behind HAProxy (deploy/ha)', () => {
  let cluster: HaCluster | null = null;
  const started = Date.now();

  beforeAll(async () => {
    cluster = await HaCluster.start();
    console.log(`failover suite: Patroni cluster of deploy/ha up (node1 primary, node2 synchronous standby) in ${Date.now() - started} ms`);
  }, 240_000);

  afterAll(async () => {
    await cluster?.stop();
    console.log(`failover suite: whole file ${Date.now() - started} ms`);
  }, 60_000);

  /**
   * Runs databank on a new database through HAProxy, starts the load, calls `disrupt` once
   * BEFORE transfers are done, waits until `newLeader` is the primary (and what `disrupt` started
   * has ended) and AFTER more transfers sent since then are done, stops the load and checks
   * everything on the new primary. `disrupt` resolves with the time it began.
   */
  async function underLoad(
    label: string,
    newLeader: string,
    disrupt: () => Promise<{ readonly at: number; readonly ended?: Promise<unknown> }>,
  ): Promise<void> {
    const ha = cluster as HaCluster;
    const testStarted = Date.now();
    const database = `bank_${label}`;
    const dataDir = testDataDir();
    const url = await ha.createDatabase(database);
    const replicaUrl = ha.appUrl(ha.ports.replicas, database);
    const served = await serve({
      DATABANK_DATA_DIR: dataDir,
      DATABANK_DEMO_DATA: 'false',
      DATABANK_SITE_DIR: 'none',
      DATABANK_RATE_LIMIT_PER_MINUTE: '10000000',
      DATABANK_AUTH_FAILURE_LIMIT_PER_MINUTE: '10000000',
      DATABASE_URL: url,
      DATABASE_REPLICA_URLS: replicaUrl,
      MIGRATE_ON_BOOT: 'true',
    });
    const admin = { authorization: `Bearer ${readFileSync(join(dataDir, 'admin-key'), 'utf8').trim()}` };

    const customer = await post(`${served.base}/customers`, admin, { name: 'Fail Over', date_of_birth: '1980-01-01' });
    expect(customer.status).toBe(201);
    const accounts: number[] = [];
    const expected = new Map<number, number>();
    for (let i = 0; i < ACCOUNTS; i++) {
      const opened = await post(`${served.base}/customers/${customer.json.id as number}/accounts`, admin, { account_type: 'checking' });
      expect(opened.status).toBe(201);
      const id = opened.json.account_id as number;
      expect((await post(`${served.base}/accounts/${id}/deposits`, admin, { amount: OPENING })).status).toBe(201);
      accounts.push(id);
      expected.set(id, OPENING);
    }

    const load = new TransferLoad(served.base, admin, accounts, label);
    const loadStarted = Date.now();
    load.start();
    await load.until('transfers answered 201 before the disruption', BEFORE, (a) => a.status === 201);
    const { at: disruptedAt, ended } = await disrupt();
    await Promise.all([ha.waitForLeader(newLeader, 180_000), ended]);
    const promotedAt = Date.now();
    await load.until(`transfers sent after ${newLeader} became the primary and answered 201`, AFTER, (a) => a.status === 201 && a.sentAt >= promotedAt);
    await load.stop();
    const loadMs = Date.now() - loadStarted;

    // databank was never restarted: the process that started is still serving, and ready.
    expect(served.child.exitCode, `databank serve exited:\n${served.stderr}`).toBeNull();
    const ready = await fetch(`${served.base}/readyz`);
    expect.soft(ready.status).toBe(200);

    // Every answer other than a 201 was a 503 with a catalog code: never a 500, never no answer.
    const { attempts, done } = load;
    const others = attempts.filter((a) => a.status !== 201);
    expect.soft(
      others.filter((a) => a.status !== 503 || !CATALOG_CODE.test(a.code ?? '')).map((a) => `${a.key}: ${a.status} ${a.code}`),
      `answers: ${JSON.stringify(tally(attempts))}`,
    ).toEqual([]);

    // Reads failed only as writes did (503 with a catalog code), and work again.
    expect.soft(
      load.reads.filter((r) => r.status !== 200 && (r.status !== 503 || !CATALOG_CODE.test(r.code ?? ''))).map((r) => `${r.status} ${r.code}`),
      'reads answered neither 200 nor a 503 with a catalog code',
    ).toEqual([]);
    expect.soft(load.reads.at(-1)?.status, 'the last read').toBe(200);

    // The 503s came only inside the window: none before the disruption, none sent after the
    // first success that followed the outage.
    const window = windowOf(attempts);
    expect(window, `the clients saw the primary go (503s) and come back (201s): ${JSON.stringify(tally(attempts))}`).not.toBeNull();
    const { outageStart, resumedAt, unavailable } = window as Window;
    expect.soft(
      others.filter((a) => a.answeredAt < disruptedAt || a.sentAt > resumedAt).map((a) => `${a.key} sent at +${a.sentAt - disruptedAt} ms: ${a.status} ${a.code}`),
      '503s outside the window',
    ).toEqual([]);

    // Nothing acknowledged was lost, nothing unacknowledged was applied: the new primary's ledger
    // holds exactly the transfers answered 201 (read there directly, not through HAProxy).
    const direct = loadConfig({ DATABANK_DATA_DIR: dataDir, DATABASE_URL: ha.appUrl(ha.node(newLeader).pgPort, database) });
    const store = await openSqlStore(direct.sql);
    try {
      const { rows } = await sql<{ id: number; account_id: number; amount: number }>`
        select t.id, e.account_id, e.amount from ledger_transactions t join ledger_entries e on e.transaction_id = t.id
        where t.kind = 'transfer' order by t.id, e.amount`.execute(store.db);
      const ledger = new Map<number, { from: number; to: number; amount: number }>();
      for (let i = 0; i < rows.length; i += 2) {
        const [out, into] = [rows[i], rows[i + 1]];
        expect(out?.id).toBe(into?.id);
        ledger.set(out?.id as number, { from: out?.account_id as number, to: into?.account_id as number, amount: into?.amount as number });
      }
      const answered = new Map(done.map((d) => [d.transferId, { from: d.from, to: d.to, amount: d.amount }]));
      expect.soft(new Set(done.map((d) => d.transferId)).size, 'one transfer id per transfer').toBe(done.length);
      expect.soft([...answered.keys()].filter((id) => !ledger.has(id)), 'transfers answered 201 but missing on the new primary').toEqual([]);
      expect.soft([...ledger.keys()].filter((id) => !answered.has(id)), 'transfers on the new primary never answered 201').toEqual([]);
      expect.soft(ledger).toEqual(answered);

      for (const d of done) {
        expected.set(d.from, (expected.get(d.from) as number) - d.amount);
        expected.set(d.to, (expected.get(d.to) as number) + d.amount);
      }
      expect.soft(await balances(store.db)).toEqual(Object.fromEntries(expected));
      expect.soft(await checkLedger(store.db)).toMatchObject({
        total: ACCOUNTS * OPENING,
        mismatched: [],
        negative: [],
        unbalanced: [],
        wrongCurrency: [],
      });
    } finally {
      await store.close();
    }

    // The background work resumed by itself too: every outbox event was relayed (exactly one per
    // transfer) and the audit consumer applied each, and every worker runs again.
    const caughtUp = await waitUntil(`databank's workers run again and the outbox and audit log caught up`, async () => {
      const [row] = await ha.query<{ unpublished: number; transfers: number; unaudited: number }>(
        ha.node(newLeader).pgPort,
        database,
        `select (select count(*) from outbox where published_at is null)::int as unpublished,
                (select count(*) from outbox where type = 'transfer.completed')::int as transfers,
                (select count(*) from outbox o where o.type = 'transfer.completed'
                   and not exists (select 1 from audit_events a where a.event_id::text = o.event_id::text))::int as unaudited`,
      );
      const metrics = await (await fetch(`${served.base}/metrics`, { headers: admin })).text();
      const down = metrics.split('\n').filter((l) => l.startsWith('databank_worker_up{') && !l.endsWith(' 1'));
      return row?.unpublished === 0 && row.unaudited === 0 && row.transfers === done.length && down.length === 0
        ? true
        : `${JSON.stringify(row)} for ${done.length} transfers; workers not up: ${down.join(', ')}`;
    });

    // Last, so that a server without it yet still has every other check run: each 503 says when to retry.
    expect.soft(others.filter((a) => a.status === 503 && !a.retryAfter).length, '503s without Retry-After').toBe(0);

    const at = (t: number) => `+${t - disruptedAt} ms`;
    console.log(
      `${label}: clients got 503s for ${resumedAt - outageStart} ms (first 503 ${at(outageStart)}, first 201 after it ${at(resumedAt)}, ` +
        `${newLeader} seen as primary ${at(promotedAt)}, background work caught up ${at(caughtUp)}); ${done.length} transfers done (${attempts.filter((a) => a.replayed).length} by a replay ` +
        `of a transfer applied before its 503), ${unavailable} 503s; load ${loadMs} ms, test ${Date.now() - testStarted} ms; ` +
        `answers: ${JSON.stringify(tally(attempts))}, reads: ${JSON.stringify(tally(load.reads))}`,
    );
    // An orderly stop after all that: SIGTERM drains and closes everything, exit code 0.
    const stopped = await served.stop();
    expect(stopped, `${served.stdout.split('\n').filter((l) => /"level":(50|60)/.test(l)).slice(-10).map((l) => l.slice(0, 800)).join('\n')}\n${served.stderr}`).toBe(0);
  }

  it('kill -9 of the primary node: the standby takes over, every 201 survives, 503s only until writes resume', { timeout: 420_000 }, async () => {
    const ha = cluster as HaCluster;
    const old = await ha.leader();
    expect(old, JSON.stringify(await ha.members())).not.toBeNull();
    const successor = ha.other(old as string).name;
    await ha.waitHealthy(old as string);
    await underLoad('failover', successor, async () => ({ at: await ha.killNode(old as string) }));

    // The old primary rejoins as the synchronous standby of the new one (pg_rewind), with every transfer.
    ha.startNode(old as string);
    await ha.waitHealthy(successor, 180_000);
    const [primaryCount] = await ha.query<{ n: number }>(ha.node(successor).pgPort, 'bank_failover', `select count(*)::int as n from ledger_transactions`);
    await waitFor(
      `the rejoined ${old} has replayed every ledger transaction`,
      async () => {
        const [row] = await ha.query<{ n: number }>(ha.node(old as string).pgPort, 'bank_failover', `select count(*)::int as n from ledger_transactions`);
        return row?.n === primaryCount?.n;
      },
      { timeoutMs: 60_000, everyMs: 200 },
    );
  });

  it('switchover under load: the same guarantees, a shorter window', { timeout: 300_000 }, async () => {
    const ha = cluster as HaCluster;
    // Whatever the test before left: both nodes running, the leader with its synchronous standby.
    ha.ensureRunning();
    const old = await ha.leader();
    expect(old, JSON.stringify(await ha.members())).not.toBeNull();
    const candidate = ha.other(old as string).name;
    await ha.waitHealthy(old as string, 180_000);
    let switched: Promise<string> = Promise.resolve('(not started)');
    await underLoad('switchover', candidate, async () => {
      const at = Date.now();
      switched = ha.switchover(candidate);
      return { at, ended: switched };
    });
    expect(await switched).toContain(candidate);
    await ha.waitHealthy(candidate, 180_000);
  });
});
