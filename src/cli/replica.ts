import type { Command } from 'commander';
import type { ReplicaStatus } from '../stores/sql/read-routing.ts';
import { withStore } from './context.ts';
import { printResult } from './output.ts';
import { callServer, serverRuns, withServerOptions, type ServerOptions } from './server-client.ts';

/**
 * `databank replica status`: each read replica's state and lag. A running server (`--url`, or
 * HOST:PORT when something answers there) reports what it routes by; without one, the command
 * reads the primary's WAL position and each replica's replay position itself, by the same rules.
 */

interface StatusReport {
  readonly source: 'server' | 'direct';
  readonly max_lag_ms: number;
  readonly replicas: readonly ReplicaStatus[];
}

export function register(program: Command): void {
  const replica = program.command('replica').description('read replicas (DATABASE_REPLICA_URLS)');
  withServerOptions(
    replica.command('status').description("each replica's state (in_rotation, lagging, down, not_in_recovery) and lag"),
  ).action(async (opts: ServerOptions) => {
    const report: StatusReport = (await serverRuns(opts))
      ? { source: 'server', ...((await callServer(opts, 'GET', '/replicas')) as Omit<StatusReport, 'source'>) }
      : await measure();
    printResult(opts, report, () => describe(report));
  });
}

async function measure(): Promise<StatusReport> {
  return withStore(async (store, config) => {
    const { openSqlStore } = await import('../stores/sql/index.ts');
    const { ReadRouter, replicaName } = await import('../stores/sql/read-routing.ts');
    const replicas = await Promise.all(
      config.replicas.urls.map(async (url) => ({ name: replicaName(url.connectionString), store: await openSqlStore(url, () => undefined) })),
    );
    const router = new ReadRouter(store, replicas, { maxLagMs: config.replicas.maxLagMs, checkMs: config.replicas.checkMs });
    try {
      await router.check();
      return { source: 'direct', max_lag_ms: config.replicas.maxLagMs, replicas: router.status() };
    } finally {
      await router.close();
    }
  });
}

function describe(report: StatusReport): string {
  if (report.replicas.length === 0) return 'no replicas configured (DATABASE_REPLICA_URLS): every read goes to the primary';
  const rows = report.replicas.map((r) => [
    r.name,
    r.state,
    r.lag_ms === null ? '-' : `${r.lag_ms} ms`,
    r.lag_bytes === null ? '-' : `${r.lag_bytes} B`,
    r.replay_lsn ?? '-',
    String(r.reads),
    r.last_error ?? '',
  ]);
  const header = ['REPLICA', 'STATE', 'LAG', 'BEHIND', 'REPLAYED', 'READS', 'ERROR'];
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => (row[i] as string).length)));
  const line = (cells: readonly string[]) => cells.map((c, i) => c.padEnd(widths[i] as number)).join('  ').trimEnd();
  return [
    `max lag ${report.max_lag_ms} ms (${report.source === 'server' ? 'as the server routes' : 'measured now, no server answered'})`,
    line(header),
    ...rows.map(line),
  ].join('\n');
}
