import { createHash } from 'node:crypto';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { request, type IncomingHttpHeaders } from 'node:http';
import { cpus, tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import type { Benchmark, Timing } from './lib/benchmark.ts';
import { onCleanup } from './lib/cleanup.ts';
import { type CpuGroups, cpuLimits, cpuPerRequest, settle } from './lib/cpu.ts';
import { DATABANK_DIR, databankRevision, startDatabank, type Databank } from './lib/databank.ts';
import { runLoad, type LoadResult } from './lib/load.ts';
import { BenchError, progress } from './lib/log.ts';
import { CDN_CONFIG_FILE, NGINX, nginxVersion, readCdnConfig, rewriteCdnConfig, startNginx, type Nginx, type Rewrite } from './lib/nginx.ts';
import { loadSeries, machineInfo, noiseWarnings, ratio, type BenchResult, type Ratio, type Series, type XCache } from './lib/report.ts';

/** 32 as in the other benchmarks; 8 shows the latency with fewer requests in flight. */
const CLIENTS = [32, 8] as const;
const PRIMARY = 32;
/** The project's goal: databank serves the small file at least half as fast as nginx from disk. */
const GOAL_SMALL_VS_NGINX = 0.5;
const CACHE_CONTROL = 'public, max-age=300';

type Kind = 'databank' | 'nginx disk' | 'cdn';
const KINDS: readonly Kind[] = ['databank', 'cdn', 'nginx disk'];

interface SiteFile {
  readonly name: string;
  readonly label: string;
  readonly type: string;
  readonly bytes: Buffer;
  readonly md5: string;
}

// ---------------------------------------------------------------------------------------------
// The files: the same bytes on every run.

/** 2,048 bytes of CSS rules, padded with a comment to the exact size. */
function smallCss(size = 2048): Buffer {
  let text = '/* databank static benchmark */\n';
  for (let i = 0; ; i++) {
    const colour = createHash('md5').update(`colour ${i}`).digest('hex').slice(0, 6);
    const rule = `.bench-${String(i).padStart(4, '0')} { margin: 0 ${i % 7}px; color: #${colour}; }\n`;
    if (text.length + rule.length > size - 6) break;
    text += rule;
  }
  text += `/*${' '.repeat(size - text.length - 5)}*/\n`;
  return Buffer.from(text, 'utf8');
}

/** 1 MiB of SHA-256 output (a counter hashed block by block): incompressible, and a type no one compresses. */
function bigBin(size = 1024 * 1024): Buffer {
  const blocks: Buffer[] = [];
  for (let i = 0; i * 32 < size; i++) blocks.push(createHash('sha256').update(`databank bench ${i}`).digest());
  return Buffer.concat(blocks).subarray(0, size);
}

function siteFile(name: string, label: string, type: string, bytes: Buffer): SiteFile {
  return { name, label, type, bytes, md5: createHash('md5').update(bytes).digest('hex') };
}

/** A temp folder holding only the two files, readable by nginx workers running as `nobody`. */
function makeSite(): { dir: string; files: readonly SiteFile[]; remove: () => Promise<void> } {
  const dir = mkdtempSync(join(tmpdir(), 'databank-bench-site-'));
  const remove = onCleanup(async () => rmSync(dir, { recursive: true, force: true }));
  chmodSync(dir, 0o755);
  const files = [
    siteFile('small.css', '2 KiB', 'text/css; charset=utf-8', smallCss()),
    siteFile('big.bin', '1 MiB', 'application/octet-stream', bigBin()),
  ];
  for (const f of files) writeFileSync(join(dir, f.name), f.bytes, { mode: 0o644 });
  return { dir, files, remove };
}

// ---------------------------------------------------------------------------------------------
// nginx serving the folder from disk.

/**
 * The same http-level settings as deploy/cdn/nginx.conf (worker_processes auto, sendfile,
 * tcp_nopush, keep-alive, no access log), the folder as root, and the Content-Type and
 * Cache-Control databank sends for these two files, so that every server answers the same bytes
 * with the same headers.
 */
function diskConfig(root: string) {
  return ({ dir, port }: { dir: string; port: number }) =>
    [
      'worker_processes auto;',
      `pid ${join(dir, 'nginx.pid')};`,
      'error_log stderr warn;',
      'events {',
      '    worker_connections 1024;',
      '}',
      'http {',
      '    access_log off;',
      '    sendfile on;',
      '    tcp_nopush on;',
      '    keepalive_timeout 65;',
      '    keepalive_requests 100000;',
      '    server_tokens off;',
      ...['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map((t) => `    ${t}_temp_path ${join(dir, t)};`),
      '    types {',
      '        text/css css;',
      '        application/octet-stream bin;',
      '    }',
      '    default_type application/octet-stream;',
      '    charset utf-8;',
      '    charset_types text/css;',
      '    server {',
      `        listen 127.0.0.1:${port};`,
      `        root ${root};`,
      '        location / {',
      `            add_header Cache-Control "${CACHE_CONTROL}";`,
      '        }',
      '    }',
      '}',
      '',
    ].join('\n');
}

// ---------------------------------------------------------------------------------------------
// Checking an answer before measuring, so that no series measures an error page.

interface Answer {
  readonly status: number;
  readonly headers: IncomingHttpHeaders;
  readonly body: Buffer;
}

/** One GET on a fresh connection, without Accept-Encoding, like the load generator's requests. */
function get(port: number, path: string): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, agent: false, timeout: 10_000 }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`GET ${path} timed out`)));
    req.on('error', reject);
    req.end();
  });
}

/** What is wrong with an answer for `file` from a server of `kind`; empty when it is right. */
function problemsOf(kind: Kind, file: SiteFile, a: Answer): string[] {
  const p: string[] = [];
  const h = a.headers;
  if (a.status !== 200) p.push(`status ${a.status}`);
  if (!a.body.equals(file.bytes)) p.push(`body of ${a.body.length} bytes differs from the file (${file.bytes.length} bytes)`);
  if (h['content-length'] !== String(file.bytes.length)) p.push(`content-length ${h['content-length']}`);
  if (h['content-type'] !== file.type) p.push(`content-type ${h['content-type']}`);
  if (h['content-encoding'] !== undefined) p.push(`content-encoding ${h['content-encoding']}`);
  if (h['cache-control'] !== CACHE_CONTROL) p.push(`cache-control ${h['cache-control']}`);
  if (kind === 'nginx disk' ? !h.etag : h.etag !== `"${file.md5}"`) p.push(`etag ${h.etag}`);
  if (kind === 'cdn' && h['x-cache-status'] !== 'HIT') p.push(`x-cache-status ${h['x-cache-status']}`);
  return p;
}

type ProbeLog = Record<string, Record<string, string>>;

/**
 * GET of the file, checked; the CDN is asked until it answers from its cache (the first request
 * of a cold cache is a MISS that fills it). Any problem stops the run.
 */
async function probe(kind: Kind, port: number, file: SiteFile, log: ProbeLog): Promise<void> {
  const seen: string[] = [];
  let answer = await get(port, `/${file.name}`);
  if (kind === 'cdn') {
    for (let i = 0; i < 3 && answer.headers['x-cache-status'] !== 'HIT'; i++) {
      seen.push(String(answer.headers['x-cache-status']));
      answer = await get(port, `/${file.name}`);
    }
  }
  const problems = problemsOf(kind, file, answer);
  if (problems.length > 0) {
    const text = answer.status === 200 ? '' : `\n${answer.body.toString('utf8').slice(0, 500)}`;
    throw new BenchError(`${kind}: GET /${file.name} is not the file as expected: ${problems.join('; ')}${text}`);
  }
  const h = answer.headers;
  const cacheStatus = kind === 'cdn' ? `, x-cache-status ${[...seen, 'HIT'].join(' then ')}` : '';
  // The first probe of each file is kept: for the CDN it shows the MISS that filled the cache.
  (log[kind] ??= {})[file.name] ??=
    `ok: 200, ${answer.body.length} bytes equal to the file, ${h['content-type']}, etag ${h.etag}, cache-control ${h['cache-control']}${cacheStatus}`;
}

// ---------------------------------------------------------------------------------------------
// The series.

function seriesName(kind: Kind, file: SiteFile): string {
  return `${kind} ${file.label}`;
}

async function measure(
  timing: Timing,
  kind: Kind,
  port: number,
  file: SiteFile,
  clients: number,
  cpu: CpuGroups,
  log: ProbeLog,
): Promise<Series> {
  const name = seriesName(kind, file);
  const busyBefore = await settle();
  // The CDN's entries live max-age=300 s: a long run could outlive them, so each series starts on a checked HIT.
  if (kind === 'cdn') await probe(kind, port, file, log);
  progress(`${name}, ${clients} clients: ${timing.warmupS}s warm-up, then ${timing.durationS}s measured`);
  const r: LoadResult = await runLoad({
    port,
    clients,
    warmupMs: timing.warmupS * 1000,
    durationMs: timing.durationS * 1000,
    expect: 200,
    headers: {},
    next: () => ({ method: 'GET', path: `/${file.name}` }),
    cpu,
    ...(kind === 'cdn' ? { countHeader: 'x-cache-status' } : {}),
  });
  const x = kind === 'cdn' ? xCache(r) : undefined;
  progress(
    `  ${r.ops_per_s} requests/s, p50 ${r.latency_ms.p50} ms, p99 ${r.latency_ms.p99} ms${x ? `, hit ratio ${x.hit_ratio}` : ''}`,
  );
  return loadSeries(name, 'requests/s', r, busyBefore, x ? { x_cache: x } : {});
}

function xCache(r: LoadResult): XCache {
  const measured = r.header_counts?.measured ?? {};
  const total = Object.values(measured).reduce((a, b) => a + b, 0);
  return {
    hit_ratio: total > 0 ? Math.round(((measured.HIT ?? 0) / total) * 10_000) / 10_000 : null,
    measured,
    whole_run: r.header_counts?.whole_run ?? {},
  };
}

async function eachSeries(
  timing: Timing,
  kind: Kind,
  port: number,
  files: readonly SiteFile[],
  cpu: CpuGroups,
  log: ProbeLog,
): Promise<Series[]> {
  const out: Series[] = [];
  for (const file of files) {
    for (const clients of CLIENTS) out.push(await measure(timing, kind, port, file, clients, cpu, log));
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Reading the result.

/** The processes that serve each kind's requests (the load generator excluded). */
const SERVING: Record<Kind, readonly string[]> = {
  databank: ['databank'],
  'nginx disk': ['nginx'],
  cdn: ['nginx', 'databank'],
};

function kindOf(s: Series): Kind {
  return KINDS.find((k) => s.name.startsWith(`${k} `)) as Kind;
}

function servingCpu(s: Series): Record<string, number> {
  return cpuPerRequest(s, SERVING[kindOf(s)]);
}

/** What bounds a series, from its CPU split. */
function limitNote(s: Series, cpuCount: number): string {
  // nginx has a worker per core; the load generator and databank have one event loop each.
  const limits = cpuLimits(s.cpu_cores, cpuCount, ['nginx']);
  if (!limits) return `${s.name} c=${s.clients}: no CPU figures`;
  const { machine, parts, verdicts } = limits;
  const verdict = verdicts.length > 0 ? verdicts.join('; ') : `nothing saturated (${machine.toFixed(2)} of ${cpuCount} cores)`;
  return `${s.name} c=${s.clients}: ${parts}; ${verdict}`;
}

function ratios(series: readonly Series[], files: readonly SiteFile[]): Ratio[] {
  const find = (kind: Kind, file: SiteFile, clients: number) =>
    series.find((s) => s.name === seriesName(kind, file) && s.clients === clients) as Series;
  const out: Ratio[] = [];
  const pairs: readonly [Kind, Kind][] = [
    ['databank', 'nginx disk'],
    ['cdn', 'nginx disk'],
    ['databank', 'cdn'],
  ];
  for (const [a, b] of pairs) {
    for (const file of files) {
      for (const clients of CLIENTS) {
        const goal = a === 'databank' && b === 'nginx disk' && file === files[0] && clients === PRIMARY ? GOAL_SMALL_VS_NGINX : null;
        out.push(ratio(`${a} / ${b}, ${file.label}`, clients, find(a, file, clients).rate, find(b, file, clients).rate, goal));
      }
    }
  }
  // By serving CPU per answer, the other way round so that higher is better, as with rates.
  for (const [a, b] of pairs.slice(0, 2)) {
    for (const file of files) {
      const cost = (kind: Kind) => servingCpu(find(kind, file, PRIMARY)).total ?? Number.NaN;
      out.push(ratio(`${a} / ${b}, ${file.label}, by server CPU per request`, PRIMARY, cost(b), cost(a), null));
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------

async function run(timing: Timing): Promise<BenchResult> {
  const version = nginxVersion();
  progress(`nginx ${version} at ${NGINX}`);
  const shipped = readCdnConfig();
  // Fails now, not after the databank series, if the shipped file has changed beyond what is rewritten.
  const rewrites: Rewrite[] = rewriteCdnConfig(shipped, { dir: '/DIR', listenPort: 0, upstreamPort: 0 }).rewrites.map((r) => ({
    ...r,
    to: r.to.replace('/DIR', '<temp dir>').replace(/:0$/, ':<port>'),
  }));
  const site = makeSite();
  progress(`site folder ${site.dir}: ${site.files.map((f) => `${f.name} (${f.bytes.length} bytes)`).join(', ')}`);
  const series: Series[] = [];
  const probes: ProbeLog = {};
  const generator = () => [process.pid];
  let diskConfigText = '';
  let bank: Databank | null = null;
  let cdn: Nginx | null = null;
  let disk: Nginx | null = null;
  try {
    progress('starting databank (PGlite), deploying the folder on first start (DATABANK_SITE_DIR)');
    bank = await startDatabank({ databaseUrl: null, poolMax: PRIMARY, env: { DATABANK_SITE_DIR: site.dir } });
    const bankPid = bank.child.pid;
    for (const file of site.files) await probe('databank', bank.port, file, probes);
    series.push(
      ...(await eachSeries(timing, 'databank', bank.port, site.files, { 'load generator': generator, databank: () => [bankPid] }, probes)),
    );

    progress(`starting nginx with ${CDN_CONFIG_FILE} (site-specific lines rewritten) in front of databank`);
    const upstreamPort = bank.port;
    cdn = await startNginx(
      'nginx cdn',
      ({ dir, port }) => rewriteCdnConfig(shipped, { dir, listenPort: port, upstreamPort }).config,
      '/readyz',
    );
    const cdnPids = cdn.pids;
    for (const file of site.files) await probe('cdn', cdn.port, file, probes);
    const cdnCpu: CpuGroups = { 'load generator': generator, nginx: cdnPids, databank: () => [bankPid] };
    series.push(...(await eachSeries(timing, 'cdn', cdn.port, site.files, cdnCpu, probes)));
    await cdn.stop();
    cdn = null;
    await bank.stop();
    bank = null;

    progress('starting nginx serving the folder from disk');
    disk = await startNginx('nginx disk', diskConfig(site.dir), `/${site.files[0]?.name}`);
    // Recorded without this machine's temporary paths.
    diskConfigText = disk.config.replaceAll(disk.dir, '<nginx temp dir>').replaceAll(site.dir, '<site folder>');
    const diskPids = disk.pids;
    for (const file of site.files) await probe('nginx disk', disk.port, file, probes);
    series.push(...(await eachSeries(timing, 'nginx disk', disk.port, site.files, { 'load generator': generator, nginx: diskPids }, probes)));
  } finally {
    await cdn?.stop();
    await bank?.stop();
    await disk?.stop();
    await site.remove();
  }

  const machine = machineInfo(null);
  const cpuCount = cpus().length;
  const generatorBound = series.filter((s) => kindOf(s) !== 'databank' && (s.cpu_cores['load generator'] ?? 0) >= 0.85);
  const cdnHits = Object.fromEntries(
    series.filter((s) => s.x_cache).map((s) => [`${s.name} c=${s.clients}`, s.x_cache?.hit_ratio === 1]),
  );
  const big = site.files[1] as SiteFile;
  return {
    benchmark: 'static',
    description: 'A 2 KiB and a 1 MiB site file through databank, through nginx from disk, and through the nginx CDN config in front of databank (cache hits)',
    machine,
    settings: {
      clients: CLIENTS,
      warmup_s: timing.warmupS,
      duration_s: timing.durationS,
      files: site.files.map((f) => ({ name: f.name, bytes: f.bytes.length, content_type: f.type, md5: f.md5 })),
      accept_encoding: 'none sent (probes and load): every server answers the identity bytes of the file',
      databank_revision: databankRevision(),
      databank: 'node bin/databank.js serve, PGlite, fresh data dir, site deployed on first start from DATABANK_SITE_DIR (the temp folder)',
      nginx: `${NGINX} ${version}, master + workers as a child process (-g "daemon off;")`,
      nginx_workers: `worker_processes auto in both nginx configs: ${cpuCount} workers on this ${cpuCount}-core machine; databank is one Node process`,
      nginx_disk_config: diskConfigText.split('\n').filter((l) => l !== ''),
      cdn_config: `${relative(DATABANK_DIR, CDN_CONFIG_FILE)}, only its site-specific lines rewritten`,
      cdn_rewrites: rewrites,
      load_generator: 'node:http Agent, keep-alive, one socket per client, in the benchmark process; bodies drained, not decoded',
    },
    series,
    ratios: ratios(series, site.files),
    checks: {
      'probe answers before measuring (status, bytes, headers)': probes,
      'cdn answers all X-Cache-Status HIT in the measured window': cdnHits,
      'server CPU per request (µs; cdn: nginx + databank)': Object.fromEntries(
        series.map((s) => [`${s.name} c=${s.clients}`, servingCpu(s)]),
      ),
      [`body MiB/s (${big.name})`]: Object.fromEntries(
        series
          .filter((s) => s.name.endsWith(big.label))
          .map((s) => [`${s.name} c=${s.clients}`, Math.round(((s.rate * big.bytes.length) / 2 ** 20) * 10) / 10]),
      ),
    },
    notes: [
      'Order: databank, then the CDN in front of the same databank process, then nginx from disk; each server alone on the machine apart from the CDN\'s idle upstream.',
      'databank per request: the unmatched-route handler (no API key check: the auth hook skips unmatched routes; no SQL), the site manifest from memory (re-read from the file store every 2 s), path decoding, headers, ETag/Last-Modified/Range checks, the bytes from its in-memory cache, request-id, nosniff and metrics hooks.',
      `${big.name} is ${big.bytes.length} bytes: databank's in-memory limit for site files (maxCachedFileBytes in src/services/site.ts) decides whether it is sent from memory or streamed from the file store.`,
      'nginx from disk: open, fstat and sendfile per request (no open_file_cache), from the page cache; the CDN: a proxy cache hit is an open of the cache file and a sendfile, databank is not asked.',
      `Both nginx configs run worker_processes auto (${cpuCount} workers here) against one databank process: on ${cpuCount} cores, with the load generator on the same cores, nginx may use every core; the ratios by server CPU per request compare the work per answer regardless.`,
      `"rest of machine" may include the kernel's loopback TCP work (softirq), which is charged to no process and grows with the bytes sent: in the ${big.label} series a warning does not always mean another program ran.`,
      'A ratio "by server CPU per request" divides the CPU time the serving processes spent per answer (the other way round, so that higher is better, as with rates).',
      'What bounds each series (CPU split, cores):',
      ...series.map((s) => `  ${limitNote(s, cpuCount)}`),
      ...(generatorBound.length > 0
        ? [
            `the load generator used >= 0.85 cores in ${generatorBound.map((s) => `${s.name} c=${s.clients}`).join(', ')}: those nginx rates are bounded by the client, so the true nginx ceiling is higher and rate ratios against them overstate databank; read the ratios by server CPU per request too`,
          ]
        : []),
    ],
    warnings: noiseWarnings(series),
  };
}

export const staticFiles: Benchmark = {
  name: 'static',
  description: 'a 2 KiB and a 1 MiB site file: databank vs nginx from disk vs the nginx CDN config (cache hits); 32 and 8 clients',
  defaults: { warmupS: 2, durationS: 8 },
  run,
};
