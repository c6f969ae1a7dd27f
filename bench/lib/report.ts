import { mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { CpuSplit } from './cpu.ts';
import type { LoadResult } from './load.ts';
import type { PgbenchResult } from './pgbench.ts';

export const RESULTS_DIR = join(dirname(fileURLToPath(import.meta.url)), '../results');

/** One measured configuration: a system under one load. */
export interface Series {
  readonly name: string;
  readonly clients: number;
  readonly rate: number;
  readonly unit: string;
  readonly latency_ms: { readonly mean: number; readonly p50: number | null; readonly p99: number | null };
  readonly ok: number | null;
  /** Unexpected answers or failed transactions, by kind. */
  readonly non_ok: Record<string, number>;
  /** Average cores busy during the measured window, per process group and for the machine. */
  readonly cpu_cores: CpuSplit;
  readonly seconds: number;
  /** Cores busy on the whole machine just before the series started (ideally ~0). */
  readonly busy_before: number;
  /** Average PostgreSQL backends per state over the window (transfers only). */
  readonly db_backends?: Record<string, number>;
  /** X-Cache answers counted by the load generator (cache only). */
  readonly x_cache?: XCache;
  /**
   * Where the time goes, per answer (per transaction for pgbench) over the measured window: CPU ms
   * of each process group, WAL flushes, writes and bytes, a writer's mean batch size (transfers only).
   */
  readonly per_op?: Record<string, number | null>;
}

export interface XCache {
  /** HIT ÷ all answers in the measured window; null when there were none. */
  readonly hit_ratio: number | null;
  /** HIT / MISS / BYPASS counts in the measured window. */
  readonly measured: Record<string, number>;
  /** The same over the whole run, warm-up included (the first read of each key is a MISS). */
  readonly whole_run: Record<string, number>;
}

export interface Ratio {
  readonly name: string;
  readonly clients: number;
  readonly value: number;
  readonly goal: number | null;
  readonly meets_goal: boolean | null;
}

export interface MachineInfo {
  readonly node: string;
  readonly platform: string;
  readonly cpu_count: number;
  readonly cpu_model: string;
  readonly memory_gb: number;
  readonly date: string;
  readonly postgres: string | null;
}

export interface BenchResult {
  readonly benchmark: string;
  readonly description: string;
  readonly machine: MachineInfo;
  readonly settings: Record<string, unknown>;
  readonly series: readonly Series[];
  readonly ratios: readonly Ratio[];
  readonly checks: Record<string, unknown>;
  readonly notes: readonly string[];
  /** Series measured while other programs used the machine. */
  readonly warnings: readonly string[];
}

export function machineInfo(postgres: string | null): MachineInfo {
  const cores = cpus();
  return {
    node: process.version,
    platform: `${process.platform} ${process.arch}`,
    cpu_count: cores.length,
    cpu_model: cores[0]?.model.trim() ?? 'unknown',
    memory_gb: Math.round(totalmem() / 2 ** 30),
    date: new Date().toISOString(),
    postgres,
  };
}

export function ratio(name: string, clients: number, numerator: number, denominator: number, goal: number | null): Ratio {
  const value = denominator > 0 ? Math.round((numerator / denominator) * 1000) / 1000 : Number.NaN;
  return { name, clients, value, goal, meets_goal: goal === null ? null : value >= goal };
}

/** Writes atomically, so that an interrupted run never leaves half a file where the last result was. */
export function writeResult(result: BenchResult): string {
  mkdirSync(RESULTS_DIR, { recursive: true });
  const file = join(RESULTS_DIR, `${result.benchmark}.json`);
  writeFileSync(`${file}.tmp`, `${JSON.stringify(result, null, 2)}\n`);
  renameSync(`${file}.tmp`, file);
  return file;
}

function table(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: readonly string[]) =>
    cells.map((c, i) => (i === 0 ? c.padEnd(widths[i] ?? 0) : c.padStart(widths[i] ?? 0))).join('  ').trimEnd();
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}

const num = (n: number | null, digits = 1) => (n === null || Number.isNaN(n) ? '-' : n.toFixed(digits));

function cpuText(cpu: CpuSplit): string {
  return Object.entries(cpu)
    .map(([group, cores]) => `${group} ${cores.toFixed(2)}`)
    .join(', ');
}

/** Other load above this (cores) makes a series' figures suspect; the report says so. */
const NOISE_CORES = 0.25;

/** Series that ran while something else used the machine, as warning lines. */
export function noiseWarnings(series: readonly Series[]): string[] {
  return series
    .filter((s) => (s.cpu_cores['rest of machine'] ?? 0) > NOISE_CORES)
    .map(
      (s) =>
        `${s.name} c=${s.clients} ran alongside other load (${s.cpu_cores['rest of machine']} cores not used by the ` +
        'benchmarked processes): its rate is likely low; run again on a quiet machine',
    );
}

/** The result as text: series, ratios, checks and notes. */
export function formatResult(result: BenchResult): string {
  const m = result.machine;
  const out: string[] = [
    `${result.benchmark}: ${result.description}`,
    `node ${m.node}, ${m.cpu_count} x ${m.cpu_model}, ${m.memory_gb} GB, PostgreSQL ${m.postgres ?? 'n/a'}, ${m.date}`,
    '',
    table(
      ['series', 'clients', 'rate', 'unit', 'mean ms', 'p50 ms', 'p99 ms', 'non-ok'],
      result.series.map((s) => [
        s.name,
        String(s.clients),
        num(s.rate),
        s.unit,
        num(s.latency_ms.mean, 2),
        num(s.latency_ms.p50, 2),
        num(s.latency_ms.p99, 2),
        String(Object.values(s.non_ok).reduce((a, b) => a + b, 0)),
      ]),
    ),
    '',
    'CPU (average cores busy in the measured window):',
    ...result.series.map(
      (s) => `  ${s.name} c=${s.clients}: ${cpuText(s.cpu_cores) || 'n/a'} (before: ${s.busy_before.toFixed(2)})`,
    ),
  ];
  const sampled = result.series.filter((s) => s.db_backends);
  if (sampled.length > 0) {
    out.push('', 'PostgreSQL backends (average number per state in the measured window):');
    for (const s of sampled) {
      const states = Object.entries(s.db_backends ?? {}).map(([state, n]) => `${state} ${n.toFixed(2)}`);
      out.push(`  ${s.name} c=${s.clients}: ${states.join(', ') || 'n/a'}`);
    }
  }
  const cached = result.series.filter((s) => s.x_cache);
  if (cached.length > 0) {
    out.push('', 'X-Cache answers (hit ratio and counts in the measured window; whole run incl. warm-up):');
    for (const s of cached) {
      const x = s.x_cache as XCache;
      const counts = (c: Record<string, number>) => Object.entries(c).map(([k, n]) => `${k} ${n}`).join(', ') || 'none';
      out.push(
        `  ${s.name} c=${s.clients}: hit ratio ${x.hit_ratio === null ? '-' : x.hit_ratio.toFixed(4)}; ${counts(x.measured)}; whole run ${counts(x.whole_run)}`,
      );
    }
  }
  const perOp = result.series.filter((s) => s.per_op);
  if (perOp.length > 0) {
    out.push('', 'Where the time goes (per answer / per pgbench transaction, in the measured window):');
    for (const s of perOp) {
      const fields = Object.entries(s.per_op ?? {}).map(([k, v]) => `${k} ${v === null || Number.isNaN(v) ? '-' : String(v)}`);
      out.push(`  ${s.name} c=${s.clients}: ${fields.join(', ') || 'n/a'}`);
    }
  }
  const errors = result.series.filter((s) => Object.keys(s.non_ok).length > 0);
  if (errors.length > 0) {
    out.push('', 'Non-OK answers:');
    for (const s of errors) out.push(`  ${s.name} c=${s.clients}: ${JSON.stringify(s.non_ok)}`);
  }
  if (result.ratios.length > 0) {
    out.push(
      '',
      table(
        ['ratio', 'clients', 'value', 'goal'],
        result.ratios.map((r) => [
          r.name,
          String(r.clients),
          num(r.value, 3),
          r.goal === null ? '-' : `>= ${r.goal} ${r.meets_goal ? 'met' : 'NOT met'}`,
        ]),
      ),
    );
  }
  for (const [name, value] of Object.entries(result.checks)) out.push('', `${name}: ${JSON.stringify(value)}`);
  if (result.notes.length > 0) out.push('', ...result.notes.map((n) => `note: ${n}`));
  if (result.warnings.length > 0) out.push('', ...result.warnings.map((w) => `WARNING: ${w}`));
  return out.join('\n');
}

/** A series from a load-generator run. */
export function loadSeries(name: string, unit: string, r: LoadResult, busyBefore: number, extra: Partial<Series> = {}): Series {
  return {
    name,
    clients: r.clients,
    rate: r.ops_per_s,
    unit,
    latency_ms: { mean: r.latency_ms.mean, p50: r.latency_ms.p50, p99: r.latency_ms.p99 },
    ok: r.ok,
    non_ok: r.non_ok,
    cpu_cores: r.cpu_cores,
    seconds: r.seconds,
    busy_before: busyBefore,
    ...extra,
  };
}

/** A pgbench run as a series; pgbench prints only the mean latency unless it logs every transaction. */
export function pgbenchSeries(name: string, unit: string, r: PgbenchResult, busyBefore: number, extra: Partial<Series> = {}): Series {
  return {
    name,
    clients: r.clients,
    rate: r.tps,
    unit,
    latency_ms: { mean: r.latency_avg_ms, p50: null, p99: null },
    ok: r.transactions,
    non_ok: r.failed > 0 ? { failed: r.failed } : {},
    cpu_cores: r.cpu_cores,
    seconds: r.seconds,
    busy_before: busyBefore,
    ...extra,
  };
}
