import type { Kysely } from 'kysely';
import { runStatements } from '../run-statements.ts';

/**
 * The ledger's entries become a table partitioned by month of their time, so that a query for one
 * account and a date range (a monthly statement) reads only that range's partitions, and old
 * months can one day be archived or moved to cheaper storage one partition at a time.
 *
 * - `ledger_entries.created_at` is the entry's time: its ledger transaction's `created_at`, which
 *   this migration copies into the existing rows. Every writer inserts a transaction and its
 *   entries in one database transaction: `recordMovement` writes the transaction's time into the
 *   entries, and `databank_transfer` leaves both columns to their default, `now()`, the start of
 *   that same transaction. So a movement's entries are in its month's partition.
 * - `ledger_entries` is `partition by range (created_at)`, one partition per calendar month in UTC,
 *   named `ledger_entries_YYYY_MM`, plus `ledger_entries_default` for a time no month partition
 *   covers (a safety net: it should stay empty). The primary key must hold the partition key:
 *   `(id, created_at)`; ids still come from the one identity sequence, which goes on from where
 *   the plain table's left off.
 * - `ledger_create_partition(month)` makes one month's partition, moving that month's rows out of
 *   the default partition if any landed there; `ledger_ensure_partitions(months_ahead)` makes
 *   those of the current month to `months_ahead` months ahead. The worker runs the latter at start
 *   and daily (`src/workers/ledger-partitions.ts`); this migration makes every month from the
 *   oldest entry's to 3 months ahead.
 * - The zero-sum check stays a statement-level trigger on the parent: PostgreSQL allows transition
 *   tables there (its `new_entries` holds the rows of every partition the statement wrote). A
 *   statement that names a partition fires only that partition's statement triggers, so each
 *   partition gets the same trigger too. The append-only row trigger on the parent is cloned to
 *   every partition by PostgreSQL itself.
 *
 * The conversion copies every row (the old table is kept until the copy is checked: the same
 * count, the same sums), so it needs room for a second copy of the ledger and holds the ledger's
 * lock while it runs.
 */

/** The zero-sum trigger on one table of the ledger: the parent, or a partition (by name). */
const balancedTrigger = (table: string) => `create trigger ledger_entries_balanced
      after insert on ${table}
      referencing new table as new_entries
      for each statement execute function ledger_entries_balanced()`;

const APPEND_ONLY_TRIGGER = `create trigger ledger_entries_append_only
      before update or delete on ledger_entries
      for each row execute function ledger_entries_append_only()`;

/**
 * What the ledger has around its rows, the same on the plain and the partitioned table: an
 * account's entries newest first (the entries page) merge the partitions' (account_id, id)
 * indexes, and a statement reads one month's partition through it in id order.
 */
const KEYS_AND_TRIGGERS: readonly string[] = [
    `create index ledger_entries_account_idx on ledger_entries (account_id, id) where account_id is not null`,
    `create index ledger_entries_transaction_idx on ledger_entries (transaction_id)`,
    `alter table ledger_entries add constraint ledger_entries_transaction_id_fkey
      foreign key (transaction_id) references ledger_transactions (id)`,
    `alter table ledger_entries add constraint ledger_entries_account_currency_fkey
      foreign key (account_id, currency) references accounts (account_id, currency)`,
    `alter table ledger_entries add constraint ledger_entries_system_account_fkey
      foreign key (system_account, currency) references system_accounts (name, currency)`,
    balancedTrigger('ledger_entries'),
    APPEND_ONLY_TRIGGER,
];

/** The checks of a copy: the same rows by count and by amounts, and the same greatest id. */
const checkCopy = (from: string, to: string, migration: string) => `do $$
    declare
      a record;
      b record;
    begin
      select count(*) as n, coalesce(sum(amount), 0) as total, coalesce(sum(abs(amount)), 0) as volume, max(id) as last
        into a from ${from};
      select count(*) as n, coalesce(sum(amount), 0) as total, coalesce(sum(abs(amount)), 0) as volume, max(id) as last
        into b from ${to};
      if a.n <> b.n or a.total <> b.total or a.volume <> b.volume or a.last is distinct from b.last then
        raise exception 'migration ${migration}: the ledger copy differs: % rows summing to % (volume %, last id %) became % rows summing to % (volume %, last id %)',
          a.n, a.total, a.volume, a.last, b.n, b.total, b.volume, b.last;
      end if;
    end $$`;

const CREATE_PARTITION_FUNCTION = `create function ledger_create_partition(
      p_month date, out partition_name text, out created boolean, out moved bigint
    ) language plpgsql as $$
    declare
      first_day timestamp := date_trunc('month', p_month::timestamp);
      lo timestamptz := first_day at time zone 'UTC';
      hi timestamptz := (first_day + interval '1 month') at time zone 'UTC';
      waiting bigint;
      copied bigint;
    begin
      partition_name := 'ledger_entries_' || to_char(first_day, 'YYYY_MM');
      created := false;
      moved := 0;
      -- One caller at a time, so that two never both decide to create the same partition.
      perform pg_advisory_xact_lock(hashtext('databank:ledger_entries:partitions'));
      if exists (select 1 from pg_inherits i
                 where i.inhparent = 'ledger_entries'::regclass and i.inhrelid = to_regclass(partition_name)) then
        return;
      end if;
      -- PostgreSQL refuses a partition for a range that rows in the default partition fall in. Then
      -- the default partition's rows are put aside, the default partition is made again, and the
      -- rows go back in through the parent, each into its partition (the new one included), under
      -- the zero-sum trigger. The whole ledger is locked meanwhile; this only happens when the
      -- partitions were not made in time, and it loses nothing: it is one transaction.
      execute 'select count(*) from ledger_entries_default where created_at >= $1 and created_at < $2'
        into moved using lo, hi;
      if moved > 0 then
        lock table ledger_entries in access exclusive mode;
        execute 'create temporary table ledger_entries_moving on commit drop as select * from ledger_entries_default';
        execute 'select count(*) from ledger_entries_moving' into waiting;
        execute 'drop table ledger_entries_default';
      end if;
      execute format('create table %I partition of ledger_entries for values from (%L) to (%L)', partition_name, lo, hi);
      execute format($t$create trigger ledger_entries_balanced after insert on %I referencing new table as new_entries
        for each statement execute function ledger_entries_balanced()$t$, partition_name);
      if moved > 0 then
        execute 'create table ledger_entries_default partition of ledger_entries default';
        execute $t$create trigger ledger_entries_balanced after insert on ledger_entries_default referencing new table as new_entries
          for each statement execute function ledger_entries_balanced()$t$;
        execute 'insert into ledger_entries select * from ledger_entries_moving';
        get diagnostics copied = row_count;
        if copied <> waiting then
          raise exception 'ledger_create_partition: % rows were put aside, % went back', waiting, copied;
        end if;
        execute 'drop table ledger_entries_moving';
      end if;
      created := true;
    end;
    $$`;

const ENSURE_PARTITIONS_FUNCTION = `create function ledger_ensure_partitions(months_ahead integer)
    returns table (partition_name text, moved bigint)
    language plpgsql
    -- Making a partition takes the ledger's lock for a moment; give up early rather than hold up
    -- every writer queued behind a long reader (a backup). The next run tries again.
    set lock_timeout = '5s'
    as $$
    declare
      this_month timestamp := date_trunc('month', now() at time zone 'UTC');
      r record;
    begin
      if months_ahead is null or months_ahead < 0 or months_ahead > 120 then
        raise exception 'ledger_ensure_partitions: months_ahead must be 0 to 120, got %', months_ahead using errcode = '22023';
      end if;
      for i in 0 .. months_ahead loop
        select * into r from ledger_create_partition((this_month + make_interval(months => i))::date);
        if r.created then
          partition_name := r.partition_name;
          moved := r.moved;
          return next;
        end if;
      end loop;
    end;
    $$`;

export async function up(db: Kysely<unknown>): Promise<void> {
  await runStatements(db, [
    // The plain table steps aside, with the names of its indexes and of its sequence.
    `alter table ledger_entries rename to ledger_entries_0010`,
    `alter index ledger_entries_pkey rename to ledger_entries_0010_pkey`,
    `alter index ledger_entries_account_idx rename to ledger_entries_0010_account_idx`,
    `alter index ledger_entries_transaction_idx rename to ledger_entries_0010_transaction_idx`,
    `alter sequence ledger_entries_id_seq rename to ledger_entries_0010_id_seq`,
    // The columns in the old order, the time last: a row's text and hash stay as they were plus it.
    `create table ledger_entries (
      id bigint generated by default as identity,
      transaction_id bigint not null,
      account_id bigint,
      system_account text,
      amount bigint not null check (amount <> 0),
      currency char(3) not null,
      created_at timestamptz not null default now(),
      check ((account_id is null) <> (system_account is null))
    ) partition by range (created_at)`,
    `create table ledger_entries_default partition of ledger_entries default`,
    balancedTrigger('ledger_entries_default'),
    CREATE_PARTITION_FUNCTION,
    ENSURE_PARTITIONS_FUNCTION,
    `select ledger_create_partition(m::date) from generate_series(
      date_trunc('month', coalesce(
        (select min(t.created_at) from ledger_transactions t where exists (select 1 from ledger_entries_0010 e where e.transaction_id = t.id)),
        now()) at time zone 'UTC'),
      date_trunc('month', now() at time zone 'UTC') + interval '3 months',
      interval '1 month') m`,
    // Keys, indexes and checks come after the copy: building them once is faster than row by row.
    `insert into ledger_entries (id, transaction_id, account_id, system_account, amount, currency, created_at)
      select e.id, e.transaction_id, e.account_id, e.system_account, e.amount, e.currency, t.created_at
      from ledger_entries_0010 e join ledger_transactions t on t.id = e.transaction_id`,
    `select setval(pg_get_serial_sequence('ledger_entries', 'id'), s.last_value, s.is_called) from ledger_entries_0010_id_seq s`,
    checkCopy('ledger_entries_0010', 'ledger_entries', '0011'),
    `drop table ledger_entries_0010`,
    `alter table ledger_entries add constraint ledger_entries_pkey primary key (id, created_at)`,
    ...KEYS_AND_TRIGGERS,
    // Autovacuum never analyzes a partitioned parent; the planner's estimates need its statistics.
    `analyze ledger_entries`,
  ]);
}

/** Back to one plain table, every row and id kept, the time dropped (it is its transaction's). */
export async function down(db: Kysely<unknown>): Promise<void> {
  await runStatements(db, [
    `alter table ledger_entries rename to ledger_entries_0011`,
    `alter index ledger_entries_pkey rename to ledger_entries_0011_pkey`,
    `alter index ledger_entries_account_idx rename to ledger_entries_0011_account_idx`,
    `alter index ledger_entries_transaction_idx rename to ledger_entries_0011_transaction_idx`,
    `alter sequence ledger_entries_id_seq rename to ledger_entries_0011_id_seq`,
    `create table ledger_entries (
      id bigint generated by default as identity primary key,
      transaction_id bigint not null,
      account_id bigint,
      system_account text,
      amount bigint not null check (amount <> 0),
      currency char(3) not null,
      check ((account_id is null) <> (system_account is null))
    )`,
    `insert into ledger_entries (id, transaction_id, account_id, system_account, amount, currency)
      select id, transaction_id, account_id, system_account, amount, currency from ledger_entries_0011 order by id`,
    `select setval(pg_get_serial_sequence('ledger_entries', 'id'), s.last_value, s.is_called) from ledger_entries_0011_id_seq s`,
    checkCopy('ledger_entries_0011', 'ledger_entries', '0011 (down)'),
    `drop table ledger_entries_0011`,
    `drop function ledger_ensure_partitions(integer)`,
    `drop function ledger_create_partition(date)`,
    ...KEYS_AND_TRIGGERS,
    `analyze ledger_entries`,
  ]);
}
