import type { Kysely } from 'kysely';
import { runStatements } from '../run-statements.ts';
import { TRANSFER_FUNCTION_0005 } from './0005_currency_ledgers.ts';

/**
 * The outbox becomes a log of versioned events (docs/events.md), and the tables of the background
 * work it feeds:
 *
 * - `outbox.event_id`: a UUIDv7 (time-ordered, random in its last 74 bits), unique across
 *   deployments and databases: JetStream drops a message whose `Nats-Msg-Id` it has seen, so two
 *   deployments sharing a broker must never reuse one. `version` is the payload's schema version,
 *   `customer_ids` the customers whose activity the event is part of (a transfer has two).
 *   `topic` becomes `type`, and the money events take their documented names
 *   (`money.deposited`, `money.withdrawn`); a fee is one `fee.charged` event per charged account,
 *   so that each customer's activity holds only its own account.
 * - `processed_messages`: a consumer's or job handler's record of a message it has applied, written
 *   in the transaction of the side effect, so a redelivery changes nothing.
 * - `jobs`: the state of the background jobs the API shows (`GET /jobs/:id`); the job is written
 *   in the transaction of the request and handed to the queue by the dispatcher afterwards
 *   (`dispatched_at`), so a crash between the two loses no job.
 * - `file_variants`: the image variants of a file, removed with it.
 * - `audit_events`: the audit projection, one row per customer and event (`GET
 *   /customers/:id/activity`), rebuilt from the stream by `databank events replay`.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await runStatements(db, [
    // RFC 9562 version 7: 48 bits of Unix milliseconds, the version and variant bits, random rest.
    `create function databank_uuidv7() returns uuid language sql volatile as $$
      select encode(
        set_bit(set_bit(overlay(uuid_send(gen_random_uuid())
          placing substring(int8send(floor(extract(epoch from clock_timestamp()) * 1000)::bigint) from 3)
          from 1 for 6), 52, 1), 53, 1),
        'hex')::uuid
    $$`,
    `alter table outbox drop constraint outbox_money_amount_positive`,
    `alter table outbox rename column topic to type`,
    `update outbox set type = case type
        when 'customer.created' then 'customer.registered'
        when 'deposit.completed' then 'money.deposited'
        when 'withdrawal.completed' then 'money.withdrawn'
        else type end`,
    `alter table outbox add column version integer not null default 1`,
    `alter table outbox add column customer_ids bigint[] not null default '{}'`,
    `alter table outbox add column event_id uuid`,
    // One fee event per charged account (a batch named its accounts in \`charged\`).
    `insert into outbox (type, aggregate_id, payload, created_at, published_at)
      select 'fee.charged', c.account_id::text,
        (o.payload - 'charged') || jsonb_build_object('account_id', c.account_id::bigint), o.created_at, o.published_at
      from outbox o cross join lateral jsonb_array_elements_text(o.payload -> 'charged') with ordinality c(account_id, n)
      where o.type = 'fee.charged' and o.payload ? 'charged'
      order by o.id, c.n`,
    `delete from outbox where type = 'fee.charged' and payload ? 'charged'`,
    `update outbox o set
        payload = o.payload || jsonb_build_object('customer_id', a.customer_id, 'currency', a.currency),
        aggregate_id = a.account_id::text
      from accounts a
      where o.type in ('money.deposited', 'money.withdrawn', 'fee.charged') and a.account_id = (o.payload ->> 'account_id')::bigint`,
    `update outbox o set payload = o.payload || jsonb_build_object('currency', a.currency)
      from accounts a
      where o.type = 'transfer.completed' and a.account_id = (o.payload ->> 'from_account_id')::bigint`,
    `update outbox o set customer_ids = case type
        when 'customer.registered' then array[aggregate_id::bigint]
        when 'customer.updated' then array[aggregate_id::bigint]
        when 'transfer.completed' then array(
          select distinct a.customer_id from accounts a
          where a.account_id in ((payload ->> 'from_account_id')::bigint, (payload ->> 'to_account_id')::bigint)
          order by a.customer_id)
        else array[(payload ->> 'customer_id')::bigint] end
      where (payload ? 'customer_id') or type like 'customer.%' or type = 'transfer.completed'`,
    `update outbox set event_id = databank_uuidv7()`,
    `alter table outbox alter column event_id set default databank_uuidv7()`,
    `alter table outbox alter column event_id set not null`,
    `alter table outbox add constraint outbox_event_id_key unique (event_id)`,
    `alter table outbox add constraint outbox_money_amount_positive check (
      type not in ('money.deposited', 'money.withdrawn', 'transfer.completed', 'fee.charged')
      or case when jsonb_typeof(payload -> 'amount') = 'number' then (payload ->> 'amount')::numeric > 0 else false end
    )`,
    'drop function databank_transfer(bigint, bigint, bigint, bigint, text, text, text, bigint)',
    TRANSFER_FUNCTION_0007,

    `create table processed_messages (
      consumer text not null,
      message_id text not null,
      processed_at timestamptz not null default now(),
      primary key (consumer, message_id)
    )`,
    `create table jobs (
      id uuid primary key default databank_uuidv7(),
      kind text not null check (kind in ('image.variants', 'statement.monthly')),
      customer_id bigint not null references customers (id),
      state text not null default 'queued' check (state in ('queued', 'running', 'completed', 'failed')),
      attempts integer not null default 0,
      payload jsonb not null,
      result jsonb,
      error text,
      created_at timestamptz not null default now(),
      updated_at timestamptz not null default now(),
      dispatched_at timestamptz
    )`,
    `create index jobs_undispatched_idx on jobs (created_at) where dispatched_at is null`,
    `create table file_variants (
      file_id bigint not null references files (id) on delete cascade,
      name text not null check (name in ('web', 'mobile', 'thumbnail')),
      status text not null default 'pending' check (status in ('pending', 'ready', 'failed')),
      content_type text not null default 'image/webp',
      width integer,
      height integer,
      size bigint,
      object_key text,
      sha256 text,
      updated_at timestamptz not null default now(),
      primary key (file_id, name),
      check ((status = 'ready') = (object_key is not null))
    )`,
    `create table audit_events (
      customer_id bigint not null,
      event_id uuid not null,
      type text not null,
      occurred_at timestamptz not null,
      payload jsonb not null,
      primary key (customer_id, event_id)
    )`,
    `create index audit_events_newest_idx on audit_events (customer_id, occurred_at desc, event_id desc)`,
  ]);
}

export async function down(db: Kysely<unknown>): Promise<void> {
  await runStatements(db, [
    `drop table audit_events`,
    `drop table file_variants`,
    `drop table jobs`,
    `drop table processed_messages`,
    'drop function databank_transfer(bigint, bigint, bigint, bigint, text, text, text, bigint)',
    TRANSFER_FUNCTION_0005,
    `alter table outbox drop constraint outbox_money_amount_positive`,
    `alter table outbox drop constraint outbox_event_id_key`,
    // One fee event per transaction again, naming its accounts in \`charged\`.
    `insert into outbox (type, aggregate_id, payload, created_at, published_at)
      select 'fee.charged', (payload ->> 'transaction_id'),
        (min(payload::text)::jsonb - 'account_id' - 'customer_id')
          || jsonb_build_object('charged', jsonb_agg((payload ->> 'account_id')::bigint order by (payload ->> 'account_id')::bigint)),
        min(created_at), min(published_at)
      from outbox where type = 'fee.charged' and payload ? 'account_id'
      group by payload ->> 'transaction_id'`,
    `delete from outbox where type = 'fee.charged' and payload ? 'account_id'`,
    `update outbox set aggregate_id = coalesce(payload ->> 'transaction_id', aggregate_id) where type in ('money.deposited', 'money.withdrawn')`,
    `alter table outbox drop column event_id`,
    `alter table outbox drop column customer_ids`,
    `alter table outbox drop column version`,
    `update outbox set type = case type
        when 'customer.registered' then 'customer.created'
        when 'money.deposited' then 'deposit.completed'
        when 'money.withdrawn' then 'withdrawal.completed'
        else type end`,
    `alter table outbox rename column type to topic`,
    `alter table outbox add constraint outbox_money_amount_positive check (
      topic not in ('deposit.completed', 'withdrawal.completed', 'transfer.completed', 'fee.charged')
      or case when jsonb_typeof(payload -> 'amount') = 'number' then (payload ->> 'amount')::numeric > 0 else false end
    )`,
    `drop function databank_uuidv7()`,
  ]);
}

/**
 * 0005's transfer with the event of this migration: `type`, the customers of both accounts and the
 * currency in the payload. Made from 0005's text, so the two cannot drift anywhere else.
 */
const OLD_EVENT = `insert into outbox (topic, aggregate_id, payload)
        values ('transfer.completed', out_transfer_id::text, body || jsonb_build_object('transaction_id', out_transfer_id));`;
const NEW_EVENT = `insert into outbox (type, aggregate_id, customer_ids, payload)
        values ('transfer.completed', out_transfer_id::text,
          case when src_owner = dst_owner then array[src_owner] else array[least(src_owner, dst_owner), greatest(src_owner, dst_owner)] end,
          body || jsonb_build_object('transaction_id', out_transfer_id, 'currency', src_currency));`;
if (!TRANSFER_FUNCTION_0005.includes(OLD_EVENT)) throw new Error('0007: the transfer function of 0005 has changed');
export const TRANSFER_FUNCTION_0007 = TRANSFER_FUNCTION_0005.replace(OLD_EVENT, NEW_EVENT);
