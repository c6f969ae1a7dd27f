import pg from 'pg';

/**
 * What PostgreSQL's backends for one database are doing, sampled from pg_stat_activity during the
 * measured window: running, waiting on a lock, on the WAL flush of a commit, or for the client
 * (idle, or idle inside a transaction while the application thinks). This is what tells a
 * CPU-bound run from one that waits on fsync, row locks or round trips.
 */
export class WaitSampler {
  private timer: NodeJS.Timeout | null = null;
  private ticks = 0;
  private inFlight = false;
  private readonly counts = new Map<string, number>();

  private constructor(
    private readonly client: pg.Client,
    private readonly database: string,
  ) {}

  static async open(url: string, database: string): Promise<WaitSampler> {
    const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 3_000 });
    await client.connect();
    return new WaitSampler(client, database);
  }

  begin(everyMs = 50): void {
    this.timer = setInterval(() => void this.tick(), everyMs);
  }

  end(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  /** Average number of backends in each state over the window, largest first. */
  result(): Record<string, number> {
    const entries = [...this.counts].sort((a, b) => b[1] - a[1]);
    return Object.fromEntries(entries.map(([state, n]) => [state, Math.round((n / Math.max(1, this.ticks)) * 100) / 100]));
  }

  async close(): Promise<void> {
    this.end();
    await this.client.end().catch(() => undefined);
  }

  private async tick(): Promise<void> {
    // A slow answer must not pile up queries on a busy server: skip the tick instead.
    if (this.inFlight) return;
    this.inFlight = true;
    try {
      const { rows } = await this.client.query<{ state: string | null; type: string | null; event: string | null }>(
        `select state, wait_event_type as type, wait_event as event from pg_stat_activity
          where datname = $1 and pid <> pg_backend_pid() and backend_type = 'client backend'`,
        [this.database],
      );
      this.ticks++;
      for (const r of rows) {
        const key = r.state === 'active' ? (r.type ? `active, waiting ${r.type}:${r.event}` : 'active, running') : (r.state ?? 'unknown');
        this.counts.set(key, (this.counts.get(key) ?? 0) + 1);
      }
    } catch {
      // A missed sample only makes the average rougher.
    } finally {
      this.inFlight = false;
    }
  }
}

/** Cluster-wide WAL counters from pg_stat_wal (PostgreSQL 14+): subtract two readings for a window. */
export interface WalStats {
  readonly records: number;
  readonly fpi: number;
  readonly bytes: number;
  /** XLogWrite calls: WAL buffers written out to the kernel. */
  readonly writes: number;
  /** WAL flushes to disk (fsync/fdatasync), each one a commit or a batch of them reaching the disk. */
  readonly syncs: number;
}

/**
 * Reads pg_stat_wal on `client`. Backends report their share at most once a second, so a reading
 * lags by up to ~1 s of activity; over a window of several seconds both edges lag alike.
 */
export async function readWalStats(client: pg.Client): Promise<WalStats> {
  const { rows } = await client.query<Record<string, string>>(
    'select wal_records::text as records, wal_fpi::text as fpi, wal_bytes::text as bytes, wal_write::text as writes, wal_sync::text as syncs from pg_stat_wal',
  );
  const r = rows[0] ?? {};
  return { records: Number(r.records), fpi: Number(r.fpi), bytes: Number(r.bytes), writes: Number(r.writes), syncs: Number(r.syncs) };
}

export function walDelta(after: WalStats, before: WalStats): WalStats {
  return {
    records: after.records - before.records,
    fpi: after.fpi - before.fpi,
    bytes: after.bytes - before.bytes,
    writes: after.writes - before.writes,
    syncs: after.syncs - before.syncs,
  };
}
