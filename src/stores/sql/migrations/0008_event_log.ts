import type { Kysely } from 'kysely';
import { runStatements } from '../run-statements.ts';

/**
 * The event stream kept in the deployment's own database (`src/stores/stream/postgres-log.ts`).
 *
 * `event_log` is append-only. `seq` is assigned by the publisher under a lock rather than by an
 * identity column, so the numbers have no gaps (a sequence loses values to rolled-back and
 * de-duplicated inserts) and a group's lag is exactly `head - position`. The event itself is
 * kept whole as `event`; `event_id` makes a second publication of the same event a no-op.
 *
 * `stream_groups` holds each consumer group's position, the last `seq` it acknowledged. `epoch`
 * counts resets, so that a subscription notices that its group was moved and acknowledgements of
 * deliveries made before a reset are ignored.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await runStatements(db, [
    `create table event_log (
      seq bigint primary key check (seq > 0),
      event_id uuid not null unique,
      type text not null,
      event jsonb not null,
      appended_at timestamptz not null default now()
    )`,
    `create table stream_groups (
      name text primary key,
      position bigint not null check (position >= 0),
      epoch integer not null default 0,
      updated_at timestamptz not null default now()
    )`,
  ]);
}

export async function down(db: Kysely<unknown>): Promise<void> {
  await runStatements(db, [`drop table stream_groups`, `drop table event_log`]);
}
