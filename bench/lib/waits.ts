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
