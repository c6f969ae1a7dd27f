import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { progress } from './log.ts';

/**
 * Where the CPU goes during a measured window, read from /proc (Linux only; elsewhere the
 * figures are empty). On a 2-core machine the load generator, the server and PostgreSQL all share
 * the same cores, so this split is what explains a throughput figure.
 */

/** Which processes make up a group: e.g. { 'load generator': () => [process.pid] }. */
export type CpuGroups = Record<string, () => readonly number[]>;

export interface CpuSnapshot {
  readonly atMs: number;
  /** Per group, per pid, user+system clock ticks so far. */
  readonly ticks: Record<string, Map<number, number>>;
  readonly systemBusy: number;
}

/** Cores kept busy on average over the window, per group and for the whole machine. */
export type CpuSplit = Record<string, number>;

const CLK_TCK = (() => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  } catch {
    return 100;
  }
})();

function processTicks(pid: number): number | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) may hold spaces; the fields after it are space-separated.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return Number(fields[11]) + Number(fields[12]);
  } catch {
    return null;
  }
}

function systemBusyTicks(): number {
  try {
    const line = readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? '';
    const [, user, nice, system, , , irq, softirq, steal] = line.trim().split(/\s+/).map(Number);
    return (user ?? 0) + (nice ?? 0) + (system ?? 0) + (irq ?? 0) + (softirq ?? 0) + (steal ?? 0);
  } catch {
    return 0;
  }
}

/** Every process whose command name (/proc/<pid>/comm) is `name`. */
export function pidsNamed(name: string): number[] {
  const pids: number[] = [];
  let entries: string[] = [];
  try {
    entries = readdirSync('/proc');
  } catch {
    return pids;
  }
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (readFileSync(`/proc/${entry}/comm`, 'utf8').trim() === name) pids.push(Number(entry));
    } catch {
      // The process ended while we looked.
    }
  }
  return pids;
}

/** Every process named `postgres`: the postmaster, its helpers and the backends. */
export function postgresPids(): number[] {
  return pidsNamed('postgres');
}

export function snapshot(groups: CpuGroups): CpuSnapshot {
  const ticks: Record<string, Map<number, number>> = {};
  for (const [name, pidsOf] of Object.entries(groups)) {
    const perPid = new Map<number, number>();
    for (const pid of pidsOf()) {
      const t = processTicks(pid);
      if (t !== null) perPid.set(pid, t);
    }
    ticks[name] = perPid;
  }
  return { atMs: performance.now(), ticks, systemBusy: systemBusyTicks() };
}

/** Processes that started inside the window count from zero; those that ended inside it are lost. */
export function between(a: CpuSnapshot, b: CpuSnapshot): CpuSplit {
  const seconds = (b.atMs - a.atMs) / 1000;
  const cores = (ticks: number) => Math.round((ticks / CLK_TCK / seconds) * 100) / 100;
  const split: CpuSplit = {};
  for (const [name, after] of Object.entries(b.ticks)) {
    const before = a.ticks[name] ?? new Map<number, number>();
    let used = 0;
    for (const [pid, t] of after) used += t - (before.get(pid) ?? 0);
    split[name] = cores(used);
  }
  const machine = b.systemBusy - a.systemBusy;
  const listed = Object.values(split).reduce((x, y) => x + y, 0);
  split['whole machine'] = cores(machine);
  // Whatever else ran: kernel work not charged to a process, or other programs skewing the figures.
  split['rest of machine'] = Math.max(0, Math.round((split['whole machine'] - listed) * 100) / 100);
  return split;
}

/** Cores busy over the next `ms` on the whole machine. */
export async function machineBusy(ms: number): Promise<number> {
  const a = systemBusyTicks();
  const at = performance.now();
  await new Promise((resolve) => setTimeout(resolve, ms));
  return (systemBusyTicks() - a) / CLK_TCK / ((performance.now() - at) / 1000);
}

/**
 * Waits (up to `maxMs`) until the machine is nearly idle, so that a series does not start while
 * something else (another test run, the previous series' cleanup) holds a core. Returns the last
 * reading, which the caller reports when it stayed high.
 */
export async function waitForQuiet(onWait: (busy: number) => void, maxMs = 15_000, threshold = 0.3): Promise<number> {
  const deadline = performance.now() + maxMs;
  let busy = await machineBusy(1_000);
  let told = false;
  while (busy > threshold && performance.now() < deadline) {
    if (!told) onWait(busy);
    told = true;
    busy = await machineBusy(1_000);
  }
  return Math.round(busy * 100) / 100;
}

/** waitForQuiet with a progress line; returns the cores busy just before the series starts. */
export function settle(): Promise<number> {
  return waitForQuiet((busy) =>
    progress(`the machine is busy (${busy.toFixed(2)} cores in use): waiting up to 15s for it to settle`),
  );
}

/**
 * CPU time per answer, in microseconds, of each serving process group and in total. Unlike the
 * rate, it does not depend on who else held the cores (the client, other programs), so it still
 * compares servers when a rate is bounded by the load generator.
 */
export function cpuPerRequest(
  series: { readonly rate: number; readonly cpu_cores: Readonly<Record<string, number>> },
  serving: readonly string[],
): Record<string, number> {
  const us = (cores: number) => Math.round((cores / series.rate) * 1e6 * 10) / 10;
  const out: Record<string, number> = {};
  let total = 0;
  for (const group of serving) {
    const cores = series.cpu_cores[group];
    if (cores === undefined || series.rate <= 0) continue;
    out[group] = us(cores);
    total += cores;
  }
  out.total = series.rate > 0 ? us(total) : Number.NaN;
  return out;
}

/**
 * A series' CPU split for its notes: the groups that used CPU, busiest first, and what was
 * saturated — the whole machine, or a group at one core that cannot use more (one event loop or
 * command thread; `multiThreaded` names the groups that can). Null without CPU figures.
 */
export function cpuLimits(
  cpu: Readonly<Record<string, number>>,
  cpuCount: number,
  multiThreaded: readonly string[],
): { machine: number; parts: string; verdicts: string[] } | null {
  const machine = cpu['whole machine'];
  if (machine === undefined) return null;
  const groups = Object.entries(cpu)
    .filter(([g, c]) => g !== 'whole machine' && g !== 'rest of machine' && c >= 0.05)
    .sort((a, b) => b[1] - a[1]);
  const verdicts: string[] = [];
  if (machine >= 0.9 * cpuCount) verdicts.push(`the machine is saturated (${machine.toFixed(2)} of ${cpuCount} cores)`);
  for (const [g, c] of groups) {
    if (c >= 0.9 && !multiThreaded.includes(g)) verdicts.push(`${g} is at ~1 core, the most its one main thread can use`);
  }
  return { machine, parts: groups.map(([g, c]) => `${g} ${c.toFixed(2)}`).join(', '), verdicts };
}
