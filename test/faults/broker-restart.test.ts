import { setTimeout as delay } from 'node:timers/promises';
import { sql } from 'kysely';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { AUDIT_GROUP } from '../../src/services/activity.ts';
import { JOB_KINDS } from '../../src/services/async-ops.ts';
import { startTestApp, type TestApp } from '../support/app.ts';
import { POSTGRES_UP, REQUIRE_SERVICES } from '../support/engines.ts';
import { checkLedger, balances } from '../support/invariants.ts';
import { HAVE_NATS_SERVER, HAVE_RABBITMQ_SERVER, NATS_SERVER, OwnNatsServer, OwnRabbitNode, RABBITMQ_SERVER } from '../support/own-brokers.ts';
import { waitFor } from '../support/processes.ts';

/**
 * The event stream's and the job queue's brokers stopped and started again during a load: NATS
 * JetStream and RabbitMQ, each the file's own server on a free port (the machine's ones serve other
 * test files meanwhile), each taken down while clients make deposits, transfers and statement
 * requests (NATS killed with SIGKILL, a crash; RabbitMQ stopped in order with SIGTERM), kept down
 * until the load has gone on without it, and started again on the same data. The API writes to
 * the database only, so no request may fail because of a broker; the outbox relay, the job
 * dispatcher and the consumers catch up. Counted after the backlog has drained: every committed
 * outbox event once in the stream (no loss, no duplicate), one audit row per event and customer,
 * every job completed once with one statement file, every balance what the answers made it.
 *
 * On PostgreSQL only: on PGlite the same load takes twice as long, and the embedded engine's work
 * on the test's own event loop delays the AMQP heartbeats until the broker drops the connection,
 * a fault of its own that this test is not about.
 */

const HAVE_BROKERS = HAVE_NATS_SERVER && HAVE_RABBITMQ_SERVER;
const PREFIX = `brk${process.pid}`;
const CLIENTS = 4;
const OPENING = 1_000_000;
/** Each client asks for a statement every this many rounds (a round: a deposit and two transfers). */
const STATEMENT_EVERY = 10;
/**
 * A client starts a round at most this often: a steady load of ≈60 requests a second in all,
 * the same whatever else the machine runs, so that the backlog to drain and count stays about
 * the same size from run to run. (The pace of the load, not a wait for anything.)
 */
const ROUND_MS = 200;
/** Answers before the first stop: the relay, the dispatcher and the consumers are all running. */
const WARM_UP_ANSWERS = 60;
/** Answers while a broker is down: the outage is as long as the load takes to get these. */
const OUTAGE_ANSWERS = 120;
/** Answers after the last restart before the load ends. */
const AFTER_ANSWERS = 60;
const SLOW = { timeout: 240_000 } as const;

const silent = pino({ level: 'silent' });

interface Pair {
  readonly customer: number;
  readonly a: number;
  readonly b: number;
}

const missing = [!HAVE_NATS_SERVER && NATS_SERVER, !HAVE_RABBITMQ_SERVER && RABBITMQ_SERVER].filter(Boolean).join(' and ');
const TITLE = 'NATS and RabbitMQ stopped and started during a load';

if (!POSTGRES_UP || !HAVE_BROKERS) {
  // Say why it does not run, or fail when the servers are required.
  const why = [
    !POSTGRES_UP && 'PostgreSQL: set DATABASE_URL (e.g. postgres://postgres@127.0.0.1:5432/test)',
    !HAVE_BROKERS && `${missing} (Debian packages nats-server and rabbitmq-server), to run brokers of its own`,
  ]
    .filter(Boolean)
    .join('; and ');
  describe(TITLE, () => {
    if (REQUIRE_SERVICES) {
      it(`needs ${why}: REQUIRE_SERVICES=1`, () => {
        expect.fail(`REQUIRE_SERVICES=1 but this test cannot run: it needs ${why}`);
      });
    } else {
      it.skip(`skipped: needs ${why}`, () => undefined);
    }
  });
} else {
  describe(TITLE, () => {
    let nats: OwnNatsServer;
    let rabbit: OwnRabbitNode;
    let t: TestApp | undefined;

    beforeAll(async () => {
      [nats, rabbit] = await Promise.all([OwnNatsServer.create(), OwnRabbitNode.create()]);
      await Promise.all([nats.start(), rabbit.start()]);
      t = await startTestApp('postgres', 'broker-restart', {
        broker: {
          queue: { kind: 'rabbitmq', url: rabbit.url },
          stream: { kind: 'nats', url: nats.url },
          prefix: PREFIX,
          jobConcurrency: 2,
          jobMaxAttempts: 5,
        },
      }, silent);
    }, 180_000);
    // The app first, while its brokers still run; the brokers' process groups and dirs go when the file ends.
    afterAll(async () => t?.close());

    it(
      `${CLIENTS} clients keep answering 2xx through a NATS and a RabbitMQ restart; every outbox event once in the stream and the audit log, every job completed once`,
      SLOW,
      async ({ annotate }) => {
        const app = (t as TestApp).app;
        const admin = (t as TestApp).admin;
        const db = app.sql.db;
        const stream = app.background.stream;
        const started = Date.now();
        const phases: string[] = [];
        const phase = (what: string) => phases.push(`${what} ${((Date.now() - started) / 1000).toFixed(1)}`);

        const inject = async (method: 'POST' | 'GET', url: string, payload?: unknown) => {
          const res = await app.http.inject({ method, url, headers: admin, ...(payload === undefined ? {} : { payload: payload as object }) });
          return { status: res.statusCode, body: res.json<Record<string, unknown>>() };
        };

        // Each client has two accounts of its own, funded so that no transfer can be refused.
        const pairs: Pair[] = [];
        for (let c = 0; c < CLIENTS; c++) {
          const customer = await inject('POST', '/customers', { name: `Broker Restart ${c}`, date_of_birth: '1975-05-05' });
          expect(customer.status).toBe(201);
          const id = customer.body.id as number;
          const accounts: number[] = [];
          for (let k = 0; k < 2; k++) {
            const opened = await inject('POST', `/customers/${id}/accounts`, { account_type: 'checking' });
            expect(opened.status).toBe(201);
            const account = opened.body.account_id as number;
            expect((await inject('POST', `/accounts/${account}/deposits`, { amount: OPENING })).status).toBe(201);
            accounts.push(account);
          }
          pairs.push({ customer: id, a: accounts[0] as number, b: accounts[1] as number });
        }

        // The load: rounds of a deposit and two transfers, and now and then a statement, until told to stop.
        const month = new Date().toISOString().slice(0, 7);
        const answers = new Map<string, number>();
        const failures: string[] = [];
        const statementJobs: string[] = [];
        const expected = new Map<number, number>(pairs.flatMap((p) => [[p.a, OPENING], [p.b, OPENING]]));
        let answered = 0;
        let stopping = false;
        const record = (what: string, res: { status: number; body: Record<string, unknown> }) => {
          answered++;
          answers.set(String(res.status), (answers.get(String(res.status)) ?? 0) + 1);
          if (res.status < 200 || res.status > 299) failures.push(`${what}: ${res.status} ${JSON.stringify(res.body)}`);
          return res.status >= 200 && res.status <= 299;
        };
        const move = (account: number, amount: number) => expected.set(account, (expected.get(account) as number) + amount);
        const loadStarted = Date.now();
        const client = async (pair: Pair) => {
          for (let round = 1; !stopping; round++) {
            await delay(Math.max(0, loadStarted + (round - 1) * ROUND_MS - Date.now()));
            if (record('deposit', await inject('POST', `/accounts/${pair.a}/deposits`, { amount: 100 }))) move(pair.a, 100);
            const there = await inject('POST', '/transfers', { from_account_id: pair.a, to_account_id: pair.b, amount: 40 });
            if (record('transfer a→b', there)) {
              move(pair.a, -40);
              move(pair.b, 40);
            }
            const back = await inject('POST', '/transfers', { from_account_id: pair.b, to_account_id: pair.a, amount: 10 });
            if (record('transfer b→a', back)) {
              move(pair.b, -10);
              move(pair.a, 10);
            }
            if (round % STATEMENT_EVERY === 0) {
              const asked = await inject('POST', `/accounts/${pair.a}/statements`, { month });
              if (record('statement', asked)) statementJobs.push(asked.body.job_id as string);
            }
          }
        };
        const load = Promise.all(pairs.map(client));
        let loadFailed: unknown = null;
        load.catch((err: unknown) => (loadFailed = err ?? new Error('the load failed')));
        // However the test ends, the load ends with it (before the app closes).
        onTestFinished(async () => {
          stopping = true;
          await load.catch(() => undefined);
        });
        /** Waits until the load has `n` more answers than now (and `also` holds), failing fast if the load broke. */
        const moreAnswers = async (n: number, what: string, also: () => Promise<boolean> = async () => true) => {
          const target = answered + n;
          await waitFor(
            what,
            async () => {
              if (loadFailed) throw loadFailed;
              return answered >= target && (await also());
            },
            { timeoutMs: 120_000, everyMs: 20 },
          );
        };
        /** Outbox events not yet published (of those up to id `upTo`). */
        const unpublished = async (upTo?: number) => {
          const upToId = upTo === undefined ? sql`` : sql`and id <= ${upTo}`;
          const { rows } = await sql<{ n: number }>`select count(*)::int as n from outbox where published_at is null ${upToId}`.execute(db);
          return Number(rows[0]?.n);
        };
        const maxOutboxId = async () => {
          const { rows } = await sql<{ id: number }>`select coalesce(max(id), 0)::int as id from outbox`.execute(db);
          return Number(rows[0]?.id);
        };
        const jobStates = async () => {
          const rows = await sql<{ state: string; n: number }>`select state, count(*)::int as n from jobs group by state`.execute(db);
          return Object.fromEntries(rows.rows.map((r) => [r.state, r.n])) as Record<string, number>;
        };

        phase('load started');
        // Warm-up: events reach the stream and jobs complete.
        await moreAnswers(WARM_UP_ANSWERS, 'the warm-up load has run, an event is published and a statement completed', async () => {
          return ((await jobStates()).completed ?? 0) >= 1 && (await stream.head()) > 0;
        });
        const headBefore = await stream.head();

        // NATS killed (SIGKILL: a crash): the requests go on; the outbox keeps what the relay cannot
        // publish. It stays down until the relay has had a publish fail (its 5 s timeout) and the
        // load has had its answers.
        const relayFailures = () => app.workers.states().find((s) => s.name === 'outbox-relay')?.failures ?? 0;
        const relayFailuresBefore = relayFailures();
        await nats.stop('SIGKILL');
        const natsStoppedAt = Date.now();
        phase('NATS killed');
        let backlogAtNatsRestart = 0;
        await moreAnswers(OUTAGE_ANSWERS, `${OUTAGE_ANSWERS} answers with NATS down, a failed publish, and events waiting in the outbox`, async () => {
          if (relayFailures() === relayFailuresBefore) return false;
          backlogAtNatsRestart = await unpublished();
          return backlogAtNatsRestart > 0;
        });
        const lastEventOfNatsOutage = await maxOutboxId();
        phase('NATS starting');
        await nats.start();
        phase('NATS up');
        const natsDownMs = Date.now() - natsStoppedAt;
        await waitFor('the relay has published every event written while NATS was down', async () => (await unpublished(lastEventOfNatsOutage)) === 0, {
          timeoutMs: 90_000,
          everyMs: 50,
        });

        phase('NATS backlog published');
        const failedRelayRuns = relayFailures() - relayFailuresBefore;

        // RabbitMQ stopped in order (SIGTERM), if it can be while a job is in a consumer's hands:
        // its acknowledgement is lost and the job comes back after the restart. Statement requests
        // go on; their jobs wait in the jobs table for the dispatcher.
        const running = async () =>
          Number((await sql<{ n: number }>`select count(*)::int as n from jobs where state = 'running'`.execute(db)).rows[0]?.n) > 0;
        const caughtRunning = await waitFor('a job is running', running, { timeoutMs: 10_000, everyMs: 5 }).then(
          () => true,
          () => false,
        );
        phase(caughtRunning ? 'a job running' : 'no job seen running');
        const jobsBeforeRabbitStop = statementJobs.length;
        await rabbit.stop('SIGTERM');
        const rabbitStoppedAt = Date.now();
        phase('RabbitMQ stopped');
        let undispatchedAtRestart = 0;
        await moreAnswers(OUTAGE_ANSWERS, `${OUTAGE_ANSWERS} answers with RabbitMQ down, and jobs written meanwhile waiting for the queue`, async () => {
          const written = statementJobs.slice(jobsBeforeRabbitStop);
          if (written.length === 0) return false;
          undispatchedAtRestart = Number(
            (
              await sql<{ n: number }>`select count(*)::int as n from jobs where dispatched_at is null and id in (${sql.join(written)})`.execute(db)
            ).rows[0]?.n,
          );
          return undispatchedAtRestart > 0;
        });
        const jobsOfRabbitOutage = statementJobs.length - jobsBeforeRabbitStop;
        phase('RabbitMQ starting');
        await rabbit.start();
        phase('RabbitMQ up');
        const rabbitDownMs = Date.now() - rabbitStoppedAt;

        // The load goes on a little with both back, then stops; then everything drains.
        await moreAnswers(AFTER_ANSWERS, `${AFTER_ANSWERS} answers after the restarts`);
        stopping = true;
        await load;
        const loadEndedAt = Date.now();
        phase('load ended');
        let lastGroups: unknown = null;
        await waitFor(
          'the outbox is drained, the audit group has no lag and every job is completed',
          async () => {
            // In this order: a job's completion writes an event, and nothing else does once the load is over.
            const states = await jobStates();
            if (states.completed !== statementJobs.length || Object.keys(states).length !== 1) return false;
            if ((await unpublished()) > 0) return false;
            const groups = await stream.groups();
            lastGroups = groups;
            return groups.find((g) => g.group === AUDIT_GROUP)?.lag === 0;
          },
          { timeoutMs: 120_000, everyMs: 100 },
        ).catch((err: unknown) => {
          throw new Error(`${(err as Error).message}; groups ${JSON.stringify(lastGroups)}`, { cause: err });
        });
        const drainedAt = Date.now();
        phase('drained');
        const outboxCount = Number((await sql<{ n: number }>`select count(*)::int as n from outbox`.execute(db)).rows[0]?.n);

        // No request failed, whatever the brokers did.
        expect(failures, 'answers that were not 2xx').toEqual([]);

        // Every committed event exactly once in the stream: the relay's retries and JetStream's
        // duplicate window neither lose nor double one.
        const outbox = await sql<{ event_id: string; customer_ids: Array<number | string> }>`
          select event_id, customer_ids from outbox order by id`.execute(db);
        expect(outbox.rows.length).toBe(outboxCount);
        const head = await stream.head();
        const read = await stream.read(1, outboxCount + 1_000);
        const streamIds = read.map((r) => r.event.id);
        const outboxIds = outbox.rows.map((r) => r.event_id);
        const inStream = new Set(streamIds);
        const inOutbox = new Set(outboxIds);
        expect(streamIds.length - inStream.size, 'events stored twice in the stream').toBe(0);
        expect(outboxIds.filter((id) => !inStream.has(id)), 'outbox events missing from the stream').toEqual([]);
        expect(streamIds.filter((id) => !inOutbox.has(id)), 'stream events that are not in the outbox').toEqual([]);
        expect([head, streamIds.length]).toEqual([outboxCount, outboxCount]);

        // The audit projection: one row per (event, customer), one processed_messages row per event.
        const expectedAudit = outbox.rows.flatMap((r) => r.customer_ids.map((c) => `${r.event_id}:${Number(c)}`)).sort();
        const audit = await sql<{ event_id: string; customer_id: number | string }>`select event_id, customer_id from audit_events`.execute(db);
        const gotAudit = audit.rows.map((r) => `${r.event_id}:${Number(r.customer_id)}`).sort();
        expect(gotAudit.length).toBe(expectedAudit.length);
        expect(gotAudit).toEqual(expectedAudit);
        const auditProcessed = Number(
          (await sql<{ n: number }>`select count(*)::int as n from processed_messages where consumer = ${AUDIT_GROUP}`.execute(db)).rows[0]?.n,
        );
        expect(auditProcessed).toBe(outboxCount);

        // Every job completed once: one processed_messages row and one statement file each.
        const jobs = await sql<{ id: string; state: string; attempts: number; result: { file_id?: number } | null }>`
          select id, state, attempts, result from jobs order by id`.execute(db);
        expect(jobs.rows.length).toBe(statementJobs.length);
        expect(new Set(jobs.rows.map((j) => j.id))).toEqual(new Set(statementJobs));
        expect(jobs.rows.filter((j) => j.state !== 'completed')).toEqual([]);
        const processed = await sql<{ message_id: string }>`
          select message_id from processed_messages where consumer = 'statement.monthly'`.execute(db);
        expect(processed.rows.length).toBe(statementJobs.length);
        expect(new Set(processed.rows.map((p) => p.message_id))).toEqual(new Set(statementJobs));
        const files = await sql<{ id: number | string; filename: string }>`select id, filename from files where filename like 'statement-%'`.execute(db);
        expect(files.rows.length).toBe(statementJobs.length);
        const fileIds = new Set(files.rows.map((f) => Number(f.id)));
        const resultIds = jobs.rows.map((j) => Number(j.result?.file_id));
        expect(new Set(resultIds).size).toBe(statementJobs.length);
        expect(resultIds.filter((id) => !fileIds.has(id))).toEqual([]);
        // Nothing left on the queue, nothing dead-lettered.
        for (const kind of JOB_KINDS) {
          expect(await app.background.queue.stats(kind)).toMatchObject({ waiting: 0, delayed: 0, deadLetters: 0 });
        }

        // And the money: every balance what the answered requests made it, the ledger consistent.
        expect(await balances(db)).toMatchObject(Object.fromEntries(expected));
        expect(await checkLedger(db)).toMatchObject({ mismatched: [], negative: [], unbalanced: [], wrongCurrency: [] });

        const attempts = new Map<number, number>();
        for (const j of jobs.rows) attempts.set(j.attempts, (attempts.get(j.attempts) ?? 0) + 1);
        const note =
          `${answered} answers ${JSON.stringify(Object.fromEntries(answers))}, ${outboxCount} events (stream head ${headBefore} before the NATS stop), ` +
          `${statementJobs.length} statement jobs (attempts ${JSON.stringify(Object.fromEntries(attempts))}); ` +
          `NATS killed, down ${(natsDownMs / 1000).toFixed(1)} s, ${failedRelayRuns} failed relay runs, ${backlogAtNatsRestart} events waiting at its restart; ` +
          `RabbitMQ stopped ${caughtRunning ? 'with' : 'without'} a job running, down ${(rabbitDownMs / 1000).toFixed(1)} s, ` +
          `${jobsOfRabbitOutage} jobs asked meanwhile (${undispatchedAtRestart} of them seen undispatched); ` +
          `drained ${((drainedAt - loadEndedAt) / 1000).toFixed(1)} s after the load; whole test ${((Date.now() - started) / 1000).toFixed(1)} s (at s: ${phases.join(', ')})`;
        console.log(`broker-restart: ${note}`);
        await annotate(note);
      },
    );
  });
}
