import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { postmasterPid } from '../support/pg-cluster.ts';
import { missingReplicationTools, parseLsn, startReplicatedPair } from '../support/pg-replication.ts';
import type { ReplicatedPair } from '../support/pg-replication.ts';

/**
 * The test support for read routing to replicas, against real servers: a PostgreSQL 15 primary and
 * a streaming hot-standby replica (test/support/pg-replication.ts). What a row committed on the
 * primary does on the replica: shows once the replica has caught up, stays invisible while replay
 * is paused though its WAL has arrived, and shows again after the replica was killed with SIGKILL
 * and started anew. Each test uses rows of its own.
 */

const missing = missingReplicationTools('PostgreSQL replication support suite');

type Note = { id: number; body: string };

describe.skipIf(missing.length > 0)('a PostgreSQL 15 primary with a streaming replica', () => {
  let pair: ReplicatedPair | null = null;
  const the = (): ReplicatedPair => {
    if (!pair) throw new Error('the pair did not start');
    return pair;
  };
  const notes = (target: 'primary' | number, ids: readonly number[]): Promise<Note[]> =>
    the().query<Note>(target, 'select id, body from notes where id = any($1::int[]) order by id', [ids]);

  beforeAll(async () => {
    pair = await startReplicatedPair({ database: 'databank' });
    await pair.query('primary', 'create table notes (id int primary key, body text not null)');
    await pair.waitForCatchUp(0);
  }, 120_000);

  afterAll(async () => {
    await pair?.close();
  }, 60_000);

  it('is a hot standby of its own port that refuses writes', async () => {
    const { primary, replicas } = the();
    expect(replicas).toHaveLength(1);
    const replica = replicas[0]!;
    expect(replica.port).not.toBe(primary.port);
    expect(replica.url).toBe(`postgres://postgres@127.0.0.1:${replica.port}/databank`);
    expect(primary.url).toBe(`postgres://postgres@127.0.0.1:${primary.port}/databank`);

    const [onReplica] = await the().query<{ port: string; recovery: boolean; db: string }>(
      0,
      `select current_setting('port') as port, pg_is_in_recovery() as recovery, current_database() as db`,
    );
    expect(onReplica).toEqual({ port: String(replica.port), recovery: true, db: 'databank' });
    const [onPrimary] = await the().query<{ recovery: boolean }>('primary', 'select pg_is_in_recovery() as recovery');
    expect(onPrimary).toEqual({ recovery: false });

    await expect(the().query(0, `insert into notes values (100, 'on the replica')`)).rejects.toMatchObject({ code: '25006' });
    expect(await notes('primary', [100])).toEqual([]);
  });

  it('shows a row committed on the primary once it has caught up', async () => {
    await the().query('primary', `insert into notes values (1, 'first')`);
    const target = await the().primaryLsn();
    const reached = await the().waitForCatchUp(0);
    expect(parseLsn(reached) >= parseLsn(target)).toBe(true);
    expect(await notes(0, [1])).toEqual([{ id: 1, body: 'first' }]);
  });

  it('follows a database created on the primary after the base backup', async () => {
    await the().query('primary', 'create database late_one', [], 'postgres');
    await the().waitForCatchUp(0);
    const [row] = await the().query<{ db: string }>(0, 'select current_database() as db', [], 'late_one');
    expect(row).toEqual({ db: 'late_one' });
  });

  it('with replay paused, keeps a received row invisible until replay resumes', async () => {
    await the().pauseReplay(0);
    const pausedAt = await the().replayLsn(0);
    expect(pausedAt).not.toBeNull();

    await the().query('primary', `insert into notes values (2, 'while paused')`);
    const committed = await the().primaryLsn();
    expect(await notes('primary', [2])).toEqual([{ id: 2, body: 'while paused' }]);

    // The WAL holding the row has reached the replica; only its replay is held back.
    await the().waitForReceive(0, { lsn: committed });
    expect(await notes(0, [2])).toEqual([]);
    const [state] = await the().query<{ state: string; replay: string }>(
      0,
      `select pg_get_wal_replay_pause_state() as state, pg_last_wal_replay_lsn()::text as replay`,
    );
    expect(state).toEqual({ state: 'paused', replay: pausedAt });
    expect(parseLsn(pausedAt!) < parseLsn(committed)).toBe(true);
    await expect(the().waitForCatchUp(0, { lsn: committed })).rejects.toThrow(/replay is paused on replica0/);

    await the().resumeReplay(0);
    await the().waitForCatchUp(0, { lsn: committed });
    expect(await notes(0, [2])).toEqual([{ id: 2, body: 'while paused' }]);
  });

  it('streams and catches up again after its postmaster is killed with SIGKILL and started anew', async () => {
    const replica = the().replicas[0]!;
    const before = postmasterPid(replica.dataDir);
    expect(before).not.toBeNull();

    await the().killReplica(0);
    await expect(the().query(0, 'select 1')).rejects.toMatchObject({ code: 'ECONNREFUSED' });
    await the().query('primary', `insert into notes values (3, 'while it was down')`);
    expect(await notes('primary', [3])).toEqual([{ id: 3, body: 'while it was down' }]);

    await the().startReplica(0);
    const after = postmasterPid(replica.dataDir);
    expect(after).not.toBeNull();
    expect(after).not.toBe(before);
    await the().waitForCatchUp(0);
    expect(await notes(0, [3])).toEqual([{ id: 3, body: 'while it was down' }]);

    // And it keeps following: a row committed after the restart shows too.
    await the().query('primary', `insert into notes values (4, 'after the restart')`);
    await the().waitForCatchUp(0);
    expect(await notes(0, [3, 4])).toEqual([
      { id: 3, body: 'while it was down' },
      { id: 4, body: 'after the restart' },
    ]);
  });

  it('stops and starts again on its own port', async () => {
    const replica = the().replicas[0]!;
    await the().stopReplica(0);
    expect(postmasterPid(replica.dataDir)).toBeNull();
    await the().query('primary', `insert into notes values (5, 'while it was stopped')`);
    await the().startReplica(0);
    await the().waitForCatchUp(0);
    expect(await notes(0, [5])).toEqual([{ id: 5, body: 'while it was stopped' }]);
    const [row] = await the().query<{ port: string }>(0, `select current_setting('port') as port`);
    expect(row).toEqual({ port: String(replica.port) });
  });
});

describe.skipIf(missing.length > 0)('a PostgreSQL 15 primary with two streaming replicas', () => {
  let pair: ReplicatedPair | null = null;
  const the = (): ReplicatedPair => {
    if (!pair) throw new Error('the pair did not start');
    return pair;
  };

  beforeAll(async () => {
    pair = await startReplicatedPair({ replicas: 2 });
    await pair.query('primary', 'create table marks (id int primary key)');
    // Both have the table before one of them is paused.
    await pair.waitForCatchUp(0);
    await pair.waitForCatchUp(1);
  }, 120_000);

  afterAll(async () => {
    await pair?.close();
  }, 60_000);

  it('streams to each replica through a slot of its own', async () => {
    const { primary, replicas } = the();
    expect(replicas.map((r) => [r.index, r.name, r.slot, r.url])).toEqual([
      [0, 'replica0', 'databank_replica0', `postgres://postgres@127.0.0.1:${replicas[0]!.port}/postgres`],
      [1, 'replica1', 'databank_replica1', `postgres://postgres@127.0.0.1:${replicas[1]!.port}/postgres`],
    ]);
    expect(new Set([primary.port, ...replicas.map((r) => r.port)]).size).toBe(3);
    const senders = await the().query<{ name: string; slot: string }>(
      'primary',
      `select r.application_name as name, s.slot_name as slot
         from pg_stat_replication r join pg_replication_slots s on s.active_pid = r.pid
        where r.state = 'streaming' order by 1`,
    );
    expect(senders).toEqual([
      { name: 'replica0', slot: 'databank_replica0' },
      { name: 'replica1', slot: 'databank_replica1' },
    ]);
  });

  it('pauses one replica without holding back the other', async () => {
    await the().pauseReplay(1);
    await the().query('primary', 'insert into marks values (1)');
    const committed = await the().primaryLsn();

    await the().waitForCatchUp(0, { lsn: committed });
    expect(await the().query(0, 'select id from marks where id = 1')).toEqual([{ id: 1 }]);
    await the().waitForReceive(1, { lsn: committed });
    expect(await the().query(1, 'select id from marks where id = 1')).toEqual([]);

    await the().resumeReplay(1);
    await the().waitForCatchUp(1, { lsn: committed });
    expect(await the().query(1, 'select id from marks where id = 1')).toEqual([{ id: 1 }]);
  });
});
