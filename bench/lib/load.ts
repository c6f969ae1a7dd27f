import { Agent, request, type OutgoingHttpHeaders } from 'node:http';
import { performance } from 'node:perf_hooks';
import { between, snapshot, type CpuGroups, type CpuSnapshot, type CpuSplit } from './cpu.ts';

/**
 * The load generator: `clients` closed-loop clients, each sending its next request as soon as the
 * previous one answered, over keep-alive connections (undici is not installed, so Node's own
 * http.Agent with one socket per client). Only completions inside the measured window count.
 */

export interface RequestSpec {
  readonly method: 'GET' | 'POST';
  readonly path: string;
  readonly body?: unknown;
  /** Headers of this request only (e.g. an Idempotency-Key), on top of the run's. */
  readonly headers?: OutgoingHttpHeaders;
}

export interface LoadOptions {
  readonly port: number;
  readonly clients: number;
  readonly warmupMs: number;
  readonly durationMs: number;
  /** The status a successful request answers; anything else is reported. */
  readonly expect: number;
  readonly headers?: OutgoingHttpHeaders;
  /** Builds each request; called once per request, so it may pick random ids. */
  readonly next: () => RequestSpec;
  /** Processes whose CPU time is measured over the window. */
  readonly cpu?: CpuGroups;
  /** Called when the measured window opens and closes (e.g. to sample database wait events). */
  readonly window?: { begin(): void; end(): void };
  /** A response header (lower case, e.g. 'x-cache') whose values are counted on expected answers. */
  readonly countHeader?: string;
  /**
   * A steady load instead of a closed loop: the clients together start this many requests a
   * second, each on a fixed schedule (a client behind it sends at once, and one more than an
   * interval behind drops the sends it missed); the achieved rate is `ops_per_s`.
   */
  readonly ratePerS?: number;
  /** Return every latency in the window too (`latencies_ms`), e.g. to merge several runs' percentiles. */
  readonly keepLatencies?: boolean;
}

/** Values of `countHeader` on expected answers → count; '(none)' when the header is missing. */
export interface HeaderCounts {
  /** Answers completed inside the measured window (the ones `ok` counts). */
  readonly measured: Record<string, number>;
  /** Every expected answer, warm-up included. */
  readonly whole_run: Record<string, number>;
}

export interface LoadResult {
  readonly clients: number;
  readonly seconds: number;
  /** Expected answers completed inside the window, per second. */
  readonly ops_per_s: number;
  readonly ok: number;
  /** Expected answers over the whole run, warm-up included (to reconcile with the database). */
  readonly ok_total: number;
  readonly latency_ms: { readonly mean: number; readonly p50: number; readonly p90: number; readonly p99: number; readonly max: number };
  /** Unexpected outcomes over the whole run: "HTTP 409 DATABANK_ERR_..." or "ECONNRESET" → count. */
  readonly non_ok: Record<string, number>;
  readonly cpu_cores: CpuSplit;
  /** Only when `countHeader` was given. */
  readonly header_counts?: HeaderCounts;
  /** Only with `keepLatencies`: each expected answer's latency in the window, in completion order. */
  readonly latencies_ms?: readonly number[];
}

interface Outcome {
  readonly status: number;
  /** The error code of an unexpected answer, when its body names one. */
  readonly detail: string;
  /** The value of the counted header on an expected answer. */
  readonly header?: string;
}

function send(
  agent: Agent,
  port: number,
  headers: OutgoingHttpHeaders,
  spec: RequestSpec,
  expect: number,
  countHeader?: string,
): Promise<Outcome> {
  const body = spec.body === undefined ? undefined : Buffer.from(JSON.stringify(spec.body));
  const own = spec.headers ? { ...headers, ...spec.headers } : headers;
  const all: OutgoingHttpHeaders = body
    ? { ...own, 'content-type': 'application/json', 'content-length': body.length }
    : own;
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, method: spec.method, path: spec.path, agent, headers: all }, (res) => {
      const status = res.statusCode ?? 0;
      if (status === expect) {
        // The body of a success is not needed: drain it without decoding.
        res.resume();
        const value = countHeader === undefined ? undefined : res.headers[countHeader];
        const header = countHeader === undefined ? undefined : value === undefined ? '(none)' : String(value);
        res.on('end', () => resolve({ status, detail: '', header }));
        return;
      }
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        const code = /"code"\s*:\s*"([A-Z_]+)"/.exec(text)?.[1] ?? '';
        resolve({ status, detail: code });
      });
    });
    req.on('error', reject);
    req.end(body);
  });
}

function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(p * sorted.length) - 1))] ?? Number.NaN;
}

const round = (n: number, digits = 2) => Math.round(n * 10 ** digits) / 10 ** digits;

export async function runLoad(options: LoadOptions): Promise<LoadResult> {
  const agent = new Agent({ keepAlive: true, maxSockets: options.clients, maxFreeSockets: options.clients });
  const headers = options.headers ?? {};
  const start = performance.now();
  const measureFrom = start + options.warmupMs;
  const end = measureFrom + options.durationMs;
  const latencies: number[] = [];
  const nonOk: Record<string, number> = {};
  let okTotal = 0;
  const counted: HeaderCounts = { measured: {}, whole_run: {} };
  const count = (into: Record<string, number>, value: string) => {
    into[value] = (into[value] ?? 0) + 1;
  };
  // CPU is read at the window's edges by timers, not by the clients, so no client pays for it.
  const groups = options.cpu ?? {};
  const cpu: { before?: CpuSnapshot; after?: CpuSnapshot } = {};
  const t1 = setTimeout(() => {
    cpu.before = snapshot(groups);
    options.window?.begin();
  }, options.warmupMs);
  const t2 = setTimeout(() => {
    cpu.after = snapshot(groups);
    options.window?.end();
  }, options.warmupMs + options.durationMs);

  // With a rate, client i sends at start + (i + k × clients) / rate, k = 0, 1, …
  const intervalMs = options.ratePerS ? (options.clients * 1000) / options.ratePerS : 0;
  const client = async (i: number) => {
    let due = start + (i * intervalMs) / options.clients;
    while (performance.now() < end) {
      if (intervalMs > 0) {
        const wait = due - performance.now();
        // More than a whole interval behind: the missed sends are dropped rather than made up in
        // a burst, so the rate never goes above the one asked for.
        due = wait < -intervalMs ? performance.now() + intervalMs : due + intervalMs;
        if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
        if (performance.now() >= end) break;
      }
      const spec = options.next();
      const sent = performance.now();
      let outcome: Outcome;
      try {
        outcome = await send(agent, options.port, headers, spec, options.expect, options.countHeader);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code ?? 'network error';
        nonOk[code] = (nonOk[code] ?? 0) + 1;
        continue;
      }
      const done = performance.now();
      if (outcome.status !== options.expect) {
        const key = `HTTP ${outcome.status}${outcome.detail ? ` ${outcome.detail}` : ''}`;
        nonOk[key] = (nonOk[key] ?? 0) + 1;
        continue;
      }
      okTotal++;
      const inWindow = done >= measureFrom && done <= end;
      if (inWindow) latencies.push(done - sent);
      if (outcome.header !== undefined) {
        count(counted.whole_run, outcome.header);
        if (inWindow) count(counted.measured, outcome.header);
      }
    }
  };
  await Promise.all(Array.from({ length: options.clients }, (_, i) => client(i)));
  clearTimeout(t1);
  clearTimeout(t2);
  cpu.after ??= snapshot(groups);
  options.window?.end();
  agent.destroy();

  const sorted = Float64Array.from(latencies).sort();
  const sum = latencies.reduce((a, b) => a + b, 0);
  const seconds = options.durationMs / 1000;
  return {
    clients: options.clients,
    seconds,
    ops_per_s: round(latencies.length / seconds, 1),
    ok: latencies.length,
    ok_total: okTotal,
    latency_ms: {
      mean: round(sum / Math.max(1, latencies.length), 3),
      p50: round(percentile(sorted, 0.5), 3),
      p90: round(percentile(sorted, 0.9), 3),
      p99: round(percentile(sorted, 0.99), 3),
      max: round(percentile(sorted, 1), 3),
    },
    non_ok: nonOk,
    cpu_cores: cpu.before ? between(cpu.before, cpu.after) : {},
    ...(options.countHeader === undefined ? {} : { header_counts: counted }),
    ...(options.keepLatencies ? { latencies_ms: latencies } : {}),
  };
}
