import type { Kysely } from 'kysely';
import { runStatements } from '../run-statements.ts';
import * as previous from './0002_transfer_function.ts';

/** The body of 0002 with the amount check first; the signature and outcomes are unchanged. 0005's down puts it back. */
export const TRANSFER_FUNCTION_0004 = `create or replace function databank_transfer(
      p_from bigint, p_to bigint, p_amount bigint, p_owner bigint, p_scope text, p_key text,
      out outcome text, out out_transfer_id bigint, out out_created_at text,
      out out_from_customer bigint, out out_to_customer bigint
    ) language plpgsql as $$
    declare
      r record;
      src_owner bigint;
      dst_owner bigint;
      src_currency text;
      src_balance bigint;
      dst_currency text;
      ts timestamptz;
      body jsonb;
    begin
      -- An error, not an outcome: the service never sends such an amount, so this is a bug to see.
      if p_amount is null or p_amount <= 0 then
        raise exception 'databank_transfer: amount must be a positive number of minor units, got %', p_amount
          using errcode = '22023';
      end if;
      -- Lock both accounts in ascending id order, the order every writer uses.
      for r in select account_id, customer_id, currency, balance from accounts
               where account_id in (p_from, p_to) order by account_id for update loop
        if r.account_id = p_from then
          src_owner := r.customer_id; src_currency := r.currency; src_balance := r.balance;
        else
          dst_currency := r.currency; dst_owner := r.customer_id;
        end if;
      end loop;
      -- A customer's key may move money only out of its own accounts; others look nonexistent.
      if src_owner is null or (p_owner is not null and src_owner <> p_owner) then
        outcome := 'source_not_found'; return;
      end if;
      if dst_currency is null then outcome := 'target_not_found'; return; end if;
      if src_currency <> dst_currency then outcome := 'currency_mismatch'; return; end if;
      if src_balance < p_amount then outcome := 'insufficient_funds'; return; end if;

      update accounts set balance = balance - p_amount where account_id = p_from;
      update accounts set balance = balance + p_amount where account_id = p_to;
      insert into ledger_transactions (kind) values ('transfer')
        returning ledger_transactions.id, ledger_transactions.created_at into out_transfer_id, ts;
      insert into ledger_entries (transaction_id, account_id, amount)
        values (out_transfer_id, p_from, -p_amount), (out_transfer_id, p_to, p_amount);
      out_created_at := to_char(ts at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"');
      body := jsonb_build_object('transfer_id', out_transfer_id, 'from_account_id', p_from,
        'to_account_id', p_to, 'amount', p_amount, 'created_at', out_created_at);
      insert into outbox (topic, aggregate_id, payload)
        values ('transfer.completed', out_transfer_id::text, body || jsonb_build_object('transaction_id', out_transfer_id));
      if p_key is not null then
        update idempotency_keys set state = 'done', response_status = 201, response_body = body
          where scope = p_scope and key = p_key;
      end if;
      out_from_customer := src_owner;
      out_to_customer := dst_owner;
      outcome := 'completed';
    end;
    $$`;

/**
 * The amount rules, held by the database too, so that a caller that skips the services (a script,
 * a console, a future service with a bug) cannot move 0 or a negative amount:
 *
 * - `databank_transfer` refuses an amount below 1 with SQLSTATE 22023 (invalid_parameter_value)
 *   before it locks anything. Before this, -500 moved money backwards: a transfer from A to B of
 *   -500 took 500 out of B without B's owner asking.
 * - A movement's amount is stored in its outbox event (there is no movements or transfers table:
 *   a movement is a ledger transaction), so the events of money topics must carry an amount > 0.
 *   Consumers read those events; a negative one would replay as the wrong movement.
 * - Ledger entries are already refused at 0 by 0001 (`amount <> 0`); their sign says the direction.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await runStatements(db, [
    `alter table outbox add constraint outbox_money_amount_positive check (
      topic not in ('deposit.completed', 'withdrawal.completed', 'transfer.completed', 'fee.charged')
      -- The case keeps the cast away from a payload whose amount is not a number.
      or case when jsonb_typeof(payload -> 'amount') = 'number' then (payload ->> 'amount')::numeric > 0 else false end
    )`,
    // The body of 0002 with the amount check first; the signature and outcomes are unchanged.
    TRANSFER_FUNCTION_0004,
  ]);
}

/** Back to 0002's function (made by 0002 itself, so the two cannot drift) and no outbox check. */
export async function down(db: Kysely<unknown>): Promise<void> {
  await runStatements(db, [
    `alter table outbox drop constraint outbox_money_amount_positive`,
    'drop function databank_transfer(bigint, bigint, bigint, bigint, text, text)',
  ]);
  await previous.up(db);
}
