import { StatementType, type DuckDBConnection } from '@duckdb/node-api';
import { DatabankError } from '../../domain/errors.ts';
import { jsonValue } from './values.ts';

/**
 * An admin's own SQL on the analytics copy, read-only twice over: the statement must be exactly
 * one SELECT (a `WITH … SELECT`, a `PRAGMA` that reads, `VALUES`, …: whatever DuckDB classifies as
 * a SELECT), and it runs on an instance opened `READ_ONLY` with file access switched off and the
 * configuration locked, so that no write, COPY, ATTACH, file read (`read_csv('/etc/passwd')`) or
 * extension load gets through even if the classification were wrong.
 */

/** Settings of the instance a query runs on (DuckDB configuration options). */
export const QUERY_SETTINGS: Readonly<Record<string, string>> = {
  enable_external_access: 'false',
  autoinstall_known_extensions: 'false',
  autoload_known_extensions: 'false',
  lock_configuration: 'true',
};

export interface QueryColumn {
  readonly name: string;
  /** DuckDB's type, e.g. `BIGINT`, `VARCHAR`, `TIMESTAMP`. */
  readonly type: string;
}

export interface QueryResult {
  readonly as_of: string | null;
  readonly columns: readonly QueryColumn[];
  /** Rows as arrays in column order; integers as numbers (text beyond 2^53), others as DuckDB writes them. */
  readonly rows: readonly (readonly unknown[])[];
  readonly row_count: number;
  /** True when the query had more rows than `max_rows` and only the first ones are here. */
  readonly truncated: boolean;
  readonly max_rows: number;
}

function refused(message: string, cause?: unknown): DatabankError {
  return new DatabankError('DATABANK_ERR_ANALYTICS_QUERY', message, { cause });
}

/** DuckDB's message without its error class prefix, on one line at most 500 characters long. */
function duckMessage(err: unknown): string {
  const text = err instanceof Error ? err.message : String(err);
  return text.replace(/\s+/g, ' ').trim().slice(0, 500);
}

/** Runs `text` after the checks above; stops it after `timeoutMs`. */
export async function readOnlyQuery(
  conn: DuckDBConnection,
  text: string,
  options: { readonly maxRows: number; readonly timeoutMs: number },
): Promise<Omit<QueryResult, 'as_of'>> {
  let statements;
  try {
    statements = await conn.extractStatements(text);
  } catch (err) {
    throw refused(duckMessage(err), err);
  }
  if (statements.count !== 1) throw refused(`exactly one statement is allowed, got ${statements.count}`);
  let prepared;
  try {
    prepared = await statements.prepare(0);
  } catch (err) {
    throw refused(duckMessage(err), err);
  }
  try {
    if (prepared.statementType !== StatementType.SELECT) {
      throw refused(`only a read (SELECT) is allowed, got a statement of type ${StatementType[prepared.statementType] ?? prepared.statementType}`);
    }
    if (prepared.parameterCount > 0) throw refused('the query may not have parameters ($1, ?)');
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      conn.interrupt();
    }, options.timeoutMs);
    let reader;
    try {
      reader = await prepared.streamAndReadUntil(options.maxRows + 1);
    } catch (err) {
      throw timedOut ? refused(`the query ran longer than ${options.timeoutMs} ms and was stopped`, err) : refused(duckMessage(err), err);
    } finally {
      clearTimeout(timer);
    }
    const names = reader.columnNames();
    const types = reader.columnTypes().map((t) => t.toString());
    const js = reader.getRowsJS();
    const json = reader.getRowsJson();
    const truncated = js.length > options.maxRows;
    const rows = js.slice(0, options.maxRows).map((row, i) => row.map((v, j) => jsonValue(v, json[i]?.[j] ?? null)));
    return {
      columns: names.map((name, i) => ({ name, type: types[i] ?? 'UNKNOWN' })),
      rows,
      row_count: rows.length,
      truncated,
      max_rows: options.maxRows,
    };
  } finally {
    prepared.destroySync();
  }
}
