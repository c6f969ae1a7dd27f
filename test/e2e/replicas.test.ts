import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApp, type App } from '../../src/app.ts';
import { sqlConfigFor, type PostgresSqlConfig } from '../../src/config.ts';
import { testConfig } from '../support/app.ts';
import { runCli } from '../support/cli.ts';
import { missingReplicationTools, parseLsn, startReplicatedPair, type ReplicatedPair } from '../support/pg-replication.ts';
import { until } from '../support/until.ts';

// Read routing on real streaming replication: a primary and one replica of our own (initdb,
// pg_basebackup -R, free ports), and the app in this process reading through them.

const MAX_LAG_MS = 1000;
const missing = missingReplicationTools('replica routing suite');

interface Answer {
  readonly status: number;
  readonly from: string | undefined;
  readonly lsn: string | undefined;
  readonly body: unknown;
}

describe.skipIf(missing.length > 0)('reads on a streaming replica', () => {
  let pair: ReplicatedPair;
  let app: App;
  let admin: string;
  /** A second admin key: its reads carry no token of the first key's writes. */
  let other: string;
  let account: number;

  async function call(method: 'GET' | 'POST' | 'PATCH', url: string, key: string, payload?: object, headers: Record<string, string> = {}): Promise<Answer> {
    const res = await app.http.inject({
      method,
      url,
      headers: { authorization: `Bearer ${key}`, ...headers },
      ...(payload ? { payload } : {}),
    });
    return {
      status: res.statusCode,
      from: res.headers['x-databank-read-from'] as string | undefined,
      lsn: res.headers['x-databank-lsn'] as string | undefined,
      body: res.body === '' ? null : res.json(),
    };
  }

  const entries = async (key: string, headers: Record<string, string> = {}) => {
    const a = await call('GET', `/accounts/${account}/entries?limit=100`, key, undefined, headers);
    expect(a.status, JSON.stringify(a.body)).toBe(200);
    return { ...a, count: (a.body as { result: unknown[] }).result.length };
  };

  /** The replica as the app sees it, once it has replayed `lsn` (or just once it is in rotation). */
  const replicaReady = (lsn?: string) =>
    until(
      async () => app.deps.reads.status()[0],
      (r) => r?.state === 'in_rotation' && (lsn === undefined || (r.replay_lsn !== null && parseLsn(r.replay_lsn) >= parseLsn(lsn))),
      { what: `replica in rotation${lsn ? ` past ${lsn}` : ''}`, timeoutMs: 30_000 },
    );

  const readsCount = async (target: string, reason: string): Promise<number> => {
    const metric = await app.deps.metrics.registry.getSingleMetric('databank_db_reads_total')?.get();
    return metric?.values.find((v) => v.labels.target === target && v.labels.reason === reason)?.value ?? 0;
  };

  beforeAll(async () => {
    pair = await startReplicatedPair({ database: 'databank' });
    const primary = sqlConfigFor(pair.primary.url);
    const replica = sqlConfigFor(pair.replicas[0]!.url) as PostgresSqlConfig;
    const config = testConfig({ sql: primary, url: pair.primary.url, drop: async () => undefined }, {
      replicas: { urls: [replica], maxLagMs: MAX_LAG_MS, checkMs: 100, readYourWritesMs: 10_000 },
    });
    app = await createApp(config, { logger: pino({ level: 'silent' }), defaultMetrics: false });
    admin = app.bootstrapped!.adminKey!;
    const key = await call('POST', '/api-keys', admin, { role: 'admin' });
    other = (key.body as { key: string }).key;
    const customer = await call('POST', '/customers', admin, { name: 'Rhea Replica', date_of_birth: '1985-03-04' });
    const opened = await call('POST', `/customers/${(customer.body as { id: number }).id}/accounts`, admin, { account_type: 'checking' });
    account = (opened.body as { account_id: number }).account_id;
    const deposit = await call('POST', `/accounts/${account}/deposits`, admin, { amount: 1000 }, { 'idempotency-key': 'replica-first' });
    expect(deposit.status).toBe(201);
    await replicaReady(deposit.lsn);
  }, 180_000);

  afterAll(async () => {
    await app?.close();
    await pair?.close();
  }, 60_000);

  it('a write answers its WAL position; a read that presents it goes to a replica that has replayed it', async () => {
    const deposit = await call('POST', `/accounts/${account}/deposits`, admin, { amount: 5 }, { 'idempotency-key': 'replica-token' });
    expect(deposit.status).toBe(201);
    expect(deposit.lsn).toMatch(/^[0-9A-F]+\/[0-9A-F]+$/);
    await replicaReady(deposit.lsn);
    const before = await readsCount('replica', 'token_replayed');
    const read = await entries(other, { 'x-databank-lsn': deposit.lsn! });
    expect([read.from, read.count]).toEqual(['replica', 2]);
    expect(await readsCount('replica', 'token_replayed')).toBeGreaterThan(before);
    // Without a token, within the bound: a replica too.
    const plain = await entries(other);
    expect([plain.from, plain.count]).toEqual(['replica', 2]);
  });

  it('refuses a token that is not a WAL position', async () => {
    for (const bad of ['nope', '0/', '1/2/3', 'G/1', '123456789/1']) {
      const res = await call('GET', `/accounts/${account}/entries`, other, undefined, { 'x-databank-lsn': bad });
      expect([res.status, (res.body as { code: string }).code], bad).toEqual([400, 'DATABANK_ERR_INVALID_LSN']);
    }
  });

  it('with replay paused: a token read, and the writer\'s own reads, are served by the primary and show the write; reads without a token are never older than the bound', async () => {
    await pair.pauseReplay(0);
    try {
      const before = (await entries(other)).count;
      const deposit = await call('POST', `/accounts/${account}/deposits`, admin, { amount: 7 }, { 'idempotency-key': 'replica-paused' });
      expect(deposit.status).toBe(201);
      const committedAt = Date.now();
      await pair.waitForReceive(0, { lsn: deposit.lsn! });

      const withToken = await entries(other, { 'x-databank-lsn': deposit.lsn! });
      expect([withToken.from, withToken.count]).toEqual(['primary', before + 1]);
      // The writing key's own reads wait for its write without a header.
      const own = await entries(admin);
      expect([own.from, own.count]).toEqual(['primary', before + 1]);
      // A cached read (the account) is filled from the primary: it shows the new balance to anyone.
      const cached = await call('GET', `/accounts/${account}`, other);
      expect((cached.body as { balance: number }).balance).toBe(1000 + 5 + 7);

      // Reads without a token: the replica's answer (without the deposit) only while the write is
      // younger than the bound; every read that starts after the bound shows it.
      const seen: { startedAt: number; count: number; from: string | undefined }[] = [];
      await until(
        async () => {
          const startedAt = Date.now();
          const r = await entries(other);
          seen.push({ startedAt, count: r.count, from: r.from });
          return startedAt;
        },
        (startedAt) => startedAt > committedAt + MAX_LAG_MS + 300,
        { what: 'reads past the staleness bound', everyMs: 20, timeoutMs: 30_000 },
      );
      const stale = seen.filter((s) => s.count === before);
      expect(stale.every((s) => s.from === 'replica' && s.startedAt <= committedAt + MAX_LAG_MS)).toBe(true);
      const late = seen.filter((s) => s.startedAt > committedAt + MAX_LAG_MS);
      expect(late.length).toBeGreaterThan(0);
      expect(late.map((s) => [s.from, s.count])).toEqual(late.map(() => ['primary', before + 1]));
      expect(app.deps.reads.status()[0]!.state).toBe('lagging');
      expect(await readsCount('primary', 'replicas_lagging')).toBeGreaterThan(0);
    } finally {
      await pair.resumeReplay(0);
    }
    await pair.waitForCatchUp(0);
    await replicaReady();
    const back = await entries(other);
    expect(back.from).toBe('replica');
  });

  it('a replica killed under load fails no read, leaves the rotation, and comes back when it is up again', async () => {
    await replicaReady();
    const failures: string[] = [];
    const served = { replica: 0, primary: 0 };
    let stop = false;
    let afterKill = 0;
    let killed = false;
    const client = async () => {
      while (!stop) {
        const res = await call('GET', `/accounts/${account}/entries?limit=10`, other);
        if (res.status !== 200) failures.push(`${res.status} ${JSON.stringify(res.body)}`);
        else served[res.from === 'replica' ? 'replica' : 'primary']++;
        if (killed) afterKill++;
      }
    };
    const clients = Array.from({ length: 8 }, client);
    try {
      await until(async () => served.replica, (n) => n >= 50, { what: '50 reads on the replica' });
      await pair.killReplica(0);
      killed = true;
      await until(async () => app.deps.reads.status()[0]!.state, (s) => s === 'down', { what: 'replica out of rotation' });
      const mark = afterKill;
      await until(async () => afterKill, (n) => n >= mark + 200, { what: '200 reads after the replica left' });
    } finally {
      stop = true;
      await Promise.all(clients);
    }
    expect(failures).toEqual([]);
    expect(afterKill).toBeGreaterThanOrEqual(200);

    await pair.startReplica(0);
    await pair.waitForCatchUp(0);
    await replicaReady();
    const back = await entries(other);
    expect(back.from).toBe('replica');
  }, 120_000);

  it('GET /replicas, /metrics and `databank replica status` show the replica, its state and lag', async () => {
    await replicaReady();
    const res = await call('GET', '/replicas', admin);
    const body = res.body as { max_lag_ms: number; replicas: { name: string; state: string; lag_ms: number | null }[] };
    expect(body.max_lag_ms).toBe(MAX_LAG_MS);
    expect(body.replicas.map((r) => [r.name, r.state])).toEqual([[`127.0.0.1:${pair.replicas[0]!.port}/databank`, 'in_rotation']]);
    const customer = await app.http.inject({ method: 'GET', url: '/replicas', headers: { authorization: `Bearer ${await customerKey()}` } });
    expect(customer.statusCode).toBe(403);

    const metrics = await app.http.inject({ method: 'GET', url: '/metrics', headers: { authorization: `Bearer ${admin}` } });
    const name = `127.0.0.1:${pair.replicas[0]!.port}/databank`;
    expect(metrics.body).toContain(`databank_db_replica_in_rotation{replica="${name}"} 1`);
    expect(metrics.body).toMatch(new RegExp(`databank_db_replica_lag_seconds\\{replica="${name.replace(/[.]/g, '\\.')}"\\} \\d`));
    expect(metrics.body).toMatch(/databank_db_reads_total\{target="replica",reason="within_lag"\} \d+/);

    // The CLI on its own (no server answers at its HOST:PORT): it measures the same way.
    const cli = await runCli(['replica', 'status', '--json'], {
      DATABASE_URL: pair.primary.url,
      DATABASE_REPLICA_URLS: pair.replicas[0]!.url,
      DATABANK_DATA_DIR: app.config.dataDir,
      PORT: '1',
    });
    expect(cli.code, cli.stderr).toBe(0);
    const report = JSON.parse(cli.stdout) as { source: string; replicas: { name: string; state: string; lag_ms: number }[] };
    expect([report.source, report.replicas.map((r) => [r.name, r.state])]).toEqual(['direct', [[name, 'in_rotation']]]);
  }, 60_000);

  // Last: it ends the replica's life as a replica.
  it('a replica promoted out of recovery leaves the rotation; its reads go to the primary', async () => {
    await replicaReady();
    await pair.query(0, 'select pg_promote(true, 30)');
    await until(async () => app.deps.reads.status()[0]!.state, (s) => s === 'not_in_recovery', { what: 'promoted replica out of rotation' });
    const before = await readsCount('primary', 'replicas_down');
    const read = await entries(other);
    expect([read.status, read.from]).toEqual([200, 'primary']);
    expect(await readsCount('primary', 'replicas_down')).toBeGreaterThan(before);
  });

  async function customerKey(): Promise<string> {
    const customer = await call('POST', '/customers', admin, { name: 'Cora Customer', date_of_birth: '1990-01-01' });
    const key = await call('POST', '/api-keys', admin, { role: 'customer', customer_id: (customer.body as { id: number }).id });
    return (key.body as { key: string }).key;
  }
});
