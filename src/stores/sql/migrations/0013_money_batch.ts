import type { Kysely } from 'kysely';
import { runStatements } from '../run-statements.ts';

/**
 * `databank_money_batch`: many money movements (transfers, deposits, withdrawals) in one call, so
 * one database transaction and one round trip carry a whole batch of a process's concurrent
 * requests (the batching writer, `src/services/money-writer.ts`).
 *
 * The arrays hold one element per movement, in arrival order. The function first claims each
 * Idempotency-Key (the transaction-scoped advisory lock of `databank_transfer`; a key already
 * claimed by an earlier movement of the same batch is `in_flight`, as a second concurrent request
 * is) and answers a stored response; then it locks every account of the batch in one statement in
 * ascending id order (the order every writer uses, so batches of several processes cannot
 * deadlock each other or single transfers), checks each movement against the running balances in
 * arrival order exactly as `databank_transfer` checks one (unknown or another customer's source,
 * unknown target, currency, funds, `p_max_balance`) and gives each its own outcome: a refused
 * movement refuses only itself. The completed ones are written set-based: one ledger transaction
 * each (ids in arrival order), their entries, one `UPDATE` per account with its net change (a hot
 * account's row is written once per batch), their outbox events and idempotency records, all with
 * the same shapes as the single paths write. The result has one row per movement, `item` = its
 * position (1-based).
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await runStatements(db, [MONEY_BATCH_FUNCTION]);
}

export async function down(db: Kysely<unknown>): Promise<void> {
  await runStatements(db, [
    'drop function databank_money_batch(text[], bigint[], bigint[], bigint[], bigint[], text[], text[], text[], bigint)',
  ]);
}

export const MONEY_BATCH_FUNCTION = `create function databank_money_batch(
      p_kind text[], p_from bigint[], p_to bigint[], p_amount bigint[], p_owner bigint[],
      p_scope text[], p_key text[], p_hash text[], p_max_balance bigint
    ) returns table (
      item integer, outcome text, out_id bigint, out_created_at text, out_from_customer bigint,
      out_to_customer bigint, out_balance bigint, out_replay_status integer, out_replay_body jsonb,
      out_replay_hash text
    ) language plpgsql as $$
    declare
      cnt integer := coalesce(array_length(p_kind, 1), 0);
      outcomes text[] := array_fill(null::text, array[cnt]);
      ids bigint[] := array_fill(null::bigint, array[cnt]);
      from_c bigint[] := array_fill(null::bigint, array[cnt]);
      to_c bigint[] := array_fill(null::bigint, array[cnt]);
      balances bigint[] := array_fill(null::bigint, array[cnt]);
      currencies text[] := array_fill(null::text, array[cnt]);
      r_status integer[] := array_fill(null::integer, array[cnt]);
      r_body jsonb[] := array_fill(null::jsonb, array[cnt]);
      r_hash text[] := array_fill(null::text, array[cnt]);
      claimed text[] := '{}';
      wanted bigint[] := '{}';
      acc_id bigint[] := '{}';
      acc_owner bigint[] := '{}';
      acc_cur text[] := '{}';
      acc_bal bigint[] := '{}';
      acc_delta bigint[] := '{}';
      done integer[] := '{}';
      tx_ids bigint[];
      k integer;
      s integer;
      t integer;
      amt bigint;
      claim text;
      ts timestamptz := now();
      created text := to_char(now() at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"');
      r record;
    begin
      if array_length(p_from, 1) is distinct from array_length(p_kind, 1)
        or array_length(p_to, 1) is distinct from array_length(p_kind, 1)
        or array_length(p_amount, 1) is distinct from array_length(p_kind, 1)
        or array_length(p_owner, 1) is distinct from array_length(p_kind, 1)
        or array_length(p_scope, 1) is distinct from array_length(p_kind, 1)
        or array_length(p_key, 1) is distinct from array_length(p_kind, 1)
        or array_length(p_hash, 1) is distinct from array_length(p_kind, 1) then
        raise exception 'databank_money_batch: the arrays differ in length' using errcode = '22023';
      end if;
      for k in 1 .. cnt loop
        -- Errors, not outcomes: the service never sends these, so they are bugs to see.
        if p_amount[k] is null or p_amount[k] <= 0 then
          raise exception 'databank_money_batch: amount must be a positive number of minor units, got %', p_amount[k]
            using errcode = '22023';
        end if;
        if p_kind[k] is null or p_kind[k] not in ('transfer', 'deposit', 'withdrawal')
          or (p_kind[k] in ('transfer', 'withdrawal') and p_from[k] is null)
          or (p_kind[k] in ('transfer', 'deposit') and p_to[k] is null) then
          raise exception 'databank_money_batch: movement % is not a transfer, deposit or withdrawal with its accounts', k
            using errcode = '22023';
        end if;
        if p_key[k] is not null then
          -- The claim: held until this transaction ends, however it ends (a crash included).
          claim := p_scope[k] || ' ' || p_key[k];
          if claim = any(claimed) or not pg_try_advisory_xact_lock(hashtextextended(claim, 0)) then
            outcomes[k] := 'in_flight'; continue;
          end if;
          claimed := claimed || claim;
          select response_status, response_body, request_hash into r
            from idempotency_keys
            where scope = p_scope[k] and key = p_key[k] and state = 'done' and expires_at > now();
          if found then
            outcomes[k] := 'replay';
            r_status[k] := r.response_status; r_body[k] := r.response_body; r_hash[k] := r.request_hash;
            continue;
          end if;
        end if;
        if p_from[k] is not null then wanted := wanted || p_from[k]; end if;
        if p_to[k] is not null then wanted := wanted || p_to[k]; end if;
      end loop;

      -- Every account of the batch, locked in ascending id order: the order every writer uses.
      for r in select a.account_id, a.customer_id, a.currency, a.balance from accounts a
               where a.account_id = any(wanted) order by a.account_id for update loop
        acc_id := acc_id || r.account_id;
        acc_owner := acc_owner || r.customer_id;
        acc_cur := acc_cur || r.currency::text;
        acc_bal := acc_bal || r.balance;
        acc_delta := acc_delta || 0::bigint;
      end loop;

      -- Each movement against the running balances, in arrival order.
      for k in 1 .. cnt loop
        continue when outcomes[k] is not null;
        amt := p_amount[k];
        s := case when p_from[k] is null then null else array_position(acc_id, p_from[k]) end;
        t := case when p_to[k] is null then null else array_position(acc_id, p_to[k]) end;
        if p_kind[k] = 'transfer' then
          -- A customer's key may move money only out of its own accounts; others look nonexistent.
          if s is null or (p_owner[k] is not null and acc_owner[s] <> p_owner[k]) then outcomes[k] := 'source_not_found';
          elsif t is null then outcomes[k] := 'target_not_found';
          elsif acc_cur[s] <> acc_cur[t] then outcomes[k] := 'currency_mismatch';
          elsif acc_bal[s] < amt then outcomes[k] := 'insufficient_funds';
          elsif acc_bal[t] > p_max_balance - amt then outcomes[k] := 'balance_limit';
          else
            acc_bal[s] := acc_bal[s] - amt; acc_delta[s] := acc_delta[s] - amt;
            acc_bal[t] := acc_bal[t] + amt; acc_delta[t] := acc_delta[t] + amt;
            from_c[k] := acc_owner[s]; to_c[k] := acc_owner[t]; currencies[k] := acc_cur[s];
            outcomes[k] := 'completed';
          end if;
        elsif p_kind[k] = 'deposit' then
          if t is null then outcomes[k] := 'not_found';
          elsif acc_bal[t] > p_max_balance - amt then outcomes[k] := 'balance_limit';
          else
            acc_bal[t] := acc_bal[t] + amt; acc_delta[t] := acc_delta[t] + amt;
            to_c[k] := acc_owner[t]; currencies[k] := acc_cur[t]; balances[k] := acc_bal[t];
            outcomes[k] := 'completed';
          end if;
        else
          if s is null then outcomes[k] := 'not_found';
          elsif acc_bal[s] < amt then outcomes[k] := 'insufficient_funds';
          else
            acc_bal[s] := acc_bal[s] - amt; acc_delta[s] := acc_delta[s] - amt;
            from_c[k] := acc_owner[s]; currencies[k] := acc_cur[s]; balances[k] := acc_bal[s];
            outcomes[k] := 'completed';
          end if;
        end if;
        if outcomes[k] = 'completed' then done := done || k; end if;
      end loop;

      if cardinality(done) > 0 then
        -- One ledger transaction per movement; inserted in arrival order, so ids ascend with it.
        with inserted as (
          insert into ledger_transactions (kind, created_at)
            select p_kind[d.k], ts from unnest(done) with ordinality as d(k, n) order by d.n
            returning id
        )
        select array_agg(id order by id) into tx_ids from inserted;
        for k in 1 .. cardinality(done) loop ids[done[k]] := tx_ids[k]; end loop;

        -- Their entries: the customer side first, as the single paths write them.
        insert into ledger_entries (transaction_id, account_id, system_account, currency, amount, created_at)
          select ids[d.k], e.account_id, e.system_account, currencies[d.k], e.amount, ts
          from unnest(done) with ordinality as d(k, n)
          cross join lateral (values
            (1, case when p_kind[d.k] = 'deposit' then p_to[d.k] else p_from[d.k] end, null::text,
              case when p_kind[d.k] = 'deposit' then p_amount[d.k] else -p_amount[d.k] end),
            (2, case when p_kind[d.k] = 'transfer' then p_to[d.k] end,
              case when p_kind[d.k] <> 'transfer' then 'cash:' || currencies[d.k] end,
              case when p_kind[d.k] = 'deposit' then -p_amount[d.k] else p_amount[d.k] end)
          ) as e(side, account_id, system_account, amount)
          order by d.n, e.side;

        -- Each account's row once, with its net change.
        update accounts a set balance = a.balance + c.delta
          from unnest(acc_id, acc_delta) as c(account_id, delta)
          where a.account_id = c.account_id and c.delta <> 0;

        insert into outbox (type, aggregate_id, customer_ids, payload)
          select case p_kind[d.k] when 'transfer' then 'transfer.completed' when 'deposit' then 'money.deposited'
                   else 'money.withdrawn' end,
            case when p_kind[d.k] = 'transfer' then ids[d.k]::text else coalesce(p_to[d.k], p_from[d.k])::text end,
            case when p_kind[d.k] <> 'transfer' then array[coalesce(to_c[d.k], from_c[d.k])]
                 when from_c[d.k] = to_c[d.k] then array[from_c[d.k]]
                 else array[least(from_c[d.k], to_c[d.k]), greatest(from_c[d.k], to_c[d.k])] end,
            case when p_kind[d.k] = 'transfer' then
                jsonb_build_object('transfer_id', ids[d.k], 'from_account_id', p_from[d.k], 'to_account_id', p_to[d.k],
                  'amount', p_amount[d.k], 'created_at', created, 'transaction_id', ids[d.k], 'currency', currencies[d.k])
              else
                jsonb_build_object('account_id', coalesce(p_to[d.k], p_from[d.k]),
                  'customer_id', coalesce(to_c[d.k], from_c[d.k]), 'amount', p_amount[d.k],
                  'currency', currencies[d.k], 'transaction_id', ids[d.k], 'created_at', created)
            end
          from unnest(done) with ordinality as d(k, n)
          order by d.n;

        -- The stored responses, exactly the bodies the API answers.
        insert into idempotency_keys (scope, key, request_hash, state, response_status, response_body, expires_at)
          select p_scope[d.k], p_key[d.k], p_hash[d.k], 'done', 201,
            case when p_kind[d.k] = 'transfer' then
                jsonb_build_object('transfer_id', ids[d.k], 'from_account_id', p_from[d.k],
                  'to_account_id', p_to[d.k], 'amount', p_amount[d.k], 'created_at', created)
              else
                jsonb_build_object('transaction_id', ids[d.k], 'account_id', coalesce(p_to[d.k], p_from[d.k]),
                  'kind', p_kind[d.k], 'amount', p_amount[d.k], 'balance', balances[d.k], 'created_at', created)
            end,
            now() + interval '24 hours'
          from unnest(done) with ordinality as d(k, n)
          where p_key[d.k] is not null
          order by d.n
          on conflict (scope, key) do update set request_hash = excluded.request_hash, state = 'done',
            response_status = 201, response_body = excluded.response_body, expires_at = excluded.expires_at,
            created_at = now();
      end if;

      return query
        select g.k, outcomes[g.k], ids[g.k], case when outcomes[g.k] = 'completed' then created end,
          from_c[g.k], to_c[g.k], balances[g.k], r_status[g.k], r_body[g.k], r_hash[g.k]
        from generate_series(1, cnt) as g(k);
    end;
    $$`;
