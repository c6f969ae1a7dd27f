import { sql, type Kysely } from 'kysely';

/** Months ahead of the current one whose ledger partitions exist before any entry needs them. */
export const LEDGER_PARTITIONS_AHEAD = 3;

/** A partition a run made, and how many rows it took over from the default partition. */
export interface CreatedPartition {
  /** `ledger_entries_2027_03`: the month, in UTC. */
  readonly partition: string;
  /** Rows that had landed in `ledger_entries_default` for that month (0 when made in time). */
  readonly moved: number;
}

/**
 * The upkeep of the ledger's monthly partitions (migration 0011): each month's
 * `ledger_entries_YYYY_MM` made ahead of time, so that no entry lands in `ledger_entries_default`.
 * The work is the SQL function `ledger_ensure_partitions`, so that `psql` can do it by hand too;
 * running it again makes nothing.
 *
 * @example
 * const made = await new LedgerPartitions(sqlStore.db).ensure(3);
 * // [{ partition: 'ledger_entries_2027_03', moved: 0 }] on the first run of March, [] afterwards
 */
export class LedgerPartitions<DB = unknown> {
  constructor(private readonly db: Kysely<DB>) {}

  /** Makes the partitions of the current month to `monthsAhead` months ahead that are missing. */
  async ensure(monthsAhead: number = LEDGER_PARTITIONS_AHEAD): Promise<CreatedPartition[]> {
    const made = await sql<{ partition_name: string; moved: number }>`
      select partition_name, moved from ledger_ensure_partitions(${monthsAhead}::integer)`.execute(this.db);
    return made.rows.map((r) => ({ partition: r.partition_name, moved: Number(r.moved) }));
  }

  /** The ledger's partitions by name, oldest month first and `ledger_entries_default` last. */
  async list(): Promise<string[]> {
    const rows = await sql<{ name: string }>`
      select c.relname as name from pg_inherits i join pg_class c on c.oid = i.inhrelid
      where i.inhparent = 'ledger_entries'::regclass
      order by c.relname = 'ledger_entries_default', c.relname`.execute(this.db);
    return rows.rows.map((r) => r.name);
  }
}
