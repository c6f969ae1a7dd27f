import type { Kysely } from 'kysely';
import { runStatements } from '../run-statements.ts';
import { BALANCED_TRIGGER_FUNCTION } from './0001_initial.ts';
import { TRANSFER_FUNCTION_0004 } from './0004_amount_checks.ts';

/**
 * One ledger per currency, a ceiling on balances, and idempotency claims that die with their
 * transaction.
 *
 * - The bank's own accounts become one per currency (`cash:USD`, `fee_income:EUR`, …), rows of
 *   `system_accounts`. Every ledger entry carries its currency, and foreign keys hold it equal to
 *   its account's: `(account_id, currency)` references `accounts`, `(system_account, currency)`
 *   references `system_accounts`. The zero-sum trigger now sums per transaction *and currency*, so
 *   a fee in EUR can only be booked into `fee_income:EUR`. (A currency's entries that sum to zero
 *   are at least two, so the old "two or more entries" rule still holds.)
 * - Existing entries are converted without touching any balance: each `cash`/`fee_income` entry
 *   becomes, per currency of the customer entries of its transaction, an entry of that currency's
 *   system account for minus their sum (a fee run that charged USD and EUR accounts is split in
 *   two). The conversion is checked: every transaction must sum to zero in every currency.
 * - `accounts.balance <= 10^14` (`accounts_balance_max`): the ceiling `DATABANK_MAX_BALANCE` may
 *   lower but not raise. With at most 20 accounts a customer's total stays below 2^53.
 * - `databank_transfer` takes the balance bound, writes the currency of its entries, and takes an
 *   Idempotency-Key's claim itself: a transaction-scoped advisory lock on the key (so a claim dies
 *   with its transaction, and with the connection of a crashed app), then the stored answer if
 *   there is one, and it inserts the answer with the movement. `idempotency_keys.locked_until` is
 *   no longer used (it defaults to the insert time).
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await runStatements(db, [
    `create table system_accounts (
      name text primary key,
      kind text not null check (kind in ('cash', 'fee_income')),
      currency char(3) not null check (currency in ('USD', 'EUR', 'GBP')),
      check (name = kind || ':' || currency),
      unique (name, currency)
    )`,
    `insert into system_accounts (name, kind, currency)
      select k || ':' || c, k, c from unnest(array['cash', 'fee_income']) k, unnest(array['USD', 'EUR', 'GBP']) c`,
    `alter table accounts add constraint accounts_account_currency_key unique (account_id, currency)`,
    `alter table accounts add constraint accounts_balance_max check (balance <= 100000000000000)`,
    `alter table ledger_entries drop constraint ledger_entries_system_account_check`,
    `alter table ledger_entries add column currency char(3)`,
    `alter table ledger_entries disable trigger user`,
    `update ledger_entries e set currency = a.currency from accounts a where a.account_id = e.account_id`,
    // Per transaction and currency, minus the sum of its customer entries: the system side.
    `create temporary table ledger_0005_sides as
      select transaction_id, currency, -sum(amount) as amount,
        row_number() over (partition by transaction_id order by currency) as n
      from ledger_entries where account_id is not null group by transaction_id, currency`,
    `insert into ledger_entries (transaction_id, system_account, currency, amount)
      select s.transaction_id, e.system_account || ':' || s.currency, s.currency, s.amount
      from ledger_0005_sides s join ledger_entries e on e.transaction_id = s.transaction_id
      where e.system_account in ('cash', 'fee_income') and s.n > 1`,
    `update ledger_entries e set system_account = e.system_account || ':' || s.currency, currency = s.currency, amount = s.amount
      from ledger_0005_sides s
      where s.transaction_id = e.transaction_id and s.n = 1 and e.system_account in ('cash', 'fee_income')`,
    `drop table ledger_0005_sides`,
    `alter table ledger_entries enable trigger user`,
    `do $$ declare bad record; begin
      select transaction_id, currency, sum(amount) as total into bad from ledger_entries
        group by transaction_id, currency having sum(amount) <> 0 or currency is null limit 1;
      if found then
        raise exception 'migration 0005: ledger transaction % does not balance in % (sum %)', bad.transaction_id, bad.currency, bad.total;
      end if;
    end $$`,
    `alter table ledger_entries alter column currency set not null`,
    `alter table ledger_entries drop constraint ledger_entries_account_id_fkey`,
    `alter table ledger_entries add constraint ledger_entries_account_currency_fkey
      foreign key (account_id, currency) references accounts (account_id, currency)`,
    `alter table ledger_entries add constraint ledger_entries_system_account_fkey
      foreign key (system_account, currency) references system_accounts (name, currency)`,
    `create or replace function ledger_entries_balanced() returns trigger language plpgsql as $$
    declare
      bad record;
    begin
      select transaction_id, currency, sum(amount) as total into bad
        from new_entries
        group by transaction_id, currency
        having sum(amount) <> 0
        limit 1;
      if found then
        raise exception 'ledger transaction % is unbalanced in %: its entries sum to %', bad.transaction_id, bad.currency, bad.total
          using errcode = '23514';
      end if;
      return null;
    end;
    $$`,
    `alter table idempotency_keys alter column locked_until set default now()`,
    'drop function databank_transfer(bigint, bigint, bigint, bigint, text, text)',
    TRANSFER_FUNCTION_0005,
  ]);
}

/** Back to 0004's shape: one `cash` and one `fee_income`, entries without a currency, no ceiling. */
export async function down(db: Kysely<unknown>): Promise<void> {
  await runStatements(db, [
    'drop function databank_transfer(bigint, bigint, bigint, bigint, text, text, text, bigint)',
    TRANSFER_FUNCTION_0004,
    `alter table idempotency_keys alter column locked_until drop default`,
    BALANCED_TRIGGER_FUNCTION,
    `alter table ledger_entries drop constraint ledger_entries_system_account_fkey`,
    `alter table ledger_entries drop constraint ledger_entries_account_currency_fkey`,
    `alter table ledger_entries add constraint ledger_entries_account_id_fkey
      foreign key (account_id) references accounts (account_id)`,
    `alter table ledger_entries disable trigger user`,
    // One entry per transaction and system account kind again, for the sum over currencies.
    `with m as (
      select transaction_id, split_part(system_account, ':', 1) as kind, sum(amount) as amount, min(id) as keep
      from ledger_entries where system_account is not null group by transaction_id, split_part(system_account, ':', 1)
    )
    update ledger_entries e set system_account = m.kind, amount = m.amount from m where e.id = m.keep`,
    `delete from ledger_entries where system_account like '%:%'`,
    `alter table ledger_entries enable trigger user`,
    `alter table ledger_entries drop column currency`,
    `alter table ledger_entries add constraint ledger_entries_system_account_check
      check (system_account in ('cash', 'fee_income'))`,
    `alter table accounts drop constraint accounts_balance_max`,
    `alter table accounts drop constraint accounts_account_currency_key`,
    `drop table system_accounts`,
  ]);
}

export const TRANSFER_FUNCTION_0005 = `create function databank_transfer(
      p_from bigint, p_to bigint, p_amount bigint, p_owner bigint, p_scope text, p_key text, p_hash text,
      p_max_balance bigint,
      out outcome text, out out_transfer_id bigint, out out_created_at text,
      out out_from_customer bigint, out out_to_customer bigint,
      out out_replay_status integer, out out_replay_body jsonb, out out_replay_hash text
    ) language plpgsql as $$
    declare
      r record;
      src_owner bigint;
      dst_owner bigint;
      src_currency text;
      src_balance bigint;
      dst_currency text;
      dst_balance bigint;
      ts timestamptz;
      body jsonb;
    begin
      -- An error, not an outcome: the service never sends such an amount, so this is a bug to see.
      if p_amount is null or p_amount <= 0 then
        raise exception 'databank_transfer: amount must be a positive number of minor units, got %', p_amount
          using errcode = '22023';
      end if;
      if p_key is not null then
        -- The claim: held until this transaction ends, however it ends (a crash included).
        if not pg_try_advisory_xact_lock(hashtextextended(p_scope || ' ' || p_key, 0)) then
          outcome := 'in_flight'; return;
        end if;
        select response_status, response_body, request_hash into out_replay_status, out_replay_body, out_replay_hash
          from idempotency_keys
          where scope = p_scope and key = p_key and state = 'done' and expires_at > now();
        if found then outcome := 'replay'; return; end if;
      end if;
      -- Lock both accounts in ascending id order, the order every writer uses.
      for r in select account_id, customer_id, currency, balance from accounts
               where account_id in (p_from, p_to) order by account_id for update loop
        if r.account_id = p_from then
          src_owner := r.customer_id; src_currency := r.currency; src_balance := r.balance;
        else
          dst_currency := r.currency; dst_owner := r.customer_id; dst_balance := r.balance;
        end if;
      end loop;
      -- A customer's key may move money only out of its own accounts; others look nonexistent.
      if src_owner is null or (p_owner is not null and src_owner <> p_owner) then
        outcome := 'source_not_found'; return;
      end if;
      if dst_currency is null then outcome := 'target_not_found'; return; end if;
      if src_currency <> dst_currency then outcome := 'currency_mismatch'; return; end if;
      if src_balance < p_amount then outcome := 'insufficient_funds'; return; end if;
      if dst_balance > p_max_balance - p_amount then outcome := 'balance_limit'; return; end if;

      update accounts set balance = balance - p_amount where account_id = p_from;
      update accounts set balance = balance + p_amount where account_id = p_to;
      insert into ledger_transactions (kind) values ('transfer')
        returning ledger_transactions.id, ledger_transactions.created_at into out_transfer_id, ts;
      insert into ledger_entries (transaction_id, account_id, currency, amount)
        values (out_transfer_id, p_from, src_currency, -p_amount), (out_transfer_id, p_to, src_currency, p_amount);
      out_created_at := to_char(ts at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"');
      body := jsonb_build_object('transfer_id', out_transfer_id, 'from_account_id', p_from,
        'to_account_id', p_to, 'amount', p_amount, 'created_at', out_created_at);
      insert into outbox (topic, aggregate_id, payload)
        values ('transfer.completed', out_transfer_id::text, body || jsonb_build_object('transaction_id', out_transfer_id));
      if p_key is not null then
        insert into idempotency_keys (scope, key, request_hash, state, response_status, response_body, expires_at)
          values (p_scope, p_key, p_hash, 'done', 201, body, now() + interval '24 hours')
          on conflict (scope, key) do update set request_hash = excluded.request_hash, state = 'done',
            response_status = 201, response_body = excluded.response_body, expires_at = excluded.expires_at,
            created_at = now();
      end if;
      out_from_customer := src_owner;
      out_to_customer := dst_owner;
      outcome := 'completed';
    end;
    $$`;
