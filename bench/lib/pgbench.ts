import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { startChild } from './child.ts';
import { between, snapshot, type CpuGroups, type CpuSplit } from './cpu.ts';
import { BenchError, sleep } from './log.ts';

const PGBENCH = process.env.PGBENCH || '/usr/bin/pgbench';
const run = promisify(execFile);

/** `pgbench -i -s <scale>`: the TPC-B-like tables (scale 10 = 1M accounts, 10 branches). */
export async function pgbenchInit(url: string, scale: number): Promise<void> {
  try {
    await run(PGBENCH, ['-i', '-q', '-s', String(scale), url], { maxBuffer: 16 * 1024 * 1024 });
  } catch (err) {
    const stderr = (err as { stderr?: string }).stderr ?? String(err);
    throw new BenchError(`pgbench -i failed (is ${PGBENCH} installed?):\n${stderr}`);
  }
}

export interface PgbenchResult {
  readonly clients: number;
  readonly seconds: number;
  readonly tps: number;
  readonly transactions: number;
  readonly failed: number;
  readonly latency_avg_ms: number;
  readonly cpu_cores: CpuSplit;
  readonly args: readonly string[];
}

function field(output: string, pattern: RegExp, what: string): number {
  const m = pattern.exec(output);
  if (!m?.[1]) throw new BenchError(`could not read ${what} from pgbench's output:\n${output}`);
  return Number(m[1]);
}

/**
 * `pgbench -c <clients> -j <threads> -T <seconds> -n`, the built-in TPC-B-like script unless
 * `script` names others (`-f file`, `-M prepared`…). CPU is read from 2 s in until 1 s before the
 * end, when every client is connected and still running.
 */
export async function pgbenchRun(
  url: string,
  options: {
    clients: number;
    threads: number;
    seconds: number;
    cpu?: (pgbenchPid: number) => CpuGroups;
    window?: { begin(): void; end(): void };
    /** More arguments before the URL, e.g. ['-f', 'reads.sql', '-M', 'prepared']. */
    script?: readonly string[];
  },
): Promise<PgbenchResult> {
  const args = ['-n', '-c', String(options.clients), '-j', String(options.threads), '-T', String(options.seconds), ...(options.script ?? []), url];
  const child = startChild('pgbench', PGBENCH, args, { cwd: process.cwd(), env: process.env });
  let cpu: CpuSplit = {};
  const exited = child.exited;
  if (options.cpu && options.seconds >= 5) {
    const groups = options.cpu(child.pid);
    await sleep(2_000);
    const a = snapshot(groups);
    options.window?.begin();
    await sleep((options.seconds - 3) * 1000);
    options.window?.end();
    cpu = between(a, snapshot(groups));
  }
  const code = await exited;
  const output = child.output();
  if (code !== 0) throw new BenchError(`pgbench exited with code ${code}:\n${output}`);
  // PostgreSQL 15 reports failed transactions (serialization, deadlock); older versions do not.
  const failed = /number of failed transactions: (\d+)/.exec(output)?.[1];
  return {
    clients: options.clients,
    seconds: options.seconds,
    tps: field(output, /^tps = ([\d.]+)/m, 'tps'),
    transactions: field(output, /number of transactions actually processed: (\d+)/, 'transactions'),
    failed: failed ? Number(failed) : 0,
    latency_avg_ms: field(output, /latency average = ([\d.]+) ms/, 'latency'),
    cpu_cores: cpu,
    args: args.slice(0, -1),
  };
}
