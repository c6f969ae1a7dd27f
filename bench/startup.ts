// `npm run bench -- startup`: how long `databank serve` takes to answer /readyz and how much memory
// it then holds, on a new and on an existing data dir, on PGlite and on PostgreSQL, side by side
// with a bare PGlite.create() of an empty data dir and with `databank --help`.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import type { Benchmark, Timing } from './lib/benchmark.ts';
import { freePort, startChild, type Child } from './lib/child.ts';
import { onCleanup } from './lib/cleanup.ts';
import { between, settle, snapshot } from './lib/cpu.ts';
import { childEnv, databankRevision, DATABANK_DIR } from './lib/databank.ts';
import { BenchError, progress, sleep } from './lib/log.ts';
import { adminUrl, createDatabase, redact, serverVersion } from './lib/postgres.ts';
import { machineInfo, noiseWarnings, ratio, type BenchResult, type Ratio, type Series } from './lib/report.ts';

/** One start of one process: until it was ready, then at rest. */
interface Start {
  readonly readyMs: number;
  /** User + system CPU seconds the process used until ready: unlike wall time, other load barely moves it. */
  readonly cpuS: number;
  readonly idleRssMb: number;
  readonly peakRssMb: number;
  readonly cpu: Record<string, number>;
  readonly busyBefore: number;
}

function procStatus(pid: number, field: 'VmRSS' | 'VmHWM'): number {
  const match = new RegExp(`${field}:\\s+(\\d+) kB`).exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return match ? Math.round(Number(match[1]) / 1024) : Number.NaN;
}

function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/** RSS once it stops moving: three readings 500 ms apart within 2 MB of each other (at most 10 s). */
async function idleRss(pid: number): Promise<number> {
  const readings: number[] = [];
  const deadline = performance.now() + 10_000;
  while (performance.now() < deadline) {
    readings.push(procStatus(pid, 'VmRSS'));
    const last = readings.slice(-3);
    if (last.length === 3 && Math.max(...last) - Math.min(...last) <= 2) break;
    await sleep(500);
  }
  return readings[readings.length - 1] ?? Number.NaN;
}

function status(port: number): Promise<number> {
  return new Promise((resolve) => {
    const req = request({ host: '127.0.0.1', port, path: '/readyz', timeout: 1_000 }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('error', () => resolve(0));
    req.on('timeout', () => req.destroy());
    req.end();
  });
}

/** Starts `args` under node, waits for `ready()` (polled every 20 ms), measures, stops it. */
async function measure(label: string, args: readonly string[], env: NodeJS.ProcessEnv, ready: (child: Child) => Promise<boolean>): Promise<Start> {
  const busyBefore = await settle();
  const started = performance.now();
  const child = startChild(label, process.execPath, args, { cwd: DATABANK_DIR, env });
  const before = snapshot({ [label]: () => [child.pid] });
  let exited = false;
  void child.exited.then(() => (exited = true));
  try {
    while (!(await ready(child))) {
      if (exited) throw new BenchError(`${label} exited before it was ready:\n${child.output()}`);
      if (performance.now() - started > 120_000) throw new BenchError(`${label} was not ready within 120 s:\n${child.output()}`);
      await sleep(20);
    }
    const readyMs = Math.round(performance.now() - started);
    const cpuS = cpuSeconds(child.pid);
    const cpu = between(before, snapshot({ [label]: () => [child.pid] }));
    const idleRssMb = await idleRss(child.pid);
    return { readyMs, cpuS, idleRssMb, peakRssMb: procStatus(child.pid, 'VmHWM'), cpu, busyBefore };
  } finally {
    await child.stop();
  }
}

function serve(label: string, env: NodeJS.ProcessEnv, port: number): Promise<Start> {
  return measure(label, ['bin/databank.js', 'serve'], env, async () => (await status(port)) === 200);
}

/** A bare PGlite.create() of `dir` in its own process, which prints a line once it is open. */
function barePglite(label: string, dir: string): Promise<Start> {
  const script = `import { PGlite } from '@electric-sql/pglite';
const pg = await PGlite.create(process.argv[1]);
await pg.query('select 1');
process.stdout.write('ready\\n');
setInterval(() => {}, 1 << 30);`;
  return measure(label, ['--input-type=module', '-e', script, dir], childEnv({}), async (child) => child.output().includes('ready'));
}

async function helpMs(): Promise<number> {
  const started = performance.now();
  const child = startChild('databank --help', process.execPath, ['bin/databank.js', '--help'], { cwd: DATABANK_DIR, env: childEnv({}) });
  const code = await child.exited;
  if (code !== 0) throw new BenchError(`databank --help exited with ${code}:\n${child.output()}`);
  return Math.round(performance.now() - started);
}

const median = (xs: readonly number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? Number.NaN : s.length % 2 ? (s[(s.length - 1) / 2] as number) : ((s[s.length / 2 - 1] as number) + (s[s.length / 2] as number)) / 2;
};

function toSeries(name: string, starts: readonly Start[]): Series {
  const ms = starts.map((s) => s.readyMs);
  const mean = ms.reduce((a, b) => a + b, 0) / Math.max(1, ms.length);
  const cpu: Record<string, number> = {};
  for (const key of Object.keys(starts[0]?.cpu ?? {})) cpu[key] = Math.round(median(starts.map((s) => s.cpu[key] ?? 0)) * 100) / 100;
  return {
    name,
    clients: 1,
    rate: median(starts.map((s) => s.idleRssMb)),
    unit: 'MB idle RSS',
    latency_ms: { mean: Math.round(mean), p50: median(ms), p99: Math.max(...ms) },
    ok: starts.length,
    non_ok: {},
    cpu_cores: cpu,
    seconds: Math.round(ms.reduce((a, b) => a + b, 0)) / 1000,
    busy_before: Math.max(...starts.map((s) => s.busyBefore)),
  };
}

async function run(timing: Timing): Promise<BenchResult> {
  const runs = timing.durationS;
  const url = adminUrl();
  const version = await serverVersion(url);
  const results: Record<string, Start[]> = {};
  const add = (name: string, start: Start) => {
    (results[name] ??= []).push(start);
    progress(`${name}: ready in ${start.readyMs} ms (${start.cpuS.toFixed(2)} CPU s), idle RSS ${start.idleRssMb} MB, peak ${start.peakRssMb} MB`);
  };
  for (let i = 0; i < runs; i++) {
    const dataDir = mkdtempSync(join(tmpdir(), 'databank-bench-startup-'));
    const removeDir = onCleanup(async () => rmSync(dataDir, { recursive: true, force: true }));
    try {
      const port = await freePort();
      const env = childEnv({ DATABANK_DATA_DIR: join(dataDir, 'pglite-deployment'), PORT: String(port), HOST: '127.0.0.1', LOG_LEVEL: 'warn' });
      add('pglite first start', await serve('databank serve (PGlite, new data dir)', env, port));
      add('pglite later start', await serve('databank serve (PGlite, same data dir)', env, port));
      add('bare PGlite.create new dir', await barePglite('PGlite.create (new dir)', join(dataDir, 'bare')));
      add('bare PGlite.create same dir', await barePglite('PGlite.create (same dir)', join(dataDir, 'bare')));
      if ('version' in version) {
        const db = await createDatabase(url, `databank_bench_startup_${process.pid}_${i}`);
        try {
          const pgEnv = childEnv({ DATABASE_URL: db.url, MIGRATE_ON_BOOT: 'true', DATABANK_DATA_DIR: join(dataDir, 'pg-deployment'), PORT: String(port), HOST: '127.0.0.1', LOG_LEVEL: 'warn' });
          add('postgres first start', await serve('databank serve (PostgreSQL, new database)', pgEnv, port));
          add('postgres later start', await serve('databank serve (PostgreSQL, same database)', pgEnv, port));
        } finally {
          await db.drop();
        }
      }
    } finally {
      await removeDir();
    }
  }
  const help: number[] = [];
  for (let i = 0; i < Math.max(3, runs); i++) help.push(await helpMs());
  progress(`databank --help: ${help.join(', ')} ms`);
  const series = Object.entries(results).map(([name, starts]) => toSeries(name, starts));
  const readyMs = (name: string) => series.find((s) => s.name === name)?.latency_ms.p50 ?? Number.NaN;
  const rss = (name: string) => series.find((s) => s.name === name)?.rate ?? Number.NaN;
  // Goals are "at most": as "goal ÷ measured ≥ 1" they read like every other ratio (higher is better).
  const goals: Ratio[] = [
    ratio('3 s ÷ PGlite first start', 1, 3000, readyMs('pglite first start'), 1),
    ratio('2 s ÷ PGlite later start', 1, 2000, readyMs('pglite later start'), 1),
    ratio('300 MB ÷ PGlite idle RSS (later start)', 1, 300, rss('pglite later start'), 1),
    ratio('600 ms ÷ databank --help', 1, 600, median(help), 1),
    ...('version' in version ? [ratio('150 MB ÷ PostgreSQL idle RSS (later start)', 1, 150, rss('postgres later start'), 1)] : []),
    ratio('bare PGlite.create new dir ÷ PGlite first start (time)', 1, readyMs('bare PGlite.create new dir'), readyMs('pglite first start'), null),
    ratio('bare PGlite.create same dir ÷ PGlite later start (time)', 1, readyMs('bare PGlite.create same dir'), readyMs('pglite later start'), null),
  ];
  const perStart = (pick: (s: Start) => number) => Object.fromEntries(Object.entries(results).map(([name, starts]) => [name, starts.map(pick)]));
  return {
    benchmark: 'startup',
    description: 'databank serve until /readyz answers 200, and its idle RSS, on a new and an existing data dir (PGlite) or database (PostgreSQL), beside a bare PGlite.create() and databank --help',
    machine: machineInfo('version' in version ? version.version : null),
    settings: {
      runs_per_case: runs,
      databank_revision: databankRevision(),
      databank: 'node bin/databank.js serve, LOG_LEVEL=warn, default settings otherwise (demo data on); the same data dir for the first and the later start',
      postgres: 'version' in version ? `${redact(url)} → a new database per run, MIGRATE_ON_BOOT=true` : `skipped: ${version.error}`,
      bare_pglite: 'node -e: PGlite.create(dir) and select 1, on a new empty dir, then again on the same dir',
      ready: 'from spawn to the first 200 from GET /readyz (polled every 20 ms), or to the "ready" line of the bare script',
      idle_rss: 'VmRSS from /proc/<pid>/status once three readings 500 ms apart agree within 2 MB',
    },
    series,
    ratios: goals,
    checks: {
      'ready ms per start': perStart((s) => s.readyMs),
      'CPU seconds until ready per start': perStart((s) => s.cpuS),
      'idle RSS MB per start': perStart((s) => s.idleRssMb),
      'peak RSS MB (VmHWM) per start': perStart((s) => s.peakRssMb),
      'databank --help ms': help,
    },
    notes: [
      'In the series table "rate" is the median idle RSS in MB and the latency columns are the time until ready (mean, median, slowest).',
      'CPU seconds until ready hardly depend on other load; wall times on a shared 2-core machine do: read them with the "rest of machine" figure.',
    ],
    warnings: noiseWarnings(series),
  };
}

export const startup: Benchmark = {
  name: 'startup',
  description: 'databank serve to /readyz and idle RSS, PGlite and PostgreSQL, beside a bare PGlite.create() (--duration N = N runs)',
  defaults: { warmupS: 0, durationS: 3 },
  run,
};
