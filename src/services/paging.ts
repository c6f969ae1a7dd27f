import { DatabankError } from '../domain/errors.ts';

/** Cursors are opaque to clients: base64url of the last id a page returned. */
export function encodeCursor(id: number): string {
  return Buffer.from(`id:${id}`).toString('base64url');
}

export function decodeCursor(cursor: string | undefined): number | null {
  if (cursor === undefined) return null;
  const match = /^id:([1-9][0-9]{0,15})$/.exec(Buffer.from(cursor, 'base64url').toString());
  if (!match || !Number.isSafeInteger(Number(match[1]))) throw new DatabankError('DATABANK_ERR_INVALID_CURSOR');
  return Number(match[1]);
}

/** Given limit+1 rows, returns the page and, when more rows exist, the cursor of the next page. */
export function toPage<T>(rows: readonly T[], limit: number, idOf: (row: T) => number) {
  const result = rows.slice(0, limit);
  const last = result[result.length - 1];
  return rows.length > limit && last !== undefined
    ? { result, next_cursor: encodeCursor(idOf(last)) }
    : { result };
}
