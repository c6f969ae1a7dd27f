import { AsyncLocalStorage } from 'node:async_hooks';
import {
  PostgresQueryCompiler,
  type Kysely,
  type KyselyPlugin,
  type PluginTransformQueryArgs,
  type PluginTransformResultArgs,
  type QueryResult,
  type RootOperationNode,
  type Transaction,
  type UnknownRow,
} from 'kysely';
import type { Db } from '../../src/stores/sql/port.ts';
import type { Database } from '../../src/stores/sql/schema.ts';

export type Handle = 'reader' | 'writer';

/** One statement a service sent, and how it was sent. */
export interface RecordedQuery {
  readonly handle: Handle;
  /** Sent through the `trx` of a transaction (on the transaction's connection). */
  readonly viaTransaction: boolean;
  /** The handle whose transaction callback was running when the statement was sent, if any. */
  readonly duringTransactionOf: Handle | null;
  readonly sql: string;
}

/**
 * Statements that change data or take write locks: DML (also inside a CTE), row locks, and the
 * functions that write (`databank_transfer`, sequences, advisory locks).
 */
const WRITES =
  /\binsert\s+into\b|\bupdate\s+"?\w+"?(\s+(as\s+)?"?\w+"?)?\s+set\b|\bdelete\s+from\b|\bmerge\s+into\b|\bfor\s+(no\s+key\s+)?update\b|\bfor\s+share\b|\bdatabank_transfer\s*\(|\bdatabank_money_batch\s*\(|\bdatabank_search_sync\s*\(|\bsetval\s*\(|\bnextval\s*\(|\bpg_advisory/i;

/** Whether `sql` writes, by the patterns above. */
export function isWrite(sql: string): boolean {
  return WRITES.test(sql);
}

/**
 * Records every statement sent through wrapped handles: which handle, whether through a
 * transaction, and whether a transaction callback was running at the time (an async context, so a
 * stray `reader` query inside a write transaction is caught even though it is not on `trx`).
 */
export class QueryLog {
  readonly queries: RecordedQuery[] = [];
  /** Swaps the labels of the two handles: lets a test prove that the checks can fail. */
  mislabel = false;
  private readonly inTransaction = new AsyncLocalStorage<Handle>();
  private readonly compiler = new PostgresQueryCompiler();

  /** Wraps both handles of `db`; pass as `AppOptions.wrapDb`. */
  readonly wrapDb = (db: Db): Db => ({ reader: this.wrap(db.reader, 'reader'), writer: this.wrap(db.writer, 'writer') });

  /** Empties the log and returns what it held. */
  take(): RecordedQuery[] {
    return this.queries.splice(0, this.queries.length);
  }

  private wrap(base: Kysely<Database>, handle: Handle): Kysely<Database> {
    const recorded = base.withPlugin(this.plugin(handle, false));
    const transaction = () => ({
      execute: <T>(work: (trx: Transaction<Database>) => Promise<T>) =>
        this.inTransaction.run(handle, () =>
          base.transaction().execute((trx) => work(trx.withPlugin(this.plugin(handle, true)))),
        ),
    });
    // Kysely keeps its state in private fields, so every method is called on the real instance.
    return new Proxy(recorded, {
      get(target, prop) {
        if (prop === 'transaction') return transaction;
        const value: unknown = Reflect.get(target, prop, target);
        return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(target) : value;
      },
    });
  }

  private plugin(handle: Handle, viaTransaction: boolean): KyselyPlugin {
    return {
      transformQuery: (args: PluginTransformQueryArgs): RootOperationNode => {
        const label: Handle = this.mislabel ? (handle === 'reader' ? 'writer' : 'reader') : handle;
        this.queries.push({
          handle: label,
          viaTransaction,
          duringTransactionOf: this.inTransaction.getStore() ?? null,
          sql: this.compiler.compileQuery(args.node, args.queryId).sql,
        });
        return args.node;
      },
      transformResult: async (args: PluginTransformResultArgs): Promise<QueryResult<UnknownRow>> => args.result,
    };
  }
}

/**
 * What breaks the rule "reads outside a transaction on `reader`, every statement of a write on
 * `writer`" in `queries`; empty when nothing does.
 */
export function handleViolations(queries: readonly RecordedQuery[]): string[] {
  const violations: string[] = [];
  for (const q of queries) {
    if (q.handle === 'reader' && isWrite(q.sql)) violations.push(`write through reader: ${q.sql}`);
    if (q.viaTransaction && q.handle !== 'writer') violations.push(`transaction on reader: ${q.sql}`);
    if (q.duringTransactionOf !== null && !q.viaTransaction) {
      violations.push(`statement outside trx while a ${q.duringTransactionOf} transaction runs: ${q.sql}`);
    }
  }
  return violations;
}
