import { createHash, randomUUID } from 'node:crypto';
import { sql, type Kysely } from 'kysely';
import { DatabankError } from '../domain/errors.ts';
import type { Principal } from '../domain/types.ts';
import type { FileStore } from '../stores/files/port.ts';
import type { Db } from '../stores/sql/port.ts';
import type { Database } from '../stores/sql/schema.ts';
import { assertOwns } from './access.ts';
import { filePayload } from './files.ts';
import type { JobsService } from './jobs.ts';
import { appendEvents } from './outbox.ts';
import { firstDeliveries } from './processed-messages.ts';
import { inTransaction, read } from './transaction.ts';
import type { JobRow } from './variant-job.ts';

const MONTH = /^(\d{4})-(0[1-9]|1[0-2])$/;
const COLUMNS = ['entry_id', 'transaction_id', 'created_at', 'kind', 'reference', 'currency', 'amount', 'balance'] as const;

/**
 * Monthly account statements: `POST /accounts/:id/statements` writes a `statement.monthly` job and
 * answers 202 at once; the job writes the account's entries of that month as CSV into the
 * customer's files (`result.file_id`), with the running balance from the balance the month opened
 * with. The file's row, its `file.uploaded` event, the job's completion and the
 * `processed_messages` row commit together, so a redelivered job makes no second file.
 */
export class StatementsService {
  static readonly KIND = 'statement.monthly';

  constructor(
    private readonly db: Db,
    private readonly store: FileStore,
    private readonly jobs: JobsService,
    private readonly now: () => Date = () => new Date(),
  ) {}

  async request(principal: Principal, accountId: number, month: string): Promise<{ job_id: string; state: 'queued' }> {
    const m = MONTH.exec(month);
    if (!m) throw new DatabankError('DATABANK_ERR_VALIDATION', 'month must be a month as YYYY-MM, e.g. 2026-11');
    const now = this.now();
    const current = now.getUTCFullYear() * 12 + now.getUTCMonth();
    if (Number(m[1]) * 12 + Number(m[2]) - 1 > current) {
      throw new DatabankError('DATABANK_ERR_VALIDATION', `month ${month} has not begun yet`);
    }
    const jobId = await inTransaction(this.db.writer, async (trx) => {
      const account = await trx.selectFrom('accounts').select(['account_id', 'customer_id']).where('account_id', '=', accountId).executeTakeFirst();
      // Another customer's account answers exactly as a missing one.
      assertOwns(principal, account?.customer_id);
      if (!account) throw new DatabankError('DATABANK_ERR_NOT_FOUND');
      return this.jobs.create(trx, 'statement.monthly', account.customer_id, { account_id: accountId, month });
    });
    return { job_id: jobId, state: 'queued' };
  }

  async run(job: JobRow): Promise<void> {
    const { account_id: accountId, month } = job.payload as { account_id: number; month: string };
    const [year, mm] = month.split('-').map(Number) as [number, number];
    const from = new Date(Date.UTC(year, mm - 1, 1));
    const to = new Date(Date.UTC(year, mm, 1));
    const account = await this.db.writer.selectFrom('accounts').select(['customer_id', 'currency']).where('account_id', '=', accountId).executeTakeFirst();
    if (!account) throw new Error(`account ${accountId} does not exist`);
    const entries = await read(() => statementEntries(this.db.writer, accountId, from, to).execute());
    const opening = await openingBalance(this.db.writer, accountId, from).executeTakeFirstOrThrow();
    let balance = Number(opening.sum);
    const lines = [COLUMNS.join(',')];
    for (const e of entries) {
      balance += e.amount;
      lines.push(
        [e.id, e.transaction_id, e.created_at.toISOString(), e.kind, e.reference ?? '', e.currency, e.amount, balance].map(csvField).join(','),
      );
    }
    const body = Buffer.from(`${lines.join('\r\n')}\r\n`, 'utf8');
    const key = `files/${randomUUID()}`;
    await this.store.put(key, body, { contentType: 'text/csv' });
    const filename = `statement-${accountId}-${month}.csv`;
    const fileId = await inTransaction(this.db.writer, async (trx) => {
      if ((await firstDeliveries(trx, StatementsService.KIND, [job.id])).size === 0) return null;
      const file = await trx
        .insertInto('files')
        .values({
          customer_id: account.customer_id,
          filename,
          content_type: 'text/csv',
          size: body.length,
          sha256: createHash('sha256').update(body).digest('hex'),
          object_key: key,
        })
        .returningAll()
        .executeTakeFirstOrThrow();
      await appendEvents(trx, [
        {
          type: 'file.uploaded',
          aggregate_id: file.id,
          customer_ids: [file.customer_id],
          payload: filePayload({ ...file, file_id: file.id, content_type: 'text/csv', created_at: file.created_at.toISOString() }),
        },
      ]);
      await this.jobs.completed(trx, job.id, {
        file_id: file.id,
        account_id: accountId,
        month,
        entries: entries.length,
        opening_balance: Number(opening.sum),
        closing_balance: balance,
      });
      return file.id;
    });
    // A delivery that lost the race to another one leaves its copy behind: remove it.
    if (fileId === null) await this.store.delete(key);
  }
}

/**
 * An account's entries in `[from, to)`, in id order. The range is on the entries' own time, the
 * ledger's partition key, so PostgreSQL reads only the partitions of those months (one for a
 * month's statement): `test/contract/ledger-partitions.test.ts` checks the plan.
 */
export function statementEntries(db: Kysely<Database>, accountId: number, from: Date, to: Date) {
  return db
    .selectFrom('ledger_entries as e')
    .innerJoin('ledger_transactions as t', 't.id', 'e.transaction_id')
    .select(['e.id', 'e.transaction_id', 'e.created_at', 't.kind', 't.reference', 'e.currency', 'e.amount'])
    .where('e.account_id', '=', accountId)
    .where('e.created_at', '>=', from)
    .where('e.created_at', '<', to)
    .orderBy('e.id');
}

/** The sum of an account's entries before `from`: the partitions of the months before only. */
export function openingBalance(db: Kysely<Database>, accountId: number, from: Date) {
  return db
    .selectFrom('ledger_entries as e')
    .select(sql<number>`coalesce(sum(e.amount), 0)::bigint`.as('sum'))
    .where('e.account_id', '=', accountId)
    .where('e.created_at', '<', from);
}

/** One CSV field (RFC 4180): quoted when it holds a comma, a quote or a line break. */
export function csvField(value: string | number): string {
  const s = String(value);
  // A leading =, +, - or @ would make a spreadsheet run the text as a formula.
  const safe = typeof value === 'string' && /^[=+\-@]/.test(s) ? `'${s}` : s;
  return /[",\r\n]/.test(safe) ? `"${safe.replaceAll('"', '""')}"` : safe;
}
